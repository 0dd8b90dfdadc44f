"""Host work per forward + backward: the fused op alone, and one attention layer fused against
the same layer unpatched (torchvision's ShiftedWindowAttention and timm's
SwinTransformerBlock._attn), at a 10x10 map in 7x7 windows shifted by 3 (padded to 14x14: four
windows), 2 heads of 16 channels.

The aten ops are counted by torch.profiler, every op the dispatcher runs (nested ones too:
aten::linear and the aten::addmm inside it count as two), with the Triton kernels stubbed out so
that the interpreter's own tensor copies do not count. On a GPU every aten op but an allocation or
a view launches a kernel of its own, so the fused op must dispatch nothing else: its Triton
kernels are all the GPU work it asks for. The bounds are today's counts (torch 2.14.1): a change
that makes the fused op or layer dispatch more fails here; lower a bound when it dispatches
fewer. Host time is never asserted: speed is measured on a GPU.
"""
import contextlib
import copy

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import swin_fused
from benchmarks.common import triton_kernels
from tests.helpers import DEVICE, kernel_launches

# aten ops per forward + backward of the fused layer, by family (either kernel generation)
FUSED_OP_BOUNDS = {"torchvision": 139, "timm": 140}
SIZE, DIM, HEADS, WINDOW, SHIFT = (10, 10), 32, 2, 7, 3
# the aten ops that launch no kernel on a GPU: allocations and views
NO_KERNEL = {"aten::empty", "aten::new_empty", "aten::empty_like", "aten::empty_strided",
             "aten::view", "aten::reshape", "aten::_reshape_alias"}
# the op's top-level aten ops per forward + backward, by the parameters it is given: out and what
# the forward keeps; dqkv; a gradient partial and a gradient per parameter; logit_scale made
# (heads,) and its gradient viewed back
OP_BOUNDS = {(): 3, ("rel_bias", "qkv_bias"): 7, ("rel_bias", "qkv_bias", "logit_scale"): 11}
# the Triton kernels one forward + backward launches, in order, by generation; the partial-sum
# kernel only where the op has a parameter
LAUNCHED = {"v1": ["_window_attn_fwd", "_window_attn_bwd", "sum_partials"],
            "v2": ["_bias_mask_table", "_fwd_window", "_bwd_window", "sum_partials"]}


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
    assert launches == {"fwd": 1, "bwd": 1} and launched == LAUNCHED[kernel_generation], \
        f"launcher calls {launches}, Triton launches {launched}"
    assert fused_ops < eager_ops, f"fused {fused_ops} aten ops, eager {eager_ops}"
    bound = FUSED_OP_BOUNDS[family]
    assert fused_ops <= bound, (f"the fused {family} layer ({kernel_generation}) dispatches "
                                f"{fused_ops} aten ops per forward + backward, over {bound}")


@pytest.mark.parametrize("parameters", OP_BOUNDS, ids="+".join)
def test_fused_op_launches_only_its_triton_kernels(parameters, kernel_generation):
    torch.manual_seed(0)
    heads, n, c = HEADS, WINDOW * WINDOW, DIM
    qkv = torch.randn(2, SIZE[0] * SIZE[1], 3 * c, device=DEVICE, requires_grad=True)
    given = {name: torch.randn(*shape, device=DEVICE, requires_grad=True)
             for name, shape in (("rel_bias", (heads, n, n)), ("qkv_bias", (3 * c,)),
                                 ("logit_scale", (heads,))) if name in parameters}
    dout = torch.randn(2, SIZE[0] * SIZE[1], c, device=DEVICE)

    def forward_backward():
        out = swin_fused.window_attention(qkv, *SIZE, heads, WINDOW, SHIFT, **given)
        torch.autograd.grad(out, [qkv, *given.values()], dout)

    with stubbed_kernels() as launched:
        forward_backward()  # fills the caches a first call fills
        launched.clear()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            forward_backward()
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    assert {e.name for e in ops} <= NO_KERNEL, \
        f"the fused op computes with aten: {sorted({e.name for e in ops} - NO_KERNEL)}"
    top = [e for e in ops if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    bound = OP_BOUNDS[parameters]
    assert len(top) <= bound, f"{len(top)} aten ops per forward + backward, over {bound}"
    expected = LAUNCHED[kernel_generation][:None if parameters else -1]
    assert launched == expected, f"Triton launches {launched}"
