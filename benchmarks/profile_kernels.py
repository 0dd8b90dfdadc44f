"""The fused forward and backward kernels alone, both generations side by side, timed with
triton.testing.do_bench (median) at every Swin-T and CIFAR stage shape, batch 128, window 7,
shift 3, bf16: ms, GB/s and the fraction of this GPU's copy bandwidth.

Bytes: the forward's are common.op_bytes (read qkv, write out); the backward's are its minimum,
read qkv and dout and write dqkv (v1 also reads out and the row statistics, v2 does not for
one-tile windows). Then a sweep of each generation's launch settings (Settings objects built
here, passed to the launchers) at Swin-T stage 1 and CIFAR stage 1.

    python -m benchmarks.profile_kernels        # QUICK=1: three shapes, no sweep
"""
import dataclasses
import itertools
import sys

import torch

from benchmarks.common import (
    CIFAR_STAGES,
    ON_GPU,
    QUICK,
    SWIN_T_STAGES,
    copy_gb_per_sec,
    op_bytes,
    op_inputs,
)

GENERATIONS = ("v1", "v2")


def backward_bytes(shape, itemsize):
    """The fewest bytes the backward must move: read qkv and dout, write dqkv."""
    qkv = shape.batch * shape.H * shape.W * 3 * shape.dim * itemsize
    return 2 * qkv + qkv // 3


def profile(generation, shape, settings=None, dtype=torch.bfloat16):
    """(forward ms, backward ms) of a generation's launchers on fresh random inputs."""
    import triton.testing

    from swin_fused.eager import MASK_VALUE
    from swin_fused.kernels import v1, v2
    from swin_fused.kernels.common import Geometry
    kernels = {"v1": v1, "v2": v2}[generation]
    inputs, dout = op_inputs(shape, dtype)
    geometry = Geometry.of((1, shape.H, shape.W), (1, shape.window, shape.window),
                           (0, shape.shift, shape.shift), False)
    qkv, rel_bias, qkv_bias = inputs["qkv"], inputs["rel_bias"], inputs["qkv_bias"]
    args = (geometry, shape.heads, (shape.dim // shape.heads) ** -0.5, MASK_VALUE, settings)
    out, saved = kernels.window_attention_fwd(qkv, rel_bias, qkv_bias, None, *args)
    fwd = triton.testing.do_bench(
        lambda: kernels.window_attention_fwd(qkv, rel_bias, qkv_bias, None, *args),
        return_mode="median")
    bwd = triton.testing.do_bench(
        lambda: kernels.window_attention_bwd(dout, qkv, out, saved, rel_bias, qkv_bias, None,
                                             *args),
        return_mode="median")
    return fwd, bwd


def sweep_settings(generation, shape, dtype=torch.bfloat16):
    """The Settings objects the sweep times: each generation's knobs around its defaults."""
    from swin_fused.kernels import v1, v2
    from swin_fused.kernels.common import Geometry
    geometry = Geometry.of((1, shape.H, shape.W), (1, shape.window, shape.window),
                           (0, shape.shift, shape.shift), False)
    head_dim = shape.dim // shape.heads
    if generation == "v1":
        base = v1.Settings.for_shape(geometry, head_dim, dtype)
        return [dataclasses.replace(base, num_warps=w, bwd_num_stages=s)
                for w, s in itertools.product((4, 8), (1, 3))]
    base = v2.Settings.for_shape(geometry, head_dim, dtype)
    return [dataclasses.replace(base, fwd_stages=fs, bwd_warps=bw, programs_per_sm=p)
            for fs, bw, p in itertools.product((1, 2), (4, 8), (2, 4, 8))]


def sweep(shapes):
    print(f"{'gen':3} {'shape':28} {'fwd ms':>8} {'bwd ms':>8}  settings")
    for generation, shape in itertools.product(GENERATIONS, shapes):
        for settings in sweep_settings(generation, shape):
            fwd_ms, bwd_ms = profile(generation, shape, settings)
            print(f"{generation:3} {shape.label:28} {fwd_ms:8.3f} {bwd_ms:8.3f}  {settings}",
                  flush=True)


def main():
    if not ON_GPU:
        print("profile_kernels: needs a CUDA GPU (interpreter timings say nothing about kernels)")
        return 1
    shapes = [("swin_t", s) for s in SWIN_T_STAGES] + [("cifar", s) for s in CIFAR_STAGES]
    if QUICK:
        shapes = [shapes[0], shapes[2], shapes[4]]
    copy = copy_gb_per_sec()
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {copy:.0f} GB/s (read + write)")
    print(f"{'gen':3} {'model':7} {'shape':28} {'fwd ms':>8} {'GB/s':>7} {'copy':>5} "
          f"{'bwd ms':>8} {'GB/s':>7} {'copy':>5}")
    for (model, shape), generation in itertools.product(shapes, GENERATIONS):
        fwd_ms, bwd_ms = profile(generation, shape)
        fwd_gbs = op_bytes(shape, 2) / fwd_ms / 1e6
        bwd_gbs = backward_bytes(shape, 2) / bwd_ms / 1e6
        print(f"{generation:3} {model:7} {shape.label:28} {fwd_ms:8.3f} {fwd_gbs:7.0f} "
              f"{fwd_gbs / copy:5.0%} {bwd_ms:8.3f} {bwd_gbs:7.0f} {bwd_gbs / copy:5.0%}",
              flush=True)
    if not QUICK:
        sweep([SWIN_T_STAGES[0], CIFAR_STAGES[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
