"""The 3-D op (windows over a (T, H, W) map) against the plain-PyTorch op in float64, outputs and
all gradients; the plain-PyTorch op against torchvision's video Swin attention; v1's refusal."""
import pytest
import torch
import torch.nn.functional as F

import swin_fused
from swin_fused.eager import window_attention_eager, window_attention_eager_3d
from tests.helpers import DEVICE, assert_close, assert_fused_as_accurate_as_eager

# (B, T, H, W, heads, head_dim, window, shift, rel_bias, qkv_bias, cosine, roll_before_pad)
CASES = {
    "2x3x3-pads-and-shifts-every-axis": (1, 3, 5, 4, 2, 16, (2, 3, 3), (1, 1, 1), True, True,
                                         False, False),
    "3x2x4-rect": (2, 4, 3, 7, 1, 16, (3, 2, 4), (1, 1, 2), True, True, False, False),
    "window-covers-map": (1, 2, 2, 3, 2, 16, (2, 3, 3), (1, 1, 1), True, True, False, False),
    "shift-on-time-only": (1, 4, 3, 3, 1, 32, (2, 3, 3), (1, 0, 0), True, True, False, False),
    "tiled-72-tokens": (1, 2, 6, 7, 1, 16, (2, 6, 6), (1, 3, 2), True, True, False, False),
    "cosine-roll-before-pad": (1, 3, 4, 5, 2, 16, (2, 3, 3), (1, 2, 1), True, True, True, True),
    "no-qkv-bias-no-rel-bias": (1, 3, 5, 4, 2, 16, (2, 3, 3), (1, 1, 1), False, False, False,
                                False),
}


@pytest.fixture(autouse=True)
def kernel_v2(monkeypatch):
    # the default generation, set explicitly: v1 serves 2-D windows only
    monkeypatch.setenv("SWIN_FUSED_KERNEL", "v2")


def make_inputs(B, T, H, W, heads, head_dim, window, shift, rel_bias, qkv_bias, cosine,
                roll_before_pad, dtype=torch.float32, device=DEVICE):
    n = window[0] * window[1] * window[2]
    c = heads * head_dim
    gen = torch.Generator().manual_seed(B * 1000 + T * 100 + H * 10 + W + heads + head_dim)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    qkv = rand(B, T * H * W, 3 * c).to(dtype)
    params = dict(rel_bias=rand(heads, n, n) if rel_bias else None,
                  qkv_bias=rand(3 * c) if qkv_bias else None,
                  logit_scale=rand(heads).abs() * 5 + 1 if cosine else None)
    config = dict(T=T, H=H, W=W, num_heads=heads, window_size=window, shift_size=shift,
                  roll_before_pad=roll_before_pad)
    return qkv, params, config, rand(B, T * H * W, c)


@pytest.mark.parametrize("case", CASES)
def test_fp32_matches_eager(case):
    qkv, params, config, dout = make_inputs(*CASES[case])
    assert_fused_as_accurate_as_eager(swin_fused.window_attention_3d, window_attention_eager_3d,
                                      qkv, params, config, dout, case)


# bf16 on a CPU runs the kernels in float32: the interpreter's bf16 tl.dot is wrong
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["2x3x3-pads-and-shifts-every-axis", "tiled-72-tokens"])
def test_half_precision_as_accurate_as_eager(case, dtype):
    qkv, params, config, dout = make_inputs(*CASES[case], dtype=dtype)
    assert_fused_as_accurate_as_eager(swin_fused.window_attention_3d, window_attention_eager_3d,
                                      qkv, params, config, dout, f"{case} {dtype}")


def test_v1_refuses_3d_with_its_reason(monkeypatch):
    qkv, params, config, _ = make_inputs(*CASES["window-covers-map"])
    with pytest.raises(swin_fused.FallbackError, match="kernel v1 serves 2-D windows only"):
        swin_fused.window_attention_3d(qkv, **config, **params, kernel="v1")
    monkeypatch.setenv("SWIN_FUSED_STRICT", "0")
    with pytest.warns(UserWarning, match="kernel v1 serves 2-D windows only"):
        got = swin_fused.window_attention_3d(qkv, **config, **params, kernel="v1")
    assert torch.equal(got, window_attention_eager_3d(qkv, **config, **params))


@pytest.mark.parametrize("kernel, env", [("v3", None), (None, "fast")])
def test_unknown_kernel_generation_raises(monkeypatch, kernel, env):
    if env is not None:
        monkeypatch.setenv("SWIN_FUSED_KERNEL", env)
    qkv, params, config, _ = make_inputs(*CASES["window-covers-map"])
    with pytest.raises(ValueError, match="kernel must be one of v1, v2"):
        swin_fused.window_attention_3d(qkv, **config, **params, kernel=kernel)


@pytest.mark.parametrize("bad, message", [
    (dict(T=3), "tokens but T\\*H\\*W"),
    (dict(shift_size=(2, 1, 1)), "shift 2 along the time must lie in \\[0, window 2\\)"),
    (dict(window_size=(0, 3, 3)), "window time must be >= 1"),
    (dict(rel_bias=torch.zeros(2, 9, 9)), "rel_bias must be \\(heads, N, N\\)"),
])
def test_bad_input_raises_clear_error(bad, message):
    qkv, params, config, _ = make_inputs(*CASES["window-covers-map"])
    kwargs = {**config, **params, **bad}
    with pytest.raises(ValueError, match=message):
        swin_fused.window_attention_3d(qkv, **kwargs)


def test_eager_2d_is_3d_with_one_frame():
    qkv, params, config, _ = make_inputs(1, 1, 10, 13, 2, 16, (1, 7, 7), (0, 3, 3), True, True,
                                         False, False, device="cpu")
    del config["T"]
    two_d = dict(config, window_size=(7, 7), shift_size=(3, 3))
    assert torch.equal(window_attention_eager(qkv, **two_d, **params),
                       window_attention_eager_3d(qkv, 1, **config, **params))


@pytest.mark.parametrize("window, shift", [((2, 3, 3), (1, 1, 2)), ((2, 2, 2), (0, 0, 0))])
def test_eager_matches_torchvision_video_swin(window, shift):
    """swin_fused's plain-PyTorch 3-D op is torchvision's shifted_window_attention_3d between the
    qkv Linear and the proj Linear (identity proj), float64."""
    from torchvision.models.video.swin_transformer import shifted_window_attention_3d
    gen = torch.Generator().manual_seed(0)
    B, T, H, W, heads, c = 2, 3, 5, 4, 2, 8
    n = window[0] * window[1] * window[2]
    x = torch.randn(B, T, H, W, c, generator=gen, dtype=torch.float64)
    qkv_weight = torch.randn(3 * c, c, generator=gen, dtype=torch.float64)
    qkv_bias = torch.randn(3 * c, generator=gen, dtype=torch.float64)
    rel_bias = torch.randn(heads, n, n, generator=gen, dtype=torch.float64)
    expected = shifted_window_attention_3d(
        x, qkv_weight, torch.eye(c, dtype=torch.float64), rel_bias[None], list(window), heads,
        list(shift), qkv_bias=qkv_bias, training=False)
    qkv = F.linear(x, qkv_weight, qkv_bias).view(B, T * H * W, 3 * c)
    got = window_attention_eager_3d(qkv, T, H, W, heads, window, shift, rel_bias=rel_bias,
                                    qkv_bias=qkv_bias)
    assert_close(got.view(B, T, H, W, c), expected, 1e-12, "eager 3-D vs torchvision")
