"""The CIFAR command line loses nothing (issue 10, item 7): a run folder that holds a run is never
replaced without --overwrite, a second concurrent run is refused, temporary files have unique names
and never outlive an interruption, Ctrl-C says what is on disk, and every bad option is a one-line
usage error before any work starts."""
import os
import struct
import zlib

import pytest
import torch

from swin_fused.cifar import checkpoint as ckpt
from tests.cli.cifar_tools import (
    EAGER,
    TINY,
    assert_one_line_error,
    run_cli,
    run_main,
    train_tiny,
    usage_error,
)

pytestmark = pytest.mark.cli


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, image_folder):
    """A run folder holding a finished one-epoch run: (folder, {file name: bytes})."""
    run_dir = tmp_path_factory.mktemp("finished")
    status = run_main("train", "--data-dir", image_folder, "--out", run_dir, "--epochs", "1",
                      *TINY, *EAGER)
    assert status == 0
    return run_dir, snapshot(run_dir)


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def copy_run(finished_run, tmp_path):
    run_dir, files = finished_run
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return tmp_path, files


def test_train_into_a_run_folder_refuses_without_resume_or_overwrite(capsys, finished_run,
                                                                     image_folder, tmp_path):
    run_dir, files = copy_run(finished_run, tmp_path)
    status, _, err = run_cli(capsys, "train", "--data-dir", image_folder, "--out", run_dir,
                             "--epochs", "1", *TINY, *EAGER)
    assert_one_line_error(status, err, "--overwrite")
    assert "--resume" in err
    assert snapshot(run_dir) == files, "the refused run changed the run folder"


def test_overwrite_replaces_the_old_run_and_keeps_other_files(capsys, finished_run, image_folder,
                                                               tmp_path):
    run_dir, files = copy_run(finished_run, tmp_path)
    (run_dir / "notes.txt").write_text("mine")
    old_id = torch.load(run_dir / "last.pt", weights_only=True)["config"]["run_id"]
    train_tiny(capsys, image_folder, run_dir, *EAGER, "--overwrite")
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert len([name for name in os.listdir(run_dir) if name.startswith("events.")]) == 1
    assert torch.load(run_dir / "last.pt", weights_only=True)["config"]["run_id"] != old_id


def another_run(tmp_path, image_folder, capsys):
    train_tiny(capsys, image_folder, tmp_path / "other", *EAGER)
    return tmp_path / "other" / "last.pt"


def behind_the_folder(tmp_path, image_folder, capsys):
    """A copy of the folder's own run, one epoch behind its last.pt."""
    run_dir = tmp_path / "run"
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    checkpoint["epoch"] = 0
    checkpoint["history"] = {key: [] for key in checkpoint["history"]}
    torch.save(checkpoint, tmp_path / "behind.pt")
    return tmp_path / "behind.pt"


@pytest.mark.parametrize("resumed, message", [(another_run, "another run"),
                                              (behind_the_folder, "epoch 1")],
                         ids=["another-run", "behind"])
def test_resume_into_a_folder_of_another_state_refuses(capsys, finished_run, image_folder,
                                                       tmp_path, resumed, message):
    os.makedirs(tmp_path / "run")
    run_dir, files = copy_run(finished_run, tmp_path / "run")
    resume = resumed(tmp_path, image_folder, capsys)
    status, _, err = run_cli(capsys, "train", "--data-dir", image_folder, "--out", run_dir,
                             "--epochs", "2", "--resume", resume, *TINY, *EAGER)
    assert_one_line_error(status, err, message)
    assert snapshot(run_dir) == files


def test_a_second_concurrent_run_is_refused(capsys, image_folder, tmp_path):
    from swin_fused.cifar import rundir
    with rundir.RunLock(tmp_path):
        status, _, err = run_cli(capsys, "train", "--data-dir", image_folder, "--out", tmp_path,
                                 "--epochs", "1", *TINY, *EAGER)
    assert_one_line_error(status, err, f"pid {os.getpid()}")
    assert not (tmp_path / "last.pt").exists()


def test_what_a_killed_run_leaves_does_not_block(capsys, image_folder, tmp_path):
    from swin_fused.cifar import rundir
    # the lock file, no process holding it, and a half-written temporary checkpoint
    (tmp_path / rundir.LOCK_NAME).write_text("pid 999999999 on another-host since yesterday\n")
    (tmp_path / ".last.pt.999999999.0123abcd.tmp").write_bytes(b"half a checkpoint")
    train_tiny(capsys, image_folder, tmp_path, *EAGER)
    assert sorted(name for name in os.listdir(tmp_path) if not name.startswith("events.")) == [
        "accuracy.png", "best.pt", "last.pt", "loss.png", "lr.png"]


def test_concurrent_saves_to_one_path_both_succeed(tmp_path, monkeypatch):
    real_save, target = torch.save, tmp_path / "last.pt"
    nested = []

    def save_while_another_saves(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if not nested:  # another run saves the same path between this write and its rename
            nested.append(True)
            ckpt.save({"run": "other"}, target)
    monkeypatch.setattr(torch, "save", save_while_another_saves)
    ckpt.save({"run": "this"}, target)
    assert torch.load(target, weights_only=True) == {"run": "this"}
    assert os.listdir(tmp_path) == ["last.pt"]


def interrupt_when_saving(monkeypatch, name):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if name in os.path.basename(str(getattr(f, "name", f))):
            raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", save)


def test_ctrl_c_during_a_save_says_what_is_on_disk(capsys, image_folder, tmp_path, monkeypatch):
    interrupt_when_saving(monkeypatch, "best.pt")
    status, _, err = run_cli(capsys, "train", "--data-dir", image_folder, "--out", tmp_path,
                             "--epochs", "2", *TINY, *EAGER)
    assert status == 130 and "Traceback" not in err
    assert "nothing was saved" not in err
    assert f"{tmp_path / 'last.pt'} holds epoch 1" in err and "--resume" in err
    left = [name for name in os.listdir(tmp_path)
            if name != "last.pt" and not name.startswith("events.out.tfevents.")]
    assert left == [], "a half-written or temporary file was left behind"


def test_ctrl_c_before_any_save_says_nothing_was_saved(capsys, image_folder, tmp_path,
                                                       monkeypatch):
    interrupt_when_saving(monkeypatch, "last.pt")
    status, _, err = run_cli(capsys, "train", "--data-dir", image_folder, "--out", tmp_path,
                             "--epochs", "2", *TINY, *EAGER)
    assert status == 130 and "nothing was saved" in err
    assert not [name for name in os.listdir(tmp_path) if name.endswith((".pt", ".tmp"))]


@pytest.mark.parametrize("command, options", [
    ("train", ["--batch-size", "0"]),
    ("train", ["--epochs", "0"]),
    ("train", ["--workers", "-1"]),
    ("train", ["--window-size", "0"]),
    ("train", ["--patch-size", "0"]),
    ("train", ["--heads", "0"]),
    ("train", ["--embed-dim", "0"]),
    ("train", ["--depths", "0"]),
    ("train", ["--image-size", "0"]),
    ("train", ["--embed-dim", "20", "--heads", "3"]),
    ("train", ["--device", "meta"]),
    ("eval", ["--batch-size", "0"]),
    ("eval", ["--workers", "-1"]),
    ("predict", ["--top", "0"]),
    ("predict", ["--top", "-1"]),
    ("predict", ["--timeout", "0"]),
], ids=lambda value: value if isinstance(value, str) else " ".join(value))
def test_bad_option_is_a_usage_error_before_any_work(capsys, image_folder, tmp_path, command,
                                                    options):
    out = tmp_path / "run"
    argv = {"train": ["--data-dir", image_folder, "--out", out, *TINY, *EAGER],
            "eval": ["--data-dir", image_folder, "--checkpoint", tmp_path / "x.pt", "--out", out],
            "predict": ["--checkpoint", tmp_path / "x.pt", "x.png"]}[command]
    usage_error(capsys, command, *argv, *options)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["train", "eval"])
def test_missing_data_dir_is_a_usage_error_and_creates_nothing(capsys, tmp_path, command):
    argv = {"train": ["--out", tmp_path / "run", *TINY, *EAGER],
            "eval": ["--checkpoint", tmp_path / "x.pt"]}[command]
    line = usage_error(capsys, command, "--data-dir", tmp_path / "data", *argv)
    assert "data" in line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("first, then", [("none", "fp16"), ("fp16", "none")])
def test_resume_with_another_amp(capsys, image_folder, tmp_path, first, then):
    train_tiny(capsys, image_folder, tmp_path, *EAGER, "--amp", first)
    train_tiny(capsys, image_folder, tmp_path, *EAGER, "--amp", then, "--epochs", "2",
               "--resume", tmp_path / "last.pt")
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["train"]["amp"] == then


def png_header_only(path, width, height):
    """A PNG that claims width x height pixels: what a decompression bomb looks like to a reader."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_one_line(capsys, finished_run, tmp_path):
    run_dir, _ = finished_run
    bomb = png_header_only(tmp_path / "bomb.png", 40000, 40000)
    status, _, err = run_cli(capsys, "predict", "--checkpoint", run_dir / "last.pt", bomb,
                             *EAGER)
    assert_one_line_error(status, err, "bomb.png")


@pytest.fixture
def state_dict_file(finished_run, tmp_path):
    """The finished run's weights as a bare state_dict, as the seed article's code saves them."""
    run_dir, _ = finished_run
    torch.save(torch.load(run_dir / "last.pt", weights_only=True)["model"], tmp_path / "sd.pth")
    return tmp_path / "sd.pth"


def test_convert_into_a_missing_folder(capsys, state_dict_file, tmp_path):
    new = tmp_path / "missing" / "folder" / "converted.pt"
    status, _, err = run_cli(capsys, "convert", state_dict_file, new, "--classes", "a,b,c")
    assert status == 0, err
    assert ckpt.load(new)["config"]["model"]["embed_dim"] == 16


def test_convert_never_replaces_a_file_without_overwrite(capsys, state_dict_file, tmp_path):
    (tmp_path / "mine.pt").write_bytes(b"precious")
    argv = ("convert", state_dict_file, tmp_path / "mine.pt", "--classes", "a,b,c")
    status, _, err = run_cli(capsys, *argv)
    assert_one_line_error(status, err, "--overwrite")
    assert (tmp_path / "mine.pt").read_bytes() == b"precious"
    status, _, err = run_cli(capsys, *argv, "--overwrite")
    assert status == 0, err
    ckpt.load(tmp_path / "mine.pt")
