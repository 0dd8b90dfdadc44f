"""`swin_fused.patch` on torchvision's and timm's Swin models, V1 and V2, against the unpatched
model.

Tiny models with random non-zero biases (relative position tables, qkv biases including the parts
V2 zeroes, logit scales on both sides of the clamp, post-norm weights), at input sizes where the
first stage pads and shifts and a later stage's window covers its whole map.
"""
import copy
import inspect
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn

import swin_fused
from swin_fused import patching
from swin_fused.eager import window_attention_eager
from swin_fused.families import timm as timm_family
from swin_fused.families import torchvision as torchvision_family
from tests.helpers import (
    DEVICE,
    assert_as_accurate_as_eager,
    assert_fx_feature_extractor_fused_either_way,
    assert_matches_unpatched,
    assert_patched_matches_unpatched,
    assert_patched_runs_no_eager_shuffles,
    kernel_launches,
    parameter_grads,
    randomized,
)

pytestmark = pytest.mark.usefixtures("kernel_generation")


def torchvision_v1():
    from torchvision.models import swin_transformer as tv
    # rectangular window: the 9x11 map pads to 10x14 and shifts (2, 3); stage 2 (5x6) is one window
    return tv.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                              window_size=[5, 7], stochastic_depth_prob=0.0, num_classes=10)


def torchvision_v2():
    from torchvision.models import swin_transformer as tv
    return tv.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 2],
                              window_size=[7, 7], stochastic_depth_prob=0.0, num_classes=10,
                              block=tv.SwinTransformerBlockV2, downsample_layer=tv.PatchMergingV2)


def _timm(module, cls, **kwargs):
    swin = pytest.importorskip(module)
    import timm
    model_cls = getattr(swin, cls)
    if "strict_img_size" in kwargs and \
            "strict_img_size" not in inspect.signature(model_cls.__init__).parameters:
        pytest.skip(f"timm {timm.__version__}'s {cls} has no strict_img_size")
    try:
        return model_cls(img_size=(36, 44), patch_size=4, depths=(2, 2), drop_path_rate=0.0,
                         num_classes=10, **kwargs)
    except RuntimeError as e:
        # older timm builds a static shift mask over the unpadded map, which fails to partition
        pytest.skip(f"timm {timm.__version__} cannot build {cls}(**{kwargs}): {e}")


def timm_v1():
    # head_dim 16 != dim / heads (24, 24): qkv is 3 * heads * 16 wide
    return _timm("timm.models.swin_transformer", "SwinTransformer", embed_dim=24, head_dim=16,
                 num_heads=(1, 2), window_size=7)


def timm_v1_dynamic():
    # always_partition keeps window 7 and shift 3 on maps smaller than the window (3x4 in stage 2)
    return _timm("timm.models.swin_transformer", "SwinTransformer", embed_dim=16,
                 num_heads=(1, 2), window_size=7, always_partition=True, strict_img_size=False)


def timm_v2():
    return _timm("timm.models.swin_transformer_v2", "SwinTransformerV2", embed_dim=32,
                 num_heads=(2, 2), window_size=7)


def timm_v2_dynamic():
    return _timm("timm.models.swin_transformer_v2", "SwinTransformerV2", embed_dim=16,
                 num_heads=(1, 1), window_size=(5, 7), always_partition=True, strict_img_size=False)


# name: (factory, input sizes); each first size pads and shifts in stage 1
MODELS = {
    "torchvision-v1": (torchvision_v1, [(36, 44), (24, 20)]),
    "torchvision-v2": (torchvision_v2, [(36, 44), (16, 16)]),
    "timm-v1": (timm_v1, [(36, 44)]),
    "timm-v1-dynamic": (timm_v1_dynamic, [(20, 28)]),
    "timm-v2": (timm_v2, [(36, 44)]),
    "timm-v2-dynamic": (timm_v2_dynamic, [(20, 28)]),
}
CASES = [(name, size) for name, (_, sizes) in MODELS.items() for size in sizes]


def build(name, dtype=torch.float32):
    """The named model with random non-zero biases and norm weights, in eval mode, on DEVICE."""
    torch.manual_seed(0)
    return randomized(MODELS[name][0](), dtype=dtype, norm_scale=0.2).eval()


def run(model, x, dout):
    """{"output", "input grad", "grad of <name>" for every parameter}, for the output gradient
    dout."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = model(x)
    out.backward(dout)
    return {"output": out.detach(), "input grad": x.grad, **parameter_grads(model)}


def inputs(size, dtype=torch.float32, batch=2):
    gen = torch.Generator().manual_seed(size[0] * 100 + size[1])
    x = torch.randn(batch, 3, *size, generator=gen).to(DEVICE, dtype)
    dout = torch.randn(batch, 10, generator=gen).to(DEVICE, dtype)
    return x, dout


def targets(model, family):
    """The modules of `model` that `family` fuses."""
    return [m for m in model.modules() if isinstance(m, family.classes())]


@pytest.mark.parametrize("name,size", CASES, ids=[f"{n}-{h}x{w}" for n, (h, w) in CASES])
def test_patched_matches_unpatched(name, size):
    assert_patched_matches_unpatched(build(name), *inputs(size), run=run)


def test_timm_grad_checkpointing():
    # V1 checkpoints with checkpoint_seq; V2 with torch.utils.checkpoint, as test_patch_habits does
    name = "timm-v1"
    reference = build(name)
    model = swin_fused.patch(copy.deepcopy(reference))
    model.set_grad_checkpointing(True)
    x, dout = inputs(MODELS[name][1][0])
    with kernel_launches() as launches:
        got = run(model, x, dout)
    assert launches == {"fwd": 8, "bwd": 4}  # each forward runs again in the backward
    assert_matches_unpatched(got, reference, run, x, dout)
    swin_fused.unpatch(model)
    assert patching.patched_count(model) == 0


@pytest.mark.parametrize("name", ["torchvision-v1", "torchvision-v2"])
def test_fx_feature_extractor_of_patched_model_and_patched_feature_extractor(name):
    x, _ = inputs(MODELS[name][1][0], batch=1)
    assert_fx_feature_extractor_fused_either_way(build(name), x, ["features.1", "features.3"], 4)


@pytest.mark.parametrize("name", ["timm-v1", "timm-v2"])
def test_timm_hook_on_attn_runs_the_block_eager_and_warns(name, monkeypatch):
    monkeypatch.setenv("SWIN_FUSED_STRICT", "0")
    monkeypatch.setattr(swin_fused.ops, "_warned", set())
    model = swin_fused.patch(build(name))
    block = targets(model, timm_family)[1]
    calls = []
    block.attn.register_forward_hook(lambda *_: calls.append(1))
    x, _ = inputs(MODELS[name][1][0], batch=1)
    with warnings.catch_warnings(record=True) as caught, kernel_launches() as launches:
        warnings.simplefilter("always")
        model(x)
    assert calls == [1] and launches == {"fwd": 3}
    assert [str(w.message) for w in caught if "swin_fused" in str(w.message)] == [
        f"swin_fused: {type(block).__name__} has hooks on attn, which the fused forward does "
        "not call; running eager PyTorch"]
    monkeypatch.setenv("SWIN_FUSED_STRICT", "1")
    with pytest.raises(swin_fused.FallbackError, match="has hooks on attn"):
        model(x)


@pytest.mark.parametrize("name", ["torchvision-v1", "torchvision-v2", "timm-v1", "timm-v2"])
def test_patched_forward_runs_no_eager_shuffles(name):
    # torchvision's targets are the attention modules, timm's the blocks (norm1, _attn, mlp)
    family = torchvision_family if name.startswith("torchvision") else timm_family
    x, _ = inputs(MODELS[name][1][0], batch=1)
    assert_patched_runs_no_eager_shuffles(build(name), lambda m: targets(m, family), x)


@pytest.mark.parametrize("name", list(MODELS))
def test_patch_in_place_idempotent_and_undone(name):
    family = torchvision_family if name.startswith("torchvision") else timm_family
    model = build(name)
    params = {n: p for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    n_targets = len(targets(model, family))
    assert n_targets == 4

    classes = [type(m) for m in targets(model, family)]
    assert swin_fused.patch(model) is model
    assert patching.patched_count(model) == n_targets
    fused = [type(m) for m in targets(model, family)]
    assert all(f.__name__ == f"Fused{c.__name__}" and f.unfused_class is c
               for f, c in zip(fused, classes, strict=True))
    swin_fused.patch(model)
    assert [type(m) for m in targets(model, family)] == fused
    assert all(p is params[n] for n, p in model.named_parameters())
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    assert swin_fused.unpatch(model) is model
    assert patching.patched_count(model) == 0
    assert [type(m) for m in targets(model, family)] == classes
    assert all(p is params[n] for n, p in model.named_parameters())


def test_patch_without_swin_raises_naming_the_class():
    with pytest.raises(ValueError, match="Sequential"):
        swin_fused.patch(nn.Sequential(nn.Linear(2, 2)))


def test_patch_imports_no_model_family():
    code = ("import sys, torch, swin_fused\n"
            "try:\n    swin_fused.patch(torch.nn.Sequential(torch.nn.Linear(2, 2)))\n"
            "except ValueError:\n    pass\n"
            "for name in ('timm', 'torchvision.models.swin_transformer', 'monai',\n"
            "             'torchvision.models.video.swin_transformer', 'transformers'):\n"
            "    assert name not in sys.modules, f'swin_fused imported {name}'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unsupported_module_keeps_its_forward(monkeypatch):
    from torchvision.models import swin_transformer as tv
    attn = tv.ShiftedWindowAttention(16, window_size=[33, 33], shift_size=[0, 0], num_heads=1)
    assert torchvision_family.unsupported(attn) == ["window 33x33 has more than 1024 tokens"]
    with pytest.raises(swin_fused.FallbackError, match="ShiftedWindowAttention keeps its own"):
        swin_fused.patch(attn)
    monkeypatch.setenv("SWIN_FUSED_STRICT", "0")
    monkeypatch.setattr(swin_fused.ops, "_warned", set())  # warned once per reason, per run
    with pytest.warns(UserWarning, match="keeps its own forward"):
        swin_fused.patch(nn.Sequential(attn))
    assert patching.patched_count(attn) == 0


@pytest.mark.parametrize("name", ["torchvision-v2", "timm-v1-dynamic"])
def test_dtype_change_after_patching(name, monkeypatch):
    """`.double()` after `patch` keeps the fused path: float64 runs the op's eager fallback."""
    monkeypatch.setenv("SWIN_FUSED_STRICT", "0")
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return window_attention_eager(*args, **kwargs)
    monkeypatch.setattr(swin_fused.ops, "window_attention_eager", counted)
    reference = build(name, torch.float64)
    model = swin_fused.patch(build(name)).double()
    x, dout = inputs(MODELS[name][1][0], torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = run(model, x, dout)
    assert len(calls) == 4
    for result, expected in run(reference, x, dout).items():
        assert_as_accurate_as_eager(got[result], None, expected, torch.float64, result)


@pytest.mark.gpu(reason="half-precision models run on a GPU only (the op's fp16 and bf16 run in "
                        "the interpreter in test_window_attention)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("cast_after_patch", [False, True],
                         ids=["cast-then-patch", "patch-then-cast"])
def test_half_precision(name, dtype, cast_after_patch):
    reference = build(name)
    half_reference = build(name, dtype)
    model = swin_fused.patch(build(name)).to(dtype) if cast_after_patch \
        else swin_fused.patch(build(name, dtype))
    x, dout = inputs(MODELS[name][1][0])
    exact = run(copy.deepcopy(reference).double(), x.double(), dout.double())["output"]
    with kernel_launches() as launches:
        out = run(model, x.to(dtype), dout.to(dtype))["output"]
    assert launches["fwd"] > 0 and launches["bwd"] > 0
    half_out = run(half_reference, x.to(dtype), dout.to(dtype))["output"]
    assert_as_accurate_as_eager(out, half_out, exact, dtype, f"{dtype} output")
