"""What both kernel generations share: the launch counter, the geometry of the windows, the form
of their limits, the jit helpers of cosine attention, and the sum of the backward's per-program
gradient partials.

The padded, rolled, partitioned map ("the frame") exists only as index arithmetic: frame position
f of window token t reads source token ((f + shift) % period) of the unpadded map, per axis, or a
padded token whose q, k, v equal the qkv Linear's bias. With pad-then-roll (article, torchvision)
the period is the padded size; with roll-then-pad (timm) it is the map size and frame positions
past it are padding.
"""
import collections
import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from swin_fused.eager import padded_size, windows_per_axis

# launcher calls ("fwd", "bwd"), so tests can prove the fused path really ran
LAUNCHES = collections.Counter()


@dataclass(frozen=True)
class Geometry:
    """Windows over a (T, H, W) map: sizes, window and shift per axis, and the roll order.
    A 2-D map is T = 1 with window_t = 1 and shift_t = 0."""
    size: tuple
    window: tuple
    shift: tuple
    roll_before_pad: bool

    @classmethod
    def of(cls, size, window, shift, roll_before_pad):
        return cls(tuple(int(s) for s in size), tuple(int(w) for w in window),
                   tuple(int(s) for s in shift), bool(roll_before_pad))

    @functools.cached_property
    def tokens(self):
        """N, the tokens of one window."""
        return math.prod(self.window)

    @functools.cached_property
    def padded(self):
        return padded_size(self.size, self.window)

    @functools.cached_property
    def windows_per_axis(self):
        return windows_per_axis(self.size, self.window)

    @functools.cached_property
    def windows_per_image(self):
        return math.prod(self.windows_per_axis)

    @functools.cached_property
    def is_3d(self):
        return self.size[0] > 1 or self.window[0] > 1

    def n_windows(self, batch):
        return batch * self.windows_per_image

    def kernel_args(self):
        """The runtime ints the kernels take, by name (GEOMETRY_ARGS)."""
        (t, h, w), (tp, hp, wp) = self.size, self.padded
        period = self.size if self.roll_before_pad else self.padded
        return dict(T=t, H=h, W=w, Tp=tp, Hp=hp, Wp=wp, period_t=period[0], period_h=period[1],
                    period_w=period[2], shift_t=self.shift[0], shift_h=self.shift[1],
                    shift_w=self.shift[2], n_win_h=self.windows_per_axis[1],
                    n_win_w=self.windows_per_axis[2], n_win_img=self.windows_per_image)

    def constexprs(self):
        """The window, a compile-time constant: WT == 1 specialises the time axis away."""
        return dict(WT=self.window[0], WH=self.window[1], WW=self.window[2])


@dataclass(frozen=True)
class Limits:
    """What a kernel generation serves, stated beside its kernels (each module's LIMITS) and read
    by swin_fused.ops.not_supported_reasons."""
    window_dims: tuple       # 2: (height, width) windows; 3: (time, height, width)
    max_window_tokens: int
    max_head_dim: int
    dtypes: tuple


# never specialised, so a new map size or shift reuses the compiled kernel
GEOMETRY_ARGS = ["T", "H", "W", "Tp", "Hp", "Wp", "period_t", "period_h", "period_w", "shift_t",
                 "shift_h", "shift_w", "n_win_h", "n_win_w", "n_win_img"]


def next_block(n, least=16):
    """A power of two >= n and >= least (tl.dot needs 16)."""
    return max(least, triton.next_power_of_2(n))


def optional_pointer(t, like):
    """A null pointer stand-in for an absent tensor; the kernel never reads it."""
    return t if t is not None else like


def programs_wanted(device, programs_per_sm):
    """Programs for a persistent grid: per SM on a GPU; few in the interpreter, where each program
    is a Python loop."""
    if device.type != "cuda":
        return 4
    return programs_per_sm * torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def normalize_rows(x):
    """F.normalize along rows in fp32, eps 1e-12 (a zero key stays zero): (y, max(|x|, eps))."""
    xf = x.to(tl.float32)
    norm = tl.maximum(tl.sqrt(tl.sum(xf * xf, axis=1)), 1e-12)
    return (xf / norm[:, None]).to(x.dtype), norm


@triton.jit
def normalize_rows_bwd(dy, y, norm):
    """Gradient through y = x / max(|x|, eps): the tangential part over |x|, or dy / eps."""
    yf = y.to(tl.float32)
    radial = tl.where(norm > 1e-12, tl.sum(dy * yf, axis=1), 0.0)
    return (dy - yf * radial[:, None]) / norm[:, None]


@dataclass(frozen=True)
class Partials:
    """The backward kernels' fp32 partials of the parameter gradients, one per program, laid out
    (groups, heads, blocks, ...) by window group, head and key block: the relative position bias's
    (groups, heads, padded, padded) (blocks together), the qkv bias's from padded keys and values
    (groups, heads, blocks, 2, BLOCK_D) and the logit scale's (groups, heads, blocks). Only those of
    the parameters a layer has exist; the kernels write every element of them."""
    dbias: Optional[torch.Tensor]
    dpad: Optional[torch.Tensor]
    dscale: Optional[torch.Tensor]
    groups: int
    blocks: int

    @classmethod
    def empty(cls, groups, n_heads, blocks, padded, block_d, rel_bias, qkv_bias, logit_scale,
              device):
        def partial(parameter, *shape):
            if parameter is None:
                return None
            return torch.empty(groups, n_heads, *shape, dtype=torch.float32, device=device)
        return cls(partial(rel_bias, padded, padded), partial(qkv_bias, blocks, 2, block_d),
                   partial(logit_scale, blocks), groups, blocks)

    def pointers(self, absent):
        """The three partials for a kernel's arguments, `absent` standing in for a missing one."""
        return tuple(absent if t is None else t for t in (self.dbias, self.dpad, self.dscale))

    def sum(self, rel_bias, qkv_bias, logit_scale, n_heads, head_dim):
        """(drel_bias, dqkv_bias, dlogit_scale), each in its parameter's dtype, None where the
        layer lacks the parameter: one launch of sum_partials, none without parameters."""
        grads = [None if p is None else torch.empty_like(p, memory_format=torch.contiguous_format)
                 for p in (rel_bias, qkv_bias, logit_scale)]
        if not any(g is not None for g in grads):
            return tuple(grads)
        absent = next(g for g in grads if g is not None)
        tokens = rel_bias.shape[-1] if rel_bias is not None else 1
        padded = self.dbias.shape[-1] if self.dbias is not None else 1
        block_d = self.dpad.shape[-1] if self.dpad is not None else 16
        constexprs = sum_constexprs(tokens, padded, self.blocks, block_d, absent.device)
        sum_partials[(n_heads, triton.cdiv(tokens * tokens, constexprs["CHUNK"]))](
            *self.pointers(absent), *(absent if g is None else g for g in grads), self.groups,
            n_heads, head_dim, **constexprs, HAS_BIAS=rel_bias is not None,
            HAS_QKV_BIAS=qkv_bias is not None, COSINE=logit_scale is not None, **SMALL_LAUNCH)
        return tuple(grads)


# the launch options of the small kernels (the partial sum, v2's bias and mask table)
SMALL_LAUNCH = dict(num_warps=4, num_stages=2)


def sum_constexprs(tokens, padded, blocks, block_d, device):
    """sum_partials' constexprs: the window's tokens, the partials' padded side, key blocks per
    window, head-dim block, and the bias gradient's elements a program sums (CHUNK) in steps of
    BLOCK_G window groups: 128 on a GPU; the whole head in the interpreter, where each program is
    a Python loop."""
    chunk = 128 if device.type == "cuda" else triton.next_power_of_2(tokens * tokens)
    return dict(N=tokens, NP=padded, BLOCKS=blocks, BLOCK_D=block_d, CHUNK=chunk,
                BLOCK_G=max(1, 4096 // chunk))


@triton.jit
def sum_partials(
    DBIAS, DPAD, DSCALE, DREL_BIAS, DQKV_BIAS, DLOGIT_SCALE, groups, n_heads, head_dim,
    N: tl.constexpr, NP: tl.constexpr, BLOCKS: tl.constexpr, BLOCK_D: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_G: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_QKV_BIAS: tl.constexpr, COSINE: tl.constexpr,
):
    """Program (head, chunk): CHUNK elements of the head's (N, N) bias gradient, row-major, summed
    over window groups; the head's qkv-bias and logit-scale gradients in its chunk-0 program. A
    padded token's query is never an output, so the q part of the qkv-bias gradient is zero."""
    head = tl.program_id(0)
    chunk = tl.program_id(1)
    BLOCK_P: tl.constexpr = 4096 // BLOCK_D
    if HAS_BIAS:
        elements = chunk * CHUNK + tl.arange(0, CHUNK)
        offs = elements // N * NP + elements % N  # in a partial's padded (NP, NP) tile
        offs_g = tl.arange(0, BLOCK_G)
        total = tl.zeros([CHUNK], tl.float32)
        for start in range(0, groups, BLOCK_G):
            g = start + offs_g
            tiles = (g.to(tl.int64) * n_heads + head) * NP * NP
            total += tl.sum(tl.load(DBIAS + tiles[:, None] + offs[None, :],
                                    mask=(g < groups)[:, None] & (elements < N * N)[None, :],
                                    other=0.0), axis=0)
        tl.store(DREL_BIAS + head * N * N + elements, total.to(DREL_BIAS.dtype.element_ty),
                 mask=elements < N * N)
    if chunk == 0:
        parts = groups * BLOCKS
        offs_p = tl.arange(0, BLOCK_P)
        if HAS_QKV_BIAS:
            offs_d = tl.arange(0, BLOCK_D)
            dk = tl.zeros([BLOCK_D], tl.float32)
            dv = tl.zeros([BLOCK_D], tl.float32)
            for start in range(0, parts, BLOCK_P):
                i = start + offs_p
                part = (i // BLOCKS * n_heads + head) * BLOCKS + i % BLOCKS
                pad = DPAD + (part.to(tl.int64) * 2 * BLOCK_D)[:, None] + offs_d[None, :]
                dk += tl.sum(tl.load(pad, mask=(i < parts)[:, None], other=0.0), axis=0)
                dv += tl.sum(tl.load(pad + BLOCK_D, mask=(i < parts)[:, None], other=0.0), axis=0)
            dmask = offs_d < head_dim
            out = DQKV_BIAS + head * head_dim + offs_d
            dtype = DQKV_BIAS.dtype.element_ty
            C = n_heads * head_dim
            tl.store(out, tl.zeros([BLOCK_D], dtype), mask=dmask)
            tl.store(out + C, dk.to(dtype), mask=dmask)
            tl.store(out + 2 * C, dv.to(dtype), mask=dmask)
        if COSINE:
            dscale = tl.zeros([BLOCK_P], tl.float32)
            for start in range(0, parts, BLOCK_P):
                i = start + offs_p
                part = (i // BLOCKS * n_heads + head) * BLOCKS + i % BLOCKS
                dscale += tl.load(DSCALE + part, mask=i < parts, other=0.0)
            tl.store(DLOGIT_SCALE + head, tl.sum(dscale, axis=0).to(DLOGIT_SCALE.dtype.element_ty))
