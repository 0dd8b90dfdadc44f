"""benchmarks/profile_step.py on the CPU, the fused kernels in Triton's interpreter, on the tiny
reference Swin (common.MODELS["tiny_swin"]): the summary file holds every section with numbers and
finds each fused call. The sections only a GPU fills (busy time, gaps, kernels) are checked on
synthetic profiler events."""
import re
from types import SimpleNamespace

import pytest

from benchmarks import profile_step
from benchmarks.common import make_model
from swin_fused.reference import SwinTransformerBlock

MODEL = "tiny_swin"


def summary_lines(tmp_path, impl, mode):
    argv = [MODEL, impl, "--mode", mode, "--batch", "2", "--steps", "1", "--warmup", "1",
            "--out", str(tmp_path)]
    assert profile_step.main(argv) == 0
    return (tmp_path / f"profile-step-{MODEL}-{impl}-{mode}.txt").read_text().splitlines()


def section(lines, title):
    """The indented lines under the line starting with `title`."""
    first = next(k for k, line in enumerate(lines) if line.startswith(title)) + 1
    rows = []
    for line in lines[first:]:
        if not line.startswith("  "):
            break
        rows.append(line)
    return rows


def fused_rows(lines):
    """{"forward" | "backward": [calls/step, CPU, Triton, aten, Python, before, GPU]} of the
    summary, the GPU column as written ("no GPU" on a CPU)."""
    rows = {}
    for row in section(lines, "fused calls"):
        kind, *cells = row.split()
        if kind in ("forward", "backward"):
            gpu = " ".join(cells[6:8]) if cells[6] == "no" else cells[6]
            rows[kind] = [float(v) for v in cells[:6]] + [gpu]
    return rows


def blocks():
    return sum(isinstance(m, SwinTransformerBlock)
               for m in make_model(MODEL, "eager", "infer").modules())


@pytest.mark.parametrize("impl, mode", [("fused", "train"), ("eager", "train"), ("fused", "infer")])
def test_summary_sections(tmp_path, impl, mode):
    lines = summary_lines(tmp_path, impl, mode)
    assert len(lines) <= profile_step.MAX_LINES
    wall = re.match(r"wall per step: ([\d.]+) ms unprofiled, ([\d.]+) ms profiled", lines[1])
    assert wall and float(wall[1]) > 0 and float(wall[2]) > 0, lines[1]
    assert "GPU: none (no GPU: CPU only)" in lines
    assert "top kernels by GPU time: none (no GPU)" in lines
    ops = section(lines, "top ops by self CPU time")
    assert ops and all(float(row.split()[0]) > 0 for row in ops)
    if impl == "eager":
        assert "fused calls: none in this profile" in lines
        return
    rows = fused_rows(lines)
    assert set(rows) == ({"forward", "backward"} if mode == "train" else {"forward"})
    for calls, cpu, triton, aten, python, before, gpu in rows.values():
        assert calls == blocks() and gpu == "no GPU"
        # the interpreter runs the kernels inside the launcher's range
        assert 0 < triton < cpu and aten >= 0 and python > 0 and before >= 0


def event(name, start, end, thread=1):
    """A profiler event as profile_step reads one."""
    return SimpleNamespace(name=name, thread=thread,
                           time_range=SimpleNamespace(start=start, end=end))


# one step on a GPU (us): the fused forward's kernel, a GEMM overlapping another, its backward's
DEVICE_EVENTS = [event("_fwd_window", 10, 20), event("gemm", 25, 45), event("gemm", 40, 48),
                 event("_bwd_window", 50, 60)]


def test_gpu_busy_time_and_gaps():
    busy, gaps, _ = profile_step.gpu_lines(DEVICE_EVENTS, steps=1, wall_us=100)
    # busy 10-20, 25-48, 50-60: 43 us; gaps 5 and 2 us
    assert busy == "GPU busy per step: 0.043 ms (43% of the profiled wall time)"
    assert gaps == ("GPU idle gaps between activities: 0.007 ms per step in 2 gaps, largest "
                    "0.005 ms")


def test_top_kernels():
    _, first, *_ = profile_step.kernel_lines(DEVICE_EVENTS, steps=1)
    assert first.split() == ["0.028", "ms", "2.0", "calls", "gemm"]


def test_fused_call_split_and_its_kernels():
    cpu_events = [event("aten::linear", 0, 3), event("_WindowAttention", 5, 30),
                  event("aten::empty", 6, 8), event("triton launch: _fwd_window", 10, 18),
                  event("aten::copy_", 11, 12)]
    splits = profile_step.fused_splits(cpu_events)
    (split,) = splits["forward"]
    # 25 us inside: 8 in Triton's launcher (its copy_ included), 2 in aten ops, 15 in Python;
    # 2 us idle after the linear
    assert split == dict(cpu=25, triton=8, aten=2, python=15, before=2, kernels={"_fwd_window"})
    rows = fused_rows(profile_step.fused_lines(splits, DEVICE_EVENTS, steps=1))
    # the GPU column: the 10 us of the one kernel launched inside the call
    assert rows == {"forward": [1.0, 25.0, 8.0, 2.0, 15.0, 2.0, "10.0"]}
