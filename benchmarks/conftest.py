"""Benchmark setup: strict mode, versions in machine_info, memory freed between cases.

TRITON_INTERPRET is deliberately left alone: benchmarks time compiled kernels on a GPU or nothing.
"""
import os

import pytest
import torch

from benchmarks.common import ON_GPU, free_memory

# a fused case that silently fell back to eager PyTorch would post eager's number as fused
os.environ.setdefault("SWIN_FUSED_STRICT", "1")


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


@pytest.fixture(autouse=True)
def _release_memory():
    yield
    torch._dynamo.reset()  # compiled graphs hold on to their model's parameters
    free_memory()
