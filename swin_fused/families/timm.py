"""timm's Swin models (swin_*, swinv2_*): fuse SwinTransformerBlock._attn and
SwinTransformerV2Block._attn.

`_attn` takes norm1's (V1) or the block input's (V2) (B, H, W, C) map and does roll, pad, partition,
attention, reverse, crop and roll back; the fused `_attn` runs qkv -> window_attention -> proj on
the natural token layout. timm rolls the unpadded map before padding it, and its window and shift
are the block's own attributes (clamped to the resolution unless always_partition, recomputed by
set_input_size), read on every call. The shift mask is the same whether the block keeps a static
mask or builds it per input (dynamic_mask). V1 allows head_dim != dim / heads; V2 has cosine
attention, a 16*sigmoid(cpb_mlp) position bias and a qkv bias made of q_bias, a zero k_bias
buffer and v_bias. The fused `_attn` no longer calls `attn` (WindowAttention.forward),
`attn.softmax` or `attn.attn_drop`.

timm is optional: nothing here imports it.
"""
import contextlib
import math
import sys

import torch
import torch.nn.functional as F

from swin_fused.families import (
    first_parameter,
    hooked,
    hooks_reason,
    missing_attributes,
    sample_tensor,
    signature_reason,
)
from swin_fused.ops import fallback, not_supported_reasons, window_attention

METHOD = "_attn"
V1 = "timm.models.swin_transformer"
V2 = "timm.models.swin_transformer_v2"
LIBRARY = "timm"
REPLACED = ("_attn", "get_attn_mask")
READS = ("window_size", "shift_size", "input_resolution", "attn.qkv", "attn.num_heads",
         "attn.attn_drop.p", "attn.proj", "attn.proj_drop", "attn.softmax")
V1_READS = ("attn._get_rel_pos_bias", "attn.scale")
V2_READS = ("attn.q_bias", "attn.k_bias", "attn.v_bias", "attn.logit_scale", "attn.cpb_mlp",
            "attn.relative_coords_table", "attn.relative_position_index", "attn.window_size")
# an FX leaf, as torchvision's functional is: its argument checks branch on the sizes
torch.fx.wrap("window_attention")


def classes():
    # a model can hold timm's Swin blocks only once their module has been imported
    found = []
    if V1 in sys.modules:
        found.append(sys.modules[V1].SwinTransformerBlock)
    if V2 in sys.modules:
        found.append(sys.modules[V2].SwinTransformerV2Block)
    return tuple(found)


def _is_v2(block):
    v2 = sys.modules.get(V2)
    return v2 is not None and isinstance(block, v2.SwinTransformerV2Block)


def unrecognised(block):
    base = sys.modules[V2].SwinTransformerV2Block if _is_v2(block) else \
        sys.modules[V1].SwinTransformerBlock
    reads = READS + (V2_READS if _is_v2(block) else V1_READS)
    return missing_attributes(block, reads) + signature_reason(base, METHOD, ("x",))


@contextlib.contextmanager
def sample(block):
    """A (1, H, W, C) map at the block's input resolution, for which its static mask is built."""
    like = first_parameter(block)
    yield (sample_tensor(1, *block.input_resolution, block.attn.qkv.in_features, like=like),)


def unsupported(block):
    head_dim = block.attn.qkv.out_features // (3 * block.attn.num_heads)
    return not_supported_reasons(block.window_size, block.shift_size, head_dim)


def skipped(block):
    attn = block.attn
    return {"attn": attn, "attn.softmax": attn.softmax, "attn.attn_drop": attn.attn_drop}


def _cosine_inputs(attn):
    """V2: the effective qkv bias, the clamped and exp'ed logit scale, the dense position bias."""
    qkv_bias = None
    if attn.q_bias is not None:
        qkv_bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
    logit_scale = attn.logit_scale.clamp(max=math.log(1. / 0.01)).exp().flatten()
    n = attn.window_size[0] * attn.window_size[1]
    table = attn.cpb_mlp(attn.relative_coords_table).view(-1, attn.num_heads)
    rel_bias = table[attn.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
    return qkv_bias, logit_scale, 16 * torch.sigmoid(rel_bias.contiguous())


def fused(self, x):
    hooks = hooked(skipped(self))
    if hooks:
        fallback(hooks_reason(self, hooks))
        return self.unfused_class._attn(self, x)
    B, H, W, C = x.shape
    attn = self.attn
    if _is_v2(self):
        qkv_bias, logit_scale, rel_bias = _cosine_inputs(attn)
        scale = None
        qkv = F.linear(x, attn.qkv.weight, qkv_bias)
    else:
        qkv_bias, logit_scale = attn.qkv.bias, None
        rel_bias, scale = attn._get_rel_pos_bias()[0], attn.scale
        qkv = attn.qkv(x)
    y = window_attention(
        qkv.reshape(B, H * W, -1), H, W, attn.num_heads, tuple(self.window_size),
        tuple(self.shift_size), rel_bias=rel_bias, qkv_bias=qkv_bias, scale=scale,
        logit_scale=logit_scale, roll_before_pad=True, attn_dropout=attn.attn_drop.p,
        training=attn.training)
    y = attn.proj_drop(attn.proj(y))
    return y.view(B, H, W, -1)
