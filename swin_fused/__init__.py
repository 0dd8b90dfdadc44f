"""swin-fused: fused Triton shifted-window attention for Swin Transformers.

    import swin_fused
    swin_fused.patch(model)            # a Swin of any supported family (README), in place
    y = swin_fused.window_attention(qkv, H, W, num_heads, window_size, shift_size, ...)
    y = swin_fused.window_attention_3d(qkv, T, H, W, num_heads, window_size, shift_size, ...)

Importing works without a GPU; Triton is imported only when a kernel first runs.
"""
from swin_fused.ops import (
    FallbackError,
    not_supported_reasons,
    window_attention,
    window_attention_3d,
)
from swin_fused.patching import patch, unpatch

__all__ = ["window_attention", "window_attention_3d", "not_supported_reasons", "patch",
           "unpatch", "FallbackError"]
__version__ = "0.1.0"
