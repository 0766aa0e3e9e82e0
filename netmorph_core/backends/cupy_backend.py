"""The ``cupy`` backend: the CUDA kernels of ``csrc/*_cuda.cu`` compiled at run time by NVRTC.

Inputs and outputs are ``cupy.ndarray`` (float32 or float64, any strides: operands are made
C-contiguous first, the caller's arrays are never written). Work runs on the current device and
stream. The GEMMs go to cuBLAS through ``cupy.matmul`` in full float32/float64 precision: the
float32 compute type is pinned to plain FP32 while a routine runs, so ``CUPY_TF32=1`` or
``set_compute_type`` elsewhere never turns on TF32 here.

``compose`` and ``correlate_outer`` have two methods (``method=``):

- ``"direct"``: one GEMM over every tap of F2, then a shifted sum (gather) kernel:
  2·C0·C1·C2·|K1|·|K2| flops, exact to rounding for any kernel size and 1 to 3 dimensions.
- ``"transform"``: Toom-Cook. Both factors are evaluated at Kt points per dimension (a kernel
  of ours), the |Kt| point products are one strided batched GEMM (|Kt|, C2, C1) × (|Kt|, C1,
  C0), and the inverse transform interpolates G: 2·C0·C1·C2·|Kt| flops (25 GEMMs instead of 81
  for 3×3 ⊛ 3×3). ``correlate_outer`` runs the transposed transforms. Taken for effective sizes
  up to :data:`TRANSFORM_LIMIT` per dimension (norm-relative error about 1e-6 in float32,
  1e-14 in float64).

``"auto"`` takes the transform whenever it applies and needs fewer point products than taps.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .. import _validation as v

try:
    import cupy as cp
except ImportError:  # reported by load()
    cp = None

DEVICE = "cuda"
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
METHODS = ("auto", "direct", "transform")
#: Largest effective kernel size (per dimension) the transform method takes, per dtype.
TRANSFORM_LIMIT = {np.dtype(np.float32): 5, np.dtype(np.float64): 7}

#: Toom-Cook evaluation points per transform size (``math.inf``: the point at infinity).
_POINTS = {
    1: (0.0,),
    2: (0.0, math.inf),
    3: (0.0, 1.0, -1.0),
    4: (0.0, 1.0, -1.0, math.inf),
    5: (0.0, 1.0, -1.0, 2.0, -2.0),
    6: (0.0, 1.0, -1.0, 2.0, -2.0, math.inf),
    7: (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5),
}
_KERNEL_FILES = (
    "compose_cuda.cu",
    "correlate_outer_cuda.cu",
    "gram_outer_cuda.cu",
    "gram_outer_rows_cuda.cu",
    "transform_cuda.cu",
)
_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_]+\.cuh)"[ \t]*$', re.MULTILINE)
_THREADS = 256
_SHARED_BYTES = 48 * 1024


def kernel_dir() -> Path:
    """The folder holding the ``*_cuda.cu`` sources: ``netmorph_core/csrc`` in an installed
    package, else ``csrc/`` of the source tree."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "csrc", package.parent / "csrc"):
        if (candidate / "compose_cuda.cu").is_file():
            return candidate
    raise OSError(f"the CUDA kernel sources (*_cuda.cu) are neither in {package / 'csrc'} "
                  f"nor in {package.parent / 'csrc'}")


def kernel_source(name: str) -> str:
    """The text of ``csrc/<name>`` with its local ``#include "*.cuh"`` lines expanded in place
    (each header once), as handed to NVRTC: self-contained, so the compile cache sees every
    byte of the kernel."""
    folder = kernel_dir()
    seen: set[str] = set()

    def expand(text: str) -> str:
        def inline(match: re.Match[str]) -> str:
            header = match.group(1)
            if header in seen:
                return ""
            seen.add(header)
            body = (folder / header).read_text(encoding="utf-8")
            return expand(body.replace("#pragma once\n", ""))

        return _INCLUDE.sub(inline, text)

    return expand((folder / name).read_text(encoding="utf-8"))


def load() -> None:
    """Check that CuPy, a CUDA device and NVRTC are usable; compile the kernels."""
    if cp is None:
        raise ImportError("the cupy backend needs CuPy (pip install cupy-cuda12x)")
    try:
        available = cp.is_available()
    except Exception as exc:  # driver or runtime library problems surface as various types
        raise RuntimeError(f"CuPy cannot reach a CUDA device: {exc}") from exc
    if not available:
        raise RuntimeError("CuPy is installed but finds no CUDA device")
    kernel_dir()
    try:
        for name in _KERNEL_FILES:
            _module(name, cp.cuda.Device().id).compile()
    except Exception as exc:
        raise RuntimeError(f"NVRTC cannot compile the CUDA kernels: {exc}") from exc


@functools.cache
def _module(name: str, device: int) -> cp.RawModule:
    del device  # part of the cache key: a module is loaded per device
    return cp.RawModule(code=kernel_source(name))


def _kernel(file: str, name: str, dtype: np.dtype) -> cp.RawKernel:
    suffix = "f32" if dtype == np.float32 else "f64"
    return _module(file, cp.cuda.Device().id).get_function(f"{name}_{suffix}")


# ------------------------------------------------------------------------- validation


def _operand(x: object, name: str) -> cp.ndarray:
    """``x`` checked to be a float32/float64 cupy filter (C_out, C_in, *kernel), C-contiguous."""
    if cp is None or not isinstance(x, cp.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray, got {type(x).__name__}")
    if x.dtype not in DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if not 2 <= x.ndim <= 2 + v.MAX_SPATIAL_DIMS:
        raise ValueError(
            f"{name} must have 2 to {2 + v.MAX_SPATIAL_DIMS} dimensions (C_out, C_in, *kernel), "
            f"got shape {x.shape}"
        )
    if 0 in x.shape:
        raise ValueError(f"{name} must not have an empty dimension, got shape {x.shape}")
    return x


def _same_kind(a: cp.ndarray, a_name: str, b: cp.ndarray, b_name: str) -> None:
    if a.dtype != b.dtype:
        raise TypeError(
            f"{a_name} and {b_name} must have the same dtype, got {a.dtype} and {b.dtype}"
        )
    if a.device != b.device:
        raise ValueError(
            f"{a_name} and {b_name} must be on the same device, got {a.device} and {b.device}"
        )
    v.same_spatial_rank(a, a_name, b, b_name)


def choose_method(method: str, dtype: np.dtype, k2: tuple[int, ...], k1: tuple[int, ...]) -> str:
    """"direct" or "transform" for ``method`` ("auto", "direct" or "transform")."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    fits = all(t <= TRANSFORM_LIMIT[dtype] for t in kt)
    if method == "transform":
        if not fits:
            raise ValueError(
                f"method 'transform' takes effective kernel sizes up to {TRANSFORM_LIMIT[dtype]} "
                f"per dimension for {dtype}, got {kt}"
            )
        return "transform"
    if method == "auto" and fits and math.prod(kt) < math.prod(k1) * math.prod(k2):
        return "transform"
    return "direct"


def _lift(k: tuple[int, ...]) -> tuple[int, int, int]:
    """Spatial sizes padded in front with 1 to exactly 3 dimensions (d, h, w)."""
    return (1,) * (3 - len(k)) + tuple(k)


# ------------------------------------------------------------------------- building blocks


@contextlib.contextmanager
def _full_precision() -> Iterator[None]:
    """cupy.matmul in plain FP32 for float32 (never TF32) while the block runs.

    CuPy's compute type is process-wide: it is switched only when something else set TF32 (or
    lower), and restored on exit.
    """
    from cupy._core import _routines_linalg as linalg

    f32 = np.dtype(np.float32)
    previous = linalg.get_compute_type(f32)
    if previous in (linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_PEDANTIC,
                    linalg.COMPUTE_TYPE_FP32):
        yield
        return
    linalg.set_compute_type(f32, linalg.COMPUTE_TYPE_FP32)
    try:
        yield
    finally:
        linalg.set_compute_type(f32, previous)


def _matmul(a: cp.ndarray, b: cp.ndarray) -> cp.ndarray:
    with _full_precision():
        return cp.matmul(a, b)


def _evaluation(points: tuple[float, ...], k: int) -> np.ndarray:
    """E (P × k): row p evaluates a polynomial of k coefficients at point p (inf: the top one)."""
    e = np.zeros((len(points), k))
    for row, p in enumerate(points):
        if math.isinf(p):
            e[row, k - 1] = 1.0
        else:
            e[row] = p ** np.arange(k)
    return e


def _toom(k1: int, k2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per dimension: V1 (Kt × K1), V2 (Kt × K2) evaluate F1, F2; W (Kt × Kt) interpolates G."""
    kt = k1 + k2 - 1
    points = _POINTS[kt]
    return _evaluation(points, k1), _evaluation(points, k2), np.linalg.inv(_evaluation(points, kt))


@functools.lru_cache(maxsize=256)
def _transform_matrices(
    kind: str, k1: tuple[int, ...], k2: tuple[int, ...], dtype: np.dtype, device: int
) -> tuple[cp.ndarray, cp.ndarray, cp.ndarray]:
    """The three dense matrices of one transform-method routine, on device.

    With V1, V2, W the Kronecker products over (d, h, w) of the per-dimension matrices:
    compose passes (V1, V2, Wᵀ), correlate_outer, its transpose, (Wᵀ, V2, V1) — the first two
    to :func:`_to_points` (points × taps), the last to :func:`_from_points` (points × outputs).
    """
    del device  # part of the cache key
    dims = [_toom(a, b) for a, b in zip(k1, k2)]
    v1, v2, w = (functools.reduce(np.kron, [d[i] for d in dims]) for i in range(3))
    mats = (v1, v2, w.T) if kind == "compose" else (w.T, v2, v1)
    return tuple(cp.asarray(np.ascontiguousarray(m, dtype=dtype)) for m in mats)


def _to_points(x: cp.ndarray, nb: int, p: int, m: cp.ndarray) -> cp.ndarray:
    """y (p, nb) = M · xᵀ for x (nb, k) C-contiguous and M (p × k) (transform_cuda.cuh)."""
    k = m.shape[1]
    ks = k | 1
    tile = max(1, min(32, _SHARED_BYTES // (ks * x.itemsize)))
    y = cp.empty((p, nb), dtype=x.dtype)
    _kernel("transform_cuda.cu", "nm_to_points", x.dtype)(
        (-(-nb // tile),), (_THREADS,),
        (x, y, np.int64(nb), np.int32(k), np.int32(p), m, np.int32(tile)),
        shared_mem=tile * ks * x.itemsize,
    )
    return y


def _from_points(q: cp.ndarray, nb: int, mt: cp.ndarray) -> cp.ndarray:
    """g (nb, t), g[b, t] = Σ_p Mᵀ[p, t] · q[p, b], q (p, nb) C-contiguous (transform_cuda.cuh)."""
    p, t = mt.shape
    tile = min(32, _SHARED_BYTES // (p * q.itemsize) // 4 * 4)
    g = cp.empty((nb, t), dtype=q.dtype)
    _kernel("transform_cuda.cu", "nm_from_points", q.dtype)(
        (-(-nb // tile),), (_THREADS,),
        (q, g, np.int64(nb), np.int32(p), np.int32(t), mt, np.int32(tile)),
        shared_mem=p * tile * q.itemsize,
    )
    return g


def _elementwise(file: str, name: str, out: cp.ndarray, rows: int, cols: int, *args: object
                 ) -> cp.ndarray:
    """Launch a one-thread-per-output-element kernel writing ``out`` viewed as rows × cols."""
    if max(rows, cols) >= 2**31:
        raise ValueError(f"output of {rows} × {cols} elements is too large for one launch")
    grid = (-(-cols // _THREADS), min(rows, 65535))
    _kernel(file, name, out.dtype)(grid, (_THREADS,), args)
    return out


def _sizes(*ks: tuple[int, ...]) -> list[np.int64]:
    return [np.int64(s) for k in ks for s in k]


# ------------------------------------------------------------------------- the protocol


def compose(f2: cp.ndarray, f1: cp.ndarray, *, method: str = "auto") -> cp.ndarray:
    """G = F2 ⊛ F1: F2 (C2, C1, *K2), F1 (C1, C0, *K1) -> G (C2, C0, *(K1 + K2 - 1)).

    G[o, i] = Σ_m full_convolution(F2[o, m], F1[m, i]); ``method`` as in the module docstring.
    """
    f2 = _operand(f2, "F2")
    f1 = _operand(f1, "F1")
    _same_kind(f2, "F2", f1, "F1")
    v.chain_channels(f2, "F2", f1, "F1")
    how = choose_method(method, f2.dtype, f2.shape[2:], f1.shape[2:])
    (c2, c1), c0 = f2.shape[:2], f1.shape[1]
    k2, k1 = f2.shape[2:], f1.shape[2:]
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    l2, l1 = _lift(k2), _lift(k1)
    with f2.device:
        f2 = cp.ascontiguousarray(f2)
        f1 = cp.ascontiguousarray(f1)
        if how == "transform":
            v1, v2, wt = _transform_matrices("compose", l1, l2, f2.dtype, f2.device.id)
            n = math.prod(kt)
            t1 = _to_points(f1, c1 * c0, n, v1).reshape(n, c1, c0)
            t2 = _to_points(f2, c2 * c1, n, v2).reshape(n, c2, c1)
            q = _matmul(t2, t1)
            return _from_points(q, c2 * c0, wt).reshape(c2, c0, *kt)
        # P[o, u, i, s] = Σ_m F2[o, m, u] F1[m, i, s], then G[o, i, t] = Σ_u P[o, u, i, t - u].
        n2, n1 = math.prod(k2), math.prod(k1)
        f2_taps = cp.ascontiguousarray(f2.reshape(c2, c1, n2).transpose(0, 2, 1))
        p = _matmul(f2_taps.reshape(c2 * n2, c1), f1.reshape(c1, c0 * n1))
        if n2 == 1:
            return p.reshape(c2, c0, *kt)
        g = cp.empty((c2, c0, *kt), dtype=f2.dtype)
        return _elementwise("compose_cuda.cu", "nm_compose_shift_add", g, c2, c0 * math.prod(kt),
                            p, g, np.int64(c2), np.int64(c0), *_sizes(l2, l1))


def correlate_outer(
    f2: cp.ndarray, y: cp.ndarray, k1: tuple[int, ...], *, method: str = "auto"
) -> cp.ndarray:
    """X = Aᵀ·Y, the adjoint of X ↦ F2 ⊛ X: F2 (C2, C1, *K2), Y (C2, C0, *Kt) -> X (C1, C0, *k1).

    X[m, i, s] = Σ_{o, t} F2[o, m, t - s] · Y[o, i, t], Kt = k1 + K2 - 1.
    """
    f2 = _operand(f2, "F2")
    y = _operand(y, "Y")
    _same_kind(f2, "F2", y, "Y")
    k1 = v.kernel_tuple(k1, f2.ndim - 2, "k1")
    (c2, c1), c0 = f2.shape[:2], y.shape[1]
    k2 = f2.shape[2:]
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    if y.shape[0] != c2 or y.shape[2:] != kt:
        raise ValueError(f"Y must have shape ({c2}, C0, *{kt}) for F2 {f2.shape} and k1 {k1}, "
                         f"got {y.shape}")
    how = choose_method(method, f2.dtype, k2, k1)
    l2, l1 = _lift(k2), _lift(k1)
    with f2.device:
        f2 = cp.ascontiguousarray(f2)
        y = cp.ascontiguousarray(y)
        if how == "transform":
            wt, v2, v1 = _transform_matrices("correlate", l1, l2, f2.dtype, f2.device.id)
            n = math.prod(kt)
            ty = _to_points(y, c2 * c0, n, wt).reshape(n, c2, c0)
            t2 = _to_points(f2, c2 * c1, n, v2).reshape(n, c2, c1)
            q = _matmul(t2.transpose(0, 2, 1), ty)
            return _from_points(cp.ascontiguousarray(q), c1 * c0, v1).reshape(c1, c0, *k1)
        # P[m, u, i, t] = Σ_o F2[o, m, u] Y[o, i, t], then X[m, i, s] = Σ_u P[m, u, i, s + u].
        n2, nt = math.prod(k2), math.prod(kt)
        p = _matmul(f2.reshape(c2, c1 * n2).T, y.reshape(c2, c0 * nt))
        if n2 == 1:
            return p.reshape(c1, c0, *k1)
        x = cp.empty((c1, c0, *k1), dtype=f2.dtype)
        return _elementwise("correlate_outer_cuda.cu", "nm_correlate_gather", x, c1,
                            c0 * math.prod(k1), p, x, np.int64(c1), np.int64(c0), *_sizes(l2, l1))


def gram_outer(f2: cp.ndarray, k1: tuple[int, ...]) -> cp.ndarray:
    """M = AᵀA (C1·|k1|, C1·|k1|), rows/columns (m, s) in C order:

    M[(m, s), (m', s')] = Σ_{o, u} F2[o, m, u] · F2[o, m', u + s - s'].
    M = Mᵀ bit for bit: the assembly reads the tap Gram Z = F2ᵀF2 from its upper triangle only.
    """
    f2 = _operand(f2, "F2")
    k1 = v.kernel_tuple(k1, f2.ndim - 2, "k1")
    c2, c1 = f2.shape[:2]
    k2 = f2.shape[2:]
    n2, n1 = math.prod(k2), math.prod(k1)
    with f2.device:
        f2r = cp.ascontiguousarray(f2).reshape(c2, c1 * n2)
        z = _matmul(f2r.T, f2r)
        out = cp.empty((c1 * n1, c1 * n1), dtype=f2.dtype)
        return _elementwise("gram_outer_cuda.cu", "nm_gram_assemble", out, c1 * n1, c1 * n1,
                            z, out, np.int64(c1), *_sizes(_lift(k2), _lift(k1)))


def gram_outer_rows(f2: cp.ndarray, k1: tuple[int, ...]) -> cp.ndarray:
    """N = A·Aᵀ (C2·|Kt|, C2·|Kt|), rows/columns (o, t) in C order:

    N[(o, t), (o', t')] = Σ_{m, s} F2[o, m, t - s] · F2[o', m, t' - s].
    N = Nᵀ bit for bit: the assembly reads the channel Gram Z from its upper triangle only.
    """
    f2 = _operand(f2, "F2")
    k1 = v.kernel_tuple(k1, f2.ndim - 2, "k1")
    c2, c1 = f2.shape[:2]
    k2 = f2.shape[2:]
    n2 = math.prod(k2)
    nt = math.prod(a + b - 1 for a, b in zip(k1, k2))
    with f2.device:
        f2q = cp.ascontiguousarray(f2.reshape(c2, c1, n2).transpose(0, 2, 1)).reshape(c2 * n2, c1)
        z = _matmul(f2q, f2q.T)
        out = cp.empty((c2 * nt, c2 * nt), dtype=f2.dtype)
        return _elementwise("gram_outer_rows_cuda.cu", "nm_gram_rows_assemble", out, c2 * nt,
                            c2 * nt, z, out, np.int64(c2), *_sizes(_lift(k2), _lift(k1)))
