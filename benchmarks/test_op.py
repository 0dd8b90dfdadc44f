"""The attention op alone (everything between the qkv and proj Linears) at Swin-T stage 1:
batch 128, 56x56, C 96, 3 heads, window 7, shift 3, bf16.

Impls: `eager` (swin_fused.eager, the reference code path), `sdpa` (pad/roll/partition in PyTorch,
then F.scaled_dot_product_attention with bias + mask as attn_mask, as timm does) and `fused`.
Groups `op-fwd-swin_t-stage1` and `op-fwdbwd-swin_t-stage1`. GB/s uses one byte count for every
impl (common.op_bytes) and is also given as a fraction of this GPU's copy bandwidth.
On a CPU only the eager forward runs, at batch 2 in fp32, as group `cpu-op-fwd-swin_t-stage1`.
"""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import swin_fused
from benchmarks.common import (GRAD_TOL, ON_GPU, OUTPUT_TOL, QUICK, STAGE1, call_op, check_close,
                               copy_gb_per_sec, first_call_s, fused_launches, measure, op_bytes,
                               op_inputs, skip_reason)
from swin_fused.eager import region_labels, window_attention_eager


def window_attention_sdpa(qkv, H, W, num_heads, window, shift, *, rel_bias, qkv_bias, scale):
    """timm's fused_attn path: roll and partition in PyTorch, one SDPA call with a materialised
    (windows, heads, N, N) bias + shift mask as attn_mask, then reverse and roll back."""
    assert H % window == 0 and W % window == 0, "written for maps without padding: qkv_bias unused"
    B, L, C3 = qkv.shape
    C, n, nh, nw = C3 // 3, window * window, H // window, W // window

    def partition(x):  # (B, H, W, ...) -> (B * nh * nw, n, ...)
        x = x.reshape(x.shape[0], nh, window, nw, window, *x.shape[3:])
        return x.transpose(2, 3).reshape(-1, n, *x.shape[5:])

    x = torch.roll(qkv.view(B, H, W, C3), (-shift, -shift), (1, 2))
    q, k, v = partition(x).view(-1, n, 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    labels = region_labels(H, window, shift, qkv.device)[:, None] * 3 \
        + region_labels(W, window, shift, qkv.device)[None, :]
    labels = partition(labels[None])  # (windows per image, n)
    mask = torch.where(labels[:, :, None] == labels[:, None, :], 0.0, -100.0)
    attn_mask = (rel_bias[None, None] + mask[None, :, None]).expand(B, -1, -1, -1, -1)
    attn_mask = attn_mask.reshape(-1, num_heads, n, n).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    out = out.transpose(1, 2).reshape(B, nh, nw, window, window, C).transpose(2, 3)
    return torch.roll(out.reshape(B, H, W, C), (shift, shift), (1, 2)).reshape(B, L, C)


OP_IMPLS = {"eager": window_attention_eager, "sdpa": window_attention_sdpa,
            "fused": swin_fused.window_attention}
CALLS_PER_ROUND = 10
CPU_SHAPE = dataclasses.replace(STAGE1, batch=2)


def cases():
    for direction in ("fwd", "fwdbwd"):
        for impl in OP_IMPLS:
            reason = skip_reason(impl)
            yield pytest.param(direction, impl, STAGE1, id=f"op-{direction}-swin_t-stage1-{impl}",
                               marks=[pytest.mark.skip(reason=reason)] if reason else [])
    yield pytest.param("fwd", "eager", CPU_SHAPE, id="cpu-op-fwd-swin_t-stage1-eager",
                       marks=[pytest.mark.skipif(ON_GPU, reason="CPU baseline; the GPU cases ran")])


def op_pass(fn, shape, inputs, dout, backward):
    """Output, and with `backward` the gradients of qkv and rel_bias for `dout`."""
    if not backward:
        with torch.no_grad():
            return call_op(fn, shape, inputs), ()
    out = call_op(fn, shape, inputs)
    return out, torch.autograd.grad(out, (inputs["qkv"], inputs["rel_bias"]), dout)


@pytest.mark.parametrize("direction, impl, shape", cases())
def test_op(benchmark, direction, impl, shape):
    backward = direction == "fwdbwd"
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    inputs, dout = op_inputs(shape, dtype, requires_grad=backward)
    fn = OP_IMPLS[impl]

    as_fp32 = {k: v.detach().float().requires_grad_(backward) for k, v in inputs.items()}
    ref_out, ref_grads = op_pass(window_attention_eager, shape, as_fp32, dout.float(), backward)
    launches = fused_launches() if impl == "fused" else 0
    compile_s, (out, grads) = first_call_s(lambda: op_pass(fn, shape, inputs, dout, backward))
    if impl == "fused":
        assert fused_launches() > launches, "the fused kernels never ran"
    check_close(out, ref_out, OUTPUT_TOL, f"{impl} output")
    for name, grad, ref in zip(("dqkv", "drel_bias"), grads, ref_grads):
        check_close(grad, ref, GRAD_TOL, f"{impl} {name}")
    del ref_out, ref_grads, out, grads, as_fp32

    group = f"op-{direction}-swin_t-stage1"
    warmup, rounds, calls = 3, 5 if QUICK else 10, CALLS_PER_ROUND
    if not ON_GPU:
        group, warmup, rounds, calls = "cpu-" + group, 1, 3, 1
    seconds = measure(benchmark, lambda: op_pass(fn, shape, inputs, dout, backward), group,
                      warmup, rounds, calls, impl=impl,
                      shape=shape.label, dtype=str(dtype).removeprefix("torch."),
                      compile_s=compile_s)
    if seconds is None:
        return
    gb_per_sec = op_bytes(shape, dtype.itemsize, backward=backward) / seconds / 1e9
    benchmark.extra_info.update(ms_per_call=seconds * 1e3, gb_per_sec=gb_per_sec)
    if ON_GPU:
        copy = copy_gb_per_sec()
        benchmark.extra_info.update(copy_gb_per_sec=copy, copy_fraction=gb_per_sec / copy)
