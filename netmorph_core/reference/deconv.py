"""NumPy reference of deconvolution: least-squares solving G~ = F2 ⊛ X or G~ = X ⊛ F1.

For a fixed outer factor F2 (C2, C1, *K2) the map X ↦ F2 ⊛ X acts on every input channel
of X (C1, C0, *K1) separately with one matrix A of shape (C2·|Kt|, C1·|K1|),
A[(o, t), (m, s)] = F2[o, m, t - s]. The reference builds A explicitly and solves with
``numpy.linalg.lstsq``; it is the oracle the structured solvers are tested against.
The inner case uses (X ⊛ F1)^T = F1^T ⊛ X^T.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .._memory import check_working_set
from .._scaling import ldexp_float, normalise
from .compose import compose_ref, swap_channels


def outer_operator(f2: np.ndarray, k1: tuple[int, ...]) -> np.ndarray:
    """The matrix A (C2·|Kt|, C1·|K1|) of X ↦ F2 ⊛ X for X of spatial size ``k1``."""
    c2, c1 = f2.shape[:2]
    k2 = f2.shape[2:]
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    rows, cols = c2 * math.prod(kt), c1 * math.prod(k1)
    check_working_set(8 * rows * cols, f"the explicit deconvolution operator ({rows} x {cols})")
    a = np.zeros((c2, *kt, c1, *k1), dtype=np.float64)
    f2_t = np.moveaxis(f2.astype(np.float64), 1, -1)  # (C2, *K2, C1)
    for s in itertools.product(*(range(k) for k in k1)):
        window = tuple(slice(v, v + k) for v, k in zip(s, k2))
        a[(slice(None), *window, slice(None), *s)] = f2_t
    return a.reshape(c2 * int(np.prod(kt)), c1 * int(np.prod(k1)))


def solve_nearest(a: np.ndarray, b: np.ndarray, x0: np.ndarray | None) -> np.ndarray:
    """The least-squares solution of A·X = B nearest to X0 (minimum norm when X0 is None).

    X = X0 + lstsq(A, B - A·X0): the correction is the minimum-norm least-squares solution,
    so among all minimisers the one closest to X0 is returned.
    """
    if x0 is None:
        return np.linalg.lstsq(a, b, rcond=None)[0]
    return x0 + np.linalg.lstsq(a, b - a @ x0, rcond=None)[0]


def deconv_outer_ref(
    g_tilde: np.ndarray, f2: np.ndarray, k1: tuple[int, ...], init: np.ndarray | None = None
) -> np.ndarray:
    """Solve G~ = F2 ⊛ X for X (C1, C0, *k1); G~ (C2, C0, *Kt) already has the effective size.

    Returns float64.
    """
    c1 = f2.shape[1]
    c0 = g_tilde.shape[1]
    a = outer_operator(f2, k1)
    b = g_tilde.astype(np.float64).reshape(g_tilde.shape[0], c0, -1).transpose(0, 2, 1)
    b = b.reshape(-1, c0)  # rows (o, t), one column per input channel
    x0 = None
    if init is not None:
        x0 = np.moveaxis(init.astype(np.float64), 1, -1).reshape(-1, c0)
    x = solve_nearest(a, b, x0)
    return np.moveaxis(x.reshape(c1, *k1, c0), -1, 1)


def deconv_inner_ref(
    g_tilde: np.ndarray, f1: np.ndarray, k2: tuple[int, ...], init: np.ndarray | None = None
) -> np.ndarray:
    """Solve G~ = X ⊛ F1 for X (C2, C1, *k2) through G~^T = F1^T ⊛ X^T. Returns float64."""
    init_t = None if init is None else swap_channels(init)
    x_t = deconv_outer_ref(swap_channels(g_tilde), swap_channels(f1), k2, init_t)
    return np.ascontiguousarray(swap_channels(x_t))


def relative_residual_ref(g_tilde: np.ndarray, f2: np.ndarray, f1: np.ndarray) -> float:
    """‖F2 ⊛ F1 − G~‖ / ‖G~‖ in float64 (the absolute norm when G~ is zero).

    Computed on the inputs normalised by powers of two, so neither the product nor a norm
    overflows or underflows whatever their magnitudes (inf only when the true value is).
    """
    gn, eg = normalise(g_tilde.astype(np.float64))
    f2n, e2 = normalise(f2.astype(np.float64))
    f1n, e1 = normalise(f1.astype(np.float64))
    prod = compose_ref(f2n, f1n)
    d = e2 + e1 - eg  # F2 ⊛ F1 − G~ = 2^eg·(2^d·prod − gn)
    shift = max(d, 0)  # scale the difference so that its larger term is O(1)
    diff = np.ldexp(prod, d - shift) - np.ldexp(gn, -shift)
    err = ldexp_float(float(np.linalg.norm(diff)), shift)
    scale = float(np.linalg.norm(gn))
    return err / scale if scale > 0 else ldexp_float(err, eg)
