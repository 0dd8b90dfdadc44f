"""What a user could pick instead of swin-fused, in plain PyTorch: the peers the benchmarks time.

Op level, each with the signature of swin_fused.window_attention (square windows):
- `window_attention_sdpa`: pad/roll/partition, then F.scaled_dot_product_attention with the bias
  and shift mask materialised as attn_mask, as timm's fused_attn path does;
- `window_attention_flex`: the same pad/roll/partition, then FlexAttention with a score_mod that
  adds the relative position bias and the -100 shift mask (compiled, as FlexAttention requires);
- `compiled_eager()`: torch.compile of swin_fused.eager's op.
Model level: `set_timm_fused_attn` switches timm's SDPA path on for every block.
The pad/roll/partition follows swin_fused.eager step by step (padded tokens take the qkv bias).
"""
import functools

import torch
import torch.nn.functional as F

from swin_fused.eager import region_labels, window_attention_eager


def _partition(x, window):
    """(B, Hp, Wp, ...) -> (B * windows, window * window, ...), windows in row-major order."""
    B, hp, wp = x.shape[:3]
    x = x.reshape(B, hp // window, window, wp // window, window, *x.shape[3:])
    return x.transpose(2, 3).reshape(-1, window * window, *x.shape[5:])


def _padded(size, window):
    return size + (window - size % window) % window


def to_windows(qkv, H, W, num_heads, window, shift, qkv_bias):
    """q, k, v as (B * windows, heads, window * window, head_dim): the map padded with the qkv
    bias at the bottom and right, rolled by -shift, partitioned."""
    B, _, C3 = qkv.shape
    hp, wp = _padded(H, window), _padded(W, window)
    fill = qkv_bias.to(qkv.dtype) if qkv_bias is not None else qkv.new_zeros(C3)
    x = torch.cat([qkv.view(B, H, W, C3), fill.expand(B, hp - H, W, C3)], dim=1)
    x = torch.cat([x, fill.expand(B, hp, wp - W, C3)], dim=2)
    if shift:
        x = torch.roll(x, (-shift, -shift), (1, 2))
    windows = _partition(x, window)
    return windows.view(*windows.shape[:2], 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def from_windows(out, B, H, W, window, shift):
    """(B * windows, heads, n, head_dim) -> (B, H*W, C): reverse, roll back, crop."""
    hp, wp = _padded(H, window), _padded(W, window)
    C = out.shape[1] * out.shape[3]
    x = out.transpose(1, 2).reshape(B, hp // window, wp // window, window, window, C)
    x = x.transpose(2, 3).reshape(B, hp, wp, C)
    if shift:
        x = torch.roll(x, (shift, shift), (1, 2))
    return x[:, :H, :W].reshape(B, H * W, C)


def window_labels(H, W, window, shift, device):
    """Shift-mask region label of each token of each window: (windows per image, n)."""
    hp, wp = _padded(H, window), _padded(W, window)
    labels = (region_labels(hp, window, shift, device)[:, None] * 3
              + region_labels(wp, window, shift, device)[None, :])
    return _partition(labels[None], window)


def window_attention_sdpa(qkv, H, W, num_heads, window, shift, *, rel_bias, qkv_bias, scale):
    """timm's fused_attn path: one SDPA call with a (windows, heads, n, n) bias + mask tensor."""
    q, k, v = to_windows(qkv, H, W, num_heads, window, shift, qkv_bias)
    attn_mask = rel_bias[None]
    if shift:
        labels = window_labels(H, W, window, shift, qkv.device)
        mask = torch.where(labels[:, :, None] == labels[:, None, :], 0.0, -100.0)
        attn_mask = (attn_mask + mask[:, None]).repeat(qkv.shape[0], 1, 1, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype), scale=scale)
    return from_windows(out, qkv.shape[0], H, W, window, shift)


@functools.cache
def _compiled_flex_attention():
    # FlexAttention runs fused only compiled; eager flex_attention materialises the scores
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention)


def window_attention_flex(qkv, H, W, num_heads, window, shift, *, rel_bias, qkv_bias, scale):
    """FlexAttention over the windows: score_mod adds rel_bias[h, i, j] and, where the shift
    regions of query i and key j differ, -100. No block mask: pytorch issue 153799 (NaN gradients
    with a block mask at lengths not a multiple of 128) concerns windows of 49 tokens."""
    q, k, v = to_windows(qkv, H, W, num_heads, window, shift, qkv_bias)
    labels = window_labels(H, W, window, shift, qkv.device)
    windows_per_image = labels.shape[0]

    def score_mod(score, b, h, q_idx, kv_idx):
        score = score + rel_bias[h, q_idx, kv_idx]
        if not shift:
            return score
        w = b % windows_per_image
        return torch.where(labels[w, q_idx] == labels[w, kv_idx], score, score - 100.0)

    out = _compiled_flex_attention()(q, k, v, score_mod=score_mod, scale=scale)
    return from_windows(out, qkv.shape[0], H, W, window, shift)


def compiled_eager():
    """torch.compile of the plain-PyTorch op, compiled afresh at its first call."""
    return torch.compile(window_attention_eager)


def set_timm_fused_attn(model, enabled=True):
    """timm's SDPA path (off by default for Swin: `use_fused_attn(experimental=True)`) on every
    window attention of `model`; returns how many it switched."""
    switched = 0
    for module in model.modules():
        if hasattr(module, "fused_attn") and hasattr(module, "relative_position_bias_table"):
            module.fused_attn = enabled
            switched += 1
    return switched
