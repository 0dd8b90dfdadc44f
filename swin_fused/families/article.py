"""The seed article's model (swin_fused.reference): fuse SwinTransformerBlock's attention path.

The fused block runs norm1 -> qkv -> window_attention -> proj on the natural token layout; the
pad, roll, partition, mask, reverse and crop of the eager block are gone, and so are its calls of
`attn` (WindowAttention.forward), `attn.softmax` and `attn.attn_dropout`, and its use of
BasicLayer's mask tensor.
"""
import contextlib

from swin_fused import reference
from swin_fused.eager import MASK_VALUE, window_labels
from swin_fused.families import (
    first_parameter,
    hooked,
    hooks_reason,
    missing_attributes,
    sample_tensor,
    signature_reason,
)
from swin_fused.ops import fallback, not_supported_reasons, window_attention

METHOD = "forward"
LIBRARY = "swin_fused.reference"
REPLACED = ("forward",)
READS = ("dim", "n_heads", "window_size", "shift_size", "norm1", "norm2", "mlp", "dropout",
         "attn.qkv", "attn.n_heads", "attn.relative_position_bias", "attn.scale",
         "attn.attn_dropout.p", "attn.proj", "attn.proj_dropout", "attn.softmax")


def classes():
    return (reference.SwinTransformerBlock,)


def unsupported(block):
    return not_supported_reasons(block.window_size, block.shift_size, block.dim // block.n_heads)


def unrecognised(block):
    return (missing_attributes(block, READS)
            + signature_reason(reference.SwinTransformerBlock, METHOD, ("x", "attn_mask")))


@contextlib.contextmanager
def sample(block):
    """A (1, h*w, dim) input one window past the window on each side, with BasicLayer's mask and
    map size (h, w), which BasicLayer sets on its blocks before each call."""
    side = block.window_size + 1
    like = first_parameter(block)
    mask = None
    if block.shift_size > 0:
        padded = (2 * block.window_size,) * 2
        labels = window_labels(padded, (block.window_size,) * 2, (block.shift_size,) * 2,
                               like.device)
        mask = (labels[:, :, None] != labels[:, None, :]).to(like.dtype) * MASK_VALUE
    saved = {name: vars(block)[name] for name in ("h", "w") if name in vars(block)}
    block.h = block.w = side
    try:
        yield sample_tensor(1, side * side, block.dim, like=like), mask
    finally:
        del block.h, block.w
        vars(block).update(saved)


def skipped(block):
    attn = block.attn
    return {"attn": attn, "attn.softmax": attn.softmax, "attn.attn_dropout": attn.attn_dropout}


def fused(self, x, attn_mask=None):
    hooks = hooked(skipped(self))
    if hooks:
        fallback(hooks_reason(self, hooks))
        return self.unfused_class.forward(self, x, attn_mask)
    attn = self.attn
    shortcut = x
    qkv = attn.qkv(self.norm1(x))
    y = window_attention(
        qkv, self.h, self.w, attn.n_heads, self.window_size, self.shift_size,
        rel_bias=attn.relative_position_bias(), qkv_bias=attn.qkv.bias, scale=attn.scale,
        attn_dropout=attn.attn_dropout.p, training=self.training)
    x = shortcut + self.dropout(attn.proj_dropout(attn.proj(y)))
    return x + self.dropout(self.mlp(self.norm2(x)))
