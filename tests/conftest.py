"""Test setup: the real Triton kernels run everywhere, on a GPU or in Triton's interpreter.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection.
Strict mode makes any silent fallback to eager PyTorch an error. Tests marked `gpu` are skipped
where there is no CUDA GPU.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("SWIN_FUSED_STRICT", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

KERNEL_GENERATIONS = ("v1", "v2")


def pytest_collection_modifyitems(items):
    """Skips the tests marked `gpu` without a CUDA GPU, each with its marker's reason."""
    if DEVICE == "cuda":
        return
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is not None:
            reason = marker.kwargs.get("reason", "needs a CUDA GPU")
            item.add_marker(pytest.mark.skip(reason=f"needs a CUDA GPU: {reason}"))


@pytest.fixture(params=KERNEL_GENERATIONS)
def kernel_generation(request, monkeypatch):
    """Runs a test once per kernel generation, through SWIN_FUSED_KERNEL; yields its name."""
    monkeypatch.setenv("SWIN_FUSED_KERNEL", request.param)
    return request.param
