"""Shared tools of the CIFAR command-line tests: tiny generated datasets, running the CLI in this
process, the checks of its one-line errors, and the tolerance of runs that differ in rounding."""
import os

import numpy as np
import pytest
from PIL import Image

from swin_fused.cifar import models
from swin_fused.cifar.cli import PROG, main
from tests.helpers import DEVICE

CLASSES = ["cat", "dog", "ship"]
TINY_MODEL = {"arch": models.ARTICLE, "embed_dim": 16, "depths": [2], "heads": [1],
              "window_size": 4, "patch_size": 2, "mlp_ratio": 1, "n_classes": 3}
# one window per 8x8 image (patch 2 -> 4x4 tokens), so an interpreted fused epoch takes seconds
TINY = ["--embed-dim", "16", "--depths", "2", "--heads", "1", "--window-size", "4",
        "--batch-size", "4", "--workers", "0", "--device", DEVICE, "--seed", "0"]
EAGER = ("--no-fused",)
# two runs that differ in float rounding only (sums in another order, the fused op's), through
# a few optimizer steps
RTOL = 1e-4


def random_images(rng, n, size=32):
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def make_image_folder(root, train_per_class=4, test_per_class=2, size=32, seed=0):
    """root/train/<class>/*.png and root/test/<class>/*.png for CLASSES; returns root."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for name in CLASSES:
            os.makedirs(root / split / name)
            for i, pixels in enumerate(random_images(rng, per_class, size)):
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def run_cli(capsys, *argv):
    """main(argv) in this process: (exit status, stdout, stderr)."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def run_main(*argv):
    """main(argv) in this process, for a module-scoped fixture (no capsys): the exit status."""
    return main([str(a) for a in argv])


def train_tiny(capsys, data_dir, run_dir, *extra):
    status, out, err = run_cli(capsys, "train", "--data-dir", data_dir, "--out", run_dir,
                               "--epochs", "1", *TINY, *extra)
    assert status == 0, err
    return out


def assert_one_line_error(status, err, message):
    """Exit status 1 and one error line, last on stderr (after any progress bar), no traceback."""
    assert status == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"{PROG}: error:"), err
    assert errors[0] == err.strip().splitlines()[-1] and message in errors[0], err


def usage_error(capsys, *argv):
    """main(argv) must stop with a usage error: exit status 2 and one line. Returns that line."""
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}"), err
    return lines[0]
