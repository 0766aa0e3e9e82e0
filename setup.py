"""Build netmorph's native extensions with CMake (metadata lives in pyproject.toml).

Extensions:
  netmorph_core._native       C++/OpenMP CPU kernels (csrc/*.cpp, bindings/native_module.cpp).
  netmorph_core._native_cuda  CUDA kernels (bindings/cuda_module.cu), only when nvcc is found.

Environment variables:
  NETMORPH_CUDA        "auto" (default): build the CUDA module when a CUDA compiler is found;
                       any CUDA problem only skips that module, never the install.
                       "on": a missing nvcc or a failed CUDA build is an error. "off": skip it.
  NETMORPH_CUDA_ARCHS  CMAKE_CUDA_ARCHITECTURES for the CUDA module (default "80;90").
  CMAKE_BUILD_PARALLEL_LEVEL  parallel compile jobs (default: the number of CPUs).

The package still imports without any compiled extension: the "native" backend then reports
itself unavailable with the reason. A built package also carries the CUDA kernel sources
(csrc/*_cuda.cu, csrc/*.cuh) as netmorph_core/csrc/, which the CuPy backend compiles at run time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()
CPU_MODULE = "netmorph_core._native"
CUDA_MODULE = "netmorph_core._native_cuda"


def cuda_mode() -> str:
    """NETMORPH_CUDA, checked: auto, on or off."""
    mode = os.environ.get("NETMORPH_CUDA", "auto").strip().lower() or "auto"
    if mode not in ("auto", "on", "off"):
        raise SystemExit(f"NETMORPH_CUDA must be 'auto', 'on' or 'off', got {mode!r}")
    return mode


def find_nvcc() -> str | None:
    """The CUDA compiler: $CUDACXX, nvcc on PATH, or the default toolkit location."""
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_cmake() -> str:
    """cmake on PATH, else the one from the `cmake` build requirement."""
    found = shutil.which("cmake")
    if found:
        return found
    try:
        import cmake
    except ImportError as exc:
        raise SystemExit("CMake >= 3.18 is required to build netmorph's native extension") from exc
    return os.path.join(cmake.CMAKE_BIN_DIR, "cmake")


class CMakeExtension(Extension):
    """An extension module produced by the CMake project at the repository root."""

    def __init__(self, name: str, *, optional: bool = False) -> None:
        super().__init__(name, sources=[], optional=optional)


class CMakeBuild(build_ext):
    """Configure the CMake project once, then build one CMake target per extension."""

    _build_dir: Path | None = None

    def _configure(self, out_dir: Path) -> Path:
        import pybind11

        mode = cuda_mode()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        args = [
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY_RELEASE={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DNETMORPH_CUDA={mode}",
        ]
        if mode != "off":
            nvcc = find_nvcc()
            if nvcc:
                args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
            archs = os.environ.get("NETMORPH_CUDA_ARCHS", "").strip() or "80;90"
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
        try:
            self._cmake(["-S", str(ROOT), "-B", str(build_dir), *args])
        except subprocess.CalledProcessError:
            if mode != "auto":
                raise
            # Never let CUDA detection stop the install: configure again without it.
            self.warn("CMake configuration with CUDA failed; building the CPU extension only")
            shutil.rmtree(build_dir, ignore_errors=True)
            args = [a for a in args if not a.startswith(("-DNETMORPH_CUDA=", "-DCMAKE_CUDA"))]
            self._cmake(["-S", str(ROOT), "-B", str(build_dir), *args, "-DNETMORPH_CUDA=off"])
        return build_dir

    def _cmake(self, args: list[str]) -> None:
        subprocess.run([find_cmake(), *args], check=True)

    def _target(self, build_dir: Path, target: str) -> None:
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        config = "Debug" if self.debug else "Release"
        self._cmake(["--build", str(build_dir), "--target", target, "--config", config, "-j", jobs])

    @staticmethod
    def _has_cuda_target(build_dir: Path) -> bool:
        cache = (build_dir / "CMakeCache.txt").read_text(encoding="utf-8")
        return "NETMORPH_WITH_CUDA:INTERNAL=ON" in cache

    def build_extension(self, ext: Extension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        if self._build_dir is None:
            self._build_dir = self._configure(out_dir)
        if ext.name == CPU_MODULE:
            self._target(self._build_dir, "_native")
            return
        mode = cuda_mode()
        if mode == "off" or not self._has_cuda_target(self._build_dir):
            return
        try:
            self._target(self._build_dir, "_native_cuda")
        except subprocess.CalledProcessError:
            if mode == "on":
                raise
            self.warn("building netmorph_core._native_cuda failed; installing without it")
            Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)


class BuildPy(build_py):
    """Copy the CUDA kernel sources into the package (an editable install reads the tree)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "netmorph_core" / "csrc"
        target.mkdir(parents=True, exist_ok=True)
        sources = sorted(ROOT.glob("csrc/*_cuda.cu")) + sorted(ROOT.glob("csrc/*.cuh"))
        for source in sources:
            self.copy_file(str(source), str(target / source.name))


setup(
    ext_modules=[
        CMakeExtension(CPU_MODULE),
        CMakeExtension(CUDA_MODULE, optional=cuda_mode() != "on"),
    ],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPy},
)
