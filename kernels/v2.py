"""Kernel generation v2: designed for bandwidth; 2-D and 3-D windows.

One-tile windows (N <= Settings.block: every Swin-T and CIFAR stage): a persistent grid of
(head, window group) programs, head fastest in launch order, so the programs that read one window's
qkv rows run side by side. A window's token rows are computed once for its q, k and v; its bias and
shift mask come as one tile of a small table, bias + mask per window class (interior, last along
an axis that shifts, ...), so no region labels are computed at all. The table is built by one small
kernel per forward (_bias_mask_table) and kept for the backward. The backward is one pass per
window with everything on chip: P is recomputed whole and delta = rowsum(P * dP), so it reads
neither out nor softmax statistics.
Tiled windows (up to 1024 tokens, e.g. 3-D 8x7x7): an online-softmax forward, and a backward split
into a dq kernel (which also computes delta) and a dk/dv kernel.
Softmax by exp2((S - rowmax) * log2(e)): scores stay in natural units, since folding log2(e) into
the scale rounds large cosine logits (scale up to 100) worse than eager (seen on timm V2). The bias,
qkv-bias and logit-scale gradients are summed in fp32 per program (the bias's in a partial only that
program touches, its first window writing instead of adding, so nothing is zeroed first) and the
partials summed by one more kernel (common.sum_partials): deterministic, no atomics.
"""
import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from swin_fused.kernels.common import (
    GEOMETRY_ARGS,
    LAUNCHES,
    SMALL_LAUNCH,
    Limits,
    Partials,
    next_block,
    normalize_rows,
    normalize_rows_bwd,
    optional_pointer,
    programs_wanted,
    sum_constexprs,
    sum_partials,
)

LOG2E = tl.constexpr(1.4426950408889634)
LIMITS = Limits(
    window_dims=(2, 3),
    max_window_tokens=1024,  # the tiled kernels' bias gradient partials grow with N^2
    max_head_dim=128,        # fp32 tiles of 256 overflow shared memory
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
)


@dataclass(frozen=True)
class Settings:
    """Launch settings of the v2 kernels; `Settings.for_shape` derives the defaults."""
    block: int = 64            # tile rows and columns; larger windows run tiled
    fwd_warps: int = 4
    fwd_stages: int = 2
    bwd_warps: int = 4
    bwd_stages: int = 1
    programs_per_sm: int = 4   # persistent programs per SM of the one-tile kernels and dk/dv

    @classmethod
    def for_shape(cls, geometry, head_dim, dtype):
        """From the offline sm_90 compile (benchmarks/compile_check.py): a 64-row tile feeding
        chained dots gets no more registers from 8 warps than from 4, so 4, and 8 only where 4
        would spill (tile rows of 128 bytes and more); the forward's window loop pipelined 2 deep
        (cp.async into shared memory frees registers) while tile rows are at most 128 bytes.
        float32 runs its exact dots on the FMA units, whose operand layouts need far more
        registers: 16 warps, which spill least (none at head dims up to 32 in 7x7 windows)."""
        row_bytes = next_block(head_dim) * dtype.itemsize
        wide = row_bytes >= 128
        if dtype == torch.float32:
            return cls(fwd_warps=16, fwd_stages=1 if row_bytes > 128 else 2, bwd_warps=16)
        return cls(fwd_warps=8 if row_bytes > 128 else 4, fwd_stages=1 if row_bytes > 128 else 2,
                   bwd_warps=8 if wide else 4)


def _one_tile(geometry, settings):
    return geometry.tokens <= settings.block


def saved_shape(geometry, batch, num_heads, settings=None):
    """What the forward keeps for the backward besides out ("saved"), fp32: for one-tile windows
    the bias and mask table (_bias_mask_table), built once per forward and backward pair (the
    backward recomputes each whole softmax row); for tiled windows the softmax row statistics
    (row max, row sum)."""
    settings = settings or Settings()
    if _one_tile(geometry, settings):
        block = min(settings.block, next_block(geometry.tokens))
        return (_classes(geometry), num_heads, block, block)
    return (geometry.n_windows(batch), num_heads, 2, geometry.tokens)


# ---- jit helpers -------------------------------------------------------------------------------

@triton.jit
def _axis(frame, padded, period, size, shift, WINDOW: tl.constexpr):
    """Source position, validity and shift-mask region (slices (0, -w), (-w, -s), (-s, None) of the
    padded axis; one region when s = 0) of frame positions along one axis."""
    source = (frame + shift) % period
    valid = (frame < period) & (source < size)
    region = tl.where(shift > 0, (frame >= padded - WINDOW).to(tl.int32)
                      + (frame >= padded - shift).to(tl.int32), 0)
    return source, valid, region


@triton.jit
def _window_tokens(win, offs, geom, WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr,
                   LABELS: tl.constexpr):
    """Image, source token (within the image), validity and, with LABELS, region label
    (9 t + 3 h + w) of the tokens `offs` (row-major t, h, w) of window `win`; the time axis
    compiles away when WT == 1."""
    T, H, W, Tp, Hp, Wp, period_t, period_h, period_w, shift_t, shift_h, shift_w, \
        n_win_h, n_win_w, n_win_img = geom
    win = tl.cast(win, tl.int32)  # the interpreter iterates Python ints
    image = win // n_win_img
    plane = win % n_win_img
    if WT > 1:
        plane = plane % (n_win_h * n_win_w)
    h, valid_h, label_h = _axis(plane // n_win_w * WH + offs // WW % WH, Hp, period_h, H,
                                shift_h, WH)
    w, valid_w, label_w = _axis(plane % n_win_w * WW + offs % WW, Wp, period_w, W, shift_w, WW)
    token = h * W + w
    valid = (offs < WT * WH * WW) & valid_h & valid_w
    label = 0
    if LABELS:
        label = label_h * 3 + label_w
    if WT > 1:
        t, valid_t, label_t = _axis(win % n_win_img // (n_win_h * n_win_w) * WT + offs // (WH * WW),
                                    Tp, period_t, T, shift_t, WT)
        token += t * (H * W)
        valid = valid & valid_t
        if LABELS:
            label += label_t * 9
    return image.to(tl.int64), token, valid, label


@triton.jit
def _window_class(win, geom, WT: tl.constexpr):
    """Which mask a window's tokens see: bit 2, 1, 0 set where the window is the last along t, h,
    w of an axis that shifts; only there do its tokens fall in two regions of that axis."""
    T, H, W, Tp, Hp, Wp, period_t, period_h, period_w, shift_t, shift_h, shift_w, \
        n_win_h, n_win_w, n_win_img = geom
    win = tl.cast(win, tl.int32)
    plane = win % n_win_img
    if WT > 1:
        plane = plane % (n_win_h * n_win_w)
    last = ((plane // n_win_w == n_win_h - 1) & (shift_h > 0)).to(tl.int32) * 2 \
        + ((plane % n_win_w == n_win_w - 1) & (shift_w > 0)).to(tl.int32)
    if WT > 1:
        last += ((win % n_win_img // (n_win_h * n_win_w) == Tp // WT - 1)
                 & (shift_t > 0)).to(tl.int32) * 4
    return last


@triton.jit
def _fill(QKV_BIAS, offset, offs_d, dmask, BLOCK_D: tl.constexpr, HAS_QKV_BIAS: tl.constexpr):
    """q, k or v of a padded token: the qkv Linear's bias at `offset`, or zero."""
    fill = tl.zeros([BLOCK_D], tl.float32)
    if HAS_QKV_BIAS:
        fill = tl.load(QKV_BIAS + offset + offs_d, mask=dmask, other=0.0)
    return fill


@triton.jit
def _load_head(QKV, rows, valid, col, dmask, fill):
    """One head's q, k or v of a window's tokens (rows: element offsets); padded ones get `fill`."""
    x = tl.load(QKV + rows[:, None] + col[None, :], mask=valid[:, None] & dmask[None, :], other=0.0)
    return tl.where(valid[:, None], x, fill[None, :].to(x.dtype))


@triton.jit
def _head_columns(QKV_BIAS, LOGIT_SCALE, scale, head, n_heads, head_dim, stride_qc,
                  BLOCK_D: tl.constexpr, HAS_QKV_BIAS: tl.constexpr, COSINE: tl.constexpr):
    """One head's view of qkv: head-dim offsets and mask, C (heads * head_dim), its q columns
    (element offsets), a padded token's k and v (_fill) and the head's score scale."""
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs at least 16 head-dim columns")
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < head_dim
    C = n_heads * head_dim
    col = (head * head_dim + offs_d) * stride_qc
    k_fill = _fill(QKV_BIAS, C + head * head_dim, offs_d, dmask, BLOCK_D, HAS_QKV_BIAS)
    v_fill = _fill(QKV_BIAS, 2 * C + head * head_dim, offs_d, dmask, BLOCK_D, HAS_QKV_BIAS)
    s_scale = _head_scale(scale, LOGIT_SCALE, head, COSINE)
    return offs_d, dmask, C, col, k_fill, v_fill, s_scale


@triton.jit
def _load_kv(QKV, rows, valid, col, c_offset, dmask, k_fill, v_fill):
    """One head's k and v of a window's tokens: _load_head c_offset and 2 * c_offset past q."""
    k = _load_head(QKV, rows, valid, col + c_offset, dmask, k_fill)
    v = _load_head(QKV, rows, valid, col + 2 * c_offset, dmask, v_fill)
    return k, v


@triton.jit
def _bias_tile(BIAS, head, offs_m, offs_n, N: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Rows offs_m, columns offs_n of the head's (N, N) bias in fp32, 0 past N; 0 without one."""
    bias = 0.0
    if HAS_BIAS:
        mask = (offs_m < N)[:, None] & (offs_n < N)[None, :]
        bias = tl.load(BIAS + head * N * N + offs_m[:, None] * N + offs_n[None, :], mask=mask,
                       other=0.0).to(tl.float32)
    return bias


@triton.jit
def _table_tile(TABLE, win_class, head, n_heads, offs, BLOCK: tl.constexpr):
    """The window class's (bias + mask) tile of the head, -inf past N keys."""
    return tl.load(TABLE + ((win_class * n_heads + head) * BLOCK + offs[:, None]) * BLOCK
                   + offs[None, :])


@triton.jit
def _bias_mask_table(BIAS, MASKS, TABLE, n_heads, N: tl.constexpr, BLOCK: tl.constexpr,
                     CLASSES: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Program (head): the head's tile of each window class, its bias (0 past N) + the class's
    shift mask (_class_masks), in fp32."""
    head = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    tile = offs[:, None] * BLOCK + offs[None, :]
    bias = _bias_tile(BIAS, head, offs, offs, N, HAS_BIAS)
    for win_class in tl.static_range(CLASSES):
        tl.store(TABLE + (win_class * n_heads + head) * BLOCK * BLOCK + tile,
                 tl.load(MASKS + win_class * BLOCK * BLOCK + tile) + bias)


@triton.jit
def _scores(q, k, bias, label_m, label_n, offs_n, s_scale, mask_value, N: tl.constexpr,
            HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
    """q.k * scale + bias + mask (mask_value between regions), -inf past the window's N keys."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * s_scale
    if HAS_BIAS:
        s += bias
    s += tl.where(label_m[:, None] != label_n[None, :], mask_value, 0.0)
    return tl.where((offs_n < N)[None, :], s, float("-inf"))


@triton.jit
def _head_scale(scale, LOGIT_SCALE, head, COSINE: tl.constexpr):
    """The factor of q.k: scale, or the head's logit scale for cosine attention."""
    s_scale = scale
    if COSINE:
        s_scale = tl.load(LOGIT_SCALE + head).to(tl.float32)
    return s_scale


@triton.jit
def _pad_sum(x, valid, offs, N: tl.constexpr):
    """Column sums of x over the window's padded tokens."""
    return tl.sum(tl.where((~valid & (offs < N))[:, None], x, 0.0), axis=0)


@triton.jit
def _partial_so_far(partial, added):
    """A program's gradient partial read back, or zeros before its first window added to it (the
    partials are not zeroed: the memory is read only to be discarded)."""
    return tl.where(added, tl.load(partial), 0.0)


@triton.jit
def _store_pad_and_scale(DPAD, DSCALE, part, offs_d, dk_pad, dv_pad, dscale,
                         BLOCK_D: tl.constexpr, HAS_QKV_BIAS: tl.constexpr, COSINE: tl.constexpr):
    """A program's partials of the qkv-bias gradient (padded keys and values) and of the logit
    scale's, where the layer has them (common.sum_partials adds them up)."""
    if HAS_QKV_BIAS:
        tl.store(DPAD + part * 2 * BLOCK_D + offs_d, dk_pad)
        tl.store(DPAD + part * 2 * BLOCK_D + BLOCK_D + offs_d, dv_pad)
    if COSINE:
        tl.store(DSCALE + part, tl.sum(dscale, axis=0))


@triton.jit
def _key_block(QKV, BIAS, q, win, start_n, base, geom, offs_m, label_m, head, col, c_offset,
               stride_ql, dmask, k_fill, v_fill, s_scale, mask_value, WT: tl.constexpr,
               WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr,
               COSINE: tl.constexpr, PRECISION: tl.constexpr):
    """The tiled kernels' key step: the k and v of window `win`'s keys start_n.. and the scores
    of the query rows q against them (_scores)."""
    tl.static_assert(BLOCK >= 16, "tl.dot needs tiles of at least 16 rows")
    N: tl.constexpr = WT * WH * WW
    offs_n = start_n + tl.arange(0, BLOCK)
    _, token_n, valid_n, label_n = _window_tokens(win, offs_n, geom, WT, WH, WW, True)
    k, v = _load_kv(QKV, base + token_n.to(tl.int64) * stride_ql, valid_n, col, c_offset, dmask,
                    k_fill, v_fill)
    if COSINE:
        k, _ = normalize_rows(k)
    bias = _bias_tile(BIAS, head, offs_m, offs_n, N, HAS_BIAS)
    s = _scores(q, k, bias, label_m, label_n, offs_n, s_scale, mask_value, N, HAS_BIAS, PRECISION)
    return s, k, v


# ---- one-tile windows --------------------------------------------------------------------------

@triton.jit(do_not_specialize=GEOMETRY_ARGS + ["n_windows"])
def _fwd_window(
    QKV, OUT, TABLE, QKV_BIAS, LOGIT_SCALE,
    stride_qb, stride_ql, stride_qc,
    T, H, W, Tp, Hp, Wp, period_t, period_h, period_w, shift_t, shift_h, shift_w,
    n_win_h, n_win_w, n_win_img,
    n_windows, scale, n_heads, head_dim,
    WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr, HAS_QKV_BIAS: tl.constexpr, COSINE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Program (head, group) over windows group, group + groups, ..., each window one tile:
    S = Q K^T * scale + table[window class, head] (bias + mask, -inf past N)
    O = E V / rowsum(E), E = exp2((S - rowmax) * log2(e)), written to each token's row of out."""
    tl.static_assert(WT * WH * WW <= BLOCK, "a one-tile kernel holds the whole window")
    head = tl.program_id(0)
    group = tl.program_id(1)
    geom = (T, H, W, Tp, Hp, Wp, period_t, period_h, period_w, shift_t, shift_h, shift_w,
            n_win_h, n_win_w, n_win_img)
    offs = tl.arange(0, BLOCK)
    offs_d, dmask, C, col, k_fill, v_fill, s_scale = _head_columns(
        QKV_BIAS, LOGIT_SCALE, scale, head, n_heads, head_dim, stride_qc, BLOCK_D,
        HAS_QKV_BIAS, COSINE)
    no_fill = tl.zeros([BLOCK_D], tl.float32)
    out_col = head * head_dim + offs_d

    for w in range(group, n_windows, tl.num_programs(1)):
        image, token, valid, _ = _window_tokens(w, offs, geom, WT, WH, WW, False)
        rows = image * stride_qb + token.to(tl.int64) * stride_ql
        q = _load_head(QKV, rows, valid, col, dmask, no_fill)
        k, v = _load_kv(QKV, rows, valid, col, C * stride_qc, dmask, k_fill, v_fill)
        if COSINE:
            q, _ = normalize_rows(q)
            k, _ = normalize_rows(k)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * s_scale \
            + _table_tile(TABLE, _window_class(w, geom, WT), head, n_heads, offs, BLOCK)
        p = tl.exp2((s - tl.max(s, axis=1)[:, None]) * LOG2E)
        o = tl.dot(p.to(v.dtype), v, input_precision=PRECISION) / tl.sum(p, axis=1)[:, None]
        out_rows = (image * (T * H * W) + token) * C
        tl.store(OUT + out_rows[:, None] + out_col[None, :], o.to(OUT.dtype.element_ty),
                 mask=valid[:, None] & dmask[None, :])


@triton.jit(do_not_specialize=GEOMETRY_ARGS + ["n_windows"])
def _bwd_window(
    QKV, DOUT, DQKV, TABLE, QKV_BIAS, LOGIT_SCALE, DBIAS, DPAD, DSCALE,
    stride_qb, stride_ql, stride_qc,
    T, H, W, Tp, Hp, Wp, period_t, period_h, period_w, shift_t, shift_h, shift_w,
    n_win_h, n_win_w, n_win_img,
    n_windows, scale, n_heads, head_dim,
    WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_QKV_BIAS: tl.constexpr,
    COSINE: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (head, group) over windows group, group + groups, ..., each window on chip:
    P = softmax(S) recomputed whole, dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP))
    dQ = dS K * scale, dK = dS^T Q * scale; dbias: dS summed in the program's own partial."""
    tl.static_assert(WT * WH * WW <= BLOCK, "a one-tile kernel holds the whole window")
    N: tl.constexpr = WT * WH * WW
    head = tl.program_id(0)
    group = tl.program_id(1)
    geom = (T, H, W, Tp, Hp, Wp, period_t, period_h, period_w, shift_t, shift_h, shift_w,
            n_win_h, n_win_w, n_win_img)
    offs = tl.arange(0, BLOCK)
    offs_d, dmask, C, col, k_fill, v_fill, s_scale = _head_columns(
        QKV_BIAS, LOGIT_SCALE, scale, head, n_heads, head_dim, stride_qc, BLOCK_D,
        HAS_QKV_BIAS, COSINE)
    no_fill = tl.zeros([BLOCK_D], tl.float32)
    out_col = head * head_dim + offs_d
    part = group * n_heads + head
    # a 64 x 64 fp32 sum in registers across windows spills at 4 warps (ptxas, sm_90)
    partial = DBIAS + part.to(tl.int64) * BLOCK * BLOCK + offs[:, None] * BLOCK + offs[None, :]

    dk_pad = tl.zeros([BLOCK_D], tl.float32)
    dv_pad = tl.zeros([BLOCK_D], tl.float32)
    dscale = tl.zeros([BLOCK], tl.float32)
    for w in range(group, n_windows, tl.num_programs(1)):
        image, token, valid, _ = _window_tokens(w, offs, geom, WT, WH, WW, False)
        rows = image * stride_qb + token.to(tl.int64) * stride_ql
        mask = valid[:, None] & dmask[None, :]
        q = _load_head(QKV, rows, valid, col, dmask, no_fill)
        k, v = _load_kv(QKV, rows, valid, col, C * stride_qc, dmask, k_fill, v_fill)
        token_rows = image * (T * H * W) + token
        do = tl.load(DOUT + (token_rows * C)[:, None] + out_col[None, :], mask=mask, other=0.0)
        if COSINE:
            q, q_norm = normalize_rows(q)
            k, k_norm = normalize_rows(k)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * s_scale \
            + _table_tile(TABLE, _window_class(w, geom, WT), head, n_heads, offs, BLOCK)
        p = tl.exp2((s - tl.max(s, axis=1)[:, None]) * LOG2E)
        p = p / tl.sum(p, axis=1)[:, None]
        # each gradient is stored as soon as it is complete, so its registers are free again
        grad = DQKV + (token_rows * 3 * C)[:, None] + out_col[None, :]
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        tl.store(grad + 2 * C, dv.to(DQKV.dtype.element_ty), mask=mask)
        if HAS_QKV_BIAS:
            dv_pad += _pad_sum(dv, valid, offs, N)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - tl.sum(p * dp, axis=1)[:, None])
        if HAS_BIAS:
            tl.store(partial, _partial_so_far(partial, w > group) + ds)
        dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        if COSINE:
            # sum dS * (Q K^T) as rowsum(Q * dS K): no second N x N tile held (it spilled)
            dscale += tl.sum(q.to(tl.float32) * dq, axis=1)
            dq = normalize_rows_bwd(dq * s_scale, q, q_norm)
        else:
            dq *= s_scale
        tl.store(grad, dq.to(DQKV.dtype.element_ty), mask=mask)
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION) * s_scale
        if COSINE:
            dk = normalize_rows_bwd(dk, k, k_norm)
        tl.store(grad + C, dk.to(DQKV.dtype.element_ty), mask=mask)
        if HAS_QKV_BIAS:
            dk_pad += _pad_sum(dk, valid, offs, N)
        # the next window reads the bias partial back, maybe from another thread of the program
        tl.debug_barrier()

    _store_pad_and_scale(DPAD, DSCALE, part, offs_d, dk_pad, dv_pad, dscale, BLOCK_D,
                         HAS_QKV_BIAS, COSINE)


# ---- tiled windows -----------------------------------------------------------------------------

@triton.jit
def _program_block(n_heads, NUM_BLOCKS: tl.constexpr):
    """(block, head, window or group) of a flat grid, block fastest, then head."""
    pid = tl.program_id(0)
    return pid % NUM_BLOCKS, pid // NUM_BLOCKS % n_heads, pid // (NUM_BLOCKS * n_heads)


@triton.jit
def _load_stats(STATS, DELTA, row, offs, N: tl.constexpr):
    """Row max, row sum and delta of rows `offs` of window-head `row`; rows past N
    get p = 0."""
    stats = STATS + row * 2 * N + offs
    row_max = tl.load(stats, mask=offs < N, other=float("inf"))
    row_sum = tl.load(stats + N, mask=offs < N, other=1.0)
    delta = tl.load(DELTA + row * N + offs, mask=offs < N, other=0.0)
    return row_max, row_sum, delta


@triton.jit(do_not_specialize=GEOMETRY_ARGS)
def _fwd_tiled(
    QKV, OUT, STATS, BIAS, QKV_BIAS, LOGIT_SCALE,
    stride_qb, stride_ql, stride_qc,
    T, H, W, Tp, Hp, Wp, period_t, period_h, period_w, shift_t, shift_h, shift_w,
    n_win_h, n_win_w, n_win_img,
    scale, mask_value, n_heads, head_dim,
    WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_QKV_BIAS: tl.constexpr,
    COSINE: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (query block, head, window), key blocks with an online softmax:
    S = Q K^T * scale + bias + mask, -inf past the window's N keys
    O = exp(S - m) V / l with the running row max m and sum l, both kept for the backward."""
    N: tl.constexpr = WT * WH * WW
    blk, head, win = _program_block(n_heads, (N + BLOCK - 1) // BLOCK)
    geom = (T, H, W, Tp, Hp, Wp, period_t, period_h, period_w, shift_t, shift_h, shift_w,
            n_win_h, n_win_w, n_win_img)
    offs_m = blk * BLOCK + tl.arange(0, BLOCK)
    offs_d, dmask, C, col, k_fill, v_fill, s_scale = _head_columns(
        QKV_BIAS, LOGIT_SCALE, scale, head, n_heads, head_dim, stride_qc, BLOCK_D,
        HAS_QKV_BIAS, COSINE)

    image, token_m, valid_m, label_m = _window_tokens(win, offs_m, geom, WT, WH, WW, True)
    base = image * stride_qb
    q = _load_head(QKV, base + token_m.to(tl.int64) * stride_ql, valid_m, col, dmask,
                   tl.zeros([BLOCK_D], tl.float32))
    if COSINE:
        q, _ = normalize_rows(q)
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    for start_n in range(0, N, BLOCK):
        s, _, v = _key_block(QKV, BIAS, q, win, start_n, base, geom, offs_m, label_m, head, col,
                             C * stride_qc, stride_ql, dmask, k_fill, v_fill, s_scale, mask_value,
                             WT, WH, WW, BLOCK, HAS_BIAS, COSINE, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2((m_i - m_new) * LOG2E)
        p = tl.exp2((s - m_new[:, None]) * LOG2E)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    out_rows = (image * (T * H * W) + token_m) * C + head * head_dim
    tl.store(OUT + out_rows[:, None] + offs_d[None, :],
             (acc / l_i[:, None]).to(OUT.dtype.element_ty),
             mask=valid_m[:, None] & dmask[None, :])
    # the row max and sum, not max + log(sum): that rounds away precision at large scores
    stats = STATS + (win.to(tl.int64) * n_heads + head) * 2 * N + offs_m
    tl.store(stats, m_i, mask=offs_m < N)
    tl.store(stats + N, l_i, mask=offs_m < N)


@triton.jit(do_not_specialize=GEOMETRY_ARGS)
def _bwd_dq_tiled(
    QKV, OUT, DOUT, STATS, DELTA, DQKV, BIAS, QKV_BIAS, LOGIT_SCALE,
    stride_qb, stride_ql, stride_qc,
    T, H, W, Tp, Hp, Wp, period_t, period_h, period_w, shift_t, shift_h, shift_w,
    n_win_h, n_win_w, n_win_img,
    scale, mask_value, n_heads, head_dim,
    WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_QKV_BIAS: tl.constexpr,
    COSINE: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (query block, head, window), key blocks in turn; writes delta for the dk/dv kernel:
    delta = rowsum(dO * O), P = exp(S - m) / l from the forward's row max m and sum l
    dS = P * (dO V^T - delta), dQ = sum over key blocks of dS K * scale."""
    N: tl.constexpr = WT * WH * WW
    blk, head, win = _program_block(n_heads, (N + BLOCK - 1) // BLOCK)
    geom = (T, H, W, Tp, Hp, Wp, period_t, period_h, period_w, shift_t, shift_h, shift_w,
            n_win_h, n_win_w, n_win_img)
    offs_m = blk * BLOCK + tl.arange(0, BLOCK)
    offs_d, dmask, C, col, k_fill, v_fill, s_scale = _head_columns(
        QKV_BIAS, LOGIT_SCALE, scale, head, n_heads, head_dim, stride_qc, BLOCK_D,
        HAS_QKV_BIAS, COSINE)
    out_col = head * head_dim + offs_d

    image, token_m, valid_m, label_m = _window_tokens(win, offs_m, geom, WT, WH, WW, True)
    base = image * stride_qb
    mask_m = valid_m[:, None] & dmask[None, :]
    q = _load_head(QKV, base + token_m.to(tl.int64) * stride_ql, valid_m, col, dmask,
                   tl.zeros([BLOCK_D], tl.float32))
    if COSINE:
        q, q_norm = normalize_rows(q)
    token_rows = image * (T * H * W) + token_m
    do = tl.load(DOUT + (token_rows * C)[:, None] + out_col[None, :], mask=mask_m, other=0.0)
    o = tl.load(OUT + (token_rows * C)[:, None] + out_col[None, :], mask=mask_m, other=0.0)
    row = win.to(tl.int64) * n_heads + head
    tl.store(DELTA + row * N + offs_m, tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1),
             mask=offs_m < N)
    row_max, row_sum, delta = _load_stats(STATS, DELTA, row, offs_m, N)

    dq = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    for start_n in range(0, N, BLOCK):
        s, k, v = _key_block(QKV, BIAS, q, win, start_n, base, geom, offs_m, label_m, head, col,
                             C * stride_qc, stride_ql, dmask, k_fill, v_fill, s_scale, mask_value,
                             WT, WH, WW, BLOCK, HAS_BIAS, COSINE, PRECISION)
        p = tl.exp2((s - row_max[:, None]) * LOG2E) / row_sum[:, None]
        ds = p * (tl.dot(do, tl.trans(v), input_precision=PRECISION) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq *= s_scale
    if COSINE:
        dq = normalize_rows_bwd(dq, q, q_norm)
    tl.store(DQKV + (token_rows * 3 * C)[:, None] + out_col[None, :],
             dq.to(DQKV.dtype.element_ty), mask=mask_m)


@triton.jit(do_not_specialize=GEOMETRY_ARGS + ["n_windows", "groups"])
def _bwd_dkdv_tiled(
    QKV, DOUT, STATS, DELTA, DQKV, BIAS, QKV_BIAS, LOGIT_SCALE, DBIAS, DPAD, DSCALE,
    stride_qb, stride_ql, stride_qc,
    T, H, W, Tp, Hp, Wp, period_t, period_h, period_w, shift_t, shift_h, shift_w,
    n_win_h, n_win_w, n_win_img,
    n_windows, groups, scale, mask_value, n_heads, head_dim,
    WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_QKV_BIAS: tl.constexpr,
    COSINE: tl.constexpr, PRECISION: tl.constexpr,
):
    """Program (key block, head, group) over windows group, group + groups, ..., query blocks:
    P = exp(S - m) / l, dV = sum P^T dO, dS = P * (dO V^T - delta), dK = sum dS^T Q * scale
    dbias: dS added into the program's own column stripe of its group's partial (no atomics)."""
    N: tl.constexpr = WT * WH * WW
    NUM_BLOCKS: tl.constexpr = (N + BLOCK - 1) // BLOCK
    NP: tl.constexpr = NUM_BLOCKS * BLOCK
    blk, head, group = _program_block(n_heads, NUM_BLOCKS)
    geom = (T, H, W, Tp, Hp, Wp, period_t, period_h, period_w, shift_t, shift_h, shift_w,
            n_win_h, n_win_w, n_win_img)
    offs_n = blk * BLOCK + tl.arange(0, BLOCK)
    offs_d, dmask, C, col, k_fill, v_fill, s_scale = _head_columns(
        QKV_BIAS, LOGIT_SCALE, scale, head, n_heads, head_dim, stride_qc, BLOCK_D,
        HAS_QKV_BIAS, COSINE)
    out_col = head * head_dim + offs_d
    no_fill = tl.zeros([BLOCK_D], tl.float32)
    stripe = DBIAS + (group * n_heads + head).to(tl.int64) * NP * NP + offs_n[None, :]

    dk_pad = tl.zeros([BLOCK_D], tl.float32)
    dv_pad = tl.zeros([BLOCK_D], tl.float32)
    dscale = tl.zeros([BLOCK], tl.float32)
    for w in range(group, n_windows, groups):
        image, token_n, valid_n, label_n = _window_tokens(w, offs_n, geom, WT, WH, WW, True)
        base = image * stride_qb
        rows_n = base + token_n.to(tl.int64) * stride_ql
        k, v = _load_kv(QKV, rows_n, valid_n, col, C * stride_qc, dmask, k_fill, v_fill)
        if COSINE:
            k, k_norm = normalize_rows(k)
        row = tl.cast(w, tl.int64) * n_heads + head
        dk = tl.zeros([BLOCK, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK, BLOCK_D], tl.float32)
        for start_m in range(0, N, BLOCK):
            offs_m = start_m + tl.arange(0, BLOCK)
            _, token_m, valid_m, label_m = _window_tokens(w, offs_m, geom, WT, WH, WW, True)
            q = _load_head(QKV, base + token_m.to(tl.int64) * stride_ql, valid_m, col, dmask,
                           no_fill)
            if COSINE:
                q, _ = normalize_rows(q)
            token_rows = image * (T * H * W) + token_m
            do = tl.load(DOUT + (token_rows * C)[:, None] + out_col[None, :],
                         mask=valid_m[:, None] & dmask[None, :], other=0.0)
            row_max, row_sum, delta = _load_stats(STATS, DELTA, row, offs_m, N)
            bias = _bias_tile(BIAS, head, offs_m, offs_n, N, HAS_BIAS)
            s = _scores(q, k, bias, label_m, label_n, offs_n, s_scale, mask_value, N,
                        HAS_BIAS, PRECISION)
            p = tl.exp2((s - row_max[:, None]) * LOG2E) / row_sum[:, None]
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            ds = p * (tl.dot(do, tl.trans(v), input_precision=PRECISION) - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
            partial = stripe + offs_m[:, None] * NP
            tl.store(partial, _partial_so_far(partial, w > group) + ds)
            # the next window reads this stripe back, maybe from another thread of the program
            tl.debug_barrier()
        if COSINE:
            # sum dS * (Q K^T) as rowsum(K * dS^T Q), once per key block
            dscale += tl.sum(k.to(tl.float32) * dk, axis=1)
        dk *= s_scale
        if COSINE:
            dk = normalize_rows_bwd(dk, k, k_norm)
        grad = DQKV + ((image * (T * H * W) + token_n) * 3 * C)[:, None] + out_col[None, :]
        mask_n = valid_n[:, None] & dmask[None, :]
        tl.store(grad + C, dk.to(DQKV.dtype.element_ty), mask=mask_n)
        tl.store(grad + 2 * C, dv.to(DQKV.dtype.element_ty), mask=mask_n)
        if HAS_QKV_BIAS:
            dk_pad += _pad_sum(dk, valid_n, offs_n, N)
            dv_pad += _pad_sum(dv, valid_n, offs_n, N)

    _store_pad_and_scale(DPAD, DSCALE, tl.program_id(0), offs_d, dk_pad, dv_pad, dscale, BLOCK_D,
                         HAS_QKV_BIAS, COSINE)


# ---- launchers ---------------------------------------------------------------------------------

def _launch(geometry, head_dim, dtype, settings):
    """(settings, the kernels' shared keyword arguments: geometry, constexprs); not to be
    modified: the default settings' pair is cached."""
    if settings is None:
        return _default_launch(geometry, head_dim, dtype)
    block = min(settings.block, next_block(geometry.tokens))
    meta = dict(**geometry.kernel_args(), **geometry.constexprs(), BLOCK=block,
                BLOCK_D=next_block(head_dim),
                PRECISION="ieee" if dtype == torch.float32 else "tf32")
    return settings, meta


@functools.lru_cache(maxsize=256)
def _default_launch(geometry, head_dim, dtype):
    return _launch(geometry, head_dim, dtype, Settings.for_shape(geometry, head_dim, dtype))


def kernel_configs(geometry, head_dim, dtype, settings=None):
    """(name, jit function, constexprs, launch options) of each kernel the launchers run for this
    shape, for the offline compile check (benchmarks/compile_check.py)."""
    settings, meta = _launch(geometry, head_dim, dtype, settings)
    constexprs = {k: meta[k] for k in ("WT", "WH", "WW", "BLOCK", "BLOCK_D", "PRECISION")}
    fwd = dict(num_warps=settings.fwd_warps, num_stages=settings.fwd_stages)
    bwd = dict(num_warps=settings.bwd_warps, num_stages=settings.bwd_stages)
    block, n = meta["BLOCK"], geometry.tokens
    blocks = triton.cdiv(n, block)
    partial_sum = ("sum", sum_partials, sum_constexprs(n, blocks * block, blocks, meta["BLOCK_D"],
                                                       torch.device("cuda")), SMALL_LAUNCH)
    if _one_tile(geometry, settings):
        return [("table", _bias_mask_table, dict(N=n, BLOCK=block, CLASSES=_classes(geometry)),
                 SMALL_LAUNCH),
                ("fwd", _fwd_window, constexprs, fwd), ("bwd", _bwd_window, constexprs, bwd),
                partial_sum]
    return [("fwd", _fwd_tiled, constexprs, fwd), ("bwd dq", _bwd_dq_tiled, constexprs, bwd),
            ("bwd dk/dv", _bwd_dkdv_tiled, constexprs, bwd), partial_sum]


def _kernel_args(scale, num_heads, head_dim, qkv_bias, logit_scale, meta):
    """The keyword arguments every v2 kernel takes."""
    return dict(scale=scale, n_heads=num_heads, head_dim=head_dim,
                HAS_QKV_BIAS=qkv_bias is not None, COSINE=logit_scale is not None, **meta)


def _classes(geometry):
    """Window classes (_window_class): last window along each axis or not."""
    return 8 if geometry.is_3d else 4


@functools.lru_cache(maxsize=64)
def _class_masks(window, shift, classes, block, device, mask_value):
    """(classes, block, block) fp32, built once per configuration: the shift mask (mask_value
    between regions) of each window class (_window_class), -inf in key columns past the window's
    N tokens."""
    n = math.prod(window)
    axes = [torch.arange(w) for w in window]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).reshape(3, n)
    window, shift = torch.tensor(window), torch.tensor(shift)
    # in the last window along a shifting axis, tokens from w - s on lie in the region (-s, None)
    second = (coords >= (window - shift)[:, None]).long()
    bits = torch.tensor([[c >> 2 & 1, c >> 1 & 1, c & 1] for c in range(classes)]) * (shift > 0)
    labels = (bits[:, :, None] * (1 + second) * torch.tensor([9, 3, 1])[:, None]).sum(1)
    masks = torch.full((classes, block, block), float("-inf"))
    masks[:, :, :n] = 0.0
    masks[:, :n, :n] = (labels[:, :, None] != labels[:, None, :]) * mask_value
    return masks.to(device)


def _groups(n_windows, per_group_programs, device, settings):
    """Window groups of a persistent grid: enough programs to fill the GPU, no empty group (and
    none for an empty batch)."""
    wanted = programs_wanted(device, settings.programs_per_sm)
    return min(n_windows, max(1, wanted // per_group_programs))


def window_attention_fwd(qkv, rel_bias, qkv_bias, logit_scale, geometry, num_heads, scale,
                         mask_value, settings=None):
    """Returns out (B, T*H*W, heads*head_dim) and what the backward needs besides (saved_shape).
    rel_bias (heads, N, N), qkv_bias and logit_scale contiguous, of any float dtype."""
    head_dim = qkv.shape[-1] // (3 * num_heads)
    settings, meta = _launch(geometry, head_dim, qkv.dtype, settings)
    B, L, C3 = qkv.shape
    n_windows = geometry.n_windows(B)
    out = qkv.new_empty(B, L, C3 // 3)
    saved = qkv.new_empty(saved_shape(geometry, B, num_heads, settings), dtype=torch.float32)
    bias_ptr, qkv_bias_ptr, logit_scale_ptr = (optional_pointer(t, out)
                                               for t in (rel_bias, qkv_bias, logit_scale))
    common = dict(**_kernel_args(scale, num_heads, head_dim, qkv_bias, logit_scale, meta),
                  num_warps=settings.fwd_warps, num_stages=settings.fwd_stages)
    if _one_tile(geometry, settings):
        block = meta["BLOCK"]
        masks = _class_masks(geometry.window, geometry.shift, _classes(geometry), block,
                             qkv.device, mask_value)
        _bias_mask_table[(num_heads,)](  # saved: the table, read again by the backward
            bias_ptr, masks, saved, num_heads, N=geometry.tokens, BLOCK=block,
            CLASSES=_classes(geometry), HAS_BIAS=rel_bias is not None, **SMALL_LAUNCH)
        _fwd_window[(num_heads, _groups(n_windows, num_heads, qkv.device, settings))](
            qkv, out, saved, qkv_bias_ptr, logit_scale_ptr, *qkv.stride(), n_windows=n_windows,
            **common)
    else:
        n_blocks = triton.cdiv(geometry.tokens, meta["BLOCK"])
        _fwd_tiled[(n_windows * num_heads * n_blocks,)](  # saved: the row max and sum
            qkv, out, saved, bias_ptr, qkv_bias_ptr, logit_scale_ptr, *qkv.stride(),
            mask_value=mask_value, HAS_BIAS=rel_bias is not None, **common)
    LAUNCHES["fwd"] += 1
    return out, saved


def window_attention_bwd(dout, qkv, out, saved, rel_bias, qkv_bias, logit_scale, geometry,
                         num_heads, scale, mask_value, settings=None):
    """Returns dqkv (qkv's shape, contiguous) and the grads of rel_bias (heads, N, N), qkv_bias
    (3*heads*head_dim,) from the padded keys and values, and logit_scale (heads,), each in its
    parameter's dtype, None where the parameter is None."""
    head_dim = qkv.shape[-1] // (3 * num_heads)
    settings, meta = _launch(geometry, head_dim, qkv.dtype, settings)
    n_windows = geometry.n_windows(qkv.shape[0])
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    parameters = (rel_bias, qkv_bias, logit_scale)
    bias_ptr, qkv_bias_ptr, logit_scale_ptr = (optional_pointer(t, dqkv) for t in parameters)
    common = dict(**_kernel_args(scale, num_heads, head_dim, qkv_bias, logit_scale, meta),
                  HAS_BIAS=rel_bias is not None, num_warps=settings.bwd_warps,
                  num_stages=settings.bwd_stages)
    block = meta["BLOCK"]
    n_blocks = triton.cdiv(geometry.tokens, block)
    groups = _groups(n_windows, num_heads * n_blocks, qkv.device, settings)
    partials = Partials.empty(groups, num_heads, n_blocks, n_blocks * block, meta["BLOCK_D"],
                              *parameters, qkv.device)
    if _one_tile(geometry, settings):
        _bwd_window[(num_heads, groups)](  # saved: the forward's bias and mask table
            qkv, dout, dqkv, saved, qkv_bias_ptr, logit_scale_ptr, *partials.pointers(dqkv),
            *qkv.stride(), n_windows=n_windows, **common)
    else:
        delta = torch.empty(n_windows, num_heads, geometry.tokens, dtype=torch.float32,
                            device=qkv.device)
        pointers = (bias_ptr, qkv_bias_ptr, logit_scale_ptr)
        _bwd_dq_tiled[(n_windows * num_heads * n_blocks,)](  # saved: the row max and sum
            qkv, out, dout, saved, delta, dqkv, *pointers, *qkv.stride(), mask_value=mask_value,
            **common)
        _bwd_dkdv_tiled[(groups * num_heads * n_blocks,)](
            qkv, dout, saved, delta, dqkv, *pointers, *partials.pointers(dqkv), *qkv.stride(),
            n_windows=n_windows, groups=groups, mask_value=mask_value, **common)
    LAUNCHES["bwd"] += 1
    return (dqkv, *partials.sum(*parameters, num_heads, head_dim))
