"""One model step under torch.profiler: is it bound by the GPU or by the host, which kernels and
ops cost, and where a fused call's time goes.

    python -m benchmarks.profile_step MODEL IMPL [--mode train|infer] [--batch N] [--steps K]
                                      [--warmup W] [--out DIR]

MODEL and IMPL as in benchmarks/test_models.py (common.MODELS; eager, sdpa, fused, ...), built by
common.make_model, make_batch and make_step. After W warm-up steps, K steps are timed unprofiled,
then K more are profiled (CPU and, on a GPU, CUDA activities). The summary (at most 60 lines) is
printed and written to DIR/profile-step-MODEL-IMPL-MODE.txt:
- wall time per step, unprofiled and profiled;
- GPU busy time per step and the idle gaps between GPU activities (sum per step, largest);
- the top kernels by GPU time and the top ops by self CPU time;
- per fused call (the autograd Function's forward and backward node, or the custom ops under
  torch.compile): the CPU time inside it, split into Triton's launcher (a range this script puts
  around each launch of swin_fused's Triton kernels), aten ops, and the rest, swin_fused's Python
  (with autograd's own work for the call and the ranges' own cost, microseconds each); the host
  time just before a forward call with no op running (the op's argument checks, which run before
  autograd.Function.apply, and the family's code since its last op); the GPU time of its Triton
  kernels.
Without a GPU the fused kernels run in Triton's interpreter (TRITON_INTERPRET=1 is set here): the
launcher's time is then the interpreter running the kernels, and there are no GPU numbers. Speed
is measured on a GPU only; a CPU run shows that the profile works.
Exits 1 when a fused impl's profile holds no fused call.
"""
import argparse
import bisect
import collections
import contextlib
import itertools
import os
import sys
import time
from unittest import mock

import torch

TRITON_RANGE = "triton launch: "
# the fused op's calls as profiler events: the eager path's autograd.Function and its backward
# node (swin_fused.ops._WindowAttention), and the custom ops torch.compile and dispatch modes call
FUSED_CALLS = {"_WindowAttention": "forward", "_WindowAttentionBackward": "backward",
               "swin_fused::window_attention_fwd": "forward",
               "swin_fused::window_attention_bwd": "backward"}
TOP = 8
MAX_LINES = 60


@contextlib.contextmanager
def triton_launch_ranges():
    """Each launch of swin_fused's Triton kernels inside a profiler range named after the kernel
    (Triton's launcher binds the arguments, looks up the compiled kernel and launches it)."""
    from benchmarks.common import triton_kernels
    with contextlib.ExitStack() as stack:
        for kernel in triton_kernels():
            ranged = _in_range(kernel.run, TRITON_RANGE + kernel.fn.__name__)
            stack.enter_context(mock.patch.object(kernel, "run", ranged))
        yield


def _in_range(run, name):
    def ranged(*args, **kwargs):
        with torch.profiler.record_function(name):
            return run(*args, **kwargs)
    return ranged


def timed_steps(step, steps):
    """Seconds per step over `steps` synchronised steps."""
    from benchmarks.common import synchronize
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return (time.perf_counter() - start) / steps


def profiled_steps(step, steps):
    """(seconds per step, the profiler) over `steps` steps, CUDA activities too on a GPU."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        seconds = timed_steps(step, steps)
    return seconds, prof


def start(e):
    return e.time_range.start


def end(e):
    return e.time_range.end


def outermost(events):
    """The events that lie inside no other of them (one thread's events nest)."""
    kept = []
    for e in sorted(events, key=lambda e: (start(e), -end(e))):
        if not kept or start(e) >= end(kept[-1]):
            kept.append(e)
    return kept


def merged_intervals(events):
    """The union of the events' time ranges, as sorted disjoint [start, end] pairs (us)."""
    merged = []
    for e in sorted(events, key=start):
        if merged and start(e) <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end(e))
        else:
            merged.append([start(e), end(e)])
    return merged


def gpu_lines(device_events, steps, wall_us):
    """GPU busy time per step and the idle gaps between GPU activities."""
    if not device_events:
        return ["GPU: none (no GPU: CPU only)", ""]
    busy = merged_intervals(device_events)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(busy)]
    busy_us = sum(b - a for a, b in busy)
    return [f"GPU busy per step: {busy_us / steps / 1e3:.3f} ms ({busy_us / wall_us:.0%} of the "
            "profiled wall time)",
            f"GPU idle gaps between activities: {sum(gaps) / steps / 1e3:.3f} ms per step in "
            f"{len(gaps) / steps:.0f} gaps, largest {max(gaps, default=0) / 1e3:.3f} ms", ""]


def kernel_lines(device_events, steps):
    """The kernels (and copies) with the most GPU time."""
    if not device_events:
        return ["top kernels by GPU time: none (no GPU)", ""]
    total, calls = collections.Counter(), collections.Counter()
    for e in device_events:
        total[e.name] += end(e) - start(e)
        calls[e.name] += 1
    lines = ["top kernels by GPU time, per step:"]
    return lines + [f"  {us / steps / 1e3:10.3f} ms {calls[name] / steps:8.1f} calls  {name[:60]}"
                    for name, us in total.most_common(TOP)] + [""]


def op_lines(prof, steps):
    """The ops (and ranges) with the most self CPU time."""
    averages = [a for a in prof.key_averages() if a.self_cpu_time_total > 0]
    averages.sort(key=lambda a: a.self_cpu_time_total, reverse=True)
    lines = ["top ops by self CPU time, per step:"]
    return lines + [f"  {a.self_cpu_time_total / steps / 1e3:10.3f} ms {a.count / steps:8.1f} "
                    f"calls  {a.key[:60]}" for a in averages[:TOP]] + [""]


class Timeline:
    """One thread's CPU events in start order, to find what lies inside a range or before it."""

    def __init__(self, events):
        self.events = sorted(events, key=start)
        self.starts = [start(e) for e in self.events]

    def inside(self, outer):
        first = bisect.bisect_left(self.starts, start(outer))
        last = bisect.bisect_right(self.starts, end(outer))
        return [e for e in self.events[first:last] if e is not outer and end(e) <= end(outer)]

    def idle_before(self, call):
        """Time between the end of the last event that ended before `call` and its start."""
        before = self.events[:bisect.bisect_left(self.starts, start(call))]
        ends = [end(e) for e in before if end(e) <= start(call)]
        return start(call) - max(ends) if ends else 0.0


def fused_call_split(call, timeline):
    """{part: us} of one fused call: CPU inside it, Triton's launcher, aten ops, the rest."""
    inside = timeline.inside(call)
    launches = outermost(e for e in inside if e.name.startswith(TRITON_RANGE))
    in_launch = merged_intervals(launches)
    aten = [e for e in outermost(e for e in inside if e.name.startswith("aten::"))
            if not any(a <= start(e) < b for a, b in in_launch)]
    cpu = end(call) - start(call)
    triton = sum(end(e) - start(e) for e in launches)
    aten_us = sum(end(e) - start(e) for e in aten)
    return dict(cpu=cpu, triton=triton, aten=aten_us, python=cpu - triton - aten_us,
                before=timeline.idle_before(call) if FUSED_CALLS[call.name] == "forward" else 0.0,
                kernels={e.name.removeprefix(TRITON_RANGE) for e in launches})


def fused_splits(cpu_events):
    """{"forward" | "backward": [fused_call_split of each call]}, calls found thread by thread."""
    threads = collections.defaultdict(list)
    for e in cpu_events:
        threads[e.thread].append(e)
    splits = collections.defaultdict(list)
    for events in threads.values():
        timeline = Timeline(events)
        for call in outermost(e for e in events if e.name in FUSED_CALLS):
            splits[FUSED_CALLS[call.name]].append(fused_call_split(call, timeline))
    return splits


def launched_as(gpu_name, kernels):
    """Whether a GPU kernel is one of these Triton kernels (older Tritons append a signature)."""
    return any(gpu_name == k or gpu_name.startswith(k + "_") for k in kernels)


def fused_lines(splits, device_events, steps):
    """Per fused call kind: calls per step and the mean split of one call."""
    gpu_us = collections.Counter()
    for e in device_events:
        gpu_us[e.name] += end(e) - start(e)
    calls = sum(len(parts) for parts in splits.values())
    if not calls:
        return ["fused calls: none in this profile"]
    lines = [f"fused calls: {calls / steps:.1f} per step; us per call (mean)",
             "  CPU inside the call = Triton (launcher) + aten (ops) + Python (swin_fused's);",
             "  before: host time with no op running just before a forward's apply (argument",
             "  checks); GPU: the call's Triton kernels",
             f"  {'call':9} {'calls/step':>10} {'CPU':>9} {'Triton':>9} {'aten':>9} "
             f"{'Python':>9} {'before':>9} {'GPU':>9}"]
    for kind, parts in splits.items():
        kernels = set().union(*(p["kernels"] for p in parts))
        gpu_total = sum(us for name, us in gpu_us.items() if launched_as(name, kernels))
        gpu = f"{gpu_total / len(parts):.1f}" if device_events else "no GPU"
        mean = {key: sum(p[key] for p in parts) / len(parts)
                for key in ("cpu", "triton", "aten", "python", "before")}
        lines.append(f"  {kind:9} {len(parts) / steps:10.1f} {mean['cpu']:9.1f} "
                     f"{mean['triton']:9.1f} {mean['aten']:9.1f} {mean['python']:9.1f} "
                     f"{mean['before']:9.1f} {gpu:>9}  ({', '.join(sorted(kernels))})")
    if not device_events:
        lines.append("  no GPU: the Triton column is the interpreter running the kernels")
    return lines


def summary(args, unprofiled_s, profiled_s, prof):
    """The summary's lines and the number of fused calls the profile holds."""
    from torch.autograd import DeviceType
    events = prof.events()
    cpu_events = [e for e in events if e.device_type == DeviceType.CPU]
    device_events = [e for e in events if e.device_type == DeviceType.CUDA]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"
    precision = "bf16 autocast" if torch.cuda.is_available() else "fp32"
    lines = [f"profile_step {args.model} {args.impl} {args.mode}, batch {args.batch}, "
             f"{args.steps} steps after {args.warmup} warm-up, {precision}, {device}; "
             f"torch {torch.__version__}",
             f"wall per step: {unprofiled_s * 1e3:.3f} ms unprofiled, {profiled_s * 1e3:.3f} ms "
             "profiled", ""]
    lines += gpu_lines(device_events, args.steps, profiled_s * args.steps * 1e6)
    lines += kernel_lines(device_events, args.steps)
    lines += op_lines(prof, args.steps)
    splits = fused_splits(cpu_events)
    lines += fused_lines(splits, device_events, args.steps)
    return lines[:MAX_LINES], sum(len(parts) for parts in splits.values())


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model of benchmarks/common.py's MODELS")
    parser.add_argument("impl", help="eager, sdpa, fused, ... as in benchmarks/test_models.py")
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--batch", type=int, help="default: the model's benchmark batch")
    parser.add_argument("--steps", type=int, default=3, help="steps timed, then as many profiled")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results", help="the results folder")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        # set before Triton is imported: the fused kernels can run on a CPU only interpreted
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # a fused impl that silently fell back to eager would be profiled as fused
    os.environ.setdefault("SWIN_FUSED_STRICT", "1")
    from benchmarks.common import MODELS, make_batch, make_model, make_step
    args.batch = args.batch or MODELS[args.model].batch
    model = make_model(args.model, args.impl, args.mode)
    step = make_step(model, args.mode, *make_batch(args.model, args.batch))
    for _ in range(args.warmup):
        step()
    unprofiled_s = timed_steps(step, args.steps)
    with triton_launch_ranges() if "fused" in args.impl else contextlib.nullcontext():
        profiled_s, prof = profiled_steps(step, args.steps)
    lines, n_calls = summary(args, unprofiled_s, profiled_s, prof)
    text = "\n".join(lines) + "\n"
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"profile-step-{args.model}-{args.impl}-{args.mode}.txt")
    with open(path, "w") as f:
        f.write(text)
    print(text, end="")
    if "fused" in args.impl and n_calls == 0:
        print(f"profile_step: no fused call in the profile of {args.impl}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
