"""`swin_fused.patch` on Hugging Face transformers' Swin, Swinv2, DonutSwin and MaskFormerSwin
models against the unpatched model, built from configs (no weights are downloaded).

Window 5 on 36x44 images (patch 4): stage 1 is 9x11, padded to 10x15 and shifted by 2; stage 2 is
5x6, where Swin and DonutSwin keep the window and drop the shift (set_shift_and_window_size: the
smaller side is <= the window), MaskFormerSwin pads it to 10x10 and shifts, and Swinv2 fixed a
window of 4 without shift when built. SwinBackbone (always_partition) with window 7 keeps window 7
and shift 3 on its 5x6 stage 2. Random non-zero biases, bias tables, logit scales on both sides of
the clamp and norm weights.
"""
import copy
import functools
import math
import re
import warnings

import pytest
import torch

import swin_fused
from swin_fused import patching
from swin_fused.families import huggingface
from swin_fused.verification import joined
from tests.helpers import (
    DEVICE,
    assert_as_accurate_as_eager,
    assert_patched_matches_unpatched,
    assert_patched_runs_no_eager_shuffles,
    kernel_launches,
    output_and_grads,
    randomized,
)

transformers = pytest.importorskip(
    "transformers", reason="Hugging Face transformers is not installed: pip install transformers")

CONFIG = dict(image_size=(36, 44), patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[1, 2],
              window_size=5, num_labels=10)


def swin(**options):
    return transformers.SwinForImageClassification(transformers.SwinConfig(**CONFIG, **options))


def swin_backbone():
    config = transformers.SwinConfig(**dict(CONFIG, window_size=7),
                                     out_features=["stage1", "stage2"])
    return transformers.SwinBackbone(config)


def swinv2():
    return transformers.Swinv2ForImageClassification(transformers.Swinv2Config(**CONFIG))


def donut_swin(**options):
    return transformers.DonutSwinForImageClassification(
        transformers.DonutSwinConfig(**CONFIG, **options))


def maskformer_swin():
    from transformers.models.maskformer.modeling_maskformer_swin import MaskFormerSwinModel
    return MaskFormerSwinModel(transformers.MaskFormerSwinConfig(**CONFIG))


MODELS = {"swin": swin, "swin-backbone": swin_backbone, "swinv2": swinv2,
          "donut-swin": donut_swin, "maskformer-swin": maskformer_swin}


def build(name, dtype=torch.float32, **options):
    torch.manual_seed(0)
    return randomized(MODELS[name](**options), dtype=dtype, norm_scale=0.2).eval()


def image(dtype=torch.float32):
    return torch.randn(1, 3, 36, 44, generator=torch.Generator().manual_seed(0)).to(DEVICE, dtype)


def layers(model):
    return [m for m in model.modules() if isinstance(m, huggingface.classes())]


def output_and_joined_qkv_bias_grads(model, x):
    """output_and_grads with the q, k and v bias gradients of each attention joined into one flat
    tensor: the key bias's gradient is zero but for rounding (softmax ignores a shift shared by a
    row), so it is measured with the others, as the qkv bias of other families is."""
    parts = {}
    for name, result in output_and_grads(model, x).items():
        qkv_name = re.sub(r"(q_proj|k_proj|v_proj|query|key|value)\.bias$", "qkv.bias", name)
        parts.setdefault(qkv_name, []).append(result.flatten())
    return {name: torch.cat(flat) for name, flat in parts.items()}


@pytest.mark.usefixtures("kernel_generation")
@pytest.mark.parametrize("name", MODELS)
def test_patched_matches_unpatched(name):
    model, launches = assert_patched_matches_unpatched(build(name), image(),
                                                       run=output_and_joined_qkv_bias_grads)
    assert patching.patched_count(model) == 4
    assert launches == {"fwd": 4, "bwd": 4}


@pytest.mark.parametrize("name", ["swin", "swinv2", "donut-swin", "maskformer-swin"])
def test_patched_forward_runs_no_eager_shuffles(name):
    assert_patched_runs_no_eager_shuffles(build(name), layers, image())


@pytest.mark.parametrize("name", ["swin", "donut-swin"])
def test_output_attentions_runs_eager_with_the_reason(name, monkeypatch):
    # HF's SDPA path gives no probabilities: the eager one does
    reference = build(name, attn_implementation="eager")
    model = swin_fused.patch(copy.deepcopy(reference))
    with pytest.raises(swin_fused.FallbackError, match="output_attentions asks for the attention"):
        model(image(), output_attentions=True)
    monkeypatch.setenv("SWIN_FUSED_STRICT", "0")
    monkeypatch.setattr(swin_fused.ops, "_warned", set())
    with warnings.catch_warnings(record=True) as caught, kernel_launches() as launches:
        warnings.simplefilter("always")
        got = model(image(), output_attentions=True)
    assert not launches
    assert any("output_attentions asks" in str(w.message) for w in caught)
    expected = reference(image(), output_attentions=True)
    assert len(got.attentions) == len(expected.attentions) == 2
    for g, e in zip(got.attentions + (got.logits,), expected.attentions + (expected.logits,),
                    strict=True):
        assert torch.equal(g, e)


def test_hooked_projection_is_called_as_a_module():
    """A hook (or a wrapper such as LoRA) on the q, k or v Linear: the fused forward calls the
    three as modules instead of one joined matmul, and still runs the kernels."""
    reference = build("swin")
    model = swin_fused.patch(copy.deepcopy(reference))
    calls = []
    layers(model)[1].attention.k_proj.register_forward_hook(lambda *_: calls.append(1))
    with kernel_launches() as launches:
        got = model(image()).logits
    assert calls == [1] and launches == {"fwd": 4}
    exact = copy.deepcopy(reference).double()(image().double()).logits
    assert_as_accurate_as_eager(got, reference(image()).logits, exact, torch.float32, "logits")


def test_hook_on_attention_runs_the_layer_eager():
    model = swin_fused.patch(build("donut-swin"))
    layers(model)[0].attention.self.dropout.register_forward_hook(lambda *_: None)
    with pytest.raises(swin_fused.FallbackError, match="has hooks on attention.self.dropout"):
        model(image())


def test_swinv2_adds_its_mask_twice():
    """HF's Swinv2 adds the shift mask twice (-200 between regions). Keys = -queries, tokens +u in
    the rows the shift wraps around and -u elsewhere, logit scale 100: a query's masked keys score
    about +100 - mask, its own region's -100, so -100 and -200 give different outputs."""
    from transformers.models.swinv2.modeling_swinv2 import Swinv2Layer
    torch.manual_seed(0)
    config = transformers.Swinv2Config(embed_dim=16, depths=[2], num_heads=[1], window_size=4)
    layer = Swinv2Layer(config, dim=16, input_resolution=(8, 8), num_heads=1, shift_size=2)
    attn = layer.attention.self
    with torch.no_grad():
        attn.key.weight.copy_(-attn.query.weight)
        attn.query.bias.zero_()
        attn.logit_scale.fill_(math.log(100.0))
    layer = layer.to(DEVICE).eval()
    sign = torch.where(torch.arange(8) < 2, 1.0, -1.0)[:, None].expand(8, 8).reshape(1, 64, 1)
    x = (sign * torch.randn(16) + 0.01 * torch.randn(1, 64, 16)).to(DEVICE)
    eager = layer(x, (8, 8))[0]
    exact = copy.deepcopy(layer).double()(x.double(), (8, 8))[0]
    swin_fused.patch(layer)
    with kernel_launches() as launches:
        got = layer(x, (8, 8))[0]
    assert launches == {"fwd": 1}
    assert_as_accurate_as_eager(got, eager, exact, torch.float32, "output")


# in the interpreter bfloat16 runs the kernels in float32
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["swin", "swinv2"])
def test_half_precision(name, dtype):
    model = swin_fused.patch(build(name, dtype))
    with kernel_launches() as launches:
        out = joined(model(image(dtype)))
    assert launches == {"fwd": 4}
    half = joined(build(name, dtype)(image(dtype)))
    exact = joined(build(name, torch.float64)(image(torch.float64)))
    assert_as_accurate_as_eager(out, half, exact, dtype, f"{dtype} output")


@pytest.mark.parametrize("name", MODELS)
def test_every_layer_is_recognised(name):
    assert [huggingface.unrecognised(m) for m in layers(build(name))] == [[]] * 4


def _without(path):
    """Deletes the dotted attribute `path` of a layer."""
    def delete(layer):
        owner, _, name = path.rpartition(".")
        delattr(layer.get_submodule(owner), name)
    return delete


def _with_donut_attention(layer):
    # transformers 4's SwinLayer layout: attention.self (query, key, value, bias table), .output
    layer.attention = layers(donut_swin())[0].attention


@pytest.mark.parametrize("name, change, missing", [
    ("swin", _without("attention.o_proj"), "attention.o_proj"),
    ("swin", _with_donut_attention, "attention.q_proj"),
    ("swinv2", _without("attention.self.logit_scale"), "attention.self.logit_scale"),
    ("maskformer-swin", _without("attention.self.relative_position_bias_table"),
     "attention.self.relative_position_bias_table"),
])
def test_a_layer_without_its_layout_is_unrecognised(name, change, missing):
    layer = layers(build(name))[1]
    change(layer)
    reasons = huggingface.unrecognised(layer)
    assert len(reasons) == 1 and missing in reasons[0] and "fused path reads" in reasons[0]


def test_a_forward_with_other_parameters_is_unrecognised():
    from transformers.models.swin.modeling_swin import SwinLayer

    class OldSwinLayer(SwinLayer):
        # transformers 4's SwinLayer.forward takes head_mask and output_attentions
        def forward(self, hidden_states, input_dimensions, head_mask=None,
                    output_attentions=False, always_partition=False):
            return super().forward(hidden_states, input_dimensions, always_partition)

    layer = layers(build("swin"))[1]
    layer.__class__ = OldSwinLayer
    reasons = huggingface.unrecognised(layer)
    assert len(reasons) == 1 and "OldSwinLayer.forward takes" in reasons[0]
    assert "head_mask" in reasons[0]


def test_a_wrapped_window_partition_is_unrecognised(monkeypatch):
    from transformers.models.donut import modeling_donut_swin
    original = modeling_donut_swin.window_partition
    monkeypatch.setattr(modeling_donut_swin, "window_partition",
                        functools.wraps(original)(lambda *args: original(*args)))
    reasons = huggingface.unrecognised(layers(build("donut-swin"))[0])
    assert len(reasons) == 1 and "modeling_donut_swin.window_partition is not" in reasons[0]


def test_another_attention_function_is_unrecognised(monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    monkeypatch.setitem(transformers.AttentionInterface._global_mapping, "my_attention",
                        sdpa_attention_forward)
    reasons = huggingface.unrecognised(layers(build("swin", attn_implementation="my_attention"))[0])
    assert len(reasons) == 1 and "'my_attention' attention function" in reasons[0]


@pytest.mark.parametrize("name", MODELS)
def test_sample_runs_the_layers_forward_and_leaves_it_as_it_was(name):
    for layer in layers(build(name)):
        before = vars(layer).copy()
        rng = torch.get_rng_state()
        with torch.no_grad(), huggingface.sample(layer) as args:
            tokens, (height, width) = args
            out = type(layer).forward(layer, *args)
        assert vars(layer) == before and torch.equal(torch.get_rng_state(), rng)
        assert out[0].shape == tokens.shape and tokens.shape[:2] == (1, height * width)
        assert (tokens.dtype, tokens.device.type) == (torch.float32, DEVICE)
        assert height % layer.window_size and width % layer.window_size, "the layer pads"


def test_sample_restores_what_the_forward_changed():
    from transformers.models.swin.modeling_swin import SwinLayer

    class Unshifted(SwinLayer):
        def set_shift_and_window_size(self, input_resolution):
            self.shift_size = 0

    layer = layers(build("swin"))[1]
    layer.__class__ = Unshifted
    with torch.no_grad(), huggingface.sample(layer) as args:
        type(layer).forward(layer, *args)
        assert layer.shift_size == 0
    assert layer.shift_size == 2
