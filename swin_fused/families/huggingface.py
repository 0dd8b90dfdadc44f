"""Hugging Face transformers' Swin models: fuse the forward of SwinLayer, Swinv2Layer,
DonutSwinLayer and MaskFormerSwinLayer (SwinModel, Swinv2Model, DonutSwinModel, the backbones,
classifiers and masked-image models built on them, MaskFormer's Swin backbone).

Each layer's forward takes the (B, H*W, C) tokens and does the pre-norm (V1), pad, roll,
partition, attention, reverse, roll back, crop, residual and MLP. The fused forward runs the same
layer with the attention from the q, k, v Linears to the output Linear as one window_attention on
the natural token layout: HF pads after the norm, before the q, k, v Linears (a padded token's
q, k, v are their biases), then rolls; the window is square. Kept as each class has it:
- SwinLayer, DonutSwinLayer: `set_shift_and_window_size` (unless always_partition) clamps the
  window to the map's smaller side and drops the shift when that side is <= the window, on the
  module, on every call;
- Swinv2Layer: window and shift fixed when built (`_compute_window_shift`); cosine attention with
  a clamped logit scale, a 16*sigmoid(cpb_mlp) position bias, a key Linear without bias, the
  shift mask added twice (-200), and the norm after attention (res-post-norm);
- MaskFormerSwinLayer: no adjustment, windows always partitioned.
A call that asks for attention probabilities (output_attentions, as an argument or, for SwinLayer,
from the config) runs the eager forward with that reason; the fused SwinLayer returns None as its
attention weights, as HF's SDPA path does. The fused forward no longer calls `attention` (nor
`attention.self` and `attention.self.dropout`); the q, k, v Linears are joined into one matmul
where they are plain nn.Linear without hooks, and called as modules otherwise (hooks, LoRA).

Each class has one attention layout from transformers 5.17 to 5.25, and its fused forward is
written for it: SwinLayer's `SwinAttention` has `q_proj`/`k_proj`/`v_proj`/`o_proj` and a
`SwinRelativePositionBias` module (its index a flat non-persistent buffer) and calls the attention
function the config names (eager or sdpa) with bias and shift mask as one mask; DonutSwin's and
MaskFormerSwin's attention has `self` (query, key, value, a bias table) and `output`; Swinv2's the
same with a continuous position bias. A layer without its class's layout (transformers 4's
SwinLayer has `attention.self`) is unrecognised: `unrecognised` names what it lacks.

transformers is optional: nothing here imports it.
"""
import contextlib
import inspect
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from swin_fused.eager import MASK_VALUE
from swin_fused.families import (
    first_parameter,
    hooked,
    hooks_reason,
    missing_attributes,
    sample_tensor,
    signature_reason,
    wrapped_reason,
)
from swin_fused.ops import fallback, not_supported_reasons, window_attention

METHOD = "forward"
LIBRARY = "transformers"
# forward, and the layer methods the eager forwards call and the fused ones do not (any class)
REPLACED = ("forward", "maybe_pad", "cyclic_shift", "get_attn_mask")
# the library functions the eager forwards call and the fused ones do not
HELPERS = ("window_partition", "window_reverse")
MODULES = {
    "SwinLayer": "transformers.models.swin.modeling_swin",
    "Swinv2Layer": "transformers.models.swinv2.modeling_swinv2",
    "DonutSwinLayer": "transformers.models.donut.modeling_donut_swin",
    "MaskFormerSwinLayer": "transformers.models.maskformer.modeling_maskformer_swin",
}
ATTENTIONS = ("{}: output_attentions asks for the attention probabilities, which the fused op "
              "never forms")
# what each layout's fused forward reads
_LAYER = ("window_size", "shift_size", "layernorm_before.normalized_shape", "layernorm_after",
          "drop_path")
PROJECTIONS = _LAYER + (
    "set_shift_and_window_size", "mlp", "dropout", "attention.config", "attention.q_proj",
    "attention.k_proj", "attention.v_proj", "attention.o_proj", "attention.relative_position_bias",
    "attention.num_attention_heads", "attention.head_dim", "attention.scaling",
    "attention.attention_dropout")
_SELF_OUTPUT = _LAYER + (
    "intermediate", "output", "attention.output", "attention.self.query", "attention.self.key",
    "attention.self.value", "attention.self.num_attention_heads",
    "attention.self.attention_head_size", "attention.self.dropout.p",
    "attention.self.window_size", "attention.self.relative_position_index")
BIAS_TABLE = _SELF_OUTPUT + ("attention.self.relative_position_bias_table",)
CONTINUOUS_BIAS = _SELF_OUTPUT + ("attention.self.logit_scale",
                                  "attention.self.continuous_position_bias_mlp",
                                  "attention.self.relative_coords_table")
READS = {"SwinLayer": PROJECTIONS, "Swinv2Layer": CONTINUOUS_BIAS,
         "DonutSwinLayer": BIAS_TABLE + ("set_shift_and_window_size",),
         "MaskFormerSwinLayer": BIAS_TABLE}
# the attention functions a SwinAttention config may name that the fused op computes (None: eager)
ATTENTION_FUNCTIONS = (None, "eager", "sdpa")


def _layer_classes():
    """{name: class} of the layer classes whose modules have been imported."""
    return {name: getattr(sys.modules[module], name) for name, module in MODULES.items()
            if module in sys.modules}


def classes():
    # a model can hold these layers only once their modules have been imported
    return tuple(_layer_classes().values())


def _base(cls):
    """The name of the HF layer class `cls` is (or subclasses)."""
    return next(name for name, base in _layer_classes().items() if issubclass(cls, base))


def unrecognised(layer):
    """Every reason the layer's code is not what its fused forward was written for."""
    base = _base(type(layer))
    return (missing_attributes(layer, READS[base])
            + signature_reason(type(layer), METHOD, _fused_parameters(base))
            + _wrapped_helpers(MODULES[base]) + _attention_function_reasons(layer))


def _fused_parameters(base):
    """The parameter names after self of the fused forward of the HF class named `base`."""
    return tuple(inspect.signature(FUSED[base]).parameters)[1:]


def _wrapped_helpers(module):
    return [reason for name in HELPERS
            for reason in wrapped_reason(getattr(sys.modules[module], name, None), module, name)]


def _attention_function_reasons(layer):
    """A SwinAttention calls the attention function its config names; the other layouts have no
    config there and compute their own."""
    config = getattr(getattr(layer, "attention", None), "config", None)
    function = getattr(config, "_attn_implementation", None)
    if function in ATTENTION_FUNCTIONS:
        return []
    return [f"{type(layer).__name__}'s attention calls the {function!r} attention function, and "
            "the fused op computes eager's and sdpa's"]


@contextlib.contextmanager
def sample(layer):
    """(tokens, map size) of a (1, s*s, C) input, s one token past the window: it pads and, where
    the layer shifts, shifts; set_shift_and_window_size clamps only a side <= the window."""
    side = layer.window_size + 1
    like = first_parameter(layer)
    window_and_shift = layer.window_size, layer.shift_size
    try:
        yield (sample_tensor(1, side * side, layer.layernorm_before.normalized_shape[0],
                             like=like), (side, side))
    finally:
        # a subclass's set_shift_and_window_size (not in REPLACED) may change them
        layer.window_size, layer.shift_size = window_and_shift


def compared(output):
    """The part of a layer's forward result the fused forward reproduces, for patch's check: the
    hidden states (with eager attention SwinLayer returns the probabilities unasked, fused None)."""
    return output[0]


def _head_dim(layer):
    attn = layer.attention
    return attn.head_dim if _base(type(layer)) == "SwinLayer" else attn.self.attention_head_size


def unsupported(layer):
    window, shift = layer.window_size, layer.shift_size
    return not_supported_reasons((window, window), (shift, shift), _head_dim(layer))


def skipped(layer):
    attn = layer.attention
    if _base(type(layer)) == "SwinLayer":
        return {"attention": attn}
    return {"attention": attn, "attention.self": attn.self,
            "attention.self.dropout": attn.self.dropout}


def _projected_qkv(x, linears):
    """x through the q, k and v Linears as one (..., 3C) tensor, and their biases joined (a
    missing one is zeros; None when none has one): one matmul of the joined weights where all
    three are plain nn.Linear without hooks, else each module called."""
    biases = [getattr(m, "bias", None) for m in linears]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat([b if b is not None else m.weight.new_zeros(m.out_features)
                          for b, m in zip(biases, linears, strict=True)])
    if all(type(m) is nn.Linear for m in linears) and not hooked(dict(enumerate(linears))):
        return F.linear(x, torch.cat([m.weight for m in linears]), bias), bias
    return torch.cat([m(x) for m in linears], dim=-1), bias


def _attention(layer, x, input_dimensions, linears, num_heads, **options):
    """The attention of the (B, H*W, C) tokens x from the q, k, v Linears to the output Linear's
    input, with the layer's window and shift: (B, H*W, C)."""
    qkv, qkv_bias = _projected_qkv(x, linears)
    return window_attention(qkv, *input_dimensions, num_heads, layer.window_size,
                            layer.shift_size, qkv_bias=qkv_bias, **options)


def _table_bias(attn):
    """(heads, N, N): the relative position bias of DonutSwin's and MaskFormerSwin's attention."""
    n = attn.window_size[0] * attn.window_size[1]
    bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
    return bias.view(n, n, -1).permute(2, 0, 1)


def _cosine_inputs(attn):
    """Swinv2: the clamped and exp'ed logit scale (heads,) and the 16*sigmoid position bias."""
    logit_scale = attn.logit_scale.clamp(max=math.log(1.0 / 0.01)).exp().flatten()
    n = attn.window_size[0] * attn.window_size[1]
    table = attn.continuous_position_bias_mlp(attn.relative_coords_table)
    bias = table.view(-1, attn.num_attention_heads)[attn.relative_position_index.view(-1)]
    return logit_scale, 16 * torch.sigmoid(bias.view(n, n, -1).permute(2, 0, 1).contiguous())


def _eager_reason(layer, output_attentions):
    """Why this call runs the layer's own forward, or None."""
    hooks = hooked(skipped(layer))
    if hooks:
        return hooks_reason(layer, hooks)
    if output_attentions:
        return ATTENTIONS.format(type(layer).__name__)
    return None


def fused_swin(self, hidden_states, input_dimensions, always_partition=False, **kwargs):
    """SwinLayer.forward on the fused op; returns (hidden states, None)."""
    attn = self.attention
    reason = _eager_reason(self, kwargs.get("output_attentions", attn.config.output_attentions))
    if reason:
        fallback(reason)
        return self.unfused_class.forward(self, hidden_states, input_dimensions, always_partition,
                                          **kwargs)
    if not always_partition:
        self.set_shift_and_window_size(input_dimensions)
    shortcut = hidden_states
    y = _attention(self, self.layernorm_before(hidden_states), input_dimensions,
                   (attn.q_proj, attn.k_proj, attn.v_proj), attn.num_attention_heads,
                   rel_bias=attn.relative_position_bias()[0], scale=attn.scaling,
                   attn_dropout=attn.attention_dropout, training=attn.training)
    hidden_states = shortcut + self.drop_path(self.dropout(attn.o_proj(y)))
    residual = hidden_states
    hidden_states = self.mlp(self.layernorm_after(hidden_states))
    return self.dropout(hidden_states) + residual, None


def _fused_v1_attention(layer, hidden_states, input_dimensions):
    """DonutSwin and MaskFormerSwin: pre-norm, attention and its output Linear + dropout."""
    attn = layer.attention.self
    x = layer.layernorm_before(hidden_states)
    y = _attention(layer, x, input_dimensions, (attn.query, attn.key, attn.value),
                   attn.num_attention_heads, rel_bias=_table_bias(attn),
                   scale=attn.attention_head_size ** -0.5, attn_dropout=attn.dropout.p,
                   training=attn.dropout.training)
    return layer.attention.output(y, x)


def _v1_residual_and_mlp(layer, shortcut, attention_output):
    hidden_states = shortcut + layer.drop_path(attention_output)
    layer_output = layer.intermediate(layer.layernorm_after(hidden_states))
    return (hidden_states + layer.output(layer_output),)


def fused_donut_swin(self, hidden_states, input_dimensions, output_attentions=False,
                     always_partition=False):
    """DonutSwinLayer.forward on the fused op."""
    reason = _eager_reason(self, output_attentions)
    if reason:
        fallback(reason)
        return self.unfused_class.forward(self, hidden_states, input_dimensions,
                                          output_attentions, always_partition)
    if not always_partition:
        self.set_shift_and_window_size(input_dimensions)
    attention_output = _fused_v1_attention(self, hidden_states, input_dimensions)
    return _v1_residual_and_mlp(self, hidden_states, attention_output)


def fused_maskformer_swin(self, hidden_states, input_dimensions, output_attentions=False):
    """MaskFormerSwinLayer.forward on the fused op."""
    reason = _eager_reason(self, output_attentions)
    if reason:
        fallback(reason)
        return self.unfused_class.forward(self, hidden_states, input_dimensions,
                                          output_attentions)
    attention_output = _fused_v1_attention(self, hidden_states, input_dimensions)
    return _v1_residual_and_mlp(self, hidden_states, attention_output)


def fused_swinv2(self, hidden_states, input_dimensions, output_attentions=False):
    """Swinv2Layer.forward on the fused op."""
    reason = _eager_reason(self, output_attentions)
    if reason:
        fallback(reason)
        return self.unfused_class.forward(self, hidden_states, input_dimensions,
                                          output_attentions)
    attn = self.attention.self
    logit_scale, rel_bias = _cosine_inputs(attn)
    y = _attention(self, hidden_states, input_dimensions, (attn.query, attn.key, attn.value),
                   attn.num_attention_heads, rel_bias=rel_bias, logit_scale=logit_scale,
                   attn_dropout=attn.dropout.p, training=attn.dropout.training,
                   mask_value=2 * MASK_VALUE)
    attention_output = self.attention.output(y, hidden_states)
    hidden_states = hidden_states + self.drop_path(self.layernorm_before(attention_output))
    layer_output = self.output(self.intermediate(hidden_states))
    return (hidden_states + self.drop_path(self.layernorm_after(layer_output)),)


FUSED = {"SwinLayer": fused_swin, "Swinv2Layer": fused_swinv2,
         "DonutSwinLayer": fused_donut_swin, "MaskFormerSwinLayer": fused_maskformer_swin}


def fused_for(cls):
    """The fused forward of `cls`, an HF Swin layer class or a subclass of one."""
    return FUSED[_base(cls)]
