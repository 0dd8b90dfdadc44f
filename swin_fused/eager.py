"""Shifted-window attention in plain PyTorch: the op's semantics written out step by step.

It is the eager fallback of `swin_fused.window_attention` and the op-level reference the Triton
kernels are tested against. It imports nothing else of swin_fused.
"""
import torch
import torch.nn.functional as F


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _triple(v):
    return (v, v, v) if isinstance(v, int) else tuple(v)


def region_labels(size, window, shift, device):
    """Shift-mask region of each position along one padded axis: slices (0,-w), (-w,-s), (-s,None)."""
    pos = torch.arange(size, device=device)
    if shift == 0:
        # the (-w, -0) slice is empty and (-0, None) covers the axis: one region
        return torch.zeros_like(pos)
    return (pos >= size - window).long() + (pos >= size - shift).long()


def window_attention_eager(qkv, H, W, num_heads, window_size, shift_size=0, *, rel_bias=None,
                           qkv_bias=None, scale=None, logit_scale=None, roll_before_pad=False,
                           attn_dropout=0.0, training=False):
    """Attention between the qkv Linear and the proj Linear of a shifted-window layer.

    qkv: (B, H*W, 3*heads*hd) in the natural token layout. Pads the map to a multiple of the window
    (padded tokens take the qkv bias, as if the Linear saw a zero token), rolls by -shift (after the
    padding, or before it when roll_before_pad, as timm does), partitions, attends with the relative
    bias and the -100 region mask, and undoes it all. Returns (B, H*W, heads*hd).
    """
    return window_attention_eager_3d(
        qkv, 1, H, W, num_heads, (1, *_pair(window_size)), (0, *_pair(shift_size)),
        rel_bias=rel_bias, qkv_bias=qkv_bias, scale=scale, logit_scale=logit_scale,
        roll_before_pad=roll_before_pad, attn_dropout=attn_dropout, training=training)


def window_attention_eager_3d(qkv, T, H, W, num_heads, window_size, shift_size=0, *,
                              rel_bias=None, qkv_bias=None, scale=None, logit_scale=None,
                              roll_before_pad=False, attn_dropout=0.0, training=False):
    """window_attention_eager over a (T, H, W) map (video Swin, MONAI): qkv (B, T*H*W, 3C), window
    and shift an int or (t, h, w); windows in row-major order of (t, h, w) window index, tokens
    row-major (t, h, w) inside; 27 shift-mask regions, label 9 t + 3 h + w. Returns (B, T*H*W, C)."""
    window, shift = _triple(window_size), _triple(shift_size)
    (wt, wh, ww), (tp, hp, wp) = window, [-(-s // w) * w for s, w in zip((T, H, W), window)]
    B, L, C3 = qkv.shape
    heads = num_heads
    hd = C3 // (3 * heads)
    n = wt * wh * ww
    shifted = any(shift)
    dims = (1, 2, 3)

    x = qkv.view(B, T, H, W, C3)
    if roll_before_pad and shifted:
        x = torch.roll(x, shifts=tuple(-s for s in shift), dims=dims)
    fill = qkv_bias.to(qkv.dtype) if qkv_bias is not None else qkv.new_zeros(C3)
    x = torch.cat([x, fill.expand(B, tp - T, H, W, C3)], dim=1)
    x = torch.cat([x, fill.expand(B, tp, hp - H, W, C3)], dim=2)
    x = torch.cat([x, fill.expand(B, tp, hp, wp - W, C3)], dim=3)
    if not roll_before_pad and shifted:
        x = torch.roll(x, shifts=tuple(-s for s in shift), dims=dims)

    grid = (tp // wt, hp // wh, wp // ww)
    windows = x.view(B, grid[0], wt, grid[1], wh, grid[2], ww, C3)
    windows = windows.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, n, C3)
    q, k, v = windows.view(-1, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * logit_scale.view(1, heads, 1, 1)
    else:
        attn = (q * (hd ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)
    if rel_bias is not None:
        attn = attn + rel_bias.unsqueeze(0)
    if shifted:
        labels = (region_labels(tp, wt, shift[0], qkv.device)[:, None, None] * 9
                  + region_labels(hp, wh, shift[1], qkv.device)[None, :, None] * 3
                  + region_labels(wp, ww, shift[2], qkv.device)[None, None, :])
        labels = labels.view(grid[0], wt, grid[1], wh, grid[2], ww).permute(0, 2, 4, 1, 3, 5)
        labels = labels.reshape(-1, n)
        mask = torch.zeros(labels.shape[0], n, n, device=qkv.device, dtype=attn.dtype)
        mask = mask.masked_fill(labels[:, None, :] != labels[:, :, None], -100.0)
        n_windows = mask.shape[0]
        attn = (attn.view(-1, n_windows, heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
    # an fp32 bias promotes half scores to fp32; P @ V runs in the values' dtype, as under autocast
    attn = F.dropout(attn.softmax(dim=-1), attn_dropout, training).to(v.dtype)
    out = (attn @ v).transpose(1, 2).reshape(-1, n, heads * hd)

    c = heads * hd  # not -1: an empty batch leaves it ambiguous
    out = out.view(B, *grid, wt, wh, ww, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    out = out.reshape(B, tp, hp, wp, c)
    if not roll_before_pad and shifted:
        out = torch.roll(out, shifts=shift, dims=dims)
    out = out[:, :T, :H, :W]
    if roll_before_pad and shifted:
        out = torch.roll(out, shifts=shift, dims=dims)
    return out.reshape(B, T * H * W, c)
