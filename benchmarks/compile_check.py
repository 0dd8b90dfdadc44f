"""Compile the fused kernels for an H100 (sm_90) without a GPU and report their resources.

Every dtype, head-dim block, window tiling and cosine flag the tests use, with the launchers' own
warps and pipeline depth: shared memory (Triton's count; 227 KB is the limit) and, from Triton's
bundled ptxas, registers and spills. Exits 1 if a kernel would not fit. A compile-time check, no
timing: it says what fits and what spills, not how fast anything runs.

    python -m benchmarks.compile_check
"""
import itertools
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from swin_fused.kernels import window_attention as kernels

SHARED_LIMIT = 227 * 1024
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FLOAT_ARGS = {"scale"}
F32_POINTERS = ("STATS", "BIAS", "QKV_BIAS", "LOGIT_SCALE", "DBIAS", "DPAD", "DSCALE")


def compile_for_h100(fn, dtype_name, constants, num_warps, num_stages):
    signature = {}
    for name in fn.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.isupper() and name not in kernels.GEOMETRY_ARGS:  # H and W are sizes
            signature[name] = "*fp32" if name in F32_POINTERS else f"*{dtype_name}"
        else:
            signature[name] = "fp32" if name in FLOAT_ARGS else "i32"
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def ptxas_report(ptx):
    """'N registers, M bytes spilled' from Triton's bundled ptxas."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        info = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", path, "-o", path + ".cubin"],
                              capture_output=True, text=True).stderr
    registers = re.search(r"Used (\d+) registers", info).group(1)
    spills = re.search(r"(\d+) bytes spill stores", info).group(1)
    return f"{registers} registers, {spills} B spilled"


def main():
    fits = True
    print(f"{'dtype':5} {'block_d':>7} {'window':>6} {'cos':>3}  forward / backward")
    for (name, dtype), block_d, window, cosine in itertools.product(
            DTYPES.items(), (16, 32, 64, 128), ((4, 4), (7, 7), (9, 9)), (False, True)):
        n = window[0] * window[1]
        block = min(kernels.MAX_BLOCK, max(16, triton.next_power_of_2(n)))
        constants = dict(WH=window[0], WW=window[1], BLOCK=block, BLOCK_D=block_d, HAS_BIAS=True,
                         HAS_QKV_BIAS=True, COSINE=cosine,
                         PRECISION="ieee" if dtype == torch.float32 else "tf32")
        stages = kernels.backward_stages(triton.cdiv(n, block), block_d * dtype.itemsize)
        reports = []
        for fn, num_stages in ((kernels._window_attn_fwd, 3), (kernels._window_attn_bwd, stages)):
            compiled = compile_for_h100(fn, name, constants, kernels.NUM_WARPS, num_stages)
            fits &= compiled.metadata.shared <= SHARED_LIMIT
            reports.append(f"{compiled.metadata.shared // 1024} KB shared, "
                           f"{ptxas_report(compiled.asm['ptx'])}")
        print(f"{name:5} {block_d:7} {window[0]}x{window[1]:<4} {'y' if cosine else 'n':>3}  "
              + " / ".join(reports), flush=True)
    print("every kernel fits" if fits else f"OVER the {SHARED_LIMIT // 1024} KB shared memory limit")
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())
