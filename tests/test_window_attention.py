"""The fused op against the plain-PyTorch op (swin_fused.eager) in float64: outputs and all gradients."""
import warnings

import pytest
import torch

import swin_fused
from swin_fused import ops
from swin_fused.eager import window_attention_eager
from tests.conftest import DEVICE
from tests.helpers import ON_GPU, assert_close, kernel_launches

pytestmark = pytest.mark.usefixtures("kernel_generation")

# max error over the reference's max magnitude, per dtype, against a float64 reference
FP32_RTOL = 1e-5
# the logit-scale gradient is one sum of N*N*windows terms that largely cancel
FP32_RTOL_LOGIT_SCALE = 1e-4
# fp16/bf16: at most this many times the error of eager PyTorch in the same dtype, plus a floor
HALF_ERROR_RATIO = 2.0

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


def run(fn, qkv, params, config, dout):
    """Output and gradients of (qkv, rel_bias, qkv_bias, logit_scale) for a given output gradient."""
    leaves = [qkv] + [t for t in params.values() if t is not None]
    leaves = [t.detach().requires_grad_() for t in leaves]
    qkv, rest = leaves[0], iter(leaves[1:])
    kwargs = {k: (next(rest) if v is not None else None) for k, v in params.items()}
    out = fn(qkv, config["H"], config["W"], config["num_heads"], config["window_size"],
             config["shift_size"], roll_before_pad=config["roll_before_pad"], **kwargs)
    grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
    return [out] + list(grads)


def reference(qkv, params, config, dout):
    as64 = {k: (v.double() if v is not None else None) for k, v in params.items()}
    return run(window_attention_eager, qkv.double(), as64, config, dout.double())


GRAD_NAMES = ["out", "dqkv", "drel_bias", "dqkv_bias", "dlogit_scale"]


@pytest.mark.parametrize("case", CASES)
def test_fp32_matches_eager(case):
    qkv, params, config, dout = make_inputs(*CASES[case])
    with kernel_launches() as launches:
        got = run(swin_fused.window_attention, qkv, params, config, dout)
    assert launches == {"fwd": 1, "bwd": 1}
    expected = reference(qkv, params, config, dout)
    names = [n for n, p in zip(GRAD_NAMES, [1, 1] + list(params.values())) if p is not None]
    for name, a, e in zip(names, got, expected):
        rtol = FP32_RTOL_LOGIT_SCALE if name == "dlogit_scale" else FP32_RTOL
        assert_close(a, e, rtol, f"{case} {name}")


def _relative_error(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("dtype", [
    torch.float16,
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
        not ON_GPU, reason="Triton's interpreter computes bf16 tl.dot wrongly; bf16 runs on a GPU")),
])
@pytest.mark.parametrize("case", ["pad-shift", "cosine-roll-before-pad-rect", "tiled-window-9x9"])
def test_half_precision_error_within_twice_eager(case, dtype):
    qkv, params, config, dout = make_inputs(*CASES[case], dtype=dtype)
    got = run(swin_fused.window_attention, qkv, params, config, dout)
    eager = run(window_attention_eager, qkv, params, config, dout)
    expected = reference(qkv, params, config, dout)
    for name, g, e, ref in zip(GRAD_NAMES, got, eager, expected):
        assert g.dtype == e.dtype
        err, eager_err = _relative_error(g, ref), _relative_error(e, ref)
        assert err <= HALF_ERROR_RATIO * eager_err + 1e-4, (
            f"{case} {dtype} {name}: error {err:.2e} vs eager {eager_err:.2e}")


@pytest.mark.skipif(not ON_GPU, reason="autocast to bf16 needs a GPU (the interpreter's bf16 dot)")
def test_autocast_bf16_matches_eager():
    qkv, params, config, dout = make_inputs(*CASES["pad-shift"])
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = run(swin_fused.window_attention, qkv.bfloat16(), params, config, dout)
    expected = reference(qkv.bfloat16(), params, config, dout)
    for name, g, e in zip(GRAD_NAMES, got, expected):
        assert_close(g, e, 3e-2, f"autocast {name}")


def test_forward_is_deterministic():
    qkv, params, config, _ = make_inputs(*CASES["pad-shift"])
    first = swin_fused.window_attention(qkv, **config, **params)
    second = swin_fused.window_attention(qkv, **config, **params)
    assert torch.equal(first, second)


def test_strided_qkv_and_offsets_past_int32():
    """A batch stride beyond 2**31 elements over one buffer: only the two used slices are touched."""
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
    expected = window_attention_eager(qkv.double().contiguous(), **config, qkv_bias=bias.double())
    assert_close(got, expected, 2e-3, "offsets past int32")


def test_opcheck(kernel_generation):
    qkv, params, config, _ = make_inputs(*CASES["cosine-roll-before-pad-rect"])
    args = (qkv.requires_grad_(), params["rel_bias"].requires_grad_(), params["qkv_bias"],
            params["logit_scale"], [1, config["H"], config["W"]], config["num_heads"],
            [1, *config["window_size"]], [0, *config["shift_size"]], 0.25, True, kernel_generation)
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
    assert ops.supports(torch.zeros(1, 4, 6), 2, 1) == (
        False, "CPU tensors run the Triton kernels only with TRITON_INTERPRET=1")
    with pytest.raises(swin_fused.FallbackError, match="TRITON_INTERPRET=1"):
        swin_fused.window_attention(torch.zeros(1, 4, 6), 2, 2, 1, 2)
