"""Summarise pytest-benchmark JSON: merged JSON, summary.md (targets, tables, skipped cases, the
CIFAR-10 epoch time) and a chart.

    python benchmarks/summarize.py PART.json... [--merged bench.json] [--md summary.md]
                                   [--png chart.png] [--stages stages.txt]

Speedups are throughput ratios within one run (images/s for models, GB/s for the op, both
proportional to 1/time). "fused vs best peer" compares each fused impl with the fastest of what a
user could run instead (PEERS) in the same group. The summary is generated from the JSON only;
never edit it by hand.
"""
import argparse
import json
import math
import operator
import os
import sys

IMPL_ORDER = ("eager", "sdpa", "compiled", "sdpa+compiled", "flex", "fused-v1", "fused",
              "fused+compiled", "fused+cudagraph", "fused+compiled-ro")
# what a user can already run in plain PyTorch instead of swin-fused
PEERS = ("eager", "sdpa", "compiled", "flex", "sdpa+compiled")
GROUP_ORDER = ("op-fwdbwd-", "op-fwd-", "train-", "infer-", "latency-", "cpu-")

# the seed's workflow: one CIFAR-10 training epoch is 50,000 images at batch 64
EPOCH_GROUP = "train-cifar-swin_cifar-b64"
CIFAR_TRAIN_IMAGES = 50_000
ARTICLE_EPOCH_S = 95  # the seed article's tqdm: 781 steps in 1:30-1:40, fp32, GPU not named

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
    # the same goal with the host taken out of the step: one CUDA graph, or Inductor's
    ("Swin-T 224 train in a CUDA graph >= 1.25x eager", "train-224-swin_t", "fused+cudagraph",
     "eager", "speed", ">=", 1.25),
    ("reduce-overhead fused+compiled >= 1.1x compiled (Swin-T 224 train)", "train-224-swin_t",
     "fused+compiled-ro", "compiled", "speed", ">=", 1.1),
    # the model-level peers: Hugging Face's and MONAI's own SDPA paths
    ("HF Swin-T 224 train: fused faster than HF's sdpa", "train-224-hf_swin_t", "fused", "sdpa",
     "speed", ">", 1.0),
    ("HF Swin-T 224 train: fused+compiled faster than sdpa+compiled", "train-224-hf_swin_t",
     "fused+compiled", "sdpa+compiled", "speed", ">", 1.0),
    ("SwinUNETR 96^3 inference: fused faster than MONAI's SDPA", "infer-3d-swin_unetr", "fused",
     "sdpa", "speed", ">", 1.0),
    # windows over 64 tokens: the tiled kernels
    ("op fwd+bwd at Swin-B 384 stage 1 (window 12) faster than sdpa",
     "op-fwdbwd-swin_b_384-stage1", "fused", "sdpa", "speed", ">", 1.0),
    ("op fwd+bwd at Swin V2-T 256 stage 1 (window 16, cosine) faster than sdpa",
     "op-fwdbwd-swinv2_t_w16-stage1", "fused", "sdpa", "speed", ">", 1.0),
)
COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le}


def merge(paths):
    """One pytest-benchmark document from several; a case run twice keeps its last result, and a
    case skipped in one part but measured in another counts as measured."""
    merged, cases, skipped = None, {}, {}
    for path in paths:
        try:
            with open(path) as f:
                doc = json.load(f)
        except json.JSONDecodeError:
            # pytest-benchmark leaves an empty file when its process was killed
            continue
        merged = merged or doc
        for bench in doc.get("benchmarks", []):
            cases[bench["fullname"]] = bench
        for skip in doc.get("skipped", []):
            skipped[skip["fullname"]] = skip
    merged = dict(merged or {}, benchmarks=list(cases.values()),
                  skipped=[s for name, s in skipped.items() if name not in cases])
    merged["merged_from"] = [os.path.basename(p) for p in paths]
    return merged


def group_key(group):
    kind = next((k for k, prefix in enumerate(GROUP_ORDER) if group.startswith(prefix)),
                len(GROUP_ORDER))
    return kind, group


def impl_key(impl):
    return IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER)


def results(doc):
    """{group: {impl: benchmark}}, groups in GROUP_ORDER."""
    table = {}
    for bench in doc["benchmarks"]:
        impl = bench["extra_info"].get("impl", bench["param"])
        table.setdefault(bench["group"], {})[impl] = bench
    return {group: table[group] for group in sorted(table, key=group_key)}


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


def best_peer(table, group):
    """The fastest peer measured in group, or None."""
    peers = [impl for impl in PEERS if impl in table.get(group, {})]
    return max(peers, key=lambda impl: rate(table[group][impl]), default=None)


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
    return sorted(runs, key=impl_key)


def vs_best_peer(table, group, impl):
    """'2.50x vs sdpa' for a fused impl; '-' for a peer or when no peer was measured."""
    peer = best_peer(table, group)
    if not impl.startswith("fused") or peer is None:
        return "-"
    return f"{ratio(table, group, impl, peer, 'speed'):.2f}x vs {peer}"


def impl_label(impl, info):
    kernel = info.get("kernel")
    return f"{impl} ({kernel})" if kernel and kernel not in impl else impl


def group_rows(table, group):
    runs = table[group]
    for impl in ordered(runs):
        bench, info = runs[impl], runs[impl]["extra_info"]
        ms = bench["stats"]["median"] * 1e3 / info.get("calls_per_round", 1)
        yield (f"| {group} | {impl_label(impl, info)} | {ms:.3f} | {throughput(info)} "
               f"| {fmt(ratio(table, group, impl, 'eager', 'speed'), '.2f')}x "
               f"| {vs_best_peer(table, group, impl)} "
               f"| {fmt(info.get('peak_mem_mib'), '.0f')} "
               f"| {fmt(ratio(table, group, impl, 'eager', 'memory'), '.2f')} "
               f"| {fmt(info.get('compile_s'), '.1f')} |")


def results_table(table):
    lines = ["| group | impl | ms | throughput | vs eager | fused vs best peer | peak MiB "
             "| mem / eager | compile s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for group in table:
        lines += group_rows(table, group)
    return lines


def target_lines(table):
    for label, group, impl, baseline, metric, op, goal in TARGETS:
        value = ratio(table, group, impl, baseline, metric)
        if value is None:
            status = "NO DATA"
        else:
            status = "PASS" if COMPARE[op](value, goal) else "FAIL"
        yield status, f"{label}: {fmt(value, '.2f', 'no data')} ({impl} / {baseline}, {group})"


def epoch_seconds(table):
    """{impl: (images/s, seconds per CIFAR-10 training epoch)} from EPOCH_GROUP."""
    runs = table.get(EPOCH_GROUP, {})
    return {impl: (rate(runs[impl]), CIFAR_TRAIN_IMAGES / rate(runs[impl]))
            for impl in ordered(runs)}


def epoch_lines(table):
    lines = [f"Seconds per CIFAR-10 training epoch, derived: {CIFAR_TRAIN_IMAGES:,} images / the "
             f"training throughput measured in `{EPOCH_GROUP}` (swin_cifar, batch 64, bf16 "
             "autocast). Training steps only: no data loading, no test pass. The seed article's "
             f"~{ARTICLE_EPOCH_S} s per epoch was measured in fp32 on a GPU it does not name, so "
             "it is a point of reference, not a comparison on one machine.", "",
             "| impl | img/s | s / epoch |", "| --- | ---: | ---: |"]
    rows = [f"| {impl} | {number(img_s)} | {seconds:.1f} |"
            for impl, (img_s, seconds) in epoch_seconds(table).items()]
    lines += rows or ["| (not measured) | - | - |"]
    lines.append(f"| seed article (GPU unknown, fp32) | - | ~{ARTICLE_EPOCH_S} |")
    return lines


def skipped_lines(doc):
    skips = sorted(doc.get("skipped", []), key=lambda s: (group_key(s["group"]),
                                                          impl_key(s["impl"])))
    if not skips:
        return ["None."]
    lines = ["| group | impl | reason |", "| --- | --- | --- |"]
    return lines + [f"| {s['group']} | {s['impl']} | {s['reason'].replace('|', '/')} |"
                    for s in skips]


def markdown(doc, table, stages):
    info = doc.get("machine_info", {})
    lines = ["# swin-fused benchmark summary", "",
             f"GPU: {info.get('gpu', '?')}; torch {info.get('torch', '?')}, "
             f"triton {info.get('triton', '?')}, torchvision {info.get('torchvision', '?')}. "
             f"Generated by benchmarks/summarize.py from {', '.join(doc['merged_from'])}.", "",
             "Times are medians per step (models) or per call (op); speedups are throughput "
             "ratios; memory is peak allocated memory over one step; compile s is the first "
             "call, compilation included. fused vs best peer: against the fastest of "
             f"{', '.join(PEERS)} measured in the group. fused+cudagraph: the step captured in "
             "one torch.cuda.CUDAGraph and replayed; fused+compiled-ro: "
             "torch.compile(mode=\"reduce-overhead\") (the latency groups' compiled impls are "
             "reduce-overhead too).", "", "## Targets", ""]
    lines += [f"- **{status}** {text}" for status, text in target_lines(table)]
    lines += ["", "## Results", ""] + results_table(table)
    lines += ["", "## CIFAR-10 epoch time", ""] + epoch_lines(table)
    lines += ["", "## Skipped cases", "",
              "Cases that posted no number, with the reason (an impl that raised or disagreed "
              "with eager is skipped, never timed).", ""] + skipped_lines(doc)
    if stages:
        lines += ["", "## Stages of gpu_check.sh", "", "```", stages.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def ratio_label(x):
    """1x, 2x, 4x, 0.5x, 0.25x: a plain ratio, never scientific notation."""
    return f"{x:g}x"


def ratio_ticks(lo, hi):
    """Powers of two from below `lo` to above `hi`, both including 1."""
    first = math.floor(math.log2(min(lo, 1.0)))
    last = math.ceil(math.log2(max(hi, 1.0) * 1.05))
    return [2.0 ** k for k in range(first, max(last, first + 1) + 1)]


def draw_chart(table):
    """Speedup over eager per group and impl: bars from 1x on a log axis, left means slower.
    Returns the figure, or None when no group has eager and another impl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator
    groups = [g for g in table if "eager" in table[g] and len(table[g]) > 1]
    impls = [i for i in sorted({i for g in groups for i in table[g]}, key=impl_key)
             if i != "eager"]
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.18 * len(impls) * len(groups)))
    height = 0.8 / len(impls)
    ratios = []
    for k, impl in enumerate(impls):
        rows = [(i, ratio(table, g, impl, "eager", "speed")) for i, g in enumerate(groups)
                if impl in table[g]]
        ratios += [x for _, x in rows]
        ax.barh([i + k * height for i, _ in rows], [x - 1 for _, x in rows], height, left=1,
                label=impl)
    ax.set_xscale("log")
    ticks = ratio_ticks(min(ratios), max(ratios))
    ax.set_xticks(ticks, [ratio_label(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(ticks[0], ticks[-1])
    ax.axvline(1.0, color="black", linewidth=0.8, label="eager (1x)")
    ax.set_yticks([i + (len(impls) - 1) * height / 2 for i in range(len(groups))], groups)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over eager (throughput ratio, log scale)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    ax.set_title("swin-fused and its peers against eager PyTorch")
    fig.tight_layout()
    return fig


def chart(table, path):
    import matplotlib.pyplot as plt
    fig = draw_chart(table)
    if fig is not None:
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
    if args.png:
        chart(table, args.png)

    print(f"{len(doc['benchmarks'])} results, {len(doc['skipped'])} skipped cases "
          f"from {len(paths)} file(s)")
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
