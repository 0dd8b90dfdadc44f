"""`patch` never changes what a model computes: a user's override, a layer whose code the adapter
does not recognise, or upstream code that computes something else keeps its own code, loudly;
TorchScript refuses a patched model in one line, torch.jit.trace and FX (timm too) record the op.
"""
import copy
import warnings

import pytest
import torch

import swin_fused
from swin_fused import patching, verification
from swin_fused import reference as R
from tests.families.test_families import build, inputs, run
from tests.helpers import assert_as_accurate_as_eager, assert_matches_unpatched, kernel_launches

MODELS_SIZE = (36, 44)  # test_families' first input size: pads and shifts in stage 1


@pytest.fixture
def lenient(monkeypatch):
    """Warnings instead of errors, each reason warned afresh, every configuration checked afresh."""
    monkeypatch.setenv("SWIN_FUSED_STRICT", "0")
    monkeypatch.setattr(swin_fused.ops, "_warned", set())
    monkeypatch.setattr(verification, "_verified", {})


def patched_with_warnings(model, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        swin_fused.patch(model, **options)
    return [str(w.message) for w in caught if "swin_fused" in str(w.message)]


def assert_kept_eager(model, reason, fused):
    """Patching the test_families `model` warns `reason` and fuses `fused` of its layers, and the
    model computes what it did unpatched (its other layers fused)."""
    reference = copy.deepcopy(model)
    messages = patched_with_warnings(model)
    assert any(reason in m for m in messages), messages
    assert patching.patched_count(model) == fused
    x, dout = inputs(MODELS_SIZE)
    assert_matches_unpatched(run(model, x, dout), reference, run, x, dout)


# --- a user's subclass is never fused over its own code ------------------------------------------

def _subclass_of_first(model, classes, namespace):
    """The first instance of `classes` in `model` swapped to a new subclass with `namespace`."""
    module = next(m for m in model.modules() if isinstance(m, classes))
    module.__class__ = type("UserLayer", (type(module),), {"__module__": __name__, **namespace})
    return module


def test_timm_subclass_overriding_attn_stays_eager(lenient):
    from timm.models import swin_transformer as swin
    model = build("timm-v1")
    _subclass_of_first(model, swin.SwinTransformerBlock,
                       {"_attn": lambda self, x: 2 * swin.SwinTransformerBlock._attn(self, x)})
    assert_kept_eager(model, "UserLayer overrides _attn, which the fused path replaces", 3)


def test_torchvision_subclass_overriding_forward_stays_eager_and_strict_raises(lenient,
                                                                            monkeypatch):
    from torchvision.models import swin_transformer as tv
    model = build("torchvision-v1")
    _subclass_of_first(model, tv.ShiftedWindowAttention,
                       {"forward": lambda self, x: tv.ShiftedWindowAttention.forward(self, x) + 1})
    assert_kept_eager(model, "UserLayer overrides forward", 3)
    monkeypatch.setenv("SWIN_FUSED_STRICT", "1")
    with pytest.raises(swin_fused.FallbackError, match="UserLayer overrides forward"):
        swin_fused.patch(swin_fused.unpatch(model))


def test_article_subclass_overriding_forward_stays_eager(lenient):
    model = R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1, hidden_dim=24, layers=(2,),
                         heads=(1,))
    _subclass_of_first(model, R.SwinTransformerBlock,
                       {"forward": lambda self, x, mask: R.SwinTransformerBlock.forward(
                           self, x, mask) * 0.5})
    messages = patched_with_warnings(model)
    assert any("UserLayer overrides forward" in m for m in messages)
    assert patching.patched_count(model) == 1


def test_a_skipped_submodule_with_its_own_forward_keeps_the_block_eager(lenient):
    from timm.models import swin_transformer as swin
    model = build("timm-v1")
    attn = _subclass_of_first(model, swin.WindowAttention,
                              {"forward": lambda self, x, mask=None: swin.WindowAttention.forward(
                                  self, x, mask) * 3})
    assert_kept_eager(model, f"attn runs {type(attn).__qualname__}.forward", 3)


# --- code the adapter does not recognise, or that computes something else -----------------------

def test_a_layer_missing_what_the_fused_path_reads_stays_eager(lenient):
    from torchvision.models import swin_transformer as tv
    model = build("torchvision-v1")
    layer = next(m for m in model.modules() if isinstance(m, tv.ShiftedWindowAttention))
    del layer.attention_dropout
    messages = patched_with_warnings(model)
    assert any("has no attention_dropout, which the fused path reads" in m for m in messages)
    assert patching.patched_count(model) == 3


def test_a_wrapped_torchvision_functional_stays_eager(lenient, monkeypatch):
    from torchvision.models import swin_transformer as tv
    original = tv.shifted_window_attention
    monkeypatch.setattr(tv, "shifted_window_attention", lambda *a, **k: original(*a, **k) * 2)
    assert_kept_eager(build("torchvision-v1"),
                      "shifted_window_attention is not the library's own function", 0)


def _doubled_timm_window_attention(monkeypatch):
    """timm's WindowAttention.forward changed upstream, as the adapter cannot see: it doubles."""
    from timm.models import swin_transformer as swin
    original = swin.WindowAttention.forward
    monkeypatch.setattr(swin.WindowAttention, "forward",
                        lambda self, x, mask=None: 2 * original(self, x, mask))


def test_the_check_keeps_upstream_code_that_computes_something_else_eager(lenient, monkeypatch):
    _doubled_timm_window_attention(monkeypatch)
    reference = build("timm-v1")
    assert_kept_eager(copy.deepcopy(reference),
                      "SwinTransformerBlock's fused _attn differs from its own", 0)
    monkeypatch.setenv("SWIN_FUSED_STRICT", "1")
    monkeypatch.setattr(verification, "_verified", {})
    with pytest.raises(swin_fused.FallbackError, match="differs from its own"):
        swin_fused.patch(copy.deepcopy(reference))


def test_verify_false_skips_the_check(lenient, monkeypatch):
    _doubled_timm_window_attention(monkeypatch)
    model = build("timm-v1")
    with kernel_launches() as launches:
        assert patched_with_warnings(model, verify=False) == []
    assert not launches
    assert patching.patched_count(model) == 4


def test_the_check_runs_once_per_configuration_and_leaves_the_rng(lenient):
    model, again = build("torchvision-v2"), build("torchvision-v2")
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    with kernel_launches() as launches:
        swin_fused.patch(model)
    assert torch.equal(torch.random.get_rng_state(), state)
    # one fused forward per distinct configuration: a shifted and an unshifted one per stage
    assert len(verification._verified) == 4 and launches == {"fwd": 4}
    with kernel_launches() as launches:
        swin_fused.patch(again)
    assert not launches


# --- TorchScript, torch.jit.trace and FX --------------------------------------------------------

@pytest.mark.parametrize("name", ["torchvision-v1", "timm-v1"])
def test_torch_jit_script_refuses_in_one_line(name):
    model = swin_fused.patch(build(name))
    with pytest.raises(RuntimeError) as error:
        torch.jit.script(model)
    message = str(error.value)
    assert "\n" not in message and "swin_fused.unpatch(model)" in message
    assert "torch.export" in message
    torch.jit.script(swin_fused.unpatch(model))  # the alternative the message names works


@pytest.mark.parametrize("name", ["torchvision-v1", "timm-v2"])
def test_torch_jit_trace_records_the_fused_op(name):
    reference = build(name)
    x, dout = inputs(MODELS_SIZE, batch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(swin_fused.patch(copy.deepcopy(reference)), x, check_trace=False)
    assert "swin_fused::window_attention_fwd" in str(traced.inlined_graph)
    y = torch.randn_like(x)  # another input: a traced constant would not follow it
    with kernel_launches() as launches:
        got = traced(y)
    assert launches == {"fwd": 4}
    exact = copy.deepcopy(reference).double()(y.double())
    assert_as_accurate_as_eager(got, reference(y), exact, torch.float32, "traced output")


@pytest.mark.parametrize("name", ["timm-v1", "timm-v2"])
def test_timm_fx_trace_of_a_patched_model(name):
    from timm.models import create_feature_extractor
    reference = build(name)
    x, dout = inputs(MODELS_SIZE)
    for label, traced in {
            "torch.fx": torch.fx.symbolic_trace(swin_fused.patch(copy.deepcopy(reference))),
            "timm's feature extractor": create_feature_extractor(
                swin_fused.patch(copy.deepcopy(reference)), {"head": "out"})}.items():
        forward = traced if label == "torch.fx" else (lambda t, m=traced: m(t)["out"])
        with kernel_launches() as launches:
            got = output_and_input_grad(_Call(forward, traced), x, dout)
        assert launches == {"fwd": 4, "bwd": 4}, label
        assert_matches_unpatched(got, reference, output_and_input_grad, x, dout)


def output_and_input_grad(model, x, dout):
    """run's output and input gradient: a traced model's parameters are named otherwise."""
    results = run(model, x, dout)
    return {name: results[name] for name in ("output", "input grad")}


class _Call(torch.nn.Module):
    """`forward` as a module whose parameters are `owner`'s, for `run`."""

    def __init__(self, forward, owner):
        super().__init__()
        self.owner, self._forward = owner, forward

    def forward(self, x):
        return self._forward(x)
