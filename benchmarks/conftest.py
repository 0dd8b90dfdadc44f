"""Benchmark setup: strict mode, versions in machine_info, memory freed between cases, and every
skipped case recorded in the results JSON with its reason.

TRITON_INTERPRET is deliberately left alone: benchmarks time compiled kernels on a GPU or nothing.
A case that could not run (no GPU, an impl that raised or disagreed with eager) posts no number;
it goes into the --benchmark-json document as {"skipped": [{fullname, group, impl, reason}]}, so
summarize.py can say what is missing and why. When no case ran at all, pytest-benchmark writes no
document, and this file writes one with the skipped cases alone.
"""
import json
import os

import pytest
import torch

from benchmarks.common import ON_GPU, free_memory

# a fused case that silently fell back to eager PyTorch would post eager's number as fused
os.environ.setdefault("SWIN_FUSED_STRICT", "1")

SKIPPED = []


def pytest_configure(config):
    config.addinivalue_line("markers", "bench_case(group, impl): a benchmark case's group and impl")


def pytest_benchmark_update_machine_info(config, machine_info):
    import torchvision
    machine_info["gpu"] = torch.cuda.get_device_name() if ON_GPU else "none (CPU only)"
    machine_info["torch"] = torch.__version__
    machine_info["cuda"] = torch.version.cuda
    machine_info["torchvision"] = torchvision.__version__
    try:
        import triton
        machine_info["triton"] = triton.__version__
    except ImportError:
        machine_info["triton"] = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    marker = item.get_closest_marker("bench_case")
    if report.skipped and marker is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        SKIPPED.append(dict(fullname=item.nodeid, **marker.kwargs,
                            reason=reason.removeprefix("Skipped: ")))


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["skipped"] = SKIPPED


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    out = session.config.getoption("benchmark_json", None)
    # pytest-benchmark opened the file at startup and closes it only when it wrote a document
    if out is None or out.closed or not SKIPPED:
        return
    machine_info = {}
    pytest_benchmark_update_machine_info(session.config, machine_info)
    with out:
        out.write(json.dumps(dict(machine_info=machine_info, benchmarks=[], skipped=SKIPPED),
                             indent=1).encode())


@pytest.fixture(autouse=True)
def _release_memory():
    yield
    torch._dynamo.reset()  # compiled graphs hold on to their model's parameters
    free_memory()
