"""torchvision's Swin models (swin_t/s/b, swin_v2_t/s/b): fuse ShiftedWindowAttention(V2).forward.

The module's forward hands the (B, H, W, C) map to the functional `shifted_window_attention`, which
does pad, roll, partition, qkv, attention, proj, reverse, roll back and crop. The fused forward
hands it to `fused_shifted_window_attention` instead: the same signature, qkv -> window_attention
-> proj on the natural token layout. torchvision pads before the qkv Linear (a padded token's q, k,
v are the qkv bias), pads then rolls, and drops the shift on an axis where the window covers the
padded map. V2 adds cosine attention with a clamped logit scale, a 16*sigmoid(cpb_mlp) position
bias and a qkv bias whose k part is zeroed on every call. Both functionals are FX leaves
(torch.fx.wrap), so create_feature_extractor traces a patched model, and patching a traced graph
swaps one for the other. The fused forward calls every submodule the eager one does.
"""
import contextlib
import math
import sys

import torch
import torch.nn.functional as F

from swin_fused.eager import padded_size
from swin_fused.families import (
    first_parameter,
    missing_attributes,
    sample_tensor,
    signature_reason,
    wrapped_reason,
)
from swin_fused.ops import not_supported_reasons, window_attention

METHOD = "forward"
MODULE = "torchvision.models.swin_transformer"
LIBRARY = "torchvision"
REPLACED = ("forward",)
READS = ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "window_size", "shift_size",
         "num_heads", "attention_dropout", "dropout", "get_relative_position_bias")


def classes():
    # a model can hold torchvision's Swin classes only once their module has been imported
    swin = sys.modules.get(MODULE)
    return (swin.ShiftedWindowAttention,) if swin is not None else ()


def unrecognised(attn):
    swin = sys.modules[MODULE]
    reads = READS + (("logit_scale",) if isinstance(attn, swin.ShiftedWindowAttentionV2) else ())
    return (missing_attributes(attn, reads) + signature_reason(type(attn), METHOD, ("x",))
            + wrapped_reason(swin.shifted_window_attention, MODULE, "shifted_window_attention"))


@contextlib.contextmanager
def sample(attn):
    """A (1, H, W, C) map one token past the window on each side: it pads and keeps the shift."""
    like = first_parameter(attn)
    yield (sample_tensor(1, *(w + 1 for w in attn.window_size), attn.qkv.in_features, like=like),)


def unsupported(attn):
    head_dim = attn.qkv.out_features // (3 * attn.num_heads)
    return not_supported_reasons(attn.window_size, attn.shift_size, head_dim)


def fused_shifted_window_attention(input, qkv_weight, proj_weight, relative_position_bias,
                                   window_size, num_heads, shift_size, attention_dropout=0.0,
                                   dropout=0.0, qkv_bias=None, proj_bias=None, logit_scale=None,
                                   training=True):
    """torchvision's `shifted_window_attention` on the fused op: same arguments, same result."""
    B, H, W, C = input.shape
    # torchvision drops the shift on an axis where one window covers the padded map
    shift = [0 if w >= padded else s
             for padded, w, s in zip(padded_size((H, W), window_size), window_size, shift_size,
                                     strict=True)]
    if logit_scale is not None:
        if qkv_bias is not None:
            qkv_bias = qkv_bias.clone()
            length = qkv_bias.numel() // 3
            qkv_bias[length:2 * length].zero_()
        logit_scale = logit_scale.clamp(max=math.log(100.0)).exp().flatten()
    qkv = F.linear(input, qkv_weight, qkv_bias).reshape(B, H * W, -1)
    y = window_attention(
        qkv, H, W, num_heads, tuple(window_size), shift, rel_bias=relative_position_bias[0],
        qkv_bias=qkv_bias, scale=(C // num_heads) ** -0.5, logit_scale=logit_scale,
        attn_dropout=attention_dropout, training=training)
    y = F.dropout(F.linear(y, proj_weight, proj_bias), p=dropout, training=training)
    return y.view(B, H, W, -1)


torch.fx.wrap("fused_shifted_window_attention")


def functionals():
    """{eager functional: fused functional}, for FX graphs that call them."""
    swin = sys.modules.get(MODULE)
    return {swin.shifted_window_attention: fused_shifted_window_attention} if swin else {}


def fused(self, x):
    v2 = isinstance(self, sys.modules[MODULE].ShiftedWindowAttentionV2)
    return fused_shifted_window_attention(
        x, self.qkv.weight, self.proj.weight, self.get_relative_position_bias(), self.window_size,
        self.num_heads, shift_size=self.shift_size, attention_dropout=self.attention_dropout,
        dropout=self.dropout, qkv_bias=self.qkv.bias, proj_bias=self.proj.bias,
        logit_scale=self.logit_scale if v2 else None, training=self.training)
