"""What a user could pick instead of swin-fused, in plain PyTorch: the peers the benchmarks time.

Op level, each with the signature of swin_fused.window_attention (2-D) or window_attention_3d
(`*_3d`):
- `window_attention_sdpa(_3d)`: pad/roll/partition, then F.scaled_dot_product_attention with the
  bias and shift mask materialised as attn_mask, as timm's fused_attn and MONAI's
  use_flash_attention paths do;
- `window_attention_flex(_3d)`: the same pad/roll/partition, then FlexAttention with a score_mod
  that adds the relative position bias and the -100 shift mask (compiled, as FlexAttention
  requires);
- `compiled_eager()`, `compiled_eager_3d()`: torch.compile of swin_fused.eager's op.
Model level: `set_sdpa` switches a model's own SDPA path on for every block (timm's fused_attn,
MONAI's use_flash_attention, Hugging Face's attn_implementation).
The pad/roll/partition are swin_fused.eager's own steps (padded tokens take the qkv bias). With
a logit_scale (Swin V2's cosine attention) the op-level peers attend with normalize(q) *
logit_scale[h] and normalize(k) at scale 1 (`attention_inputs`).
"""
import functools

import torch
import torch.nn.functional as F

from swin_fused.eager import (
    _pair,
    _triple,
    crop,
    pad,
    padded_size,
    partition,
    roll,
    unpartition,
    window_attention_eager,
    window_attention_eager_3d,
    window_labels,
)


def to_windows(qkv, size, num_heads, window, shift, qkv_bias):
    """q, k, v as (B * windows, heads, N, head_dim): the (B, prod(size), 3C) map padded with the
    qkv bias at the end of each axis, rolled by -shift, partitioned."""
    B, _, C3 = qkv.shape
    fill = qkv_bias.to(qkv.dtype) if qkv_bias is not None else qkv.new_zeros(C3)
    x = pad(qkv.view(B, *size, C3), window, fill)
    if any(shift):
        x = roll(x, shift)
    windows = partition(x, window)
    return windows.view(*windows.shape[:2], 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def from_windows(out, B, size, window, shift):
    """(B * windows, heads, N, head_dim) -> (B, prod(size), C): reverse, roll back, crop."""
    x = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
    x = unpartition(x, B, padded_size(size, window), window)
    if any(shift):
        x = roll(x, shift, back=True)
    return crop(x, size).reshape(B, -1, x.shape[-1])


def attention_inputs(qkv, size, num_heads, window, shift, qkv_bias, scale, logit_scale):
    """q, k, v windows (to_windows) and the softmax scale. With a logit_scale, Swin V2's cosine
    attention as a plain dot product at scale 1: q = normalize(q) * logit_scale[h] and
    k = normalize(k), in qkv's dtype (SDPA takes q, k, v in one dtype)."""
    q, k, v = to_windows(qkv, size, num_heads, window, shift, qkv_bias)
    if logit_scale is None:
        return q, k, v, scale
    q = (F.normalize(q, dim=-1) * logit_scale.view(-1, 1, 1)).to(qkv.dtype)
    return q, F.normalize(k, dim=-1), v, 1.0


def _labels(size, window, shift, device):
    """(windows per image, N): each window token's shift region."""
    return window_labels(padded_size(size, window), window, shift, device)


def _sdpa(qkv, size, num_heads, window, shift, rel_bias, qkv_bias, scale, logit_scale):
    q, k, v, scale = attention_inputs(qkv, size, num_heads, window, shift, qkv_bias, scale,
                                      logit_scale)
    attn_mask = rel_bias[None]
    if any(shift):
        labels = _labels(size, window, shift, qkv.device)
        mask = torch.where(labels[:, :, None] == labels[:, None, :], 0.0, -100.0)
        attn_mask = (attn_mask + mask[:, None]).repeat(qkv.shape[0], 1, 1, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype), scale=scale)
    return from_windows(out, qkv.shape[0], size, window, shift)


def window_attention_sdpa(qkv, H, W, num_heads, window, shift, *, rel_bias, qkv_bias, scale,
                          logit_scale=None):
    """timm's fused_attn path: one SDPA call with a (windows, heads, n, n) bias + mask tensor."""
    return _sdpa(qkv, (H, W), num_heads, _pair(window), _pair(shift), rel_bias, qkv_bias, scale,
                 logit_scale)


def window_attention_sdpa_3d(qkv, T, H, W, num_heads, window, shift, *, rel_bias, qkv_bias,
                             scale, logit_scale=None):
    """MONAI's use_flash_attention path over a (T, H, W) map: one SDPA call, bias + mask."""
    return _sdpa(qkv, (T, H, W), num_heads, _triple(window), _triple(shift), rel_bias, qkv_bias,
                 scale, logit_scale)


@functools.cache
def _compiled_flex_attention():
    # FlexAttention runs fused only compiled; eager flex_attention materialises the scores
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention)


def _flex(qkv, size, num_heads, window, shift, rel_bias, qkv_bias, scale, logit_scale):
    q, k, v, scale = attention_inputs(qkv, size, num_heads, window, shift, qkv_bias, scale,
                                      logit_scale)
    labels = _labels(size, window, shift, qkv.device)
    windows_per_image = labels.shape[0]
    shifted = any(shift)

    def score_mod(score, b, h, q_idx, kv_idx):
        score = score + rel_bias[h, q_idx, kv_idx]
        if not shifted:
            return score
        w = b % windows_per_image
        return torch.where(labels[w, q_idx] == labels[w, kv_idx], score, score - 100.0)

    out = _compiled_flex_attention()(q, k, v, score_mod=score_mod, scale=scale)
    return from_windows(out, qkv.shape[0], size, window, shift)


def window_attention_flex(qkv, H, W, num_heads, window, shift, *, rel_bias, qkv_bias, scale,
                          logit_scale=None):
    """FlexAttention over the windows: score_mod adds rel_bias[h, i, j] and, where the shift
    regions of query i and key j differ, -100. No block mask: pytorch issue 153799 (NaN gradients
    with a block mask at lengths not a multiple of 128) concerns windows of 49 and 144 tokens."""
    return _flex(qkv, (H, W), num_heads, _pair(window), _pair(shift), rel_bias, qkv_bias, scale,
                 logit_scale)


def window_attention_flex_3d(qkv, T, H, W, num_heads, window, shift, *, rel_bias, qkv_bias,
                             scale, logit_scale=None):
    """window_attention_flex over a (T, H, W) map (windows of 343-392 tokens)."""
    return _flex(qkv, (T, H, W), num_heads, _triple(window), _triple(shift), rel_bias, qkv_bias,
                 scale, logit_scale)


def compiled_eager():
    """torch.compile of the plain-PyTorch op, compiled afresh at its first call."""
    return torch.compile(window_attention_eager)


def compiled_eager_3d():
    """torch.compile of the plain-PyTorch 3-D op, compiled afresh at its first call."""
    return torch.compile(window_attention_eager_3d)


def set_sdpa(model, enabled=True):
    """The model's own SDPA path on (or off) in every window attention: timm's `fused_attn` (off
    by default for Swin: `use_fused_attn(experimental=True)`), MONAI's `use_flash_attention`
    (which it takes only without autograd: a training step runs its eager path), Hugging Face's
    attn_implementation "sdpa" (or "eager"; transformers raises where a model has no SDPA path);
    returns how many modules it switched."""
    switched = 0
    for module in model.modules():
        if hasattr(module, "set_attn_implementation"):
            module.set_attn_implementation("sdpa" if enabled else "eager")
            switched += 1
        if not hasattr(module, "relative_position_bias_table"):
            continue
        for flag in ("fused_attn", "use_flash_attention"):
            if hasattr(module, flag):
                setattr(module, flag, enabled)
                switched += 1
    return switched
