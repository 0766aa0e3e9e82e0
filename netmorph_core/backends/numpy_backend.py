"""The ``numpy`` backend: plain NumPy kernels (always available, 0-3 spatial dimensions).

Compose is the reference's per-tap GEMM. The deconvolution kernels use the structure of the
operator A of X ↦ F2 ⊛ X, A[(o, t), (m, s)] = F2[o, m, t − s], without ever building A.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from ..reference import compose_ref

DEVICE = "cpu"
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def load() -> None:
    """Nothing to load: NumPy is a hard dependency."""


def compose(f2: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """F2 ⊛ F1 (see :func:`netmorph_core.compose`), on C-ordered copies where the caller's
    arrays are strided otherwise: a BLAS may sum a transposed operand in another order, and the
    answer must not depend on the inputs' memory layout."""
    return compose_ref(np.ascontiguousarray(f2), np.ascontiguousarray(f1))


def _taps(size: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    return itertools.product(*(range(k) for k in size))


def _window(start: tuple[int, ...], size: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(a, a + k) for a, k in zip(start, size))


def correlate_outer(f2: np.ndarray, y: np.ndarray, k1: tuple[int, ...]) -> np.ndarray:
    """Aᵀ·Y: x[m, i, s] = Σ_{o,u} F2[o, m, u] · Y[o, i, s + u].

    F2 (C2, C1, *K2), Y (C2, C0, *(k1 + K2 − 1)) -> X (C1, C0, *k1): one GEMM over (o, u)
    against the k1-windows of Y (im2col).
    """
    nd = len(k1)
    spatial = tuple(range(2, 2 + nd))
    windows = np.lib.stride_tricks.sliding_window_view(y, k1, axis=spatial)  # (C2, C0, *K2, *k1)
    return np.tensordot(f2, windows, axes=((0, *spatial), (0, *spatial)))


def mirror_upper(a: np.ndarray) -> np.ndarray:
    """a[i, j] = a[j, i] for j < i, in place (a square, returned).

    Makes a product that is symmetric in exact arithmetic (BᵀB) symmetric bit for bit, whatever
    order the BLAS kernel summed (i, j) and (j, i) in.
    """
    np.copyto(a, a.T, where=np.tri(a.shape[0], k=-1, dtype=bool))
    return a


def lags(k1: tuple[int, ...], k2: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The lags δ = s − s' for which R(δ) is needed and non-zero, one of each pair ±δ.

    |δ_d| < min(k1_d, K2_d) in every dimension and δ ≥ 0 lexicographically (R(−δ) = R(δ)ᵀ).
    """
    spans = [range(-(min(a, b) - 1), min(a, b)) for a, b in zip(k1, k2)]
    return [d for d in itertools.product(*spans) if d >= (0,) * len(d)]


def gram_outer(f2: np.ndarray, k1: tuple[int, ...]) -> np.ndarray:
    """AᵀA (C1·|k1|, C1·|k1|), rows and columns (m, s) in C order.

    M[(m, s), (m', s')] = R(s − s')[m, m'] with the spatial autocorrelation
    R(δ)[m, m'] = Σ_{o,u} F2[o, m, u] · F2[o, m', u + δ]: one C1×C1 GEMM per lag, R(−δ) = R(δ)ᵀ.
    M = Mᵀ bit for bit: R(0)'s lower triangle and R(−δ) are copies.
    """
    c1 = f2.shape[1]
    k2 = f2.shape[2:]
    ft = np.moveaxis(f2, 1, -1)  # (C2, *K2, C1)
    r = {}
    for d in lags(k1, k2):
        lo = tuple(max(0, -v) for v in d)
        overlap = tuple(k - abs(v) for k, v in zip(k2, d))
        xa = ft[(slice(None), *_window(lo, overlap))].reshape(-1, c1)
        xb = ft[(slice(None), *_window(tuple(a + v for a, v in zip(lo, d)), overlap))]
        r[d] = xa.T @ xb.reshape(-1, c1)
    mirror_upper(r[(0,) * len(k2)])
    m = np.zeros((c1, *k1, c1, *k1), dtype=f2.dtype)
    for s in _taps(k1):
        for s2 in _taps(k1):
            d = tuple(a - b for a, b in zip(s, s2))
            neg = tuple(-v for v in d)
            if d in r:
                m[(slice(None), *s, slice(None), *s2)] = r[d]
            elif neg in r:
                m[(slice(None), *s, slice(None), *s2)] = r[neg].T
    n = c1 * int(np.prod(k1, dtype=np.int64))
    return m.reshape(n, n)


def gram_outer_rows(f2: np.ndarray, k1: tuple[int, ...]) -> np.ndarray:
    """A·Aᵀ (C2·|Kt|, C2·|Kt|), rows and columns (o, t) in C order, Kt = k1 + K2 − 1.

    N[(o, t), (o', t')] = Σ_s Q[(o, t − s), (o', t' − s)] over the offsets s of k1, with
    Q[(o, u), (o', u')] = Σ_m F2[o, m, u] · F2[o', m, u'] one GEMM, made symmetric bit for bit
    (its lower triangle a copy), so N = Nᵀ bit for bit.
    """
    c2, c1 = f2.shape[:2]
    k2 = f2.shape[2:]
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    fr = np.ascontiguousarray(np.moveaxis(f2, 1, -1)).reshape(-1, c1)  # rows (o, u)
    q = mirror_upper(fr @ fr.T).reshape(c2, *k2, c2, *k2)
    n = np.zeros((c2, *kt, c2, *kt), dtype=f2.dtype)
    for s in _taps(k1):
        win = _window(s, k2)
        n[(slice(None), *win, slice(None), *win)] += q
    size = c2 * int(np.prod(kt, dtype=np.int64))
    return n.reshape(size, size)
