"""Shifted-window attention in plain PyTorch: the op's semantics written out step by step.

It is the eager fallback of `swin_fused.window_attention` and the op-level reference the Triton
kernels are tested against. It imports nothing else of swin_fused.
"""
import torch
import torch.nn.functional as F


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


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
    wh, ww = _pair(window_size)
    sh, sw = _pair(shift_size)
    B, L, C3 = qkv.shape
    heads = num_heads
    hd = C3 // (3 * heads)
    n = wh * ww
    pad_b = (wh - H % wh) % wh
    pad_r = (ww - W % ww) % ww
    hp, wp = H + pad_b, W + pad_r

    x = qkv.view(B, H, W, C3)
    if roll_before_pad and (sh or sw):
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    fill = qkv_bias.to(qkv.dtype) if qkv_bias is not None else qkv.new_zeros(C3)
    x = torch.cat([x, fill.expand(B, pad_b, W, C3)], dim=1)
    x = torch.cat([x, fill.expand(B, hp, pad_r, C3)], dim=2)
    if not roll_before_pad and (sh or sw):
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))

    windows = x.view(B, hp // wh, wh, wp // ww, ww, C3).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, C3)
    q, k, v = windows.view(-1, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * logit_scale.view(1, heads, 1, 1)
    else:
        attn = (q * (hd ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)
    if rel_bias is not None:
        attn = attn + rel_bias.unsqueeze(0)
    if sh or sw:
        labels = (region_labels(hp, wh, sh, qkv.device)[:, None] * 3
                  + region_labels(wp, ww, sw, qkv.device)[None, :])
        labels = labels.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, n)
        mask = torch.zeros(labels.shape[0], n, n, device=qkv.device, dtype=attn.dtype)
        mask = mask.masked_fill(labels[:, None, :] != labels[:, :, None], -100.0)
        n_windows = mask.shape[0]
        attn = (attn.view(-1, n_windows, heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
    # an fp32 bias promotes half scores to fp32; P @ V runs in the values' dtype, as under autocast
    attn = F.dropout(attn.softmax(dim=-1), attn_dropout, training).to(v.dtype)
    out = (attn @ v).transpose(1, 2).reshape(-1, n, heads * hd)

    c = heads * hd  # not -1: an empty batch leaves it ambiguous
    out = out.view(B, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(B, hp, wp, c)
    if not roll_before_pad and (sh or sw):
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    out = out[:, :H, :W]
    if roll_before_pad and (sh or sw):
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out.reshape(B, H * W, c)
