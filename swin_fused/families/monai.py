"""MONAI's SwinUNETR (monai.networks.nets.swin_unetr, 2-D and 3-D, V1 and use_v2=True): fuse
SwinTransformerBlock.forward_part1.

`forward_part1` takes the channels-last (B, [D,] H, W, C) map and does norm1, the window and shift
adjustment (`get_window_size`: on an axis the map fits in, the window shrinks to the map and the
shift drops), pad, roll, partition, `WindowAttention` (its bias indexes the full window's table
with [:n, :n]), reverse, roll back and crop; the -100 region mask comes from BasicLayer
(`compute_mask`) as `mask_matrix`. The fused method runs norm1 -> qkv -> window_attention(_3d) ->
proj on the natural token layout with the same window, shift and bias (MONAI pads after norm1,
before qkv, then rolls). It computes the mask from the window and shift, as compute_mask does, and
reads only whether `mask_matrix` is given: a shifted block called without one attends unmasked in
MONAI, which the fused op cannot, so it runs eager with that reason. use_v2 adds residual conv
blocks between stages and leaves the attention as it is; MONAI's own SDPA path
(use_flash_attention) is replaced like the eager one. The fused method no longer calls `attn`
(WindowAttention.forward), `attn.softmax` or `attn.attn_drop`.

MONAI is optional: nothing here imports it.
"""
import contextlib
import math
import sys

from swin_fused.families import (
    first_parameter,
    hooked,
    hooks_reason,
    missing_attributes,
    sample_tensor,
    signature_reason,
)
from swin_fused.ops import fallback, not_supported_reasons, window_attention, window_attention_3d

METHOD = "forward_part1"
MODULE = "monai.networks.nets.swin_unetr"
LIBRARY = "monai"
REPLACED = ("forward_part1",)
READS = ("dim", "num_heads", "window_size", "shift_size", "norm1", "attn.qkv", "attn.num_heads",
         "attn.relative_position_bias_table", "attn.relative_position_index", "attn.scale",
         "attn.attn_drop.p", "attn.proj", "attn.proj_drop", "attn.softmax")
UNMASKED = ("{} is shifted but called without a mask_matrix, so MONAI attends across shift "
            "regions unmasked; the fused op always masks")


def classes():
    # a model can hold MONAI's Swin blocks only once their module has been imported
    swin = sys.modules.get(MODULE)
    return (swin.SwinTransformerBlock,) if swin is not None else ()


def unsupported(block):
    return not_supported_reasons(tuple(block.window_size), tuple(block.shift_size),
                                 block.dim // block.num_heads)


def unrecognised(block):
    swin = sys.modules[MODULE]
    return (missing_attributes(block, READS)
            + signature_reason(swin.SwinTransformerBlock, METHOD, ("x", "mask_matrix")))


@contextlib.contextmanager
def sample(block):
    """A (1, [D,] H, W, C) map one token past the window on each axis, with BasicLayer's mask."""
    swin = sys.modules[MODULE]
    like = first_parameter(block)
    window, shift = tuple(block.window_size), tuple(block.shift_size)
    mask = None
    if any(shift):
        mask = swin.compute_mask([2 * w for w in window], window, shift, like.device).to(like)
    yield sample_tensor(1, *(w + 1 for w in window), block.dim, like=like), mask


def skipped(block):
    attn = block.attn
    return {"attn": attn, "attn.softmax": attn.softmax, "attn.attn_drop": attn.attn_drop}


def _relative_position_bias(attn, n):
    """(heads, n, n): WindowAttention.forward's bias for windows of n tokens."""
    index = attn.relative_position_index.clone()[:n, :n].reshape(-1)
    return attn.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)


def fused(self, x, mask_matrix):
    size = tuple(x.shape[1:-1])
    window, shift = sys.modules[MODULE].get_window_size(size, self.window_size, self.shift_size)
    hooks = hooked(skipped(self))
    if hooks or (any(shift) and mask_matrix is None):
        fallback(hooks_reason(self, hooks) if hooks else UNMASKED.format(type(self).__name__))
        return self.unfused_class.forward_part1(self, x, mask_matrix)
    B, C = x.shape[0], x.shape[-1]
    attn = self.attn
    qkv = attn.qkv(self.norm1(x)).reshape(B, math.prod(size), -1)
    op = window_attention_3d if len(size) == 3 else window_attention
    y = op(qkv, *size, attn.num_heads, window, shift,
           rel_bias=_relative_position_bias(attn, math.prod(window)), qkv_bias=attn.qkv.bias,
           scale=attn.scale, attn_dropout=attn.attn_drop.p, training=attn.training)
    return attn.proj_drop(attn.proj(y)).view(B, *size, C)
