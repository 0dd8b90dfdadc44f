"""Shifted-window attention in plain PyTorch: the op's semantics written out step by step.

It is the eager fallback of `swin_fused.window_attention` and the op-level reference the Triton
kernels are tested against; its steps (pad, roll, partition, region labels and their inverses) are
small functions over 2 or 3 spatial axes, which the benchmarks' peers reuse. It imports nothing
else of swin_fused.
"""
import math

import torch
import torch.nn.functional as F

MASK_VALUE = -100.0  # added to scores between shift regions, as every Swin family does


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _triple(v):
    return (v, v, v) if isinstance(v, int) else tuple(v)


def windows_per_axis(size, window):
    """Windows along each axis once it is padded to whole windows."""
    return tuple(-(-s // w) for s, w in zip(size, window, strict=True))


def padded_size(size, window):
    """Each axis rounded up to a multiple of its window."""
    return tuple(n * w for n, w in zip(windows_per_axis(size, window), window, strict=True))


def pad(x, window, fill):
    """(B, *size, C) -> (B, *padded, C): each spatial axis extended at its end to a multiple of
    its window with `fill` (C,), the q, k, v of a padded token."""
    for axis, padded in enumerate(padded_size(x.shape[1:-1], window), 1):
        shape = list(x.shape)
        shape[axis] = padded - x.shape[axis]
        x = torch.cat([x, fill.expand(shape)], dim=axis)
    return x


def roll(x, shift, back=False):
    """Cyclic shift of the spatial axes of (B, *spatial, C) by -shift, or by +shift with back."""
    sign = 1 if back else -1
    return torch.roll(x, shifts=tuple(sign * s for s in shift),
                      dims=tuple(range(1, len(shift) + 1)))


def crop(x, size):
    """(B, *padded, C) -> (B, *size, C): the padding at the end of each axis cut off."""
    return x[(slice(None),) + tuple(slice(0, s) for s in size)]


def partition(x, window):
    """(B, *padded, C) -> (B * windows, N, C): windows in row-major order of their grid position,
    tokens in row-major order inside a window."""
    B, *padded, C = x.shape
    grid = windows_per_axis(padded, window)
    axes = len(window)
    x = x.reshape(B, *(n for pair in zip(grid, window, strict=True) for n in pair), C)
    x = x.permute(0, *range(1, 2 * axes, 2), *range(2, 2 * axes + 1, 2), 2 * axes + 1)
    return x.reshape(-1, math.prod(window), C)


def unpartition(windows, batch, padded, window):
    """partition's inverse: (B * windows, N, C) -> (B, *padded, C)."""
    C = windows.shape[-1]  # explicit: an empty batch leaves -1 ambiguous
    grid = windows_per_axis(padded, window)
    axes = len(window)
    x = windows.reshape(batch, *grid, *window, C)
    x = x.permute(0, *(i for axis in range(1, axes + 1) for i in (axis, axis + axes)),
                  2 * axes + 1)
    return x.reshape(batch, *padded, C)


def region_labels(size, window, shift, device):
    """Shift-mask region of each position along one padded axis: slices (0,-w), (-w,-s),
    (-s,None)."""
    pos = torch.arange(size, device=device)
    if shift == 0:
        # the (-w, -0) slice is empty and (-0, None) covers the axis: one region
        return torch.zeros_like(pos)
    return (pos >= size - window).long() + (pos >= size - shift).long()


def window_labels(padded, window, shift, device):
    """(windows per image, N): the shift-mask region of each token of each window, 3 regions per
    axis, label 3 h + w in 2-D and 9 t + 3 h + w in 3-D."""
    labels = torch.zeros((), dtype=torch.long, device=device)
    for axis, (p, w, s) in enumerate(zip(padded, window, shift, strict=True)):
        along = region_labels(p, w, s, device) * 3 ** (len(window) - 1 - axis)
        labels = labels[..., None] + along
    return partition(labels[None, ..., None], window)[..., 0]


def window_attention_eager(qkv, H, W, num_heads, window_size, shift_size=0, *, rel_bias=None,
                           qkv_bias=None, scale=None, logit_scale=None, roll_before_pad=False,
                           attn_dropout=0.0, training=False, mask_value=MASK_VALUE):
    """Attention between the qkv Linear and the proj Linear of a shifted-window layer.

    qkv: (B, H*W, 3*heads*hd) in the natural token layout. Pads the map to a multiple of the window
    (padded tokens take the qkv bias, as if the Linear saw a zero token), rolls by -shift (after the
    padding, or before it when roll_before_pad, as timm does), partitions, attends with the relative
    bias and the region mask (mask_value between regions, -100), and undoes it all.
    Returns (B, H*W, heads*hd).
    """
    return window_attention_eager_3d(
        qkv, 1, H, W, num_heads, (1, *_pair(window_size)), (0, *_pair(shift_size)),
        rel_bias=rel_bias, qkv_bias=qkv_bias, scale=scale, logit_scale=logit_scale,
        roll_before_pad=roll_before_pad, attn_dropout=attn_dropout, training=training,
        mask_value=mask_value)


def window_attention_eager_3d(qkv, T, H, W, num_heads, window_size, shift_size=0, *,
                              rel_bias=None, qkv_bias=None, scale=None, logit_scale=None,
                              roll_before_pad=False, attn_dropout=0.0, training=False,
                              mask_value=MASK_VALUE):
    """window_attention_eager over a (T, H, W) map (video Swin, MONAI): qkv (B, T*H*W, 3C), window
    and shift an int or (t, h, w); windows in row-major order of (t, h, w) window index, tokens
    row-major (t, h, w) inside; 27 shift-mask regions, label 9 t + 3 h + w.
    Returns (B, T*H*W, C)."""
    window, shift = _triple(window_size), _triple(shift_size)
    size = (T, H, W)
    padded = padded_size(size, window)
    B, L, C3 = qkv.shape
    heads = num_heads
    hd = C3 // (3 * heads)
    n = math.prod(window)
    shifted = any(shift)

    x = qkv.view(B, T, H, W, C3)
    if roll_before_pad and shifted:
        x = roll(x, shift)
    fill = qkv_bias.to(qkv.dtype) if qkv_bias is not None else qkv.new_zeros(C3)
    x = pad(x, window, fill)
    if not roll_before_pad and shifted:
        x = roll(x, shift)

    windows = partition(x, window)
    q, k, v = windows.view(-1, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * logit_scale.view(1, heads, 1, 1)
    else:
        attn = (q * (hd ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)
    if rel_bias is not None:
        attn = attn + rel_bias.unsqueeze(0)
    if shifted:
        labels = window_labels(padded, window, shift, qkv.device)
        mask = torch.zeros(labels.shape[0], n, n, device=qkv.device, dtype=attn.dtype)
        mask = mask.masked_fill(labels[:, None, :] != labels[:, :, None], mask_value)
        n_windows = mask.shape[0]
        attn = (attn.view(-1, n_windows, heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
    # an fp32 bias promotes half scores to fp32; P @ V runs in the values' dtype, as under autocast
    attn = F.dropout(attn.softmax(dim=-1), attn_dropout, training).to(v.dtype)
    out = (attn @ v).transpose(1, 2).reshape(-1, n, heads * hd)

    out = unpartition(out, B, padded, window)
    if not roll_before_pad and shifted:
        out = roll(out, shift, back=True)
    out = crop(out, size)
    if roll_before_pad and shifted:
        out = roll(out, shift, back=True)
    return out.reshape(B, T * H * W, heads * hd)
