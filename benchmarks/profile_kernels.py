"""The fused forward and backward kernels, both generations side by side where both serve the
shape, at every Swin-T and CIFAR stage shape (batch 128, window 7, shift 3) and at the tiled
cases (windows over 64 tokens): stage 1 of Swin-B 384 (window 12), of Swin V2-T 256 (window 16,
cosine attention) and of swin3d_t (window 8x7x7, v2 only); bf16.

Each launcher is timed twice (medians): its kernels alone, replayed from a CUDA graph
(triton.testing.do_bench_cudagraph; ms, GB/s and the fraction of this GPU's copy bandwidth), and
launched from Python with the launcher's own work (triton.testing.do_bench); the difference is
host time. A graph replays without do_bench's L2 flush, so a shape whose tensors fit in L2 (tens
of MB: Swin-T stage 4, CIFAR stages 2-3) reads them from there.

Bytes: the forward's are common.op_bytes (read qkv, write out); the backward's are its minimum,
read qkv and dout and write dqkv (v1 also reads out and the row statistics, v2 does not for
one-tile windows). Then a sweep of each generation's launch settings (Settings objects built
here, passed to the launchers) at Swin-T stage 1 and CIFAR stage 1, its kernels alone.

    python -m benchmarks.profile_kernels        # QUICK=1: four shapes, no sweep
"""
import dataclasses
import itertools
import sys

import torch

from benchmarks.common import (
    CIFAR_STAGES,
    ON_GPU,
    OP_STAGES,
    QUICK,
    SWIN_T_STAGES,
    copy_gb_per_sec,
    op_bytes,
    op_inputs,
)

GENERATIONS = ("v1", "v2")
# (model, shape): the Swin-T and CIFAR stages, then the tiled cases
SHAPES = ([("swin_t", s) for s in SWIN_T_STAGES] + [("cifar", s) for s in CIFAR_STAGES]
          + [(model, OP_STAGES[model][0]) for model in ("swin_b_384", "swinv2_t_w16", "swin3d_t")])
# QUICK=1: Swin-T stages 1 and 3, CIFAR stage 1, Swin-B 384 stage 1 (tiled)
QUICK_SHAPES = [SHAPES[i] for i in (0, 2, 4, 7)]


def serves(generation, shape):
    """Whether the generation's kernels serve the shape (swin_fused.ops.not_supported_reasons)."""
    from swin_fused.ops import not_supported_reasons
    return not not_supported_reasons(shape.window, shape.shift, shape.dim // shape.heads,
                                     kernel=generation)


def cases(quick=QUICK):
    """(generation, model, shape) of every profiled case, both generations where both serve."""
    return [(generation, model, shape)
            for (model, shape), generation in itertools.product(QUICK_SHAPES if quick else SHAPES,
                                                                GENERATIONS)
            if serves(generation, shape)]


def geometry(shape):
    """The kernels' Geometry of an op shape; a 2-D map is T = 1, window_t 1, shift_t 0."""
    from swin_fused.kernels.common import Geometry
    if shape.T:
        return Geometry.of(shape.size, shape.window, shape.shift, False)
    return Geometry.of((1, *shape.size), (1, shape.window, shape.window),
                       (0, shape.shift, shape.shift), False)


def backward_bytes(shape, itemsize):
    """The fewest bytes the backward must move: read qkv and dout, write dqkv."""
    qkv = shape.batch * shape.tokens * 3 * shape.dim * itemsize
    return 2 * qkv + qkv // 3


def launchers(generation, shape, settings=None, dtype=torch.bfloat16):
    """The forward and the backward launcher of a generation on fresh random inputs, each a
    closure, each run once (Triton compiles there, never inside a graph capture)."""
    from swin_fused.eager import MASK_VALUE
    from swin_fused.kernels import v1, v2
    kernels = {"v1": v1, "v2": v2}[generation]
    inputs, dout = op_inputs(shape, dtype)
    qkv, rel_bias, qkv_bias = inputs["qkv"], inputs["rel_bias"], inputs["qkv_bias"]
    logit_scale = inputs.get("logit_scale")
    args = (geometry(shape), shape.heads, (shape.dim // shape.heads) ** -0.5, MASK_VALUE, settings)

    def forward():
        return kernels.window_attention_fwd(qkv, rel_bias, qkv_bias, logit_scale, *args)

    out, saved = forward()

    def backward():
        return kernels.window_attention_bwd(dout, qkv, out, saved, rel_bias, qkv_bias,
                                            logit_scale, *args)

    backward()
    return forward, backward


def alone_ms(fn):
    """Median ms of `fn`'s kernels replayed from a CUDA graph: no launch, no host work. The
    launchers allocate; inside the capture that memory comes from the graph's private pool."""
    import triton.testing
    return triton.testing.do_bench_cudagraph(fn, return_mode="median")


def launched_ms(fn):
    """Median ms of `fn` called from Python: its kernels, their launches and the host work."""
    import triton.testing
    return triton.testing.do_bench(fn, return_mode="median")


def sweep_settings(generation, shape, dtype=torch.bfloat16):
    """The Settings objects the sweep times: each generation's knobs around its defaults."""
    from swin_fused.kernels import v1, v2
    head_dim = shape.dim // shape.heads
    if generation == "v1":
        base = v1.Settings.for_shape(geometry(shape), head_dim, dtype)
        return [dataclasses.replace(base, num_warps=w, bwd_num_stages=s)
                for w, s in itertools.product((4, 8), (1, 3))]
    base = v2.Settings.for_shape(geometry(shape), head_dim, dtype)
    return [dataclasses.replace(base, fwd_stages=fs, bwd_warps=bw, programs_per_sm=p)
            for fs, bw, p in itertools.product((1, 2), (4, 8), (2, 4, 8))]


def sweep(shapes):
    print(f"{'gen':3} {'shape':31} {'fwd ms':>8} {'bwd ms':>8}  settings (kernels alone)")
    for generation, shape in itertools.product(GENERATIONS, shapes):
        for settings in sweep_settings(generation, shape):
            fwd_ms, bwd_ms = map(alone_ms, launchers(generation, shape, settings))
            print(f"{generation:3} {shape.label:31} {fwd_ms:8.3f} {bwd_ms:8.3f}  {settings}",
                  flush=True)


def main():
    if not ON_GPU:
        print("profile_kernels: needs a CUDA GPU (interpreter timings say nothing about kernels)")
        return 1
    copy = copy_gb_per_sec()
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {copy:.0f} GB/s (read + write)")
    print(f"{'':48} {'kernels alone (CUDA graph)':^45} {'launched':^17} {'host':^17}")
    print(f"{'gen':3} {'model':12} {'shape':31} {'fwd ms':>8} {'GB/s':>7} {'copy':>5} "
          f"{'bwd ms':>8} {'GB/s':>7} {'copy':>5} {'fwd ms':>8} {'bwd ms':>8} {'fwd ms':>8} "
          f"{'bwd ms':>8}")
    for generation, model, shape in cases():
        fwd, bwd = launchers(generation, shape)
        fwd_ms, bwd_ms = alone_ms(fwd), alone_ms(bwd)
        fwd_launched, bwd_launched = launched_ms(fwd), launched_ms(bwd)
        fwd_gbs = op_bytes(shape, 2) / fwd_ms / 1e6
        bwd_gbs = backward_bytes(shape, 2) / bwd_ms / 1e6
        print(f"{generation:3} {model:12} {shape.label:31} {fwd_ms:8.3f} {fwd_gbs:7.0f} "
              f"{fwd_gbs / copy:5.0%} {bwd_ms:8.3f} {bwd_gbs:7.0f} {bwd_gbs / copy:5.0%} "
              f"{fwd_launched:8.3f} {bwd_launched:8.3f} {fwd_launched - fwd_ms:8.3f} "
              f"{bwd_launched - bwd_ms:8.3f}", flush=True)
    if not QUICK:
        sweep([SWIN_T_STAGES[0], CIFAR_STAGES[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
