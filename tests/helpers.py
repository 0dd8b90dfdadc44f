"""Shared test tools: the device, per-dtype tolerances, verbose comparisons, kernel-launch counts."""
import contextlib

import torch

from tests.conftest import DEVICE

ON_GPU = DEVICE == "cuda"


def assert_close(actual, expected, rtol, name="tensor"):
    """Max-abs error within rtol of the reference's scale; names the worst element when it fails."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    err = (actual - expected).abs()
    scale = expected.abs().max().clamp_min(1e-6)
    worst = int(err.argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), err.shape))
    assert err.max() <= rtol * scale, (
        f"{name}: max error {err.max():.3e} > {rtol:.1e} * scale {scale:.3e} at {idx}: "
        f"got {actual[idx]:.6e}, expected {expected[idx]:.6e}")


@contextlib.contextmanager
def kernel_launches():
    """Counts launches of the fused Triton kernels inside the block: `with kernel_launches() as n`."""
    from swin_fused.kernels.common import LAUNCHES
    before = dict(LAUNCHES)
    counts = {}
    yield counts
    counts.update({k: LAUNCHES[k] - before.get(k, 0) for k in LAUNCHES})
