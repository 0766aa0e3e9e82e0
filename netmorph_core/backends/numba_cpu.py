"""The ``numba`` backend: Numba-parallel CPU kernels around BLAS GEMMs, 0-3 spatial dimensions.

Every kernel works on tap-major stacks (a filter (A, B, *K) as |K| contiguous A×B matrices) and
is driven by index tables built once per shape, so one compiled loop serves every spatial rank.

- ``compose``: the direct method (:func:`compose_direct`), one GEMM per pair of taps
  accumulated straight into the output tap (2·C0·C1·C2·|K1|·|K2| flops; a single-tap F2 is
  one GEMM in G's own layout), or, for large channel counts with |K1|·|K2| ≥ 2·|Kt| and
  Kt ≤ 5 per dimension (3×3 ⊛ 3×3: 81 GEMMs become 25), the transform-domain method
  (:func:`compose_transform`): both factors evaluated at Kt points per dimension, one GEMM
  per point, then interpolation.
- ``correlate_outer``, ``gram_outer``: one GEMM per (tap, tap) pair accumulated per output tap
  or per lag (R(−δ) = R(δ)ᵀ), then a parallel assembly of AᵀA.
- ``gram_outer_rows``: one symmetric GEMM (NumPy's, which uses SYRK) and a parallel assembly.

Both Grams are symmetric bit for bit: the lower triangles of R(0) and of the symmetric GEMM are
copies of their upper ones, and R(−δ) is read as R(δ)ᵀ.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from .numpy_backend import lags

try:
    from . import _numba_kernels as _k

    _MISSING = ""
except ImportError as exc:  # numba is an optional dependency of this backend only
    _k = None
    _MISSING = str(exc)

DEVICE = "cpu"
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: Interpolation points per transform length Kt (None: the point at infinity, i.e. the
#: leading coefficient). Chosen for the smallest float32 error of the interpolation.
POINTS: dict[int, tuple[float | None, ...]] = {
    1: (0.0,),
    2: (0.0, None),
    3: (0.0, 1.0, -1.0),
    4: (0.0, 1.0, -1.0, None),
    5: (0.0, 1.0, -1.0, 2.0, -2.0),
}
#: The transform method is used when every channel count reaches this.
TRANSFORM_MIN_CHANNELS = 128


def load() -> None:
    """Raise ImportError when numba is not installed."""
    if _k is None:
        raise ImportError(f"the numba backend needs numba ({_MISSING}); pip install numba")


def _count(size: tuple[int, ...]) -> int:
    return math.prod(size)


def _flat(tap: tuple[int, ...], size: tuple[int, ...]) -> int:
    return int(np.ravel_multi_index(tap, size)) if size else 0


def _taps(size: tuple[int, ...]) -> itertools.product:
    return itertools.product(*(range(k) for k in size))


def _schedule(triples: list[tuple[int, int, int]]) -> tuple[np.ndarray, ...]:
    """(ia, ib, io, first) sorted by output index; ``first`` marks each output's first write."""
    triples = sorted(triples, key=lambda x: x[2])
    arr = np.array(triples, dtype=np.int64).reshape(-1, 3)
    io = arr[:, 2]
    first = np.ones(len(io), dtype=np.bool_)
    first[1:] = io[1:] != io[:-1]
    return arr[:, 0].copy(), arr[:, 1].copy(), io.copy(), first


@functools.lru_cache(maxsize=64)
def _compose_table(k2: tuple[int, ...], k1: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """G[t] += F2[u] @ F1[s] for every tap u of K2 and s of K1, t = u + s in Kt."""
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    return _schedule(
        [
            (_flat(u, k2), _flat(s, k1), _flat(tuple(a + b for a, b in zip(u, s)), kt))
            for u in _taps(k2)
            for s in _taps(k1)
        ]
    )


@functools.lru_cache(maxsize=64)
def _correlate_table(k2: tuple[int, ...], k1: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """X[s] += F2ᵀ[u] @ Y[s + u] for every tap u of K2 and s of k1."""
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    return _schedule(
        [
            (_flat(u, k2), _flat(tuple(a + b for a, b in zip(u, s)), kt), _flat(s, k1))
            for u in _taps(k2)
            for s in _taps(k1)
        ]
    )


@functools.lru_cache(maxsize=64)
def _gram_tables(k2: tuple[int, ...], k1: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """R(δ_l) += F2ᵀ[u] @ F2[u + δ_l] per lag l, and the (s, s') -> lag, transposed tables."""
    lag_list = lags(k1, k2)
    index = {d: i for i, d in enumerate(lag_list)}
    triples = []
    for lag, d in enumerate(lag_list):
        for u in _taps(k2):
            w = tuple(a + b for a, b in zip(u, d))
            if all(0 <= x < k for x, k in zip(w, k2)):
                triples.append((_flat(u, k2), _flat(w, k2), lag))
    n_s = _count(k1)
    lag_of = np.full((n_s, n_s), -1, dtype=np.int64)
    transposed = np.zeros((n_s, n_s), dtype=np.bool_)
    for s in _taps(k1):
        for s2 in _taps(k1):
            d = tuple(a - b for a, b in zip(s, s2))
            neg = tuple(-x for x in d)
            i, j = _flat(s, k1), _flat(s2, k1)
            if d in index:
                lag_of[i, j] = index[d]
            elif neg in index:
                lag_of[i, j] = index[neg]
                transposed[i, j] = True
    return (*_schedule(triples), lag_of, transposed, len(lag_list))


@functools.lru_cache(maxsize=64)
def _rows_table(k2: tuple[int, ...], k1: tuple[int, ...]) -> np.ndarray:
    """t_of[s, u]: the flat tap of s + u in Kt, for taps s of k1 and u of K2."""
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    return np.array(
        [[_flat(tuple(a + b for a, b in zip(s, u)), kt) for u in _taps(k2)] for s in _taps(k1)],
        dtype=np.int64,
    ).reshape(_count(k1), _count(k2))


def _vandermonde(points: tuple[float | None, ...], k: int) -> np.ndarray:
    """Rows: a polynomial of k coefficients evaluated at each point (None: the leading one)."""
    rows = [[0.0] * (k - 1) + [1.0] if p is None else [p**j for j in range(k)] for p in points]
    return np.array(rows, dtype=np.float64)


@functools.lru_cache(maxsize=64)
def _transform_matrices(
    k2: tuple[int, ...], k1: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """V2 (|Kt|, |K2|), V1 (|Kt|, |K1|) evaluate, W (|Kt|, |Kt|) interpolates (Kronecker over
    the spatial dimensions), so that G = W · ((V2·F2) ⊙ (V1·F1)) per point."""
    v2 = v1 = w = np.ones((1, 1))
    for a, b in zip(k1, k2):
        pts = POINTS[a + b - 1]
        v2 = np.kron(v2, _vandermonde(pts, b))
        v1 = np.kron(v1, _vandermonde(pts, a))
        w = np.kron(w, np.linalg.inv(_vandermonde(pts, a + b - 1)))
    return v2, v1, w


def use_transform(f2_shape: tuple[int, ...], f1_shape: tuple[int, ...]) -> bool:
    """Whether :func:`compose` takes the transform-domain method for these shapes."""
    k2, k1 = tuple(f2_shape[2:]), tuple(f1_shape[2:])
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    return (
        len(kt) > 0
        and max(kt) in POINTS
        and 2 * _count(kt) <= _count(k1) * _count(k2)
        and min(f2_shape[0], f2_shape[1], f1_shape[1]) >= TRANSFORM_MIN_CHANNELS
    )


def _to_taps(f: np.ndarray) -> np.ndarray:
    """(A, B, *K) -> (|K|, A, B) contiguous."""
    src = np.ascontiguousarray(f).reshape(f.shape[0], f.shape[1], -1)
    out = np.empty((src.shape[2], f.shape[0], f.shape[1]), dtype=f.dtype)
    _k.taps_first(src, out)
    return out


def _from_taps(src: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """(|K|, A, B) -> (A, B, *K) contiguous."""
    out = np.empty((src.shape[1], src.shape[2], src.shape[0]), dtype=src.dtype)
    _k.taps_last(src, out)
    return out.reshape(src.shape[1], src.shape[2], *size)


def _common(f2: np.ndarray, f1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dtype = np.result_type(f2, f1)
    return f2.astype(dtype, copy=False), f1.astype(dtype, copy=False)


def compose_direct(f2: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """F2 ⊛ F1 by one GEMM per (tap of F2, tap of F1), accumulated into the output tap.

    A single-tap F2 is one GEMM F2 (C2, C1) · F1 (C1, C0·|K1|) straight into G's layout.
    """
    f2, f1 = _common(f2, f1)
    (c2, c1), c0 = f2.shape[:2], f1.shape[1]
    k2, k1 = f2.shape[2:], f1.shape[2:]
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    if _count(k2) == 1:
        return (f2.reshape(c2, c1) @ f1.reshape(c1, -1)).reshape(c2, c0, *kt)
    out = np.empty((_count(kt), c2, c0), dtype=f2.dtype)
    _k.accumulate_products(_to_taps(f2), _to_taps(f1), *_compose_table(k2, k1), out)
    return _from_taps(out, kt)


def compose_transform(f2: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """F2 ⊛ F1 in the transform domain: G = W·((V2·F2) ⊙ (V1·F1)), one GEMM per point.

    Needs Kt ≤ 5 per dimension (``POINTS``); float32 error ≈ 1e-6 relative for 3×3 ⊛ 3×3.
    """
    f2, f1 = _common(f2, f1)
    (c2, c1), c0 = f2.shape[:2], f1.shape[1]
    k2, k1 = f2.shape[2:], f1.shape[2:]
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    if max(kt, default=0) not in POINTS:
        raise ValueError(f"compose_transform needs K1 + K2 - 1 <= {max(POINTS)}, got {kt}")
    v2, v1, w = (m.astype(f2.dtype) for m in _transform_matrices(k2, k1))
    n = _count(kt)
    f2_hat = (v2 @ np.ascontiguousarray(f2).reshape(c2 * c1, -1).T).reshape(n, c2, c1)
    f1_hat = (v1 @ np.ascontiguousarray(f1).reshape(c1 * c0, -1).T).reshape(n, c1, c0)
    g_hat = np.empty((n, c2, c0), dtype=f2.dtype)
    points = np.arange(n, dtype=np.int64)
    _k.accumulate_products(f2_hat, f1_hat, points, points, points, np.ones(n, np.bool_), g_hat)
    return (g_hat.reshape(n, c2 * c0).T @ w.T).reshape(c2, c0, *kt)


def compose(f2: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """F2 ⊛ F1: the transform-domain method where :func:`use_transform` says so, else direct."""
    if use_transform(f2.shape, f1.shape):
        return compose_transform(f2, f1)
    return compose_direct(f2, f1)


def correlate_outer(f2: np.ndarray, y: np.ndarray, k1: tuple[int, ...]) -> np.ndarray:
    """Aᵀ·Y: x[m, i, s] = Σ_{o,u} F2[o, m, u] · Y[o, i, s + u] -> X (C1, C0, *k1)."""
    f2, y = _common(f2, y)
    k2 = f2.shape[2:]
    out = np.empty((_count(k1), f2.shape[1], y.shape[1]), dtype=f2.dtype)
    f2_t = _to_taps(np.swapaxes(f2, 0, 1))  # (|K2|, C1, C2)
    _k.accumulate_products(f2_t, _to_taps(y), *_correlate_table(k2, tuple(k1)), out)
    return _from_taps(out, tuple(k1))


def gram_outer(f2: np.ndarray, k1: tuple[int, ...]) -> np.ndarray:
    """AᵀA (C1·|k1|, C1·|k1|): M[(m, s), (m', s')] = Σ_{o,u} F2[o, m, u]·F2[o, m', u + s − s']."""
    k1 = tuple(k1)
    c1, k2 = f2.shape[1], f2.shape[2:]
    ia, ib, io, first, lag_of, transposed, n_lags = _gram_tables(k2, k1)
    r = np.empty((n_lags, c1, c1), dtype=f2.dtype)
    _k.accumulate_products(_to_taps(np.swapaxes(f2, 0, 1)), _to_taps(f2), ia, ib, io, first, r)
    _k.mirror_upper(r[0])  # lags() lists δ = 0 first
    n_s = _count(k1)
    m = np.empty((c1, n_s, c1, n_s), dtype=f2.dtype)
    _k.assemble_gram(r, lag_of, transposed, m)
    return m.reshape(c1 * n_s, c1 * n_s)


def gram_outer_rows(f2: np.ndarray, k1: tuple[int, ...]) -> np.ndarray:
    """A·Aᵀ (C2·|Kt|, C2·|Kt|): N[(o, t), (o', t')] = Σ_{m,s} F2[o, m, t − s]·F2[o', m, t' − s]."""
    k1 = tuple(k1)
    c2, c1, k2 = f2.shape[0], f2.shape[1], f2.shape[2:]
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    n_u, n_t = _count(k2), _count(kt)
    rows = np.ascontiguousarray(np.moveaxis(f2, 1, -1)).reshape(c2 * n_u, c1)  # rows (o, u)
    q = rows @ rows.T
    _k.mirror_upper(q)
    q = q.reshape(c2, n_u, c2, n_u)
    n = np.zeros((c2, n_t, c2, n_t), dtype=f2.dtype)
    _k.assemble_rows(q, _rows_table(k2, k1), n)
    return n.reshape(c2 * n_t, c2 * n_t)
