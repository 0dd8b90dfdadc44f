"""`swin_fused.patch` on torchvision's Video Swin (swin3d_*) against the unpatched model.

A tiny SwinTransformer3d, window 2x3x3 (shift 1x1x1), with random non-zero biases: the first clip
gives stage 1 a 3x5x4 map, padded to 4x6x6 and shifted on every axis, and stage 2 a 3x3x2 map,
where the window shrinks to the map on height and width and their shift drops (torchvision's
rule); the second clip gives one frame, so the time axis shrinks too. 3-D windows run on kernel
generation v2 only.
"""
import copy

import pytest
import torch

import swin_fused
from swin_fused import patching
from swin_fused.families import torchvision_video
from swin_fused.verification import joined
from tests.helpers import (
    DEVICE,
    assert_as_accurate_as_eager,
    assert_fx_feature_extractor_fused_either_way,
    assert_patched_matches_unpatched,
    assert_patched_runs_no_eager_shuffles,
    kernel_launches,
    randomized,
)

CLIPS = [(6, 20, 16), (2, 12, 24)]  # (frames, height, width)


@pytest.fixture(autouse=True)
def kernel_v2(monkeypatch):
    # v1 serves 2-D windows only
    monkeypatch.setenv("SWIN_FUSED_KERNEL", "v2")


def build(dtype=torch.float32):
    from torchvision.models.video import swin_transformer as tv
    torch.manual_seed(0)
    model = tv.SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=8, depths=[2, 2],
                                 num_heads=[1, 2], window_size=[2, 3, 3],
                                 stochastic_depth_prob=0.0, num_classes=10)
    return randomized(model, dtype=dtype).eval()


def clip(size, dtype=torch.float32):
    gen = torch.Generator().manual_seed(sum(size))
    return torch.randn(1, 3, *size, generator=gen).to(DEVICE, dtype)


def attentions(model):
    return [m for m in model.modules() if isinstance(m, torchvision_video.classes())]


@pytest.mark.parametrize("size", CLIPS, ids=["x".join(map(str, s)) for s in CLIPS])
def test_patched_matches_unpatched(size):
    model, launches = assert_patched_matches_unpatched(build(), clip(size))
    assert patching.patched_count(model) == 4
    assert launches == {"fwd": 4, "bwd": 4}


def test_patched_forward_runs_no_eager_shuffles():
    assert_patched_runs_no_eager_shuffles(build(), attentions, clip(CLIPS[0]))


def test_fx_traced_and_patched_either_way():
    assert_fx_feature_extractor_fused_either_way(build(), clip(CLIPS[0]),
                                                 ["features.0", "features.2"], 4)


def test_v1_keeps_the_eager_forward_with_its_reason(monkeypatch):
    monkeypatch.setenv("SWIN_FUSED_KERNEL", "v1")
    with pytest.raises(swin_fused.FallbackError, match="kernel v1 serves 2-D windows only"):
        swin_fused.patch(build())


# in the interpreter bfloat16 runs the kernels in float32
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    reference, x = build(), clip(CLIPS[0])
    model = swin_fused.patch(build(dtype))
    with kernel_launches() as launches:
        out = joined(model(x.to(dtype)))
    assert launches == {"fwd": 4}
    half = joined(build(dtype)(x.to(dtype)))
    exact = joined(copy.deepcopy(reference).double()(x.double()))
    assert_as_accurate_as_eager(out, half, exact, dtype, f"{dtype} output")
