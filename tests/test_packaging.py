"""The wheel installs kernels/ as swin_fused.kernels, never as a top-level `kernels` module, and
the kernels folder never shadows Hugging Face's `kernels` package."""
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import ROOT


def test_wheel_maps_kernels_into_the_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path)], check=True)
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert {"swin_fused/kernels/v1.py", "swin_fused/kernels/v2.py",
            "swin_fused/kernels/common.py"} <= set(names)
    assert not any(n.startswith("kernels/") for n in names)


def test_source_checkout_finds_the_kernels_in_the_package():
    # a link, so an editable install by any setuptools (or none) imports swin_fused.kernels
    assert (ROOT / "swin_fused" / "kernels").resolve() == ROOT / "kernels"


def test_import_kernels_from_the_repository_root_is_not_ours():
    code = "import kernels, sys; print(getattr(kernels, '__file__', None))"
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if found.returncode == 0:
        assert str(ROOT / "kernels") not in found.stdout, found.stdout
        pytest.importorskip("kernels", reason="Hugging Face's kernels package is not installed")
        assert found.stdout.strip() != "None", "a namespace package of our folder, not HF's"
    else:
        assert "No module named 'kernels'" in found.stderr


def test_editable_install_metadata_builds_beside_hf_kernels():
    # egg_info resolved an entry point of Hugging Face's kernels package in our folder before
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
                    "--no-build-isolation", "-q", "-e", str(ROOT)], cwd=ROOT, check=True)
