"""torchvision's Video Swin (swin3d_t/s/b): fuse ShiftedWindowAttention3d.forward.

The module's forward shrinks the window to the map and drops the shift on an axis the map fits in
(`_get_window_and_shift_size`: size <= window), takes the relative position bias of that window,
and hands the (B, T, H, W, C) map to the functional `shifted_window_attention_3d`: pad, roll,
partition, qkv, attention, proj, reverse, roll back, crop. The fused forward keeps the adjustment
and hands the map to `fused_shifted_window_attention_3d` instead: the same signature, qkv ->
window_attention_3d -> proj on the natural token layout (torchvision pads before the qkv Linear
and rolls after padding). Both functionals are FX leaves, so patching a traced graph swaps one for
the other. The fused forward calls every submodule the eager one does (neither calls qkv or proj
as modules).
"""
import contextlib
import sys

import torch
import torch.nn.functional as F

from swin_fused.families import (
    first_parameter,
    missing_attributes,
    sample_tensor,
    signature_reason,
    wrapped_reason,
)
from swin_fused.ops import not_supported_reasons, window_attention_3d

METHOD = "forward"
MODULE = "torchvision.models.video.swin_transformer"
LIBRARY = "torchvision"
REPLACED = ("forward",)
READS = ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "window_size", "shift_size",
         "num_heads", "attention_dropout", "dropout", "get_relative_position_bias")


def classes():
    # a model can hold torchvision's video Swin classes only once their module has been imported
    swin = sys.modules.get(MODULE)
    return (swin.ShiftedWindowAttention3d,) if swin is not None else ()


def unrecognised(attn):
    swin = sys.modules[MODULE]
    return (missing_attributes(attn, READS) + signature_reason(type(attn), METHOD, ("x",))
            + wrapped_reason(swin.shifted_window_attention_3d, MODULE,
                             "shifted_window_attention_3d"))


@contextlib.contextmanager
def sample(attn):
    """A (1, T, H, W, C) map one token past the window on each axis: it pads and keeps the shift."""
    like = first_parameter(attn)
    yield (sample_tensor(1, *(w + 1 for w in attn.window_size), attn.qkv.in_features, like=like),)


def unsupported(attn):
    head_dim = attn.qkv.out_features // (3 * attn.num_heads)
    return not_supported_reasons(tuple(attn.window_size), tuple(attn.shift_size), head_dim)


def fused_shifted_window_attention_3d(input, qkv_weight, proj_weight, relative_position_bias,
                                      window_size, num_heads, shift_size, attention_dropout=0.0,
                                      dropout=0.0, qkv_bias=None, proj_bias=None, training=True):
    """torchvision's `shifted_window_attention_3d` on the fused op: same arguments, same result."""
    B, T, H, W, C = input.shape
    qkv = F.linear(input, qkv_weight, qkv_bias).reshape(B, T * H * W, -1)
    y = window_attention_3d(
        qkv, T, H, W, num_heads, tuple(window_size), tuple(shift_size),
        rel_bias=relative_position_bias[0], qkv_bias=qkv_bias, scale=(C // num_heads) ** -0.5,
        attn_dropout=attention_dropout, training=training)
    y = F.dropout(F.linear(y, proj_weight, proj_bias), p=dropout, training=training)
    return y.view(B, T, H, W, -1)


torch.fx.wrap("fused_shifted_window_attention_3d")


def functionals():
    """{eager functional: fused functional}, for FX graphs that call them."""
    swin = sys.modules.get(MODULE)
    if swin is None:
        return {}
    return {swin.shifted_window_attention_3d: fused_shifted_window_attention_3d}


def fused(self, x):
    _, t, h, w, _ = x.shape
    window_size, shift_size = sys.modules[MODULE]._get_window_and_shift_size(
        self.shift_size.copy(), [t, h, w], self.window_size.copy())
    return fused_shifted_window_attention_3d(
        x, self.qkv.weight, self.proj.weight, self.get_relative_position_bias(window_size),
        window_size, self.num_heads, shift_size, attention_dropout=self.attention_dropout,
        dropout=self.dropout, qkv_bias=self.qkv.bias, proj_bias=self.proj.bias,
        training=self.training)
