"""Host work of one attention layer per forward + backward, fused against the same layer
unpatched: torchvision's ShiftedWindowAttention and timm's SwinTransformerBlock._attn, at a 10x10
map in 7x7 windows shifted by 3 (padded to 14x14: four windows), 2 heads of 16 channels.

The aten ops are counted by torch.profiler, every op the dispatcher runs (nested ones too:
aten::linear and the aten::addmm inside it count as two), with the Triton kernels stubbed out so
that the interpreter's own tensor copies do not count. The bounds are today's counts (torch
2.14.1): a change that makes the fused layer dispatch more fails here; lower a bound when it
dispatches fewer. Host time is never asserted: speed is measured on a GPU.
"""
import contextlib
import copy

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import swin_fused
from benchmarks.common import triton_kernels
from tests.helpers import DEVICE, kernel_launches

# aten ops per forward + backward of the fused layer, by family and kernel generation
FUSED_OP_BOUNDS = {("torchvision", "v1"): 216, ("torchvision", "v2"): 211,
                   ("timm", "v1"): 217, ("timm", "v2"): 212}
SIZE, DIM, HEADS, WINDOW, SHIFT = (10, 10), 32, 2, 7, 3


def torchvision_layer():
    """(layer, forward): a ShiftedWindowAttention and its call on a (B, H, W, C) map."""
    from torchvision.models.swin_transformer import ShiftedWindowAttention
    return ShiftedWindowAttention(DIM, [WINDOW, WINDOW], [SHIFT, SHIFT], HEADS), lambda m, x: m(x)


def timm_block():
    """(block, forward): a SwinTransformerBlock and its _attn on a (B, H, W, C) map."""
    timm = pytest.importorskip("timm")
    block = timm.models.swin_transformer.SwinTransformerBlock(
        DIM, SIZE, num_heads=HEADS, window_size=WINDOW, shift_size=SHIFT)
    return block, lambda m, x: m._attn(x)


LAYERS = {"torchvision": torchvision_layer, "timm": timm_block}


def forward_backward(forward, layer, x, dout):
    torch.autograd.backward(forward(layer, x), dout)


def aten_ops(forward, layer, x, dout):
    """The aten ops one forward + backward dispatches."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward_backward(forward, layer, x, dout)
    return sum(e.name.startswith("aten::") for e in prof.events())


def fused_and_eager(family):
    """(patched copy, unpatched layer, forward, x, dout) on DEVICE."""
    torch.manual_seed(0)
    layer, forward = LAYERS[family]()
    layer = layer.to(DEVICE)
    x = torch.randn(1, *SIZE, DIM, device=DEVICE, requires_grad=True)
    dout = torch.randn(1, *SIZE, DIM, device=DEVICE)
    return swin_fused.patch(copy.deepcopy(layer)), layer, forward, x, dout


def _recorder(launched, name):
    def run(*args, **kwargs):
        launched.append(name)
    return run


@contextlib.contextmanager
def stubbed_kernels():
    """swin_fused's Triton kernels launch nothing (their launchers do all their other host work);
    yields the names of the kernels launched inside the block."""
    launched = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        for kernel in triton_kernels():
            monkeypatch.setattr(kernel, "run", _recorder(launched, kernel.fn.__name__))
        yield launched


@pytest.mark.parametrize("family", LAYERS)
def test_fused_layer_launches_once_each_way(family, kernel_generation):
    fused, _, forward, x, dout = fused_and_eager(family)
    with kernel_launches() as launches:
        forward_backward(forward, fused, x, dout)
    assert launches == {"fwd": 1, "bwd": 1}


@pytest.mark.parametrize("family", LAYERS)
def test_fused_layer_dispatches_fewer_aten_ops(family, kernel_generation):
    fused, layer, forward, x, dout = fused_and_eager(family)  # patched with the real kernels
    with stubbed_kernels() as launched:
        forward_backward(forward, fused, x, dout)  # fills the caches a first call fills
        launched.clear()
        eager_ops = aten_ops(forward, layer, x, dout)
        with kernel_launches() as launches:
            fused_ops = aten_ops(forward, fused, x, dout)
    assert launches == {"fwd": 1, "bwd": 1} and len(launched) == 2, \
        f"launcher calls {launches}, Triton launches {launched}"
    assert fused_ops < eager_ops, f"fused {fused_ops} aten ops, eager {eager_ops}"
    bound = FUSED_OP_BOUNDS[family, kernel_generation]
    assert fused_ops <= bound, (f"the fused {family} layer ({kernel_generation}) dispatches "
                                f"{fused_ops} aten ops per forward + backward, over {bound}")
