"""The CUDA sources compile: every csrc/*_cuda.cu with nvcc, the same text as NVRTC receives it
(self-contained, no host headers), and the pybind11 module bindings/cuda_module.cu.

Needs only nvcc (no GPU); skipped without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from netmorph_core.backends import cupy_backend

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
KERNEL_FILES = sorted(p.name for p in CSRC.glob("*_cuda.cu"))
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")

#: The extern "C" kernels each source must define, for float and double.
KERNELS = {
    "compose_cuda.cu": ["nm_compose_shift_add"],
    "correlate_outer_cuda.cu": ["nm_correlate_gather"],
    "gemm_cuda.cu": ["nm_gemm"],
    "gram_outer_cuda.cu": ["nm_gram_assemble"],
    "gram_outer_rows_cuda.cu": ["nm_gram_rows_assemble"],
    "transform_cuda.cu": ["nm_to_points", "nm_from_points"],
}


def nvcc(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run(
        [NVCC, "-arch=sm_90", "-std=c++17", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"nvcc failed:\n{done.stdout}\n{done.stderr}"


def test_every_kernel_source_is_known():
    assert KERNEL_FILES == sorted(KERNELS)


def test_kernel_dir_is_found_from_the_source_tree():
    assert cupy_backend.kernel_dir() == CSRC


@pytest.mark.parametrize("name", KERNEL_FILES)
def test_nvrtc_text_is_self_contained(name):
    text = cupy_backend.kernel_source(name)
    assert not re.search(r"^\s*#\s*include", text, re.MULTILINE)
    assert "NM_FOR_EACH_DTYPE(NM_DEFINE)" in text
    for kernel in KERNELS[name]:
        assert f"{kernel}_##S(" in text


@needs_nvcc
@pytest.mark.parametrize("name", KERNEL_FILES)
def test_kernel_source_compiles(name, tmp_path):
    nvcc("-c", "-Werror", "all-warnings", CSRC / name, "-o", tmp_path / "k.o", cwd=tmp_path)


@needs_nvcc
@pytest.mark.parametrize("name", KERNEL_FILES)
def test_nvrtc_text_compiles_without_include_paths(name, tmp_path):
    (tmp_path / name).write_text(cupy_backend.kernel_source(name), encoding="utf-8")
    nvcc("--ptx", "-Werror", "all-warnings", name, "-o", "k.ptx", cwd=tmp_path)
    ptx = (tmp_path / "k.ptx").read_text(encoding="utf-8")
    for kernel in KERNELS[name]:
        for suffix in ("f32", "f64"):
            assert re.search(rf"\.entry {kernel}_{suffix}\(", ptx), f"{kernel}_{suffix} missing"


@needs_nvcc
def test_pybind11_module_compiles(tmp_path):
    pybind11 = pytest.importorskip("pybind11")
    python_include = Path(sysconfig.get_paths()["include"])
    if not (python_include / "Python.h").is_file():
        pytest.skip("Python development headers are not installed")
    nvcc(
        "-c",
        "-Xcompiler",
        "-fPIC",
        f"-I{pybind11.get_include()}",
        f"-I{python_include}",
        ROOT / "bindings" / "cuda_module.cu",
        "-o",
        tmp_path / "module.o",
        cwd=tmp_path,
    )
