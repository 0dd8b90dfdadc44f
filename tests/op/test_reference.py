"""The reference model reproduces the seed article's model: sizes, shapes, mask, names, quirks."""
import torch
import torchvision

from swin_fused import reference as R


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_swin_cifar_size_and_output():
    model = R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1)
    assert n_params(model) == 14_373_340
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_swin_t_size_and_output_match_torchvision():
    model = R.swin_t()
    assert n_params(model) == 28_288_354 == n_params(torchvision.models.swin_t())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_shift_mask_matches_the_articles_region_table():
    # the article's comment: a 9x9 map, window 3, shift 1
    table = torch.tensor([[0] * 6 + [1, 1, 2]] * 6 + [[3] * 6 + [4, 4, 5]] * 2
                         + [[6] * 6 + [7, 7, 8]])
    layer = R.BasicLayer(dim=8, depth=2, n_heads=1, window_size=3)
    mask = layer.create_mask(torch.zeros(1), 9, 9)
    labels = R.window_partition(table[None, :, :, None].float(), 3).view(-1, 9)
    expected = torch.where(labels[:, None, :] == labels[:, :, None], 0.0, -100.0)
    assert mask.shape == (9, 9, 9)
    assert torch.equal(mask, expected)
    # the bottom-right window of the article's example: regions [[4 4 5] [4 4 5] [7 7 8]]
    assert labels[-1].tolist() == [4, 4, 5, 4, 4, 5, 7, 7, 8]


def test_patch_embed_pads_both_sides_like_the_article():
    embed = R.PatchEmbed(patch_size=2, in_c=3, embed_dim=8)
    assert embed(torch.randn(1, 3, 31, 32))[1:] == (16, 17)
    assert embed(torch.randn(1, 3, 32, 32))[1:] == (16, 16)


def test_non_divisible_inputs_run():
    model = R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1, hidden_dim=24, heads=(1, 2, 4))
    for h, w in ((31, 29), (31, 32)):
        assert model(torch.randn(1, 3, h, w)).shape == (1, 10)


def test_float_mlp_ratio_gives_an_int_hidden_width():
    block = R.SwinTransformerBlock(dim=10, n_heads=2, mlp_ratio=1.5)
    assert block.mlp.fc1.out_features == 15


def test_state_dict_uses_the_articles_names():
    keys = set(R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1).state_dict())
    for key in ["patch_embed.proj.weight", "patch_embed.norm.weight",
                "layers.0.blocks.1.attn.qkv.weight", "layers.0.blocks.1.attn.relative_pos_idx",
                "layers.0.blocks.1.attn.relative_position_bias_table",
                "layers.0.blocks.0.norm1.bias",
                "layers.1.blocks.5.mlp.fc2.weight", "layers.1.downsample.reduction.weight",
                "layers.1.downsample.norm.weight", "norm.weight", "head.bias"]:
        assert key in keys, key
    assert "layers.2.downsample.reduction.weight" not in keys


def test_state_dict_round_trip_is_exact():
    torch.manual_seed(0)
    source = R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1, hidden_dim=24, heads=(1, 2, 4))
    target = R.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1, hidden_dim=24, heads=(1, 2, 4))
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(source(x), target(x))
