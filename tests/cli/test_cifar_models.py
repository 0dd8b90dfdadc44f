"""`train --model` beyond the seed's swin_cifar, `--recipe swin`, and the checkpoint records that
rebuild each model for eval, predict and --resume (issue 14)."""
import pytest
import torch

from swin_fused import reference
from swin_fused.cifar import checkpoint as ckpt
from swin_fused.cifar import models
from tests.cli.cifar_tools import (
    EAGER,
    TINY,
    assert_one_line_error,
    run_cli,
    train_tiny,
    usage_error,
)

pytestmark = pytest.mark.cli


def test_seed_defaults_are_the_articles():
    from swin_fused.cifar.cli import build_parser
    args = build_parser().parse_args(["train", "--data-dir", "d", "--out", "o"])
    assert (args.epochs, args.batch_size, args.model, args.recipe) == (20, 64, None, None)
    assert models.record(models.DEFAULT, {}, 32) == {
        "arch": models.ARTICLE, "embed_dim": 192, "depths": [2, 6, 2], "heads": [3, 6, 12],
        "window_size": 7, "patch_size": 2, "mlp_ratio": 1}
    model = models.build({**models.SWIN_CIFAR, "n_classes": 10}, fused=False)
    assert sum(p.numel() for p in model.parameters()) == 14_373_340  # the seed's swin_cifar


@pytest.mark.parametrize("name, family", [
    ("torchvision:swin_t", "torchvision.models.swin_transformer"),
    ("torchvision:swin_v2_t", "torchvision.models.swin_transformer"),
    ("timm:swin_tiny_patch4_window7_224", "timm.models.swin_transformer"),
])
def test_models_by_name_build_fused_and_shard_by_block(name, family):
    record = {**models.record(name, {}, models.default_image_size(name)), "n_classes": 3}
    with torch.device("meta"):  # no time spent initialising weights
        model = models.build(record, fused=True)
    assert type(model).__module__ == family
    assert [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features == 3
    assert len(models.swin_blocks(model)) == 12  # 2 + 2 + 6 + 2: the units FSDP shards


def test_reference_names_are_the_articles_factories():
    record = {**models.record("swin_t", {}, 224), "n_classes": 5}
    assert record == ckpt.infer_model_config(reference.swin_t(n_classes=5).state_dict(), "swin_t")
    assert len(models.swin_blocks(models.build(record, fused=True))) == 12


@pytest.fixture
def small_torchvision_swin(monkeypatch):
    """torchvision.models.get_model builds a Swin of torchvision's own classes at a size a CPU
    trains in a second (the real swin_t's 28M parameters take minutes here)."""
    import torchvision
    from torchvision.models.swin_transformer import SwinTransformer
    names = []

    def get_model(name, weights=None, num_classes=1000):
        names.append(name)
        return SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[2], num_heads=[2],
                               window_size=[4, 4], num_classes=num_classes)
    monkeypatch.setattr(torchvision.models, "get_model", get_model)
    return names


def test_torchvision_model_trains_and_its_checkpoint_rebuilds_it(capsys, image_folder, tmp_path,
                                                                 small_torchvision_swin):
    options = ["--model", "torchvision:swin_t", "--image-size", "8", "--batch-size", "6",
               "--workers", "0", "--device", "cpu", *EAGER]
    status, out, err = run_cli(capsys, "train", "--data-dir", image_folder, "--out", tmp_path,
                               "--epochs", "1", *options)
    assert status == 0, err
    checkpoint = ckpt.load(tmp_path / "last.pt")
    assert checkpoint["config"]["model"] == {"arch": "torchvision", "name": "swin_t",
                                             "n_classes": 3}
    status, out, err = run_cli(capsys, "predict", "--checkpoint", tmp_path / "best.pt",
                               next((image_folder / "test" / "cat").iterdir()), *EAGER)
    assert status == 0 and out.count("%") == 3, err
    assert small_torchvision_swin == ["swin_t", "swin_t"]


def test_model_options_must_match_the_resumed_model(capsys, image_folder, tmp_path):
    train_tiny(capsys, image_folder, tmp_path, *EAGER)
    status, _, err = run_cli(capsys, "train", "--data-dir", image_folder, "--out", tmp_path,
                             "--epochs", "2", "--resume", tmp_path / "last.pt", *TINY,
                             "--window-size", "2", *EAGER)
    assert_one_line_error(status, err, "window_size")
    status, _, err = run_cli(capsys, "train", "--data-dir", image_folder, "--out", tmp_path,
                             "--epochs", "2", "--resume", tmp_path / "last.pt", "--model",
                             "swin_t", "--workers", "0", *EAGER)
    assert_one_line_error(status, err, "drop the model options")


@pytest.mark.parametrize("options, message", [
    (["--model", "resnet50"], "unknown model"),
    (["--model", "torchvision:vit_b_16"], "no Swin model"),
    (["--model", "swin_t", "--embed-dim", "32"], "swin_cifar only"),
    (["--recipe", "sgd"], "invalid choice"),
])
def test_bad_model_options_are_usage_errors(capsys, image_folder, tmp_path, options, message):
    line = usage_error(capsys, "train", "--data-dir", image_folder, "--out", tmp_path / "run",
                       *options)
    assert message in line


def test_swin_recipe_trains_resumes_and_is_kept(capsys, image_folder, tmp_path):
    train_tiny(capsys, image_folder, tmp_path, *EAGER, "--recipe", "swin")
    first = torch.load(tmp_path / "last.pt", weights_only=True)
    assert [group["weight_decay"] for group in first["optimizer"]["param_groups"]] == [0.05, 0.0]
    # 1e-3 per 1024 images at batch 4, warming up from a thousandth over the first steps
    assert first["history"]["lr"][0] == pytest.approx(1e-3 * 4 / 1024 * 1e-3)
    assert first["scheduler"]["last_epoch"] == 3  # stepped once per batch: 12 images / 4
    status, _, err = run_cli(capsys, "train", "--data-dir", image_folder, "--out", tmp_path,
                             "--epochs", "2", "--resume", tmp_path / "last.pt", "--recipe",
                             "seed", *TINY, *EAGER)
    assert_one_line_error(status, err, "--recipe swin")
    train_tiny(capsys, image_folder, tmp_path, *EAGER, "--epochs", "2", "--resume",
               tmp_path / "last.pt")
    resumed = torch.load(tmp_path / "last.pt", weights_only=True)
    assert resumed["config"]["train"]["recipe"] == "swin"
    assert resumed["scheduler"]["last_epoch"] == 6


def test_a_format_1_checkpoint_resumes(capsys, image_folder, tmp_path):
    """A checkpoint of the previous version: optimizer keyed by index, one RNG state."""
    train_tiny(capsys, image_folder, tmp_path / "new", *EAGER)
    checkpoint = torch.load(tmp_path / "new" / "last.pt", weights_only=True)
    model = ckpt.load_model(checkpoint, "last.pt", fused=False)
    names = [name for name, _ in model.named_parameters()]
    optimizer = checkpoint["optimizer"]
    checkpoint.update(format=ckpt.FORMATS[0], rng={"torch": torch.get_rng_state()}, optimizer={
        "state": {names.index(name): value for name, value in optimizer["state"].items()},
        "param_groups": [{**group, "params": [names.index(n) for n in group["params"]]}
                         for group in optimizer["param_groups"]]})
    del checkpoint["config"]["run_id"]
    torch.save(checkpoint, tmp_path / "old.pt")
    train_tiny(capsys, image_folder, tmp_path / "resumed", *EAGER, "--epochs", "2", "--resume",
               tmp_path / "old.pt")
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["format"] == ckpt.FORMAT
    assert resumed["optimizer"]["state"]["head.weight"]["step"] == 6
