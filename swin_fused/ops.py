"""`window_attention`: the fused op as a PyTorch custom op with a Triton forward and backward.
In eager mode plain tensors reach the same kernels through an autograd.Function, which costs less
host time per call (`_direct`).

Dispatch: CUDA tensors run the compiled Triton kernels; CPU tensors run the same kernels in Triton's
interpreter when TRITON_INTERPRET=1 (bfloat16 in float32 there), otherwise the eager PyTorch path.
`not_supported_reasons` is the one check of what the kernels serve, for the op, the model families
and `patch`; input it rejects runs the eager path with its reasons warned once. With
SWIN_FUSED_STRICT=1 every fallback raises FallbackError instead.
Two kernel generations: `kernel="v1" | "v2"`, or None for the SWIN_FUSED_KERNEL environment
variable, else chosen by shape (resolve_kernel); v1 serves 2-D windows only, and 3-D input given to
it falls back with that reason.
"""
import contextlib
import functools
import math
import os
import warnings
from typing import Optional

import torch

from swin_fused.eager import (
    MASK_VALUE,
    _pair,
    _triple,
    window_attention_eager,
    window_attention_eager_3d,
    windows_per_axis,
)

KERNELS = ("v1", "v2")  # the kernel generations; v1 goes once a GPU shows v2 at least as fast
# the default by shape: an H200 (benchmarks/results/2026-11-28-h200) ran v2 faster from 1152
# windows a batch up (Swin-T stages 1-2, CIFAR stage 1) and v1 at 512 and fewer
V2_FROM_WINDOWS = 1024
DOUBLE_BACKWARD = ("swin_fused: window_attention has no double backward (its backward is a Triton "
                   "kernel without a derivative); use swin_fused.eager.window_attention_eager")


class FallbackError(RuntimeError):
    """Raised in strict mode (SWIN_FUSED_STRICT=1) where the op would fall back to eager PyTorch."""


def strict_mode():
    return os.environ.get("SWIN_FUSED_STRICT", "0") not in ("", "0")


_warned = set()
_quiet = []


@contextlib.contextmanager
def fallbacks_quiet():
    """Fallbacks inside the block neither warn nor raise: patch's check runs the fused path on a
    device that may not run the kernels yet (a model patched on the CPU, then moved)."""
    _quiet.append(True)
    try:
        yield
    finally:
        _quiet.pop()


# torch.compile runs this while tracing, not in the graph: dynamo cannot trace warnings.warn
@torch.compiler.assume_constant_result
def fallback(reason):
    """Announce a fallback to eager PyTorch: once per reason, or as an error in strict mode."""
    if _quiet:
        return
    if strict_mode():
        raise FallbackError(f"swin_fused: {reason} (SWIN_FUSED_STRICT is set)")
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"swin_fused: {reason}; running eager PyTorch", stacklevel=3)


def not_supported_reasons(window_size, shift_size, head_dim, *, dtype=None, device=None,
                          attn_dropout=0.0, training=False, kernel=None):
    """Every reason the Triton kernels cannot serve this input; empty when they can.

    window_size, shift_size: int, (height, width), or (time, height, width) for 3-D windows.
    The op passes all of it; a model family passes its layer's configuration when patching, before
    dtype and device are known (None skips those checks). kernel: as for window_attention. The
    limits of shape and dtype are each generation's own (its LIMITS, beside its kernels).
    """
    window, shift = _pair(window_size), _pair(shift_size)
    kernel = resolve_kernel(kernel)
    limits = _limits(kernel)
    reasons = []
    if len(window) not in limits.window_dims:
        others = [k for k in KERNELS if len(window) in _limits(k).window_dims]
        reasons.append(f"kernel {kernel} serves {_dims(limits.window_dims)} windows only"
                       + (f"; {', '.join(others)} serves {len(window)}-D" if others else ""))
    if problem := shift_problem(window, shift):
        reasons.append(problem)
    if math.prod(window) > limits.max_window_tokens:
        reasons.append(f"window {'x'.join(map(str, window))} has more than "
                       f"{limits.max_window_tokens} tokens")
    if head_dim > limits.max_head_dim:
        reasons.append(f"head dim {head_dim} is over {limits.max_head_dim}")
    if dtype is not None and dtype not in limits.dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in limits.dtypes)
        reasons.append(f"dtype {dtype} is not one of {names}")
    if device is not None and device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            reasons.append("CPU tensors run the Triton kernels only with TRITON_INTERPRET=1")
        elif problem := _interpreter_problem_here():
            reasons.append(problem)
    if device is not None and device.type not in ("cpu", "cuda"):
        reasons.append(f"device {device.type} has no Triton backend here")
    if attn_dropout > 0 and training:
        reasons.append("attention dropout p > 0 in training is not fused")
    return reasons


# a constant to torch.compile, which would trace the import of the kernels
@torch.compiler.assume_constant_result
def _limits(kernel):
    """What a kernel generation serves (its LIMITS)."""
    return _kernels(kernel).LIMITS


def _dims(window_dims):
    return " and ".join(f"{d}-D" for d in window_dims)


def interpreter_problem(triton_version, numpy_version):
    """Why Triton's interpreter cannot run the kernels with these versions, or None."""
    def release(version):
        return tuple(int(part) for part in version.split("+")[0].split(".")[:2])
    if release(triton_version) < (3, 7) and release(numpy_version) >= (2, 4):
        # its range() over a runtime bound calls int() on a one-element array
        return (f"Triton {triton_version}'s interpreter fails with NumPy {numpy_version} (NumPy "
                "2.4 refuses int() of a one-element array): install numpy<2.4 or triton>=3.7")
    return None


# a constant to torch.compile, which cannot trace importlib.metadata
@torch.compiler.assume_constant_result
def _interpreter_problem_here():
    """interpreter_problem for the installed Triton and NumPy, read once."""
    return _installed_interpreter_problem()


@functools.lru_cache(maxsize=1)
def _installed_interpreter_problem():
    import importlib.metadata

    import numpy
    return interpreter_problem(importlib.metadata.version("triton"), numpy.__version__)


def shift_problem(window, shift):
    """Why a shift cannot be served, or None: each axis's shift must lie in [0, window)."""
    axes = ("time", "height", "width")[-len(window):]
    for axis, w, s in zip(axes, window, shift, strict=True):
        if not 0 <= s < w:
            return f"shift {s} along the {axis} must lie in [0, window {w})"
    return None


def resolve_kernel(kernel, n_windows=None, is_3d=False):
    """The kernel generation to run: `kernel`, or SWIN_FUSED_KERNEL read now, or by shape: v2 for
    3-D windows and from V2_FROM_WINDOWS windows a batch up (or n_windows unknown), v1 below."""
    kernel = kernel or os.environ.get("SWIN_FUSED_KERNEL", "") or None
    if kernel is None:
        few = n_windows is not None and n_windows < V2_FROM_WINDOWS
        return "v1" if few and not is_3d else "v2"
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)} (or None: SWIN_FUSED_KERNEL, "
                         f"else by shape), got {kernel!r}")
    return kernel


def _check_arguments(qkv, size, num_heads, window, shift, rel_bias, qkv_bias, logit_scale,
                     scale, mask_value):
    """size, window, shift: (T, H, W) triples; a 2-D call has T = 1, window_t = 1, shift_t = 0."""
    layout = "T*H*W" if len(size) == 3 else "H*W"
    if qkv.dim() != 3:
        raise ValueError(f"qkv must be (B, {layout}, 3*heads*head_dim), "
                         f"got shape {tuple(qkv.shape)}")
    B, L, C3 = qkv.shape
    if L != math.prod(size):
        raise ValueError(f"qkv has {L} tokens but {layout} = {'*'.join(map(str, size))} = "
                         f"{math.prod(size)}")
    if num_heads < 1 or C3 % (3 * num_heads) != 0:
        raise ValueError(f"qkv width {C3} is not divisible by 3 * num_heads = {3 * num_heads}")
    axes = ("time", "height", "width")[-len(window):]
    for axis, w in zip(axes, window, strict=True):
        if w < 1:
            raise ValueError(f"window {axis} must be >= 1, got {w}")
    if problem := shift_problem(window, shift):
        raise ValueError(problem)
    n = math.prod(window)
    if rel_bias is not None and tuple(rel_bias.shape) != (num_heads, n, n):
        raise ValueError(f"rel_bias must be (heads, N, N) = ({num_heads}, {n}, {n}), "
                         f"got {tuple(rel_bias.shape)}")
    if qkv_bias is not None and tuple(qkv_bias.shape) != (C3,):
        raise ValueError(f"qkv_bias must be ({C3},), got {tuple(qkv_bias.shape)}")
    if logit_scale is not None and logit_scale.numel() != num_heads:
        raise ValueError(f"logit_scale must have one value per head ({num_heads}), "
                         f"got {tuple(logit_scale.shape)}")
    for name, t in (("rel_bias", rel_bias), ("qkv_bias", qkv_bias), ("logit_scale", logit_scale)):
        if t is not None and t.device != qkv.device:
            raise ValueError(f"{name} is on {t.device} but qkv is on {qkv.device}")
    if isinstance(scale, torch.Tensor) and (scale.requires_grad or scale.numel() != 1):
        raise ValueError("scale must be a number (a one-element tensor without grad): the op does "
                         "not differentiate it; a learned per-head scale is logit_scale")
    if not isinstance(mask_value, (int, float)) or not math.isfinite(mask_value):
        # -inf would turn the online softmax's first all-masked key block into NaN
        raise ValueError(f"mask_value must be a finite number, got {mask_value!r}")


def window_attention(qkv, H, W, num_heads, window_size, shift_size=0, *, rel_bias=None,
                     qkv_bias=None, scale=None, logit_scale=None, roll_before_pad=False,
                     attn_dropout=0.0, training=False, mask_value=MASK_VALUE, kernel=None):
    """Shifted-window attention from the qkv Linear's output to the proj Linear's input.

    qkv:        (B, H*W, 3*heads*head_dim), the qkv Linear applied to the unpadded tokens, any
                strides.
    window_size, shift_size: int or (height, width); each shift in [0, window).
    rel_bias:   (heads, N, N) added to the scores (relative position bias), or None.
    qkv_bias:   (3*heads*head_dim,) the qkv Linear's bias: the q, k, v of a padded token. None = 0.
    scale:      multiplies q.k (default head_dim ** -0.5), a constant; unused with logit_scale.
    logit_scale: (heads,) cosine attention (Swin V2): normalize(q).normalize(k) * logit_scale[h].
    roll_before_pad: False pads then rolls (article, torchvision); True rolls then pads (timm).
    attn_dropout, training: dropout on the attention probabilities (runs the eager path).
    mask_value: added to the scores between shift regions: -100 (every family but Hugging Face's
                Swinv2, which adds its mask twice: -200).
    kernel:     "v1" or "v2"; None reads SWIN_FUSED_KERNEL, else picks by shape: v2 for 3-D
                windows and batches of 1024 windows or more, v1 below (resolve_kernel).
    Returns (B, H*W, heads*head_dim) in the natural token layout. Every tensor may have any
    strides; B may be 0. Differentiable once: a second backward raises (DOUBLE_BACKWARD).
    """
    window, shift = _pair(window_size), _pair(shift_size)
    _check_arguments(qkv, (H, W), num_heads, window, shift, rel_bias, qkv_bias, logit_scale,
                     scale, mask_value)
    return _window_attention(qkv, (1, H, W), num_heads, (1, *window), (0, *shift), rel_bias,
                             qkv_bias, scale, logit_scale, roll_before_pad, attn_dropout, training,
                             mask_value, kernel)


def window_attention_3d(qkv, T, H, W, num_heads, window_size, shift_size=0, *, rel_bias=None,
                        qkv_bias=None, scale=None, logit_scale=None, roll_before_pad=False,
                        attn_dropout=0.0, training=False, mask_value=MASK_VALUE, kernel=None):
    """window_attention over a (T, H, W) map (video Swin, MONAI 3-D): qkv (B, T*H*W, 3C), window
    and shift an int or (t, h, w), rel_bias (heads, N, N) with N = t*h*w. Padding and cyclic shift
    on all three axes, 27 shift-mask regions. Returns (B, T*H*W, C). Kernel v1 serves 2-D only."""
    window, shift = _triple(window_size), _triple(shift_size)
    _check_arguments(qkv, (T, H, W), num_heads, window, shift, rel_bias, qkv_bias,
                     logit_scale, scale, mask_value)
    return _window_attention(qkv, (T, H, W), num_heads, window, shift, rel_bias, qkv_bias, scale,
                             logit_scale, roll_before_pad, attn_dropout, training, mask_value,
                             kernel)


def _window_attention(qkv, size, num_heads, window, shift, rel_bias, qkv_bias, scale, logit_scale,
                      roll_before_pad, attn_dropout, training, mask_value, kernel):
    """Both entry points, on (T, H, W) triples: the kernels, or the eager path with its reasons."""
    size = tuple(int(s) for s in size)  # torch.jit.trace gives sizes as tensors: fixed in a trace
    two_d = size[0] == 1 and window[0] == 1
    n_windows = qkv.shape[0] * math.prod(windows_per_axis(size, window))
    kernel = resolve_kernel(kernel, n_windows, is_3d=not two_d)
    head_dim = qkv.shape[-1] // (3 * num_heads)
    scale = head_dim ** -0.5 if scale is None else float(scale)
    reasons = not_supported_reasons(window[1:] if two_d else window, shift[1:] if two_d else shift,
                                    head_dim, dtype=qkv.dtype, device=qkv.device,
                                    attn_dropout=attn_dropout, training=training, kernel=kernel)
    if reasons:
        fallback("; ".join(reasons))
        kwargs = dict(rel_bias=rel_bias, qkv_bias=qkv_bias, scale=scale, logit_scale=logit_scale,
                      roll_before_pad=roll_before_pad, attn_dropout=attn_dropout,
                      training=training, mask_value=mask_value)
        if two_d:
            return window_attention_eager(qkv, *size[1:], num_heads, window[1:], shift[1:],
                                          **kwargs)
        return window_attention_eager_3d(qkv, *size, num_heads, window, shift, **kwargs)
    # the kernels index these small tensors as contiguous: an expanded one is read past its end
    rel_bias = rel_bias.contiguous() if rel_bias is not None else None
    qkv_bias = qkv_bias.contiguous() if qkv_bias is not None else None
    logit_scale = logit_scale.reshape(-1).contiguous() if logit_scale is not None else None
    dtype = qkv.dtype
    if dtype == torch.bfloat16 and qkv.device.type == "cpu":
        # Triton's interpreter computes bfloat16 tl.dot wrongly: it runs the kernels in float32
        qkv = qkv.float()
    args = (qkv, rel_bias, qkv_bias, logit_scale, list(size), num_heads, list(window), list(shift),
            scale, float(mask_value), roll_before_pad, kernel)
    fwd = _WindowAttention.apply if _direct(qkv, rel_bias, qkv_bias, logit_scale) else _fwd
    out, _ = fwd(*args)
    return out if out.dtype == dtype else out.to(dtype)


def _direct(*tensors):
    """Plain tensors outside torch.compile, torch.jit.trace, dispatch modes and torch.func
    transforms: call the kernels directly. A custom op's dispatch costs more host time than the
    kernels take at Swin's smaller stages; compilation, tracing, fake and other tensor subclasses,
    dispatch modes and transforms see the custom ops."""
    return (not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._are_functorch_transforms_active()
            and all(t is None or type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors))


@functools.cache
def _kernels(kernel):
    # Triton is imported on first use, so `import swin_fused` works without it being usable
    from swin_fused.kernels import v1, v2
    return {"v1": v1, "v2": v2}[kernel]


def _geometry(size, window, shift, roll_before_pad):
    return _geometry_of(tuple(size), tuple(window), tuple(shift), roll_before_pad)


@functools.lru_cache(maxsize=256)
def _geometry_of(size, window, shift, roll_before_pad):
    # one Geometry per configuration, so its derived sizes are computed once
    from swin_fused.kernels.common import Geometry
    return Geometry.of(size, window, shift, roll_before_pad)


def _fwd_kernels(qkv: torch.Tensor, rel_bias: Optional[torch.Tensor],
                 qkv_bias: Optional[torch.Tensor], logit_scale: Optional[torch.Tensor],
                 size: list[int], num_heads: int, window: list[int], shift: list[int], scale: float,
                 mask_value: float, roll_before_pad: bool, kernel: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels(kernel).window_attention_fwd(
        qkv, rel_bias, qkv_bias, logit_scale, _geometry(size, window, shift, roll_before_pad),
        num_heads, scale, mask_value)


_fwd = torch.library.custom_op("swin_fused::window_attention_fwd", _fwd_kernels, mutates_args=())


@_fwd.register_fake
def _(qkv, rel_bias, qkv_bias, logit_scale, size, num_heads, window, shift, scale, mask_value,
      roll_before_pad, kernel):
    B, L, C3 = qkv.shape
    geometry = _geometry(size, window, shift, roll_before_pad)
    saved = qkv.new_empty(_kernels(kernel).saved_shape(geometry, B, num_heads),
                          dtype=torch.float32)
    return qkv.new_empty(B, L, C3 // 3), saved


def _bwd_launch(dout, qkv, out, saved, rel_bias, qkv_bias, logit_scale, size, num_heads, window,
                shift, scale, mask_value, roll_before_pad, kernel):
    """dqkv and the gradients of rel_bias, qkv_bias and logit_scale, each in its parameter's
    dtype and shape, None where the parameter is None."""
    return _kernels(kernel).window_attention_bwd(
        dout, qkv, out, saved, rel_bias, qkv_bias, logit_scale,
        _geometry(size, window, shift, roll_before_pad), num_heads, scale, mask_value)


def _bwd_kernels(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, saved: torch.Tensor,
                 rel_bias: Optional[torch.Tensor], qkv_bias: Optional[torch.Tensor],
                 logit_scale: Optional[torch.Tensor], size: list[int], num_heads: int,
                 window: list[int], shift: list[int], scale: float, mask_value: float,
                 roll_before_pad: bool, kernel: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """_bwd_launch for the custom op, which returns no None: an empty gradient for each absent
    parameter."""
    dqkv, *grads = _bwd_launch(dout, qkv, out, saved, rel_bias, qkv_bias, logit_scale, size,
                               num_heads, window, shift, scale, mask_value, roll_before_pad,
                               kernel)
    return dqkv, *(qkv.new_empty(0) if grad is None else grad for grad in grads)


_bwd = torch.library.custom_op("swin_fused::window_attention_bwd", _bwd_kernels, mutates_args=())


@_bwd.register_fake
def _(dout, qkv, out, saved, rel_bias, qkv_bias, logit_scale, size, num_heads, window, shift, scale,
      mask_value, roll_before_pad, kernel):
    grads = (qkv.new_empty(0) if p is None else torch.empty_like(p)
             for p in (rel_bias, qkv_bias, logit_scale))
    return torch.empty_like(qkv), *grads


def _setup_context(ctx, inputs, output):
    qkv, rel_bias, qkv_bias, logit_scale, *ctx.config = inputs
    out, saved = output
    ctx.save_for_backward(qkv, out, saved, rel_bias, qkv_bias, logit_scale)
    ctx.mark_non_differentiable(saved)
    ctx.set_materialize_grads(False)  # saved's gradient would be a zeros op per call


def _backward(ctx, dout, _dsaved):
    qkv, out, saved, rel_bias, qkv_bias, logit_scale = ctx.saved_tensors
    # create_graph=True: the custom op, whose own backward says there is no double backward
    bwd = _bwd if torch.is_grad_enabled() or not _direct(dout) else _bwd_launch
    dqkv, *grads = bwd(dout.contiguous(), qkv, out, saved, rel_bias, qkv_bias, logit_scale,
                       *ctx.config)
    parameters = (rel_bias, qkv_bias, logit_scale)
    return (dqkv, *(None if p is None else grad for grad, p in zip(grads, parameters, strict=True)),
            *(None,) * len(ctx.config))


_fwd.register_autograd(_backward, setup_context=_setup_context)


class _WindowAttention(torch.autograd.Function):
    """The custom op's forward and backward without its dispatch (see _direct)."""

    @staticmethod
    def forward(ctx, *inputs):  # setup_context in forward: a separate one costs a signature bind
        output = _fwd_kernels(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, dout, dsaved):
        return _backward(ctx, dout, dsaved)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(DOUBLE_BACKWARD)


_bwd.register_autograd(_no_double_backward)
