"""The wheel installs kernels/ as swin_fused.kernels, never as a top-level `kernels` module."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_kernels_into_the_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path)], check=True)
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert {"swin_fused/kernels/v1.py", "swin_fused/kernels/v2.py",
            "swin_fused/kernels/common.py"} <= set(names)
    assert not any(n.startswith("kernels/") for n in names)


def test_source_checkout_finds_the_kernels_in_the_package():
    # a link, so an editable install by any setuptools (or none) imports swin_fused.kernels
    assert (ROOT / "swin_fused" / "kernels").resolve() == ROOT / "kernels"
