"""Numba-compiled loops of the ``numba`` backend (imported only when numba is installed).

Operands are tap-major stacks of matrices: a filter (A, B, *K) becomes (|K|, A, B), tap t
being the contiguous A×B matrix F[:, :, t]. GEMMs call BLAS (SciPy's ``cython_blas``, the
library NumPy's ``np.dot`` uses inside Numba too) with β = 1 to accumulate in place, so
products never go through a temporary. The loops around them (layout changes, Gram assembly)
run in parallel with ``prange``; the GEMM drivers are serial, leaving the threads to BLAS
(OpenMP workers spinning between ``prange`` regions otherwise compete with BLAS's own).
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numba
import numpy as np
from numba import prange, types
from numba.extending import get_cython_function_address

for _name in ("sgemm", "dgemm"):
    llvm.add_symbol(
        f"netmorph_{_name}", get_cython_function_address("scipy.linalg.cython_blas", _name)
    )
# Fortran GEMM: (transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc), all by pointer.
_GEMM_SIGNATURE = types.void(*([types.voidptr] * 13))
_sgemm = types.ExternalFunction("netmorph_sgemm", _GEMM_SIGNATURE)
_dgemm = types.ExternalFunction("netmorph_dgemm", _GEMM_SIGNATURE)


@numba.njit(cache=True)
def gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray, beta: float) -> None:
    """c = β·c + a @ b for C-contiguous a (m, k), b (k, n), c (m, n) of one float dtype.

    Row-major c = a·b is column-major cᵀ = bᵀ·aᵀ, so BLAS is called with the operands swapped.
    """
    m, k = a.shape
    n = b.shape[1]
    no_trans = np.full(1, ord("N"), np.uint8)
    rows = np.full(1, n, np.int32)
    cols = np.full(1, m, np.int32)
    inner = np.full(1, k, np.int32)
    alpha = np.ones(1, c.dtype)
    scale = np.full(1, beta, c.dtype)
    args = (no_trans.ctypes, no_trans.ctypes, rows.ctypes, cols.ctypes, inner.ctypes)
    if c.itemsize == 4:
        _sgemm(
            *args,
            alpha.ctypes,
            b.ctypes,
            rows.ctypes,
            a.ctypes,
            inner.ctypes,
            scale.ctypes,
            c.ctypes,
            rows.ctypes,
        )
    else:
        _dgemm(
            *args,
            alpha.ctypes,
            b.ctypes,
            rows.ctypes,
            a.ctypes,
            inner.ctypes,
            scale.ctypes,
            c.ctypes,
            rows.ctypes,
        )


@numba.njit(cache=True)
def accumulate_products(
    a: np.ndarray,
    b: np.ndarray,
    ia: np.ndarray,
    ib: np.ndarray,
    io: np.ndarray,
    first: np.ndarray,
    out: np.ndarray,
) -> None:
    """out[io[n]] = (first[n] ? 0 : out[io[n]]) + a[ia[n]] @ b[ib[n]], for n in order.

    a (Na, R, K), b (Nb, K, Cc), out (No, R, Cc) C-contiguous; each output matrix's first
    product must be flagged (it overwrites whatever ``out`` held).
    """
    for n in range(ia.shape[0]):
        gemm(a[ia[n]], b[ib[n]], out[io[n]], 0.0 if first[n] else 1.0)


@numba.njit(parallel=True, cache=True)
def taps_first(src: np.ndarray, out: np.ndarray) -> None:
    """out[t, i, j] = src[i, j, t]: (A, B, T) -> (T, A, B)."""
    n_a, n_b, n_t = src.shape
    for i in prange(n_a):
        for t in range(n_t):
            for j in range(n_b):
                out[t, i, j] = src[i, j, t]


@numba.njit(parallel=True, cache=True)
def taps_last(src: np.ndarray, out: np.ndarray) -> None:
    """out[i, j, t] = src[t, i, j]: (T, A, B) -> (A, B, T)."""
    n_t, n_a, n_b = src.shape
    for i in prange(n_a):
        for j in range(n_b):
            for t in range(n_t):
                out[i, j, t] = src[t, i, j]


@numba.njit(parallel=True, cache=True)
def mirror_upper(a: np.ndarray) -> None:
    """a[i, j] = a[j, i] for j < i (a square): a product symmetric in exact arithmetic (BᵀB)
    becomes symmetric bit for bit, whatever order BLAS summed (i, j) and (j, i) in."""
    for i in prange(a.shape[0]):
        for j in range(i):
            a[i, j] = a[j, i]


@numba.njit(parallel=True, cache=True)
def assemble_gram(r: np.ndarray, lag_of: np.ndarray, transposed: np.ndarray, m: np.ndarray) -> None:
    """m[i, s, j, s'] = R(s − s')[i, j]: blocks of the per-lag matrices r (L, C1, C1).

    ``lag_of[s, s']`` indexes r (−1: a zero block); ``transposed[s, s']`` takes R(δ)ᵀ for −δ.
    m is (C1, S, C1, S).
    """
    c1 = r.shape[1]
    n_s = lag_of.shape[0]
    for i in prange(c1):
        for s in range(n_s):
            for j in range(c1):
                for s2 in range(n_s):
                    lag = lag_of[s, s2]
                    if lag < 0:
                        m[i, s, j, s2] = 0.0
                    elif transposed[s, s2]:
                        m[i, s, j, s2] = r[lag, j, i]
                    else:
                        m[i, s, j, s2] = r[lag, i, j]


@numba.njit(parallel=True, cache=True)
def assemble_rows(q: np.ndarray, t_of: np.ndarray, n: np.ndarray) -> None:
    """n[o, t_of[s, u], o', t_of[s, u']] += q[o, u, o', u'] for every offset s (n zeroed).

    q (C2, U, C2, U), t_of (S, U) the flat tap of s + u in Kt, n (C2, T, C2, T).
    """
    c2, n_u = q.shape[0], q.shape[1]
    n_s = t_of.shape[0]
    for o in prange(c2):
        for s in range(n_s):
            for u in range(n_u):
                t = t_of[s, u]
                for o2 in range(c2):
                    for u2 in range(n_u):
                        n[o, t, o2, t_of[s, u2]] += q[o, u, o2, u2]
