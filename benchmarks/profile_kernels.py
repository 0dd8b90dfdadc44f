"""The fused forward and backward kernels alone, timed with triton.testing.do_bench (median), at
the Swin-T and CIFAR stage shapes, batch 128, window 7, shift 3, bf16: ms, GB/s and the fraction
of this GPU's copy bandwidth (bytes: common.op_bytes, the same count as the op benchmarks).
Then a sweep of the launch settings in swin_fused.kernels.window_attention (warps, backward
pipeline stages, backward programs per SM) at Swin-T stage 1 and CIFAR stage 1.

    python -m benchmarks.profile_kernels        # QUICK=1: three shapes, no sweep
"""
import itertools
import sys

import torch

from benchmarks.common import (CIFAR_STAGES, ON_GPU, QUICK, SWIN_T_STAGES, copy_gb_per_sec,
                               op_bytes, op_inputs)


def profile(shape, dtype=torch.bfloat16):
    """(forward ms, backward ms) of the launchers on fresh random inputs."""
    import triton.testing
    from swin_fused.kernels.window_attention import window_attention_bwd, window_attention_fwd
    inputs, dout = op_inputs(shape, dtype)
    config = (shape.H, shape.W, shape.heads, [shape.window] * 2, [shape.shift] * 2,
              (shape.dim // shape.heads) ** -0.5, False)
    qkv, rel_bias, qkv_bias = inputs["qkv"], inputs["rel_bias"], inputs["qkv_bias"]
    out, stats = window_attention_fwd(qkv, rel_bias, qkv_bias, None, *config)
    fwd = triton.testing.do_bench(
        lambda: window_attention_fwd(qkv, rel_bias, qkv_bias, None, *config), return_mode="median")
    bwd = triton.testing.do_bench(
        lambda: window_attention_bwd(dout, qkv, out, stats, rel_bias, qkv_bias, None, *config),
        return_mode="median")
    return fwd, bwd


def sweep(shapes, dtype=torch.bfloat16):
    """Forward and backward ms for each launch setting; the defaults are restored afterwards."""
    from swin_fused.kernels import window_attention as kernels
    defaults = (kernels.NUM_WARPS, kernels.BWD_PROGRAMS_PER_SM, kernels.BWD_NUM_STAGES)
    print(f"{'shape':28} {'warps':>5} {'stages':>6} {'progs/SM':>8} {'fwd ms':>8} {'bwd ms':>8}")
    try:
        for shape, warps, stages, per_sm in itertools.product(shapes, (4, 8), (1, 3), (4, 8, 16)):
            kernels.NUM_WARPS, kernels.BWD_PROGRAMS_PER_SM, kernels.BWD_NUM_STAGES = \
                warps, per_sm, stages
            fwd_ms, bwd_ms = profile(shape, dtype)
            print(f"{shape.label:28} {warps:5} {stages:6} {per_sm:8} {fwd_ms:8.3f} {bwd_ms:8.3f}",
                  flush=True)
    finally:
        kernels.NUM_WARPS, kernels.BWD_PROGRAMS_PER_SM, kernels.BWD_NUM_STAGES = defaults


def main():
    if not ON_GPU:
        print("profile_kernels: needs a CUDA GPU (interpreter timings say nothing about kernels)")
        return 1
    shapes = [("swin_t", s) for s in SWIN_T_STAGES] + [("cifar", s) for s in CIFAR_STAGES]
    if QUICK:
        shapes = [shapes[0], shapes[2], shapes[4]]
    copy = copy_gb_per_sec()
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {copy:.0f} GB/s (read + write)")
    print(f"{'model':7} {'shape':28} {'fwd ms':>8} {'GB/s':>7} {'copy':>5} "
          f"{'bwd ms':>8} {'GB/s':>7} {'copy':>5}")
    for model, shape in shapes:
        fwd_ms, bwd_ms = profile(shape)
        fwd_gbs = op_bytes(shape, 2) / fwd_ms / 1e6
        bwd_gbs = op_bytes(shape, 2, forward=False, backward=True) / bwd_ms / 1e6
        print(f"{model:7} {shape.label:28} {fwd_ms:8.3f} {fwd_gbs:7.0f} {fwd_gbs / copy:5.0%} "
              f"{bwd_ms:8.3f} {bwd_gbs:7.0f} {bwd_gbs / copy:5.0%}", flush=True)
    if not QUICK:
        sweep([SWIN_T_STAGES[0], CIFAR_STAGES[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
