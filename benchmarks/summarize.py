"""Summarise pytest-benchmark JSON: merged JSON, summary.md (tables and targets) and a chart.

    python benchmarks/summarize.py PART.json... [--merged bench.json] [--md summary.md]
                                   [--png chart.png] [--stages stages.txt]

Speedups are throughput ratios within one run (images/s for models, GB/s for the op, both
proportional to 1/time). The summary is generated from the JSON only; never edit it by hand.
"""
import argparse
import json
import operator
import os
import sys

# impl -> the impl it is compared with besides eager
SECOND_BASELINE = {"fused": "sdpa", "fused+compiled": "compiled"}
IMPL_ORDER = ("eager", "sdpa", "compiled", "fused", "fused+compiled")

# (label, group, impl, baseline, metric, comparison, goal)
TARGETS = (
    ("op fwd+bwd >= 3x eager", "op-fwdbwd-swin_t-stage1", "fused", "eager", "speed", ">=", 3.0),
    ("op fwd+bwd faster than sdpa", "op-fwdbwd-swin_t-stage1", "fused", "sdpa", "speed", ">", 1.0),
    ("Swin-T 224 train >= 1.25x eager", "train-224-swin_t", "fused", "eager", "speed", ">=", 1.25),
    ("fused+compiled >= 1.1x compiled (Swin-T 224 train)", "train-224-swin_t", "fused+compiled",
     "compiled", "speed", ">=", 1.1),
    ("Swin-T 224 inference >= 1.4x eager", "infer-224-swin_t", "fused", "eager", "speed", ">=",
     1.4),
    ("CIFAR train >= 1.5x eager", "train-cifar-swin_cifar", "fused", "eager", "speed", ">=", 1.5),
    ("train peak memory at 224 <= 0.85x eager", "train-224-swin_t", "fused", "eager", "memory",
     "<=", 0.85),
)
COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le}


def merge(paths):
    """One pytest-benchmark document from several; a case run twice keeps its last result."""
    merged, cases = None, {}
    for path in paths:
        try:
            with open(path) as f:
                doc = json.load(f)
        except json.JSONDecodeError:
            # pytest-benchmark leaves an empty file when no case ran or its process was killed
            continue
        merged = merged or doc
        for bench in doc.get("benchmarks", []):
            cases[bench["fullname"]] = bench
    merged = dict(merged or {}, benchmarks=list(cases.values()))
    merged["merged_from"] = [os.path.basename(p) for p in paths]
    return merged


def results(doc):
    """{group: {impl: benchmark}}."""
    table = {}
    for bench in doc["benchmarks"]:
        impl = bench["extra_info"].get("impl", bench["param"])
        table.setdefault(bench["group"], {})[impl] = bench
    return table


def rate(bench):
    info = bench["extra_info"]
    return info.get("images_per_sec") or info.get("gb_per_sec") or 1 / bench["stats"]["median"]


def ratio(table, group, impl, baseline, metric):
    """impl's speedup (or peak-memory ratio) over baseline in group; None if either is missing."""
    runs = table.get(group, {})
    if impl not in runs or baseline not in runs:
        return None
    if metric == "speed":
        return rate(runs[impl]) / rate(runs[baseline])
    mem, base = (runs[i]["extra_info"].get("peak_mem_mib") for i in (impl, baseline))
    return mem / base if mem and base else None


def fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def number(x):
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def throughput(info):
    if "images_per_sec" in info:
        return f"{number(info['images_per_sec'])} img/s"
    if "gb_per_sec" in info:
        copy = fmt(info.get("copy_fraction"), ".0%")
        return f"{number(info['gb_per_sec'])} GB/s ({copy} of copy)"
    return "-"


def ordered(runs):
    return sorted(runs, key=lambda i: IMPL_ORDER.index(i) if i in IMPL_ORDER else len(IMPL_ORDER))


def group_rows(table, group):
    runs = table[group]
    for impl in ordered(runs):
        bench, info = runs[impl], runs[impl]["extra_info"]
        ms = bench["stats"]["median"] * 1e3 / info.get("calls_per_round", 1)
        second = SECOND_BASELINE.get(impl)
        vs_second = ratio(table, group, impl, second, "speed") if second else None
        yield (f"| {group} | {impl} | {ms:.3f} | {throughput(info)} "
               f"| {fmt(ratio(table, group, impl, 'eager', 'speed'), '.2f')}x "
               f"| {f'{vs_second:.2f}x vs {second}' if vs_second else '-'} "
               f"| {fmt(info.get('peak_mem_mib'), '.0f')} "
               f"| {fmt(ratio(table, group, impl, 'eager', 'memory'), '.2f')} "
               f"| {fmt(info.get('compile_s'), '.1f')} |")


def target_lines(table):
    for label, group, impl, baseline, metric, op, goal in TARGETS:
        value = ratio(table, group, impl, baseline, metric)
        if value is None:
            status = "NO DATA"
        else:
            status = "PASS" if COMPARE[op](value, goal) else "FAIL"
        yield status, f"{label}: {fmt(value, '.2f', 'no data')} ({impl} / {baseline}, {group})"


def markdown(doc, table, stages):
    info = doc.get("machine_info", {})
    lines = ["# swin-fused benchmark summary", "",
             f"GPU: {info.get('gpu', '?')}; torch {info.get('torch', '?')}, "
             f"triton {info.get('triton', '?')}, torchvision {info.get('torchvision', '?')}. "
             f"Generated by benchmarks/summarize.py from {', '.join(doc['merged_from'])}.", "",
             "Times are medians per step (models) or per call (op); speedups are throughput "
             "ratios; memory is peak allocated memory over one step; compile s is the first "
             "call, compilation included.", "", "## Targets", ""]
    lines += [f"- **{status}** {text}" for status, text in target_lines(table)]
    lines += ["", "## Results", "",
              "| group | impl | ms | throughput | vs eager | vs baseline | peak MiB | mem / eager "
              "| compile s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for group in table:
        lines += group_rows(table, group)
    if stages:
        lines += ["", "## Stages of gpu_check.sh", "", "```", stages.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def chart(table, path):
    """Speedup over eager per group and impl: bars from 1x on a log axis, left means slower."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    groups = [g for g in table if "eager" in table[g] and len(table[g]) > 1]
    impls = [i for i in IMPL_ORDER[1:] if any(i in table[g] for g in groups)]
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.6 * len(groups)))
    height = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        rows = [(i, ratio(table, g, impl, "eager", "speed")) for i, g in enumerate(groups)
                if impl in table[g]]
        ax.barh([i + k * height for i, _ in rows], [x - 1 for _, x in rows], height, left=1,
                label=impl)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([i + (len(impls) - 1) * height / 2 for i in range(len(groups))], groups)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over eager (throughput ratio, log scale)")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("swin-fused vs eager PyTorch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="*", help="pytest-benchmark --benchmark-json outputs")
    parser.add_argument("--merged", help="write the merged JSON here")
    parser.add_argument("--md", help="write the markdown summary here")
    parser.add_argument("--png", help="write the speedup chart here")
    parser.add_argument("--stages", help="gpu_check.sh's stage log, quoted in the summary")
    args = parser.parse_args()

    paths = [p for p in args.json if os.path.exists(p)]
    doc = merge(paths)
    table = results(doc)
    stages = open(args.stages).read() if args.stages and os.path.exists(args.stages) else ""
    if args.merged:
        with open(args.merged, "w") as f:
            json.dump(doc, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(markdown(doc, table, stages))
    if args.png and any(len(runs) > 1 for runs in table.values()):
        chart(table, args.png)

    print(f"{len(doc['benchmarks'])} results from {len(paths)} file(s)")
    for group in table:
        speedups = ", ".join(f"{impl} {fmt(ratio(table, group, impl, 'eager', 'speed'), '.2f')}x"
                             for impl in ordered(table[group]) if impl != "eager")
        print(f"  {group}: {throughput(table[group].get('eager', {}).get('extra_info', {}))} eager"
              + (f"; {speedups}" if speedups else ""))
    for status, text in target_lines(table):
        print(f"  {status:7} {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
