"""torchvision's Swin models (swin_t/s/b, swin_v2_t/s/b): fuse ShiftedWindowAttention(V2).forward.

The module receives the (B, H, W, C) map and does pad, roll, partition, qkv, attention, proj,
reverse, roll back and crop itself; the fused forward runs qkv -> window_attention -> proj on the
natural token layout. torchvision pads before the qkv Linear (a padded token's q, k, v are the qkv
bias), pads then rolls, and drops the shift on an axis where the window covers the padded map.
V2 adds cosine attention with a clamped logit scale, a 16*sigmoid(cpb_mlp) position bias and a qkv
bias whose k part is zeroed on every call.
"""
import math
import sys

import torch.nn.functional as F

from swin_fused.ops import layer_unsupported, window_attention

METHOD = "forward"
MODULE = "torchvision.models.swin_transformer"


def targets(model):
    # a model can hold torchvision's Swin classes only once their module has been imported
    swin = sys.modules.get(MODULE)
    if swin is None:
        return []
    return [m for m in model.modules() if isinstance(m, swin.ShiftedWindowAttention)]


def unsupported(attn):
    head_dim = attn.qkv.out_features // (3 * attn.num_heads)
    return layer_unsupported(attn.window_size, attn.shift_size, head_dim)


def fused(self, x):
    B, H, W, C = x.shape
    # torchvision drops the shift on an axis where one window covers the padded map
    shift = [0 if w >= -(-size // w) * w else s
             for size, w, s in zip((H, W), self.window_size, self.shift_size)]
    qkv_bias, logit_scale = self.qkv.bias, None
    if isinstance(self, sys.modules[MODULE].ShiftedWindowAttentionV2):
        if qkv_bias is not None:
            qkv_bias = qkv_bias.clone()
            length = qkv_bias.numel() // 3
            qkv_bias[length:2 * length].zero_()
        logit_scale = self.logit_scale.clamp(max=math.log(100.0)).exp().flatten()
    qkv = F.linear(x, self.qkv.weight, qkv_bias).reshape(B, H * W, -1)
    y = window_attention(
        qkv, H, W, self.num_heads, tuple(self.window_size), shift,
        rel_bias=self.get_relative_position_bias()[0], qkv_bias=qkv_bias,
        scale=(C // self.num_heads) ** -0.5, logit_scale=logit_scale,
        attn_dropout=self.attention_dropout, training=self.training)
    y = F.linear(y, self.proj.weight, self.proj.bias)
    y = F.dropout(y, p=self.dropout, training=self.training)
    return y.view(B, H, W, -1)
