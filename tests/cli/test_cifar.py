"""The CIFAR-10 command line (`python -m swin_fused.cifar`) end to end, on tiny generated datasets.

Both dataset layouts (image folders; CIFAR-10's pickled batches read by torchvision), train -> eval
-> predict with every artifact checked, resume, interruption, convert, and the one-line errors.
Models are tiny (embed 16, one stage, one window per image where fused) because the fused runs use
the real kernels in Triton's interpreter.
"""
import copy
import os
import pickle
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import swin_fused
from swin_fused.cifar import checkpoint as ckpt
from swin_fused.cifar import models
from swin_fused.cifar import train as train_module
from swin_fused.cifar.cli import main
from tests.cli.cifar_tools import (
    CLASSES,
    RTOL,
    TINY,
    TINY_MODEL,
    assert_one_line_error,
    random_images,
    run_cli,
    train_tiny,
)
from tests.helpers import DEVICE, assert_close, kernel_launches

pytestmark = pytest.mark.cli

SCALARS = {"loss/train", "loss/test", "accuracy/train", "accuracy/test", "learning_rate"}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """cifar-10-batches-py with 12 train images in five batches and 6 test images."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    os.makedirs(folder)
    rng = np.random.default_rng(1)
    batches = {f"data_batch_{i}": [2, 2, 3, 3, 2][i - 1] for i in range(1, 6)}
    batches["test_batch"] = 6
    for name, n in batches.items():
        entry = {"data": random_images(rng, n).transpose(0, 3, 1, 2).reshape(n, -1),
                 "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ckpt.CIFAR10_CLASSES}, f)
    return root


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    # generated batches cannot match the md5 sums of the real CIFAR-10 files
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)


@pytest.fixture
def torch_loads(monkeypatch):
    """Records the weights_only argument of every torch.load call."""
    calls, real_load = [], torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)
    monkeypatch.setattr(torch, "load", recording_load)
    return calls


def check_run_artifacts(run_dir, classes, epochs=1):
    for name in ("last.pt", "best.pt"):
        checkpoint = torch.load(run_dir / name, weights_only=True)
        assert checkpoint["epoch"] == epochs and checkpoint["config"]["classes"] == classes
        assert len(checkpoint["history"]["test_acc"]) == epochs
        ckpt.load_model(checkpoint, run_dir / name, fused=False)
    for name in ("loss.png", "accuracy.png", "lr.png"):
        with Image.open(run_dir / name) as image:
            image.load()
            assert image.width > 100 and image.height > 100
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert set(events.Tags()["scalars"]) >= SCALARS
    assert [e.step for e in events.Scalars("loss/train")] == list(range(1, epochs + 1))


def check_eval_and_predict(capsys, data_dir, run_dir, classes, *options):
    status, out, err = run_cli(capsys, "eval", "--data-dir", data_dir, "--checkpoint",
                               run_dir / "best.pt", "--workers", "0", "--device", DEVICE, *options)
    assert status == 0, err
    assert "overall" in out and all(name in out for name in classes)
    with Image.open(run_dir / "predictions.png") as grid:
        grid.load()

    image = run_dir / "sample.jpg"  # another size and format: predict resizes
    Image.fromarray(random_images(np.random.default_rng(2), 1, size=40)[0]).save(image)
    status, out, err = run_cli(capsys, "predict", "--checkpoint", run_dir / "best.pt", image,
                               image, "--device", DEVICE, *options)
    assert status == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(image))
    assert sum(name in lines[0] for name in classes) == 3 and lines[0].count("%") == 3


def test_image_folder_fused_train_eval_predict(capsys, image_folder, tmp_path):
    with kernel_launches() as launches:
        out = train_tiny(capsys, image_folder, tmp_path, "--image-size", "8")
    assert sum(launches.values()) > 0, "the fused kernels never ran"
    assert "Epoch [  1/  1] Train Loss:" in out and "img/s" in out
    check_run_artifacts(tmp_path, CLASSES)
    check_eval_and_predict(capsys, image_folder, tmp_path, CLASSES)


def test_cifar_batches_train_eval_predict(capsys, cifar_dir, tmp_path, skip_cifar_md5,
                                          torch_loads):
    train_tiny(capsys, cifar_dir, tmp_path, "--no-fused")
    check_run_artifacts(tmp_path, ckpt.CIFAR10_CLASSES)
    check_eval_and_predict(capsys, cifar_dir, tmp_path, ckpt.CIFAR10_CLASSES, "--no-fused")
    assert torch_loads and all(weights_only is True for weights_only in torch_loads)


def test_fused_training_matches_eager_step_by_step():
    torch.manual_seed(0)
    eager = models.build({**TINY_MODEL, "heads": [2]}, fused=False)
    # at the article's init (std .02) attention barely moves the loss: a dropped shift mask
    # changes it by 1e-5; at std .2 by 3e-2, far above the tolerance
    with torch.no_grad():
        for weight in (p for p in eager.parameters() if p.dim() > 1):
            weight.normal_(0, 0.2)
    fused = copy.deepcopy(eager)
    swin_fused.patch(fused)
    # 10x10 images: a 5x5 token map padded to two 4x4 windows a side, shifted and masked
    batches = [(torch.randn(4, 3, 10, 10, device=DEVICE),
                torch.randint(0, 3, (4,), device=DEVICE)) for _ in range(4)]
    losses = {}
    for name, model in (("eager", eager), ("fused", fused)):
        model.to(DEVICE)
        recipe = train_module.RECIPES["seed"]
        optimizer = recipe.optimizer(model, global_batch=4)
        scaler = torch.amp.GradScaler(DEVICE, enabled=False)
        with kernel_launches() as launches:
            losses[name] = torch.stack([
                train_module.train_step(model, images, labels, optimizer, scaler, "none",
                                        recipe)[0]
                for images, labels in batches])
        assert (sum(launches.values()) > 0) == (name == "fused")
    assert_close(losses["fused"], losses["eager"], RTOL, name="loss per step")


def test_resume_gives_the_same_history(capsys, image_folder, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    options = ("--no-fused", "--augment", "--image-size", "16")
    train_tiny(capsys, image_folder, whole, "--epochs", "3", *options)
    train_tiny(capsys, image_folder, split, "--epochs", "2", *options)
    train_tiny(capsys, image_folder, split, "--epochs", "3", "--resume", split / "last.pt",
               *options)
    expected = torch.load(whole / "last.pt", weights_only=True)
    resumed = torch.load(split / "last.pt", weights_only=True)
    assert resumed["epoch"] == 3
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert resumed["history"][key] == expected["history"][key], key
    for name, value in expected["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    check_run_artifacts(split, CLASSES, epochs=3)


def test_interrupted_run_keeps_the_last_finished_epoch(capsys, image_folder, tmp_path,
                                                       monkeypatch):
    finish_epoch = train_module.train_one_epoch

    def interrupted_in_second_epoch(run, *args):
        if run.epoch == 1:
            raise KeyboardInterrupt
        finish_epoch(run, *args)
    monkeypatch.setattr(train_module, "train_one_epoch", interrupted_in_second_epoch)
    status, _, err = run_cli(capsys, "train", "--data-dir", image_folder, "--out", tmp_path,
                             "--epochs", "3", "--no-fused", *TINY)
    assert status == 130 and "--resume" in err and "Traceback" not in err
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1


@pytest.fixture
def article_pickle(tmp_path, monkeypatch):
    """A whole DataParallel-wrapped model saved as the article's script does: torch.save(net),
    its classes defined in that script's __main__."""
    from swin_fused import reference
    for name in ("SwinTransformer", "BasicLayer", "SwinTransformerBlock", "WindowAttention",
                 "PatchEmbed", "PatchMerging", "MLP"):
        cls = getattr(reference, name)
        monkeypatch.setattr(cls, "__module__", "__main__")
        monkeypatch.setattr(sys.modules["__main__"], name, cls, raising=False)
    torch.manual_seed(0)
    model = models.build({**TINY_MODEL, "n_classes": 10}, fused=False)
    # on a CUDA machine DataParallel moves the model to cuda:0, as in the article's own file
    torch.save(torch.nn.DataParallel(model), tmp_path / "article.pth")
    return tmp_path / "article.pth", {k: v.cpu() for k, v in model.state_dict().items()}


def test_convert_article_pickle(capsys, article_pickle, tmp_path):
    old, state_dict = article_pickle
    status, out, err = run_cli(capsys, "convert", old, tmp_path / "converted.pt")
    assert status == 0, err
    assert "weights_only=False" in err and "trust" in err
    checkpoint = ckpt.load(tmp_path / "converted.pt")
    assert checkpoint["config"]["model"] == {**TINY_MODEL, "n_classes": 10}
    assert checkpoint["config"]["classes"] == ckpt.CIFAR10_CLASSES
    for name, value in state_dict.items():
        assert torch.equal(checkpoint["model"][name], value), name


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, image_folder):
    """A trained tiny checkpoint, for the error cases that need one."""
    run_dir = tmp_path_factory.mktemp("run")
    status = main(["train", "--data-dir", str(image_folder), "--out", str(run_dir),
                   "--epochs", "1", "--no-fused", *TINY])
    assert status == 0
    return run_dir / "last.pt"


def another_architecture(tmp_path, tiny_checkpoint):
    """Our checkpoint format whose weights belong to a different model than its config says."""
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["config"]["model"]["depths"] = [4]
    torch.save(checkpoint, tmp_path / "other.pt")
    return tmp_path / "other.pt"


def plain_state_dict(tmp_path, tiny_checkpoint):
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "linear.pt")
    return tmp_path / "linear.pt"


def whole_module(tmp_path, tiny_checkpoint):
    torch.save(torch.nn.Linear(4, 2), tmp_path / "module.pt")
    return tmp_path / "module.pt"


def not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    return tmp_path / "notes.png"


@pytest.mark.parametrize("make_checkpoint, message", [
    (lambda tmp, ckpt_path: tmp / "missing.pt", "No such file"),
    (another_architecture, "another architecture"),
    (plain_state_dict, "not a swin_fused.cifar checkpoint"),
    (whole_module, "convert"),
    (lambda tmp, ckpt_path: not_an_image(tmp), "not a torch.save file"),
], ids=["missing", "other-architecture", "foreign-state-dict", "pickled-module", "not-torch"])
def test_bad_checkpoint_is_one_line(capsys, tmp_path, tiny_checkpoint, make_checkpoint, message):
    bad = make_checkpoint(tmp_path, tiny_checkpoint)
    status, _, err = run_cli(capsys, "predict", "--checkpoint", bad, "x.png", "--no-fused")
    assert_one_line_error(status, err, message)


@pytest.mark.parametrize("image, message", [
    (lambda tmp: tmp / "missing.png", "No such file"),
    (not_an_image, "not an image"),
    (lambda tmp: "http://127.0.0.1:9/x.png", "cannot fetch"),
], ids=["missing", "not-an-image", "offline-url"])
def test_bad_image_is_one_line(capsys, tmp_path, tiny_checkpoint, image, message):
    status, _, err = run_cli(capsys, "predict", "--checkpoint", tiny_checkpoint, image(tmp_path),
                             "--timeout", "2", "--no-fused")
    assert_one_line_error(status, err, message)


def test_unwritable_run_dir_is_one_line(capsys, image_folder, tmp_path):
    (tmp_path / "file").write_text("")
    status, _, err = run_cli(capsys, "train", "--data-dir", image_folder, "--out",
                             tmp_path / "file" / "run", *TINY, "--no-fused")
    assert_one_line_error(status, err, "cannot write to the run directory")


def test_missing_dataset_offline_is_one_line(capsys, tmp_path, monkeypatch):
    def offline(self):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    os.makedirs(tmp_path / "data")
    status, _, err = run_cli(capsys, "train", "--data-dir", tmp_path / "data", "--out",
                             tmp_path / "run", *TINY, "--no-fused")
    assert_one_line_error(status, err, "could not be downloaded")
    assert "cifar.html" in err


def test_corrupt_cifar_is_one_line(capsys, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    os.makedirs(folder)
    (folder / "data_batch_1").write_bytes(b"truncated")
    status, _, err = run_cli(capsys, "train", "--data-dir", tmp_path, "--out", tmp_path / "run",
                             *TINY, "--no-fused")
    assert_one_line_error(status, err, "incomplete or corrupt")


def test_corrupt_image_in_dataset_is_one_line(capsys, tmp_path):
    for split in ("train", "test"):
        for name in CLASSES[:2]:
            os.makedirs(tmp_path / "data" / split / name)
            Image.new("RGB", (8, 8)).save(tmp_path / "data" / split / name / "ok.png")
    not_an_image(tmp_path / "data" / "train" / "cat")
    status, _, err = run_cli(capsys, "train", "--data-dir", tmp_path / "data", "--out",
                             tmp_path / "run", *TINY, "--no-fused")
    assert_one_line_error(status, err, "notes.png")


def test_command_line_entry_point_fails_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "swin_fused.cifar", "predict", "--checkpoint",
         str(tmp_path / "missing.pt"), "x.png"], capture_output=True, text=True, timeout=120)
    assert_one_line_error(result.returncode, result.stderr, "No such file")
