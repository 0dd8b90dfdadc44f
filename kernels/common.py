"""What both kernel generations share: the launch counter, the geometry of the windows, and the
jit helpers of cosine attention.

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

import torch
import triton
import triton.language as tl

from swin_fused.eager import padded_size, windows_per_axis

# launches per op call ("fwd", "bwd"), so tests can prove the fused path really ran
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
