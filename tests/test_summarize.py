"""benchmarks/summarize.py on small synthetic pytest-benchmark JSON: the fused-vs-best-peer column,
skipped cases with their reasons, the CIFAR-10 epoch time and the chart's plain-ratio axis."""
import json
import sys

import pytest

from benchmarks import summarize


def bench(group, impl, seconds, **info):
    """One pytest-benchmark result as test_op.py / test_models.py write it."""
    return dict(group=group, param=f"{group}-{impl}", fullname=f"bench::test[{group}-{impl}]",
                stats=dict(median=seconds),
                extra_info=dict(impl=impl, calls_per_round=1, peak_mem_mib=1000 * seconds, **info))


OP = "op-fwdbwd-swin_t-stage1"
TIMM = "train-224-timm_swin_t"
EPOCH = summarize.EPOCH_GROUP
PART_1 = dict(
    machine_info=dict(gpu="Synthetic GPU", torch="2.11.0", triton="3.6.0", torchvision="0.26.0"),
    benchmarks=[
        bench(OP, "eager", 0.010, gb_per_sec=100.0, copy_fraction=0.03),
        bench(OP, "sdpa", 0.008, gb_per_sec=150.0),
        bench(OP, "compiled", 0.004, gb_per_sec=300.0),
        bench(OP, "flex", 0.012, gb_per_sec=80.0),
        bench(OP, "fused", 0.002, gb_per_sec=600.0, kernel="v2"),
        bench(OP, "fused-v1", 0.003, gb_per_sec=450.0, kernel="v1"),
        bench(TIMM, "eager", 0.4, images_per_sec=320.0),
        bench(TIMM, "sdpa", 0.3, images_per_sec=400.0),
        bench(TIMM, "sdpa+compiled", 0.2, images_per_sec=640.0),
        bench(TIMM, "fused+compiled", 0.16, images_per_sec=800.0),
    ],
    skipped=[
        dict(fullname=f"bench::test[{TIMM}-compiled]", group=TIMM, impl="compiled",
             reason="compiled failed: RuntimeError: out of | memory"),
        dict(fullname=f"bench::test[{EPOCH}-fused]", group=EPOCH, impl="fused",
             reason="needs a CUDA GPU"),
    ])
# a second process (gpu_check.sh runs one per stage) measured the case the first one skipped
PART_2 = dict(machine_info=PART_1["machine_info"], benchmarks=[
    bench(EPOCH, "eager", 0.128, images_per_sec=500.0),
    bench(EPOCH, "fused", 0.064, images_per_sec=1000.0, kernel="v2"),
])


@pytest.fixture
def parts(tmp_path):
    paths = []
    for k, doc in enumerate((PART_1, PART_2)):
        paths.append(tmp_path / f"part{k}.json")
        paths[-1].write_text(json.dumps(doc))
    killed = tmp_path / "killed.json"  # pytest-benchmark's file of a process killed by timeout
    killed.write_text("")
    return [str(p) for p in (*paths, killed)]


def table_rows(markdown, section):
    """{(first cell, second cell): cells} of the table under `## section`."""
    text = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|")[1:-1]
            for line in text.splitlines() if line.startswith("| ") and "---" not in line}


def test_summary_markdown(parts):
    doc = summarize.merge(parts)
    md = summarize.markdown(doc, summarize.results(doc), "")
    rows = table_rows(md, "Results")
    header = [c.strip() for c in rows[("group", "impl")]]
    column = header.index("fused vs best peer")

    def cell(group, impl):
        return rows[(group, impl)][column].strip()

    # op: the fastest peer is compiled (300 GB/s), not eager or sdpa
    assert cell(OP, "fused (v2)") == "2.00x vs compiled"
    assert cell(OP, "fused-v1") == "1.50x vs compiled"
    assert all(cell(OP, peer) == "-" for peer in ("eager", "sdpa", "compiled", "flex"))
    # model: sdpa+compiled is the best peer
    assert cell(TIMM, "fused+compiled") == "1.25x vs sdpa+compiled"
    assert rows[(OP, "fused (v2)")][header.index("vs eager")].strip() == "6.00x"
    # skipped cases and their reasons; a case measured in another part is no longer skipped
    assert f"| {TIMM} | compiled | compiled failed: RuntimeError: out of / memory |" in md
    assert [s["impl"] for s in doc["skipped"]] == ["compiled"]
    # the CIFAR-10 epoch: 50,000 images / measured images per second, next to the article's
    epoch = table_rows(md, "CIFAR-10 epoch time")
    assert epoch[("eager", "500")][2].strip() == "100.0"
    assert epoch[("fused", "1000")][2].strip() == "50.0"
    assert "| seed article (GPU unknown, fp32) | - | ~95 |" in md


def test_chart_every_impl_on_a_plain_ratio_axis(parts):
    pytest.importorskip("matplotlib")
    doc = summarize.merge(parts)
    fig = summarize.draw_chart(summarize.results(doc))
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    # flex is 0.8x eager, fused 6x: powers of two from 0.5x to 8x, nothing like 2x10^0
    assert labels == ["0.5x", "1x", "2x", "4x", "8x"]
    assert all(t.get_text() == "" for t in ax.xaxis.get_minorticklabels())
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(legend) == sorted(["sdpa", "compiled", "sdpa+compiled", "flex", "fused-v1",
                                     "fused", "fused+compiled", "eager (1x)"])
    assert [t.get_text() for t in ax.get_yticklabels()] == [OP, TIMM, EPOCH]


def test_command_line(parts, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(sys, "argv", ["summarize.py", *parts, "--merged", str(out / "bench.json"),
                                      "--md", str(out / "summary.md"),
                                      "--png", str(out / "chart.png")])
    assert summarize.main() == 0
    assert "12 results, 1 skipped cases from 3 file(s)" in capsys.readouterr().out
    assert len(json.loads((out / "bench.json").read_text())["benchmarks"]) == 12
    assert (out / "chart.png").stat().st_size > 0
    assert "## Skipped cases" in (out / "summary.md").read_text()


def test_targets_of_the_captured_cases_and_the_model_level_peers():
    hf, swin_t = "train-224-hf_swin_t", "train-224-swin_t"
    doc = summarize.merge([])
    doc["benchmarks"] = [bench(hf, "sdpa", 0.4), bench(hf, "fused", 0.2),
                         bench(swin_t, "eager", 0.1), bench(swin_t, "fused+cudagraph", 0.09)]
    targets = {target[0]: status for target, (status, _) in
               zip(summarize.TARGETS, summarize.target_lines(summarize.results(doc)), strict=True)}
    assert targets["HF Swin-T 224 train: fused faster than HF's sdpa"] == "PASS"  # 2x
    assert targets["Swin-T 224 train in a CUDA graph >= 1.25x eager"] == "FAIL"  # 1.11x
    assert targets["SwinUNETR 96^3 inference: fused faster than MONAI's SDPA"] == "NO DATA"
