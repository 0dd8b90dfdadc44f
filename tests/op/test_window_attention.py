"""The fused op against the plain-PyTorch op (swin_fused.eager) in float64: outputs and all
gradients."""
import functools
import warnings

import pytest
import torch

import swin_fused
from swin_fused import ops
from swin_fused.eager import window_attention_eager
from swin_fused.verification import relative_error
from tests.helpers import (
    DEVICE,
    ON_GPU,
    as_float64,
    assert_as_accurate_as_eager,
    assert_fused_as_accurate_as_eager,
    grad_names,
    kernel_launches,
    op_grads,
)

pytestmark = pytest.mark.usefixtures("kernel_generation")

# (B, H, W, heads, head_dim, window, shift, qkv_bias, cosine, roll_before_pad)
CASES = {
    "pad-shift": (2, 10, 13, 3, 32, (7, 7), (3, 3), True, False, False),
    "no-pad-no-shift": (1, 14, 7, 1, 64, (7, 7), (0, 0), True, False, False),
    "window-over-map": (1, 4, 4, 3, 32, (7, 7), (3, 3), True, False, False),
    "window-over-map-1x-wide": (3, 3, 9, 1, 32, (4, 4), (2, 2), False, False, False),
    "rect-window-axis-shift": (1, 6, 11, 2, 24, (3, 5), (0, 2), True, False, False),
    "head-dim-24-no-bias": (1, 9, 9, 3, 24, (5, 5), (2, 2), False, False, False),
    "head-dim-64-no-shift": (3, 5, 8, 1, 64, (4, 4), (0, 0), True, False, False),
    "head-dim-128": (1, 6, 5, 2, 128, (4, 4), (2, 2), True, False, False),
    "head-dim-16": (1, 9, 7, 3, 16, (7, 7), (3, 3), True, False, False),
    "tiled-window-9x9": (1, 11, 10, 1, 16, (9, 9), (4, 4), True, False, False),
    "roll-before-pad": (2, 10, 13, 3, 32, (7, 7), (3, 3), True, False, True),
    "cosine": (1, 10, 13, 3, 32, (7, 7), (3, 3), True, True, False),
    "cosine-roll-before-pad-rect": (1, 6, 11, 2, 16, (4, 6), (2, 3), True, True, True),
    "cosine-tiled": (1, 9, 9, 1, 32, (9, 9), (4, 4), True, True, False),
}


def make_inputs(B, H, W, heads, head_dim, window, shift, qkv_bias, cosine, roll_before_pad,
                dtype=torch.float32, device=DEVICE):
    n = window[0] * window[1]
    c = heads * head_dim
    gen = torch.Generator().manual_seed(B * 1000 + H * 100 + W + heads + head_dim)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    qkv = rand(B, H * W, 3 * c).to(dtype)
    params = dict(rel_bias=rand(heads, n, n), qkv_bias=rand(3 * c) if qkv_bias else None,
                  logit_scale=rand(heads).abs() * 5 + 1 if cosine else None)
    config = dict(H=H, W=W, num_heads=heads, window_size=window, shift_size=shift,
                  roll_before_pad=roll_before_pad)
    return qkv, params, config, rand(B, H * W, c)


@pytest.mark.parametrize("case", CASES)
def test_fp32_matches_eager(case):
    qkv, params, config, dout = make_inputs(*CASES[case])
    assert_fused_as_accurate_as_eager(swin_fused.window_attention, window_attention_eager, qkv,
                                      params, config, dout, case)


@pytest.mark.parametrize("present", [(), ("qkv_bias",), ("logit_scale",),
                                     ("rel_bias", "logit_scale")], ids=lambda p: "+".join(p))
def test_any_subset_of_parameters_matches_eager(present):
    """The kernels keep gradient partials, and sum them, only for the parameters given."""
    qkv, params, config, dout = make_inputs(*CASES["cosine"])
    params = {name: value if name in present else None for name, value in params.items()}
    assert_fused_as_accurate_as_eager(swin_fused.window_attention, window_attention_eager, qkv,
                                      params, config, dout, "+".join(present) or "none")


# bf16 on a CPU runs the kernels in float32: the interpreter's bf16 tl.dot is wrong
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["pad-shift", "cosine-roll-before-pad-rect", "tiled-window-9x9"])
def test_half_precision_as_accurate_as_eager(case, dtype):
    qkv, params, config, dout = make_inputs(*CASES[case], dtype=dtype)
    assert_fused_as_accurate_as_eager(swin_fused.window_attention, window_attention_eager, qkv,
                                      params, config, dout, f"{case} {dtype}")


@pytest.mark.gpu(reason="autocast to bf16 needs a GPU (the interpreter's bf16 dot)")
def test_autocast_bf16_matches_eager():
    qkv, params, config, dout = make_inputs(*CASES["pad-shift"])
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = op_grads(swin_fused.window_attention, qkv.bfloat16(), params, config, dout)
        eager = op_grads(window_attention_eager, qkv.bfloat16(), params, config, dout)
    expected = op_grads(window_attention_eager, qkv.bfloat16().double(), as_float64(params),
                        config, dout.double())
    for name, g, e, ref in zip(grad_names(params), got, eager, expected, strict=True):
        assert_as_accurate_as_eager(g, e, ref, torch.bfloat16, f"autocast {name}")


# shapes whose masked keys are not all padding: in the last window of a shifting axis, two regions
MASK_CASES = {"one-tile": (1, 10, 13, 1, 32, (7, 7), (3, 3), True, False, False),
              "tiled-9x9": (1, 16, 17, 1, 16, (9, 9), (4, 4), True, False, False)}


@pytest.mark.parametrize("case", MASK_CASES)
def test_mask_value_between_regions(case):
    """Hugging Face's Swinv2 adds its shift mask twice (-200). At scale 25 the scores spread over
    hundreds, so masked keys still count: -100 and -200 differ, and each matches eager's."""
    qkv, params, config, dout = make_inputs(*MASK_CASES[case])
    outs = []
    for mask_value in (-100.0, -200.0):
        options = dict(scale=25.0, mask_value=mask_value)
        got = assert_fused_as_accurate_as_eager(
            functools.partial(swin_fused.window_attention, **options),
            functools.partial(window_attention_eager, **options), qkv, params, config, dout,
            f"{case} {mask_value}")
        outs.append(got[0])
    assert relative_error(outs[1], outs[0]) > 1e-2, "the mask value made no difference"


def test_forward_is_deterministic():
    qkv, params, config, _ = make_inputs(*CASES["pad-shift"])
    first = swin_fused.window_attention(qkv, **config, **params)
    second = swin_fused.window_attention(qkv, **config, **params)
    assert torch.equal(first, second)


class _PassThrough(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", ["pad-shift", "cosine", "tiled-window-9x9"])
def test_custom_op_route_equals_direct_route(case, kernel_generation):
    """Plain tensors call the kernels directly; under a dispatch mode (as under torch.compile, fake
    tensors or a subclass) the op goes through the registered custom ops: the same kernels, so
    bitwise the same output and gradients."""
    if ON_GPU and kernel_generation == "v1" and case.startswith("tiled"):
        pytest.skip("v1 adds a tiled window's bias gradient with atomics: not bitwise repeatable")
    qkv, params, config, dout = make_inputs(*CASES[case])
    direct = op_grads(swin_fused.window_attention, qkv, params, config, dout)
    with kernel_launches() as launches, _PassThrough():
        assert not ops._direct(qkv)
        routed = op_grads(swin_fused.window_attention, qkv, params, config, dout)
    assert launches == {"fwd": 1, "bwd": 1}
    for name, a, b in zip(grad_names(params), direct, routed, strict=True):
        assert torch.equal(a, b), name


@pytest.mark.gpu(reason="races show on a GPU only: the interpreter runs one program at a time")
def test_backward_is_bitwise_reproducible_at_swin_t_stage1():
    """flash-attention's race test: the backward at Swin-T stage 1 (batch 128, bf16) run 50 times
    gives bitwise-equal qkv, relative-bias and qkv-bias gradients."""
    B, H, W, heads, head_dim = 128, 56, 56, 3, 32
    gen = torch.Generator(DEVICE).manual_seed(0)

    def rand(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, device=DEVICE, dtype=dtype).requires_grad_()
    qkv = rand(B, H * W, 3 * heads * head_dim, dtype=torch.bfloat16)
    leaves = [qkv, rand(heads, 49, 49), rand(3 * heads * head_dim)]
    out = swin_fused.window_attention(qkv, H, W, heads, 7, 3, rel_bias=leaves[1],
                                      qkv_bias=leaves[2])
    dout = torch.randn(out.shape, generator=gen, device=DEVICE, dtype=out.dtype)
    first = torch.autograd.grad(out, leaves, dout, retain_graph=True)
    for _ in range(49):
        again = torch.autograd.grad(out, leaves, dout, retain_graph=True)
        for name, a, b in zip(["dqkv", "drel_bias", "dqkv_bias"], first, again, strict=True):
            assert torch.equal(a, b), f"{name} differs between two runs of the backward"


def test_strided_qkv_and_offsets_past_int32():
    """A batch stride beyond 2**31 elements over one buffer: only the two used slices are
    touched."""
    B, H, W, heads, head_dim = 2, 5, 6, 1, 16
    c3 = 3 * heads * head_dim
    stride = 2 ** 31 + 64
    buffer = torch.empty(stride + H * W * c3, dtype=torch.float16, device=DEVICE)
    qkv = buffer.as_strided((B, H * W, c3), (stride, c3, 1))
    for b in range(B):
        qkv[b] = torch.randn(H * W, c3, dtype=torch.float16, device=DEVICE)
    config = dict(H=H, W=W, num_heads=heads, window_size=4, shift_size=2)
    bias = torch.randn(3 * heads * head_dim, device=DEVICE)
    got = swin_fused.window_attention(qkv, **config, qkv_bias=bias)
    eager = window_attention_eager(qkv.contiguous(), **config, qkv_bias=bias)
    expected = window_attention_eager(qkv.double().contiguous(), **config, qkv_bias=bias.double())
    assert_as_accurate_as_eager(got, eager, expected, torch.float16, "offsets past int32")


def test_every_tensor_argument_takes_any_strides():
    """Sliced, transposed and expanded (stride 0) tensor arguments, against eager and float64."""
    B, H, W, heads, head_dim = 1, 6, 7, 2, 16
    c3, n = 3 * heads * head_dim, 16
    gen = torch.Generator().manual_seed(0)
    leaves = dict(qkv=torch.randn(B, H * W, 2 * c3, generator=gen),
                  rel_bias=torch.randn(heads, n, n, generator=gen),
                  qkv_bias=torch.randn(2 * c3, generator=gen), logit_scale=torch.tensor(3.0))
    dout = torch.randn(B, H * W, heads * head_dim, generator=gen).to(DEVICE)

    def outputs(fn, dtype):
        x = {k: v.to(DEVICE, dtype).requires_grad_() for k, v in leaves.items()}
        out = fn(x["qkv"][..., ::2], H, W, heads, 4, 2, rel_bias=x["rel_bias"].transpose(1, 2),
                 qkv_bias=x["qkv_bias"][::2], logit_scale=x["logit_scale"].expand(heads))
        return [out] + list(torch.autograd.grad(out, list(x.values()), dout.to(dtype)))

    with kernel_launches() as launches:
        got = outputs(swin_fused.window_attention, torch.float32)
    assert launches == {"fwd": 1, "bwd": 1}
    eager = outputs(window_attention_eager, torch.float32)
    expected = outputs(window_attention_eager, torch.float64)
    for name, g, e, ref in zip(["out", *leaves], got, eager, expected, strict=True):
        assert_as_accurate_as_eager(g, e, ref, torch.float32, name)


def test_empty_batch_in_both_directions():
    qkv, params, config, dout = make_inputs(*CASES["cosine-roll-before-pad-rect"])
    qkv, dout = qkv[:0], dout[:0]
    got = op_grads(swin_fused.window_attention, qkv, params, config, dout)
    expected = op_grads(window_attention_eager, qkv, params, config, dout)
    for name, g, e in zip(grad_names(params), got, expected, strict=True):
        assert g.shape == e.shape and torch.equal(g, torch.zeros_like(g)), name


def test_scale_that_needs_grad_is_refused():
    qkv, params, config, _ = make_inputs(*CASES["pad-shift"])
    scale = torch.tensor(0.2, requires_grad=True)
    with pytest.raises(ValueError, match="scale must be a number"):
        swin_fused.window_attention(qkv, **config, rel_bias=params["rel_bias"], scale=scale)


def test_double_backward_is_refused_with_the_reason():
    qkv, params, config, dout = make_inputs(*CASES["pad-shift"])
    qkv.requires_grad_()
    out = swin_fused.window_attention(qkv, **config, rel_bias=params["rel_bias"])
    dqkv, = torch.autograd.grad(out, qkv, dout, create_graph=True)
    with pytest.raises(RuntimeError, match="has no double backward"):
        dqkv.sum().backward()


def test_opcheck(kernel_generation):
    qkv, params, config, _ = make_inputs(*CASES["cosine-roll-before-pad-rect"])
    args = (qkv.requires_grad_(), params["rel_bias"].requires_grad_(), params["qkv_bias"],
            params["logit_scale"], [1, config["H"], config["W"]], config["num_heads"],
            [1, *config["window_size"]], [0, *config["shift_size"]], 0.25, -200.0, True,
            kernel_generation)
    torch.library.opcheck(torch.ops.swin_fused.window_attention_fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


@pytest.mark.parametrize("bad, message", [
    (dict(H=5), "tokens but H\\*W"),
    (dict(num_heads=5), "not divisible by 3 \\* num_heads"),
    (dict(shift_size=7), "must lie in \\[0, window 7\\)"),
    (dict(window_size=(0, 7)), "window height must be >= 1"),
    (dict(rel_bias=torch.zeros(2, 49, 49)), "rel_bias must be \\(heads, N, N\\)"),
    (dict(qkv_bias=torch.zeros(5)), "qkv_bias must be"),
    (dict(logit_scale=torch.zeros(2)), "one value per head"),
    (dict(mask_value=float("-inf")), "mask_value must be a finite number"),
])
def test_bad_input_raises_clear_error(bad, message):
    qkv, params, config, _ = make_inputs(*CASES["pad-shift"])
    kwargs = {**config, **params, "logit_scale": None, **bad}
    with pytest.raises(ValueError, match=message):
        swin_fused.window_attention(qkv, **kwargs)


def test_qkv_must_be_3d():
    with pytest.raises(ValueError, match="qkv must be"):
        swin_fused.window_attention(torch.zeros(4, 4), 2, 2, 1, 2)


def _fallback_cases():
    qkv, params, config, _ = make_inputs(*CASES["pad-shift"])
    return {
        "float64": (qkv.double(), dict(config, **params), "dtype torch.float64"),
        "dropout": (qkv, dict(config, **params, attn_dropout=0.5, training=True),
                    "attention dropout"),
        "huge-window": (torch.zeros(1, 33 * 33, 6, device=DEVICE),
                        dict(H=33, W=33, num_heads=1, window_size=33), "more than 1024 tokens"),
        "huge-head-dim": (torch.zeros(1, 4, 3 * 160, device=DEVICE),
                          dict(H=2, W=2, num_heads=1, window_size=2), "head dim 160 is over 128"),
    }


@pytest.mark.parametrize("case", ["float64", "dropout", "huge-window", "huge-head-dim"])
def test_fallbacks_raise_in_strict_mode(case):
    qkv, kwargs, reason = _fallback_cases()[case]
    with pytest.raises(swin_fused.FallbackError, match=reason):
        swin_fused.window_attention(qkv, **kwargs)


def test_fallback_warns_once_and_matches_eager(monkeypatch):
    monkeypatch.setenv("SWIN_FUSED_STRICT", "0")
    monkeypatch.setattr(ops, "_warned", set())
    qkv, kwargs, reason = _fallback_cases()["float64"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with kernel_launches() as launches:
            got = swin_fused.window_attention(qkv, **kwargs)
            swin_fused.window_attention(qkv, **kwargs)
    assert [str(w.message) for w in caught] == [
        f"swin_fused: {reason} is not one of float16, bfloat16, float32; running eager PyTorch"]
    assert launches.get("fwd", 0) == 0
    assert torch.equal(got, window_attention_eager(qkv, **kwargs))


@pytest.mark.skipif(ON_GPU, reason="the CPU dispatch rule")
def test_cpu_without_interpreter_runs_eager(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert swin_fused.not_supported_reasons(2, 0, 2, dtype=torch.float32, device=torch.device(
        "cpu")) == ["CPU tensors run the Triton kernels only with TRITON_INTERPRET=1"]
    with pytest.raises(swin_fused.FallbackError, match="TRITON_INTERPRET=1"):
        swin_fused.window_attention(torch.zeros(1, 4, 6), 2, 2, 1, 2)


def test_default_kernel_generation_by_shape(monkeypatch):
    monkeypatch.delenv("SWIN_FUSED_KERNEL")
    assert ops.resolve_kernel(None, ops.V2_FROM_WINDOWS) == "v2"
    assert ops.resolve_kernel(None, ops.V2_FROM_WINDOWS - 1) == "v1"
    assert ops.resolve_kernel(None, 8, is_3d=True) == "v2"  # v1 serves 2-D only
    assert ops.resolve_kernel(None) == "v2"
    assert ops.resolve_kernel("v1", 10 ** 6) == "v1"
    monkeypatch.setenv("SWIN_FUSED_KERNEL", "v2")
    assert ops.resolve_kernel(None, 8) == "v2"
    ran = []
    monkeypatch.delenv("SWIN_FUSED_KERNEL")
    kernels = ops._kernels
    monkeypatch.setattr(ops, "_kernels", lambda kernel: ran.append(kernel) or kernels(kernel))
    qkv, params, config, _ = make_inputs(*CASES["pad-shift"])  # 2 images of 4 windows
    swin_fused.window_attention(qkv, **config, **params)
    assert set(ran) == {"v1"}  # its limits, then its kernels


def test_interpreter_versions_known_to_fail_are_named():
    assert "install numpy<2.4 or triton>=3.7" in ops.interpreter_problem("3.6.0", "2.4.6")
    for triton_version, numpy_version in [("3.6.0", "2.3.5"), ("3.7.0", "2.4.6"),
                                          ("3.8.0+git1234", "2.5.5")]:
        assert ops.interpreter_problem(triton_version, numpy_version) is None


def test_support_check_returns_every_reason():
    reasons = swin_fused.not_supported_reasons((33, 33), (40, 0), 160, dtype=torch.float64,
                                               device=torch.device("meta"), attn_dropout=0.1,
                                               training=True)
    assert reasons == [
        "shift 40 along the height must lie in [0, window 33)",
        "window 33x33 has more than 1024 tokens", "head dim 160 is over 128",
        "dtype torch.float64 is not one of float16, bfloat16, float32",
        "device meta has no Triton backend here",
        "attention dropout p > 0 in training is not fused"]
    assert swin_fused.not_supported_reasons((7, 7), (3, 3), 32, dtype=torch.float16,
                                            device=torch.device(DEVICE)) == []
    qkv = torch.zeros(1, 33 * 33, 3 * 160, dtype=torch.float64, device=DEVICE)
    with pytest.raises(swin_fused.FallbackError, match="more than 1024 tokens; head dim 160 is "
                                                       "over 128; dtype torch.float64"):
        swin_fused.window_attention(qkv, 33, 33, 1, 33)
