"""The fused op's gradients at full batch against a float64 eager reference, on the GPU.

Races between programs that accumulate one gradient (the relative position bias, summed over every
window; the qkv bias, over every padded token) do not show in Triton's interpreter, which runs one
program at a time. This runs fp32 inputs at batch 128 at Swin-T stage 1 and at CIFAR stage 1 (which
pads), twice each with fresh inputs, with each kernel generation, prints the relative errors and
exits 1 above the tolerance.

    python -m benchmarks.check_bias_grad [--batch 128] [--tol 1e-4]
"""
import argparse
import dataclasses
import functools
import itertools
import os
import sys

import torch

os.environ.setdefault("SWIN_FUSED_STRICT", "1")  # a silent eager fallback would check nothing

import swin_fused  # noqa: E402
from benchmarks.common import (  # noqa: E402
    CIFAR_STAGES,
    DEVICE,
    STAGE1,
    call_op,
    fused_launches,
    op_inputs,
    rel_error,
)
from swin_fused.eager import window_attention_eager  # noqa: E402

NAMES = ("out", "dqkv", "drel_bias", "dqkv_bias")


def gradients(fn, shape, inputs, dout):
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    out = call_op(fn, shape, leaves)
    return (out, *torch.autograd.grad(out, list(leaves.values()), dout))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=STAGE1.batch)
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()

    worst = 0.0
    for kernel, shape in itertools.product(("v1", "v2"), (STAGE1, CIFAR_STAGES[0])):
        shape = dataclasses.replace(shape, batch=args.batch)
        fused = functools.partial(swin_fused.window_attention, kernel=kernel)
        for seed in (1, 2):
            inputs, dout = op_inputs(shape, torch.float32, DEVICE, seed=seed)
            launches = fused_launches()
            got = gradients(fused, shape, inputs, dout)
            assert fused_launches() == launches + 2, "the fused kernels did not run"
            as64 = {k: v.double() for k, v in inputs.items()}
            expected = gradients(window_attention_eager, shape, as64, dout.double())
            errors = {name: rel_error(g, e)
                      for name, g, e in zip(NAMES, got, expected, strict=True)}
            if shape.H % shape.window == 0:
                del errors["dqkv_bias"]  # nothing pads, so the reference gradient is exactly zero
            worst = max([worst] + [e if e == e else float("inf") for e in errors.values()])
            print(f"{kernel} {shape.label} seed {seed}: "
                  + "  ".join(f"{k} {v:.2e}" for k, v in errors.items()), flush=True)
    ok = worst <= args.tol
    print(f"bias/qkv gradient check: worst relative error {worst:.2e} "
          f"{'<=' if ok else '>'} {args.tol:.0e}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
