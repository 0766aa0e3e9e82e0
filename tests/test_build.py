"""The CMake project's CUDA switch (configure only, no compilation): NETMORPH_CUDA=auto never
fails for want of nvcc, "on" does, "off" skips CUDA, anything else is rejected.

Needs cmake and pybind11; skipped without them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CMAKE = shutil.which("cmake")
pybind11 = pytest.importorskip("pybind11", reason="pybind11 is needed to configure the build")
pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake is not on PATH")


def configure(build_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            CMAKE,
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def with_cuda(build_dir: Path) -> str:
    cache = (build_dir / "CMakeCache.txt").read_text(encoding="utf-8").splitlines()
    return next(line.split("=", 1)[1] for line in cache if line.startswith("NETMORPH_WITH_CUDA"))


def test_off_builds_the_cpu_module_only(tmp_path):
    done = configure(tmp_path, "-DNETMORPH_CUDA=off")
    assert done.returncode == 0, done.stderr
    assert with_cuda(tmp_path) == "OFF"
    assert "Looking for a CUDA compiler" not in done.stdout


def test_auto_without_nvcc_skips_cuda(tmp_path):
    done = configure(tmp_path, "-DNETMORPH_CUDA=auto", "-DCMAKE_CUDA_COMPILER=/nonexistent/nvcc")
    assert done.returncode == 0, done.stderr
    assert with_cuda(tmp_path) == "OFF"
    assert "no CUDA compiler found" in done.stdout


def test_on_without_nvcc_is_an_error(tmp_path):
    done = configure(tmp_path, "-DNETMORPH_CUDA=on", "-DCMAKE_CUDA_COMPILER=/nonexistent/nvcc")
    assert done.returncode != 0
    assert "NETMORPH_CUDA=on but no CUDA compiler (nvcc) was found" in done.stderr


def test_unknown_mode_is_rejected(tmp_path):
    done = configure(tmp_path, "-DNETMORPH_CUDA=maybe")
    assert done.returncode != 0
    assert "NETMORPH_CUDA must be auto, on or off" in done.stderr
