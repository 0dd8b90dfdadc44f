"""Kernel generation v1: one program per (window, head, query block), 2-D windows only.

The frame is index arithmetic (see kernels.common). The shift mask comes from frame coordinates,
the relative position bias from the dense (heads, N, N) tensor; the N x N scores live in registers
only. Windows larger than one tile run tiled, with an online softmax forward and a
flash-attention-2 style backward.
"""
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from swin_fused.kernels.common import (
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

LIMITS = Limits(
    window_dims=(2,),
    max_window_tokens=1024,  # 16 key blocks, each unrolled (tl.static_range) in both kernels
    max_head_dim=128,        # fp32 tiles of 256 overflow shared memory
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
)


@dataclass(frozen=True)
class Settings:
    """v1 launch settings. 8 warps, not 4: ptxas (sm_90, bf16, head dim 32) gives the forward 126
    registers and no spills instead of 217, and the backward half the spills."""
    max_block: int = 64
    num_warps: int = 8
    bwd_programs_per_sm: int = 8
    bwd_num_stages: int = 1

    @classmethod
    def for_shape(cls, geometry, head_dim, dtype):
        """The backward's window loop is pipelined 3 deep only for one-tile windows whose tile rows
        are at most 128 bytes; otherwise shared memory overflows its 227 KB (ptxas, sm_90: 215 KB
        for fp32 at head dim 64, 405 KB for fp32 at head dim 32 with a tiled 9x9 window)."""
        settings = cls()
        one_tile = geometry.tokens <= settings.max_block
        row_bytes = next_block(head_dim) * dtype.itemsize
        return replace(settings, bwd_num_stages=3 if one_tile and row_bytes <= 128 else 1)


def saved_shape(geometry, batch, num_heads):
    """The forward's softmax row statistics, kept for the backward."""
    return (geometry.n_windows(batch), num_heads, 2, geometry.tokens)


@triton.jit
def _window_tokens(win, offs, H, W, Hp, Wp, n_win_w, n_win_img, shift_h, shift_w,
                   period_h, period_w, WH: tl.constexpr, WW: tl.constexpr):
    """Image, source token index, validity and shift-mask region of window tokens `offs`."""
    image = win // n_win_img
    wi = win % n_win_img
    fr = (wi // n_win_w) * WH + offs // WW
    fc = (wi % n_win_w) * WW + offs % WW
    sr = (fr + shift_h) % period_h
    sc = (fc + shift_w) % period_w
    valid = (offs < WH * WW) & (fr < period_h) & (fc < period_w) & (sr < H) & (sc < W)
    # regions (0, -w), (-w, -s), (-s, None) of the padded frame; a zero shift makes one region
    label_h = tl.where(shift_h > 0,
                       (fr >= Hp - WH).to(tl.int32) + (fr >= Hp - shift_h).to(tl.int32), 0)
    label_w = tl.where(shift_w > 0,
                       (fc >= Wp - WW).to(tl.int32) + (fc >= Wp - shift_w).to(tl.int32), 0)
    return image, (sr * W + sc).to(tl.int64), valid, label_h * 3 + label_w


@triton.jit
def _load_rows(base, tok, valid, stride_l, col, offs_d, dmask, BIAS_PTR,
               HAS_QKV_BIAS: tl.constexpr):
    """Rows of one head's q, k or v; a padded token takes the qkv bias (Linear of a zero token)."""
    x = tl.load(base + tok[:, None] * stride_l + col[None, :],
                mask=valid[:, None] & dmask[None, :], other=0.0)
    if HAS_QKV_BIAS:
        fill = tl.load(BIAS_PTR + offs_d, mask=dmask, other=0.0).to(x.dtype)
        x = tl.where(valid[:, None], x, fill[None, :])
    return x


@triton.jit
def _load_stats(STATS, win, head, n_heads, offs, N: tl.constexpr):
    """Row max and 1 / row sum of the forward's softmax; rows past N get p = 0."""
    stats = STATS + (win.to(tl.int64) * n_heads + head) * 2 * N + offs
    row_max = tl.load(stats, mask=offs < N, other=float("inf"))
    return row_max, 1.0 / tl.load(stats + N, mask=offs < N, other=1.0)


@triton.jit
def _row_delta(OUT, rows, rmask, do):
    """sum_j P_ij dP_ij for a row split over blocks, as dO_i . O_i."""
    o = tl.load(OUT + rows, mask=rmask, other=0.0)
    return tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)


@triton.jit
def _scores(q, k, offs_m, offs_n, label_m, label_n, head, s_scale, BIAS, mask_value,
            N: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
    """(raw q.k, scaled scores + bias + shift mask (mask_value between regions), -inf past the
    window's N tokens)."""
    raw = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    s = raw * s_scale
    if HAS_BIAS:
        s += tl.load(BIAS + head * N * N + offs_m[:, None] * N + offs_n[None, :],
                     mask=(offs_m < N)[:, None] & (offs_n < N)[None, :], other=0.0).to(tl.float32)
    s += tl.where(label_m[:, None] != label_n[None, :], mask_value, 0.0)
    return raw, tl.where((offs_n < N)[None, :], s, float("-inf"))


# a new input size or shift reuses the compiled kernel
GEOMETRY_ARGS = ["H", "W", "Hp", "Wp", "n_win_w", "n_win_img", "shift_h", "shift_w", "period_h",
                 "period_w"]


@triton.jit(do_not_specialize=GEOMETRY_ARGS)
def _window_attn_fwd(
    QKV, OUT, STATS, BIAS, QKV_BIAS, LOGIT_SCALE,
    stride_qb, stride_ql, stride_qc,
    H, W, Hp, Wp, n_win_w, n_win_img, shift_h, shift_w, period_h, period_w,
    scale, mask_value, n_heads, head_dim,
    WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_QKV_BIAS: tl.constexpr, COSINE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Program (window, head, query block), key blocks with an online softmax:
    S = Q K^T * scale + bias + mask, -inf past the window's N keys
    O = softmax(S) V; keeps the row max and sum of exp(S - max) for the backward."""
    N: tl.constexpr = WH * WW
    win = tl.program_id(0)
    head = tl.program_id(1)
    offs_m = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < head_dim
    C = n_heads * head_dim
    geometry = (H, W, Hp, Wp, n_win_w, n_win_img, shift_h, shift_w, period_h, period_w)

    image, tok_m, valid_m, label_m = _window_tokens(win, offs_m, *geometry, WH, WW)
    base = QKV + image.to(tl.int64) * stride_qb
    col = (head * head_dim + offs_d) * stride_qc
    q = _load_rows(base, tok_m, valid_m, stride_ql, col, offs_d, dmask, QKV_BIAS, False)
    s_scale = scale
    if COSINE:
        q, _ = normalize_rows(q)
        s_scale = tl.load(LOGIT_SCALE + head).to(tl.float32)

    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    for start_n in tl.static_range(0, N, BLOCK):
        offs_n = start_n + tl.arange(0, BLOCK)
        _, tok_n, valid_n, label_n = _window_tokens(win, offs_n, *geometry, WH, WW)
        k = _load_rows(base, tok_n, valid_n, stride_ql, col + C * stride_qc, offs_d, dmask,
                       QKV_BIAS + C + head * head_dim, HAS_QKV_BIAS)
        v = _load_rows(base, tok_n, valid_n, stride_ql, col + 2 * C * stride_qc, offs_d, dmask,
                       QKV_BIAS + 2 * C + head * head_dim, HAS_QKV_BIAS)
        if COSINE:
            k, _ = normalize_rows(k)
        _, s = _scores(q, k, offs_m, offs_n, label_m, label_n, head, s_scale, BIAS, mask_value, N,
                       HAS_BIAS, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    out_rows = OUT + (image.to(tl.int64) * (H * W) + tok_m) * C
    tl.store(out_rows[:, None] + head * head_dim + offs_d[None, :], out.to(OUT.dtype.element_ty),
             mask=valid_m[:, None] & dmask[None, :])
    # the row max and sum, not max + log(sum): that rounds away precision at large scores
    stats = STATS + (win.to(tl.int64) * n_heads + head) * 2 * N + offs_m
    tl.store(stats, m_i, mask=offs_m < N)
    tl.store(stats + N, l_i, mask=offs_m < N)


@triton.jit(do_not_specialize=GEOMETRY_ARGS + ["n_windows", "windows_per_program"])
def _window_attn_bwd(
    QKV, OUT, DOUT, STATS, DQKV, BIAS, QKV_BIAS, LOGIT_SCALE, DBIAS, DPAD, DSCALE,
    stride_qb, stride_ql, stride_qc,
    H, W, Hp, Wp, n_win_w, n_win_img, shift_h, shift_w, period_h, period_w,
    scale, mask_value, n_heads, head_dim, n_windows, windows_per_program,
    WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_QKV_BIAS: tl.constexpr, COSINE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Program (group, head, block): for each window of its group, dk and dv of key block `block`
    and dq of query block `block`:
    P recomputed from the stats, dV = P^T dO, dP = dO V^T, dS = P * (dP - delta)
    dQ = dS K * scale, dK = dS^T Q * scale, dbias = sum over windows of dS.
    One-tile windows sum dbias in registers (one partial per program); tiled ones use atomics."""
    N: tl.constexpr = WH * WW
    NUM_BLOCKS: tl.constexpr = (N + BLOCK - 1) // BLOCK
    NP: tl.constexpr = NUM_BLOCKS * BLOCK
    group = tl.program_id(0)
    head = tl.program_id(1)
    blk = tl.program_id(2)
    offs_b = blk * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < head_dim
    C = n_heads * head_dim
    geometry = (H, W, Hp, Wp, n_win_w, n_win_img, shift_h, shift_w, period_h, period_w)
    col = (head * head_dim + offs_d) * stride_qc
    qb_ptr = QKV_BIAS + head * head_dim
    kb_ptr = QKV_BIAS + C + head * head_dim
    vb_ptr = QKV_BIAS + 2 * C + head * head_dim
    s_scale = scale
    if COSINE:
        s_scale = tl.load(LOGIT_SCALE + head).to(tl.float32)
    part = group.to(tl.int64) * n_heads + head
    dbias_rows = DBIAS + part * NP * NP

    dbias_acc = tl.zeros([BLOCK, BLOCK], tl.float32)
    dk_pad = tl.zeros([BLOCK_D], tl.float32)
    dv_pad = tl.zeros([BLOCK_D], tl.float32)
    dscale_acc = tl.zeros([BLOCK], tl.float32)
    first = group * windows_per_program
    for w in range(first, tl.minimum(first + windows_per_program, n_windows)):
        win = tl.cast(w, tl.int64)  # the interpreter iterates Python ints
        image, tok_n, valid_n, label_n = _window_tokens(win, offs_b, *geometry, WH, WW)
        base = QKV + image.to(tl.int64) * stride_qb
        obase = image.to(tl.int64) * (H * W) * C
        k = _load_rows(base, tok_n, valid_n, stride_ql, col + C * stride_qc, offs_d, dmask,
                       kb_ptr, HAS_QKV_BIAS)
        v = _load_rows(base, tok_n, valid_n, stride_ql, col + 2 * C * stride_qc, offs_d, dmask,
                       vb_ptr, HAS_QKV_BIAS)
        if COSINE:
            k, k_norm = normalize_rows(k)
        dk = tl.zeros([BLOCK, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK, BLOCK_D], tl.float32)
        dq = tl.zeros([BLOCK, BLOCK_D], tl.float32)
        # key block `blk` against every query block: dk, dv (and dq when there is one block)
        for start_m in tl.static_range(0, N, BLOCK):
            offs_m = start_m + tl.arange(0, BLOCK)
            _, tok_m, valid_m, label_m = _window_tokens(win, offs_m, *geometry, WH, WW)
            q = _load_rows(base, tok_m, valid_m, stride_ql, col, offs_d, dmask, qb_ptr, False)
            if COSINE:
                q, q_norm = normalize_rows(q)
            rows = obase + tok_m[:, None] * C + head * head_dim + offs_d[None, :]
            rmask = valid_m[:, None] & dmask[None, :]
            do = tl.load(DOUT + rows, mask=rmask, other=0.0)
            row_max, inv_sum = _load_stats(STATS, win, head, n_heads, offs_m, N)
            raw, s = _scores(q, k, offs_m, offs_b, label_m, label_n, head, s_scale, BIAS,
                             mask_value, N, HAS_BIAS, PRECISION)
            p = tl.exp(s - row_max[:, None]) * inv_sum[:, None]
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            if NUM_BLOCKS == 1:
                # the whole row is here: sum(P * dP) as eager's softmax backward; out is not read
                delta = tl.sum(p * dp, axis=1)
            else:
                delta = _row_delta(OUT, rows, rmask, do)
            ds = p * (dp - delta[:, None])
            if HAS_BIAS:
                if NUM_BLOCKS == 1:
                    dbias_acc += ds
                else:
                    tl.atomic_add(dbias_rows + offs_m[:, None] * NP + offs_b[None, :], ds)
            if COSINE:
                dscale_acc += tl.sum(ds * raw, axis=1)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION) * s_scale
            if NUM_BLOCKS == 1:
                dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION) * s_scale
                if COSINE:
                    dq = normalize_rows_bwd(dq, q, q_norm)
        if COSINE:
            dk = normalize_rows_bwd(dk, k, k_norm)
        rows = ((image.to(tl.int64) * (H * W) + tok_n[:, None]) * 3 * C + head * head_dim
                + offs_d[None, :])
        rmask = valid_n[:, None] & dmask[None, :]
        tl.store(DQKV + rows + C, dk.to(DQKV.dtype.element_ty), mask=rmask)
        tl.store(DQKV + rows + 2 * C, dv.to(DQKV.dtype.element_ty), mask=rmask)
        pad = (~valid_n & (offs_b < N))[:, None]
        dk_pad += tl.sum(tl.where(pad, dk, 0.0), axis=0)
        dv_pad += tl.sum(tl.where(pad, dv, 0.0), axis=0)

        if NUM_BLOCKS > 1:
            # query block `blk` against every key block: dq
            q = _load_rows(base, tok_n, valid_n, stride_ql, col, offs_d, dmask, qb_ptr, False)
            if COSINE:
                q, q_norm = normalize_rows(q)
            orows = obase + tok_n[:, None] * C + head * head_dim + offs_d[None, :]
            do = tl.load(DOUT + orows, mask=rmask, other=0.0)
            delta = _row_delta(OUT, orows, rmask, do)
            row_max, inv_sum = _load_stats(STATS, win, head, n_heads, offs_b, N)
            for start_n in tl.static_range(0, N, BLOCK):
                offs_n = start_n + tl.arange(0, BLOCK)
                _, tok_k, valid_k, label_k = _window_tokens(win, offs_n, *geometry, WH, WW)
                kj = _load_rows(base, tok_k, valid_k, stride_ql, col + C * stride_qc, offs_d,
                                dmask, kb_ptr, HAS_QKV_BIAS)
                vj = _load_rows(base, tok_k, valid_k, stride_ql, col + 2 * C * stride_qc, offs_d,
                                dmask, vb_ptr, HAS_QKV_BIAS)
                if COSINE:
                    kj, _ = normalize_rows(kj)
                _, s = _scores(q, kj, offs_b, offs_n, label_n, label_k, head, s_scale, BIAS,
                               mask_value, N, HAS_BIAS, PRECISION)
                p = tl.exp(s - row_max[:, None]) * inv_sum[:, None]
                dp = tl.dot(do, tl.trans(vj), input_precision=PRECISION)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(kj.dtype), kj, input_precision=PRECISION) * s_scale
            if COSINE:
                dq = normalize_rows_bwd(dq, q, q_norm)
        tl.store(DQKV + rows, dq.to(DQKV.dtype.element_ty), mask=rmask)

    if HAS_BIAS and NUM_BLOCKS == 1:
        tl.store(dbias_rows + offs_b[:, None] * NP + offs_b[None, :], dbias_acc)
    if HAS_QKV_BIAS:
        pad_out = DPAD + ((part * NUM_BLOCKS + blk) * 2) * BLOCK_D + offs_d
        tl.store(pad_out, dk_pad)
        tl.store(pad_out + BLOCK_D, dv_pad)
    if COSINE:
        tl.store(DSCALE + part * NUM_BLOCKS + blk, tl.sum(dscale_acc, axis=0))


def _launch_config(qkv, geometry, num_heads, settings):
    """Head dim, windows, the frame's runtime geometry and the launch's constexprs."""
    _, sh, sw = geometry.shift
    _, H, W = geometry.size
    _, hp, wp = geometry.padded
    _, n_win_h, n_win_w = geometry.windows_per_axis
    period_h, period_w = (H, W) if geometry.roll_before_pad else (hp, wp)
    args = (H, W, hp, wp, n_win_w, n_win_h * n_win_w, sh, sw, period_h, period_w)
    head_dim = qkv.shape[-1] // (3 * num_heads)
    meta = dict(_constexprs(geometry, head_dim, qkv.dtype, settings), num_warps=settings.num_warps)
    return head_dim, geometry.n_windows(qkv.shape[0]), args, meta


def _constexprs(geometry, head_dim, dtype, settings):
    _, wh, ww = geometry.window
    return dict(WH=wh, WW=ww, BLOCK=min(settings.max_block, next_block(wh * ww)),
                BLOCK_D=next_block(head_dim),
                PRECISION="ieee" if dtype == torch.float32 else "tf32")


def kernel_configs(geometry, head_dim, dtype, settings=None):
    """(name, jit function, constexprs, launch options) of each kernel the launchers run for this
    shape, for the offline compile check (benchmarks/compile_check.py)."""
    settings = settings or Settings.for_shape(geometry, head_dim, dtype)
    constexprs = _constexprs(geometry, head_dim, dtype, settings)
    n, block = geometry.tokens, constexprs["BLOCK"]
    blocks = triton.cdiv(n, block)
    return [("fwd", _window_attn_fwd, constexprs, dict(num_warps=settings.num_warps, num_stages=3)),
            ("bwd", _window_attn_bwd, constexprs,
             dict(num_warps=settings.num_warps, num_stages=settings.bwd_num_stages)),
            ("sum", sum_partials, sum_constexprs(n, blocks * block, blocks, constexprs["BLOCK_D"],
                                                 torch.device("cuda")), SMALL_LAUNCH)]


def _settings(settings, qkv, geometry, num_heads):
    assert not geometry.is_3d, "kernel v1 serves 2-D windows only (the op falls back for 3-D)"
    if settings is None:
        settings = Settings.for_shape(geometry, qkv.shape[-1] // (3 * num_heads), qkv.dtype)
    return settings


def window_attention_fwd(qkv, rel_bias, qkv_bias, logit_scale, geometry, num_heads, scale,
                         mask_value, settings=None):
    """Returns out (B, H*W, heads*head_dim) and the softmax's per-row max and sum
    (windows, heads, 2, N), which is all the backward keeps besides qkv and out."""
    settings = _settings(settings, qkv, geometry, num_heads)
    head_dim, n_windows, args, meta = _launch_config(qkv, geometry, num_heads, settings)
    B, L, C3 = qkv.shape
    n = geometry.tokens
    out = qkv.new_empty(B, L, C3 // 3)
    stats = qkv.new_empty(saved_shape(geometry, B, num_heads), dtype=torch.float32)
    n_blocks = triton.cdiv(n, meta["BLOCK"])
    grid = (n_windows, num_heads, n_blocks)
    _window_attn_fwd[grid](
        qkv, out, stats, optional_pointer(rel_bias, stats), optional_pointer(qkv_bias, stats),
        optional_pointer(logit_scale, stats), *qkv.stride(), *args, scale, mask_value, num_heads,
        head_dim, HAS_BIAS=rel_bias is not None, HAS_QKV_BIAS=qkv_bias is not None,
        COSINE=logit_scale is not None, **meta)
    LAUNCHES["fwd"] += 1
    return out, stats


def window_attention_bwd(dout, qkv, out, stats, rel_bias, qkv_bias, logit_scale, geometry,
                         num_heads, scale, mask_value, settings=None):
    """Returns dqkv (qkv's shape, contiguous) and the grads of rel_bias (heads, N, N), qkv_bias
    (3*heads*head_dim,) from the padded keys and values, and logit_scale (heads,), each in its
    parameter's dtype, None where the parameter is None."""
    settings = _settings(settings, qkv, geometry, num_heads)
    head_dim, n_windows, args, meta = _launch_config(qkv, geometry, num_heads, settings)
    n = geometry.tokens
    n_blocks = triton.cdiv(n, meta["BLOCK"])
    wanted = programs_wanted(qkv.device, settings.bwd_programs_per_sm)
    groups = max(1, min(n_windows, wanted // (num_heads * n_blocks)))
    windows_per_program = max(1, triton.cdiv(n_windows, groups))  # an empty batch has none
    groups = triton.cdiv(n_windows, windows_per_program)
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    n_padded = n_blocks * meta["BLOCK"]
    partials = Partials.empty(groups, num_heads, n_blocks, n_padded, meta["BLOCK_D"], rel_bias,
                              qkv_bias, logit_scale, qkv.device)
    if partials.dbias is not None and n_blocks > 1:
        partials.dbias.zero_()  # tiled windows add their bias gradient atomically
    _window_attn_bwd[(groups, num_heads, n_blocks)](
        qkv, out, dout, stats, dqkv, optional_pointer(rel_bias, stats),
        optional_pointer(qkv_bias, stats), optional_pointer(logit_scale, stats),
        *partials.pointers(stats), *qkv.stride(), *args, scale, mask_value, num_heads, head_dim,
        n_windows, windows_per_program,
        HAS_BIAS=rel_bias is not None, HAS_QKV_BIAS=qkv_bias is not None,
        COSINE=logit_scale is not None, num_stages=settings.bwd_num_stages, **meta)
    LAUNCHES["bwd"] += 1
    return (dqkv, *partials.sum(rel_bias, qkv_bias, logit_scale, num_heads, head_dim))
