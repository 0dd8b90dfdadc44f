"""The seed article's model (swin_fused.reference): fuse SwinTransformerBlock's attention path.

The fused block runs norm1 -> qkv -> window_attention -> proj on the natural token layout; the
pad, roll, partition, mask, reverse and crop of the eager block are gone, and so is its use of
BasicLayer's mask tensor.
"""
from swin_fused import reference
from swin_fused.ops import layer_unsupported, window_attention

METHOD = "forward"


def targets(model):
    return [m for m in model.modules() if isinstance(m, reference.SwinTransformerBlock)]


def unsupported(block):
    return layer_unsupported(block.window_size, block.shift_size, block.dim // block.n_heads)


def fused(self, x, attn_mask=None):
    attn = self.attn
    shortcut = x
    qkv = attn.qkv(self.norm1(x))
    y = window_attention(
        qkv, self.h, self.w, attn.n_heads, self.window_size, self.shift_size,
        rel_bias=attn.relative_position_bias(), qkv_bias=attn.qkv.bias, scale=attn.scale,
        attn_dropout=attn.attn_dropout.p, training=self.training)
    x = shortcut + self.dropout(attn.proj_dropout(attn.proj(y)))
    return x + self.dropout(self.mlp(self.norm2(x)))
