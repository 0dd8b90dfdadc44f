"""The attention op alone (everything between the qkv and proj Linears) at every stage of Swin-T
(56/28/14/7, C 96-768) and of the seed's swin_cifar (16/8/4, C 192-768): batch 128, window 7,
shift 3; with windows over 64 tokens (the tiled kernels) at stage 1 of Swin-B 384 (96x96, C 128,
window 12, shift 6) and of Swin V2-T 256 with window 16 (64x64, C 96, shift 8, cosine attention),
batch 128; and in 3-D at stage 1 of torchvision's swin3d_t (8x56x56, C 96, window 8x7x7, shift
0x3x3, batch 8) and of MONAI's SwinUNETR (48^3, C 48, window and shift 7 and 3 on every axis,
batch 2); bf16, forward and forward + backward.

Groups `op-fwd-<model>-stage<k>` and `op-fwdbwd-<model>-stage<k>`. Impls (peers in
benchmarks/peers.py): `eager` (swin_fused.eager), `sdpa` (pad/roll/partition, then
F.scaled_dot_product_attention with bias + mask as attn_mask, as timm and MONAI do), `compiled`
(torch.compile of the eager op), `flex` (the same pad/roll/partition, then compiled FlexAttention
with the bias and mask in a score_mod), `fused` (swin_fused.window_attention(_3d), default kernel
generation) and, in 2-D, `fused-v1` (kernel="v1", which serves 2-D only). Every impl agrees with
an fp32 eager reference before it is timed (output, and the gradients of qkv and rel_bias; with
cosine attention the timed backward also computes logit_scale's); one that disagrees or raises is
skipped with the reason, recorded in the results.
GB/s uses one byte count for every impl (common.op_bytes), also as a fraction of this GPU's copy
bandwidth. On a CPU only the eager forward runs, at batch 2 in fp32 (`cpu-op-fwd-swin_t-stage1`).
"""
import dataclasses
import functools

import pytest
import torch

import swin_fused
from benchmarks import peers
from benchmarks.common import (
    GRAD_INPUTS,
    GRAD_TOL,
    ON_GPU,
    OP_STAGES,
    OUTPUT_TOL,
    QUICK,
    STAGE1,
    call_op,
    case,
    check_close,
    copy_gb_per_sec,
    first_call_s,
    fused_kernel,
    fused_launches,
    measure,
    op_bytes,
    op_inputs,
    recorded_as_skip,
    skip_reason,
)
from swin_fused.eager import window_attention_eager, window_attention_eager_3d

IMPLS = ("eager", "sdpa", "compiled", "flex", "fused", "fused-v1")
IMPLS_3D = ("eager", "sdpa", "compiled", "flex", "fused")
CALLS_PER_ROUND = 10
CPU_SHAPE = dataclasses.replace(STAGE1, batch=2)


def op_impl(impl, shape):
    """The callable `impl` times, with swin_fused.window_attention's signature, or with
    window_attention_3d's for a 3-D shape."""
    if shape.T:
        if impl == "compiled":
            return peers.compiled_eager_3d()
        return {"eager": window_attention_eager_3d, "sdpa": peers.window_attention_sdpa_3d,
                "flex": peers.window_attention_flex_3d,
                "fused": swin_fused.window_attention_3d}[impl]
    if impl == "compiled":
        return peers.compiled_eager()
    if impl == "fused-v1":
        return functools.partial(swin_fused.window_attention, kernel="v1")
    return {"eager": window_attention_eager, "sdpa": peers.window_attention_sdpa,
            "flex": peers.window_attention_flex, "fused": swin_fused.window_attention}[impl]


def cases():
    for model, stages in OP_STAGES.items():
        for k, shape in enumerate(stages, 1):
            for direction in ("fwd", "fwdbwd"):
                group = f"op-{direction}-{model}-stage{k}"
                for impl in IMPLS_3D if shape.T else IMPLS:
                    yield case(f"{group}-{impl}", group, impl, group, direction, impl, shape,
                               reason=skip_reason(impl))
    group = "cpu-op-fwd-swin_t-stage1"
    yield pytest.param(group, "fwd", "eager", CPU_SHAPE, id=f"{group}-eager",
                       marks=[pytest.mark.skipif(ON_GPU, reason="CPU baseline; the GPU cases ran")])


def op_pass(fn, shape, inputs, dout, backward):
    """Output, and with `backward` the gradients {name: grad} of the GRAD_INPUTS among `inputs`
    for `dout`."""
    if not backward:
        with torch.no_grad():
            return call_op(fn, shape, inputs), {}
    out = call_op(fn, shape, inputs)
    names = [name for name in GRAD_INPUTS if name in inputs]
    grads = torch.autograd.grad(out, [inputs[name] for name in names], dout)
    return out, dict(zip(names, grads, strict=True))


@pytest.mark.parametrize("group, direction, impl, shape", cases())
def test_op(benchmark, group, direction, impl, shape):
    backward = direction == "fwdbwd"
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    inputs, dout = op_inputs(shape, dtype, requires_grad=backward)

    with recorded_as_skip(impl):
        fn = op_impl(impl, shape)
        as_fp32 = {k: v.detach().float().requires_grad_(backward) for k, v in inputs.items()}
        ref_out, ref_grads = op_pass(op_impl("eager", shape), shape, as_fp32, dout.float(),
                                     backward)
        launches = fused_launches() if "fused" in impl else 0
        compile_s, (out, grads) = first_call_s(lambda: op_pass(fn, shape, inputs, dout, backward))
        if "fused" in impl and fused_launches() == launches:
            raise RuntimeError("the fused kernels never ran")
        check_close(out, ref_out, OUTPUT_TOL, f"{impl} output")
        for name, grad in grads.items():
            # not logit_scale's, a sum over every score of terms that cancel: its bf16 relative
            # error is ill-conditioned (eager's own reached 0.16 at batch 8); tests/op checks it
            if name != "logit_scale":
                check_close(grad, ref_grads[name], GRAD_TOL, f"{impl} d{name}")
        del ref_out, ref_grads, out, grads, as_fp32

        warmup, rounds, calls = (1, 3, 1) if not ON_GPU else (3, 5 if QUICK else 10,
                                                             CALLS_PER_ROUND)
        info = dict(impl=impl, shape=shape.label, dtype=str(dtype).removeprefix("torch."),
                    compile_s=compile_s)
        if "fused" in impl:
            info["kernel"] = "v1" if impl == "fused-v1" else fused_kernel(shape)
        seconds = measure(benchmark, lambda: op_pass(fn, shape, inputs, dout, backward), group,
                          warmup, rounds, calls, **info)
    if seconds is None:
        return
    gb_per_sec = op_bytes(shape, dtype.itemsize, backward=backward) / seconds / 1e9
    benchmark.extra_info.update(ms_per_call=seconds * 1e3, gb_per_sec=gb_per_sec)
    if ON_GPU:
        copy = copy_gb_per_sec()
        benchmark.extra_info.update(copy_gb_per_sec=copy, copy_fraction=gb_per_sec / copy)
