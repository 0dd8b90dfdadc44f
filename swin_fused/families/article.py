"""The seed article's model (swin_fused.reference): fuse SwinTransformerBlock's attention path.

The fused block runs norm1 -> qkv -> window_attention -> proj on the natural token layout; the
pad, roll, partition, mask, reverse and crop of the eager block are gone, and so are its calls of
`attn` (WindowAttention.forward), `attn.softmax` and `attn.attn_dropout`, and its use of
BasicLayer's mask tensor.
"""
from swin_fused import reference
from swin_fused.families import hooked, hooks_reason
from swin_fused.ops import fallback, not_supported_reasons, window_attention

METHOD = "forward"


def classes():
    return (reference.SwinTransformerBlock,)


def unsupported(block):
    return not_supported_reasons(block.window_size, block.shift_size, block.dim // block.n_heads)


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
