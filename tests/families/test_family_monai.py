"""`swin_fused.patch` on MONAI's SwinUNETR (2-D and 3-D, V1 and use_v2=True) against the unpatched
model.

SwinUNETR's Swin backbone (`swinViT`, four stages; the rest of SwinUNETR is convolutions) in 3-D
with window 2x3x3 on a 10x14x20 volume: stage 1 is 5x7x10, padded to 6x9x12 and shifted on every
axis; stage 3 is 2x2x3, where MONAI's get_window_size shrinks the window to the map and drops the
shift. In 2-D with window 7 on a 32x64 image: stage 1 is 16x32, padded to 21x35 and shifted;
stage 3 (4x8) shrinks the window and drops the shift on its height, stage 4 (2x4) on both axes.
The whole 2-D SwinUNETR once, at 64x128: smaller images leave its bottleneck InstanceNorms so few
pixels that eager's own fp32 gradients are off by 1e-3 and measure nothing. Random non-zero qkv
biases and bias tables. 3-D windows run on kernel generation v2 only, 2-D ones on both.
"""
import copy
import warnings

import pytest
import torch

import swin_fused
from swin_fused import patching
from swin_fused.families import monai as monai_family
from swin_fused.verification import joined
from tests.helpers import (
    DEVICE,
    assert_as_accurate_as_eager,
    assert_patched_matches_unpatched,
    assert_patched_runs_no_eager_shuffles,
    kernel_launches,
    randomized,
)

pytest.importorskip("monai", reason="MONAI is not installed: pip install monai einops")
pytest.importorskip("einops", reason="MONAI's SwinUNETR needs einops: pip install einops")


@pytest.fixture
def kernel_v2(monkeypatch):
    # v1 serves 2-D windows only
    monkeypatch.setenv("SWIN_FUSED_KERNEL", "v2")


def backbone_3d(use_v2):
    from monai.networks.nets.swin_unetr import SwinTransformer
    torch.manual_seed(0)
    return randomized(SwinTransformer(
        in_chans=1, embed_dim=12, window_size=(2, 3, 3), patch_size=(2, 2, 2),
        depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), spatial_dims=3, use_v2=use_v2), seed=1).eval()


def swin_unetr_2d(use_v2):
    from monai.networks.nets import SwinUNETR
    torch.manual_seed(0)
    return randomized(SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2,
                                depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=7,
                                use_v2=use_v2), seed=1).eval()


def volume():
    return torch.randn(1, 1, 10, 14, 20, generator=torch.Generator().manual_seed(0)).to(DEVICE)


def image(height=32, width=64):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, 1, height, width, generator=gen).to(DEVICE)


def blocks(model):
    return [m for m in model.modules() if isinstance(m, monai_family.classes())]


@pytest.mark.usefixtures("kernel_v2")
@pytest.mark.parametrize("use_v2", [False, True], ids=["v1", "use_v2"])
def test_3d_patched_matches_unpatched(use_v2):
    model, launches = assert_patched_matches_unpatched(backbone_3d(use_v2), volume())
    assert patching.patched_count(model) == 8
    assert launches == {"fwd": 8, "bwd": 8}


@pytest.mark.usefixtures("kernel_generation")
@pytest.mark.parametrize("use_v2", [False, True], ids=["v1", "use_v2"])
def test_2d_patched_matches_unpatched(use_v2):
    model, launches = assert_patched_matches_unpatched(swin_unetr_2d(use_v2).swinViT, image())
    assert patching.patched_count(model) == 8
    assert launches == {"fwd": 8, "bwd": 8}


def test_whole_2d_swin_unetr_patched_matches_unpatched():
    model, launches = assert_patched_matches_unpatched(swin_unetr_2d(True), image(64, 128))
    assert launches == {"fwd": 8, "bwd": 8}


@pytest.mark.usefixtures("kernel_v2")
def test_patched_forward_runs_no_eager_shuffles():
    assert_patched_runs_no_eager_shuffles(backbone_3d(False), blocks, volume())


@pytest.mark.usefixtures("kernel_v2")
def test_shifted_block_without_mask_runs_eager(monkeypatch):
    """MONAI attends unmasked where a shifted block gets no mask_matrix; the fused op always
    masks, so that call runs the block's own forward_part1, with the reason."""
    model = backbone_3d(False)
    block = blocks(model)[1]
    assert any(block.shift_size)
    x = torch.randn(1, 5, 7, 10, 12, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    expected = block.forward_part1(x, None)
    swin_fused.patch(model)
    with pytest.raises(swin_fused.FallbackError, match="called without a mask_matrix"):
        block.forward_part1(x, None)
    monkeypatch.setenv("SWIN_FUSED_STRICT", "0")
    monkeypatch.setattr(swin_fused.ops, "_warned", set())
    with warnings.catch_warnings(record=True) as caught, kernel_launches() as launches:
        warnings.simplefilter("always")
        got = block.forward_part1(x, None)
    assert not launches and torch.equal(got, expected)
    assert len(caught) == 1 and "attends across shift regions unmasked" in str(caught[0].message)


@pytest.mark.usefixtures("kernel_v2")
def test_hook_on_attn_runs_the_block_eager():
    model = swin_fused.patch(backbone_3d(False))
    blocks(model)[0].attn.register_forward_hook(lambda *_: None)
    with pytest.raises(swin_fused.FallbackError, match="has hooks on attn, which the fused"):
        model(volume())


@pytest.mark.usefixtures("kernel_v2")
# in the interpreter bfloat16 runs the kernels in float32
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    reference = backbone_3d(False)
    model = swin_fused.patch(copy.deepcopy(reference).to(dtype))
    with kernel_launches() as launches:
        out = joined(model(volume().to(dtype)))
    assert launches == {"fwd": 8}
    half = joined(copy.deepcopy(reference).to(dtype)(volume().to(dtype)))
    exact = joined(copy.deepcopy(reference).double()(volume().double()))
    assert_as_accurate_as_eager(out, half, exact, dtype, f"{dtype} output")
