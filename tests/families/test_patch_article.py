"""A patched reference model against its unpatched self: outputs, every gradient, and proof the
eager attention path is gone."""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import swin_fused
from swin_fused import reference as R
from tests.helpers import (
    DEVICE,
    assert_as_accurate_as_eager,
    assert_patched_matches_unpatched,
    kernel_launches,
    randomized,
)

pytestmark = pytest.mark.usefixtures("kernel_generation")


def assert_every_block_fused(model, x):
    """The patched copy of `model` matches it, one fused launch per block each way."""
    _, launches = assert_patched_matches_unpatched(model, x)
    n_blocks = sum(isinstance(m, R.SwinTransformerBlock) for m in model.modules())
    assert launches == {"fwd": n_blocks, "bwd": n_blocks}


@pytest.mark.slow
def test_swin_cifar_matches_unpatched():
    model = randomized(R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1), table_scale=0.5)
    assert_every_block_fused(model, torch.randn(2, 3, 32, 32, device=DEVICE))


@pytest.mark.slow
def test_small_swin_non_divisible_non_square_input():
    # head dim 24, window 5: maps 22x18 -> 11x9 -> 6x5, padded and shifted, the last in one window
    model = randomized(R.SwinTransformer(patch_size=2, n_classes=5, embed_dim=48, depths=(2, 2, 2),
                                         n_heads=(2, 4, 8), window_size=5, mlp_ratio=1.5),
                       table_scale=0.5)
    assert_every_block_fused(model, torch.randn(2, 3, 44, 36, device=DEVICE))


class OpLog(TorchDispatchMode):
    """Records every aten op and the element count of every tensor it returns."""

    def __init__(self):
        super().__init__()
        self.ops, self.numels = set(), set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(func.overloadpacket.__name__)
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numels.add(t.numel())
        return out


def test_patched_forward_runs_no_eager_attention_ops():
    model = randomized(R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1, hidden_dim=48,
                                    heads=(1, 2, 4)), table_scale=0.5)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    with OpLog() as eager_log:
        model(x)
    swin_fused.patch(model)
    with OpLog() as fused_log:
        model(x)
    eager_attention_ops = {"roll", "_softmax", "softmax", "constant_pad_nd", "bmm"}
    assert eager_attention_ops & eager_log.ops, "the probe must see the eager path's ops"
    assert not eager_attention_ops & fused_log.ops
    scores = 2 * 9 * 1 * 49 * 49  # B * nW * heads * N * N of stage 1 (16x16 padded to 21x21)
    assert scores in eager_log.numels and scores not in fused_log.numels
    assert "window_attention_fwd" in fused_log.ops


def test_op_saves_only_qkv_output_and_row_sized_tensors():
    B, H, W, heads, hd, n = 2, 10, 13, 3, 32, 49
    qkv = torch.randn(B, H * W, 3 * heads * hd, device=DEVICE, requires_grad=True)
    rel_bias = torch.randn(heads, n, n, device=DEVICE, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t,
                                                  lambda t: t):
        swin_fused.window_attention(qkv, H, W, heads, 7, 3, rel_bias=rel_bias)
    n_windows = B * 2 * 2
    # qkv, the output, 2 stats a row, the bias table
    allowed = {qkv.numel(), qkv.numel() // 3, n_windows * heads * 2 * n, rel_bias.numel()}
    allowed.add(4 * heads * 64 * 64)  # v2's bias and mask table: a tile per window class, head
    assert saved and set(saved) <= allowed, (saved, allowed)


def test_patch_keeps_parameters_and_state_dict_and_is_undoable():
    model = R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1, hidden_dim=24, heads=(1, 2, 4))
    params = dict(model.named_parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert swin_fused.patch(model) is model
    assert swin_fused.patch(model) is model  # idempotent
    assert swin_fused.patching.patched_count(model) == 10
    assert all(p is params[n] for n, p in model.named_parameters())
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert swin_fused.unpatch(model) is model
    assert swin_fused.patching.patched_count(model) == 0
    assert all(type(m) is R.SwinTransformerBlock for m in model.modules()
               if isinstance(m, R.SwinTransformerBlock))


def test_patch_reports_how_many_layers_it_fused(caplog):
    model = R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1, hidden_dim=24, heads=(1, 2, 4))
    with caplog.at_level("INFO", logger="swin_fused"):
        swin_fused.patch(model)
    assert "fused 10 attention layers of SwinTransformer" in caplog.text


def test_patch_without_swin_blocks_names_the_model():
    with pytest.raises(ValueError, match="no shifted-window attention to fuse in Sequential"):
        swin_fused.patch(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_attention_dropout_in_training_is_never_silently_dropped():
    model = R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1, hidden_dim=24, heads=(1, 2, 4),
                         attn_dropout=0.1).to(DEVICE)
    swin_fused.patch(model)
    with pytest.raises(swin_fused.FallbackError, match="attention dropout"):
        model(torch.randn(1, 3, 32, 32, device=DEVICE))
    model.eval()
    with kernel_launches() as launches:
        model(torch.randn(1, 3, 32, 32, device=DEVICE))
    assert launches["fwd"] == 10


def test_compile_fullgraph_has_no_graph_break():
    model = randomized(R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1, hidden_dim=24,
                                    layers=(2,), heads=(1,)), table_scale=0.5)
    x = torch.randn(1, 3, 16, 16, device=DEVICE)
    eager = model(x)
    expected = copy.deepcopy(model).double()(x.double())
    swin_fused.patch(model)
    # Inductor takes minutes on a CPU; the GPU benchmarks compile the patched models with it
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with kernel_launches() as launches:
        out = compiled(x)
        out.sum().backward()
    assert launches == {"fwd": 2, "bwd": 2}
    assert_as_accurate_as_eager(out, eager, expected, torch.float32, "compiled output")


@pytest.mark.gpu(reason="bf16 models run on a GPU (in float32 in the interpreter)")
def test_bf16_autocast_as_accurate_as_eager():
    model = randomized(R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1), table_scale=0.5)
    x = torch.randn(4, 3, 32, 32, device=DEVICE)
    expected = copy.deepcopy(model).double()(x.double())
    fused = swin_fused.patch(copy.deepcopy(model))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager_out, fused_out = model(x), fused(x)
    assert_as_accurate_as_eager(fused_out, eager_out, expected, torch.bfloat16, "bf16 output")
