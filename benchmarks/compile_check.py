"""Compile the fused kernels of both generations for an H100 (sm_90) without a GPU and report their
resources.

Every dtype and head-dim block at windows 7x7, 8x8, 4x4 and 9x9, cosine at 7x7, and (v2 only) 3-D
windows at head dims 32 and 64, with each launcher's own default settings (`kernel_configs`) and
the specialisation a contiguous qkv gets: shared memory (Triton's count; 227 KB is the limit) and,
from Triton's bundled ptxas, registers and spills. Exits 1 if a kernel would not fit,
or if v2 spills at head dims 16-64 with 7x7 or 8x8 windows in fp16 or bf16. A compile-time check,
no timing: it says what fits and what spills, not how fast anything runs.

    python -m benchmarks.compile_check [--kernel v1|v2] [--quick]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from swin_fused.kernels import common, v1, v2

SHARED_LIMIT = 227 * 1024
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
GENERATIONS = {"v1": v1, "v2": v2}
FLOAT_ARGS = {"scale", "mask_value"}
F32_POINTERS = {"STATS", "DELTA", "BIAS", "MASKS", "TABLE", "QKV_BIAS", "LOGIT_SCALE", "DBIAS",
                "DPAD", "DSCALE", "DREL_BIAS", "DQKV_BIAS", "DLOGIT_SCALE"}
WINDOWS_3D = ((2, 3, 3), (8, 7, 7), (7, 7, 7))
# the shapes that must not spill in v2 (the goal): head dims 16-64, 7x7 and 8x8, half
NO_SPILL = dict(dtypes=("fp16", "bf16"), head_dims=(16, 32, 64), windows=((1, 7, 7), (1, 8, 8)))


def launch_ints(head_dim, heads=3):
    """The ints a launch on a contiguous qkv passes, which Triton specialises (1 -> constant,
    a multiple of 16 -> aligned): the compile sees what the GPU runs."""
    return dict(stride_qc=1, stride_ql=3 * heads * head_dim, stride_qb=3 * heads * head_dim * 64,
                head_dim=head_dim, n_heads=heads)


def compile_for_h100(fn, dtype_name, constants, num_warps, num_stages, ints=None):
    constants = {k: v for k, v in constants.items() if k in fn.arg_names}
    constants.update({k: 1 for k, v in (ints or {}).items() if v == 1 and k in fn.arg_names})
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constants:
            signature[name] = "constexpr"
            continue
        if name.isupper() and name not in common.GEOMETRY_ARGS:  # T, H and W are sizes
            signature[name] = "*fp32" if name in F32_POINTERS else f"*{dtype_name}"
        else:
            signature[name] = "fp32" if name in FLOAT_ARGS else "i32"
        if signature[name].startswith("*") or (ints or {}).get(name, 1) % 16 == 0:
            attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=fn, signature=signature, attrs=attrs,
                       constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def ptxas_report(ptx):
    """(registers, bytes spilled) from Triton's bundled ptxas."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        info = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", path, "-o", path + ".cubin"],
                              capture_output=True, text=True).stderr
    return (int(re.search(r"Used (\d+) registers", info).group(1)),
            int(re.search(r"(\d+) bytes spill stores", info).group(1)))


def cases(generation, quick):
    """(dtype, head dim, window, cosine): the no-spill shapes first, then cosine at 7x7, other
    windows, and 3-D for v2. Quick: the no-spill shapes, and 8x7x7 and 7x7x7 in bf16 for v2."""
    rows = [(d, h, w, False) for w in NO_SPILL["windows"] for d in NO_SPILL["dtypes"]
            for h in NO_SPILL["head_dims"]]
    three_d = [(d, h, w, False) for w in WINDOWS_3D for d in DTYPES for h in (32, 64)]
    if quick:
        return rows + ([r for r in three_d if r[0] == "bf16" and r[1] == 32 and r[2][0] > 2]
                       if generation == "v2" else [])
    rows += [(d, h, w, False) for w in NO_SPILL["windows"] for d, h in (("fp32", 16), ("fp32", 32),
                                                                       ("fp32", 64))]
    rows += [(d, 128, w, False) for w in NO_SPILL["windows"] for d in DTYPES]
    rows += [(d, h, (1, 7, 7), True) for d in DTYPES for h in (16, 32, 64, 128)]
    rows += [(d, h, w, False) for w in ((1, 4, 4), (1, 9, 9)) for d in DTYPES
             for h in (16, 32, 64, 128)]
    return rows + (three_d if generation == "v2" else [])


def must_not_spill(generation, dtype_name, head_dim, window):
    return (generation == "v2" and dtype_name in NO_SPILL["dtypes"]
            and head_dim in NO_SPILL["head_dims"] and window in NO_SPILL["windows"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=GENERATIONS, action="append",
                        help="generation to compile (repeatable); default both")
    parser.add_argument("--quick", action="store_true",
                        help="only the no-spill shapes (and two 3-D windows for v2)")
    args = parser.parse_args()
    ok = True
    print(f"{'gen':3} {'dtype':5} {'hdim':>4} {'window':>7} {'cos':>3}  "
          "kernel: shared KB, registers, spilled bytes (warps, stages)")
    for generation in args.kernel or GENERATIONS:
        module = GENERATIONS[generation]
        for dtype_name, head_dim, window, cosine in cases(generation, args.quick):
            geometry = common.Geometry.of(window, window, (0, 0, 0), False)
            reports = []
            for name, fn, constexprs, launch in module.kernel_configs(
                    geometry, head_dim, DTYPES[dtype_name]):
                constants = dict(constexprs, HAS_BIAS=True, HAS_QKV_BIAS=True, COSINE=cosine)
                compiled = compile_for_h100(fn, dtype_name, constants, **launch,
                                            ints=launch_ints(head_dim))
                registers, spilled = ptxas_report(compiled.asm["ptx"])
                fits = compiled.metadata.shared <= SHARED_LIMIT
                clean = spilled == 0 or not must_not_spill(generation, dtype_name, head_dim, window)
                ok &= fits and clean
                reports.append(f"{name}: {compiled.metadata.shared // 1024} KB, {registers} regs, "
                               f"{spilled} B ({launch['num_warps']}w {launch['num_stages']}s)"
                               + ("" if fits else " OVER SHARED") + ("" if clean else " SPILLS"))
            label = "x".join(map(str, window[1:] if window[0] == 1 else window))
            print(f"{generation:3} {dtype_name:5} {head_dim:4} {label:>7} "
                  f"{'y' if cosine else 'n':>3}  "
                  + " | ".join(reports), flush=True)
    print("every kernel fits, v2 without spills where required" if ok else
          f"FAILED: over {SHARED_LIMIT // 1024} KB of shared memory, "
          "or v2 spills where it must not")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
