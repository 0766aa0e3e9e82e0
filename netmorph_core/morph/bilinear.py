"""The bilinear regime of a depth morph: G~ = F2 ⊛ F1 solved for both factors at once.

Where an exact dense decomposition exists by counting (:attr:`Solvability.dense_count_ok`) but
neither one-sided solve is exact (e.g. 3×3 → (3×3, 3×3) at width 2C: both deconvolutions are
overdetermined and the alternation stalls), Levenberg–Marquardt on r(F1, F2) = F2 ⊛ F1 − G~
finds it. The Jacobian J·(E, D) = F2 ⊛ E + D ⊛ F1 is applied matrix-free with the backend's
kernels (``compose``; Jᵀ by ``correlate_outer``, the F2 part through the channel swap
(D ⊛ F1)ᵀ = F1ᵀ ⊛ Dᵀ). A step solves (JᵀJ + λ·I)·δ = −Jᵀr by conjugate gradients
preconditioned with the two structured one-sided Grams, block-diagonal:

    P = diag(A2ᵀA2 + λ·I, A1ᵀA1 + λ·I),  A2: E ↦ F2 ⊛ E,  A1: D ↦ D ⊛ F1,

A2ᵀA2 (C1·|K1|)² shared by all C0 input channels (``gram_outer`` of F2), A1ᵀA1 (C1·|K2|)²
shared by all C2 output channels (``gram_outer`` of F1ᵀ): two Cholesky factorisations per
step, each preconditioner application two triangular solves with many right-hand sides, no
loop per channel. (J·Jᵀ = A2A2ᵀ + A1A1ᵀ is not a Kronecker sum: both terms act on the tap
index of G~, so its exact inverse has no such shortcut.) λ is relative to the Grams' mean
diagonal; it shrinks after a step that lowers the residual and grows after one that does not.
CG starts from zero, so the damped step is the one of least (preconditioned) norm: the
iterate stays near its dense start. The inner tolerance tightens with the residual (inexact
Newton: η = min(0.1, √‖r‖)).

While G~ has at most :data:`EXPLICIT_ROWS` entries, J·Jᵀ is assembled instead from the two
``gram_outer_rows`` (A2A2ᵀ per input channel, A1A1ᵀ per output channel) and each step is the
exact δ = Jᵀ·(J·Jᵀ + λ·s·I)⁻¹·(−r): 11–14 steps to ≤ 1e-12 for C = 4..12 at width 2C. The
block preconditioner leaves CG slow where the two blocks' ranges are nearly parallel (near the
solution set): measured at width 2C, C = 8 converges in 33 steps (1e-11), C = 16 reaches only
3e-8 in 100 steps (about 20 s), so :func:`use_bilinear` keeps the depth morph on the exact
steps' sizes.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import scipy.linalg

from .._memory import check_working_set
from ..reference import swap_channels
from .solvability import Solvability

#: One-sided solves of the general alternation before the joint solver takes over.
WARMUP_SOLVES = 2
#: λ / mean diagonal of the Grams at the first step, and its bounds.
_LAMBDA_START = 1e-2
#: The same for exact steps (J·Jᵀ assembled): nearly Gauss–Newton from the start.
_LAMBDA_EXACT = 1e-6
_LAMBDA_MIN = 1e-12
_LAMBDA_MAX = 1e6
#: CG iterations per step at most.
_CG_ITERATIONS = 400
#: Largest G~ (C2·C0·|Kt| entries) whose J·Jᵀ is assembled for exact minimum-norm steps.
EXPLICIT_ROWS = 4096


def in_bilinear_regime(info: Solvability, *, augmented_failed: bool = False) -> bool:
    """Neither one-sided solve is exact, but counting admits a dense exact pair, and the
    identity-augmented pair (:attr:`Solvability.augmented_side`) is not available or, with
    ``augmented_failed``, did not serve (the stable method's floor could not be lifted)."""
    no_augmented = augmented_failed or info.augmented_side is None
    return info.dense_count_ok and not info.exact_general and no_augmented


def use_bilinear(info: Solvability, *, augmented_failed: bool = False) -> bool:
    """Whether a two-factor morph runs :func:`solve_bilinear`: in the bilinear regime with G~
    of at most :data:`EXPLICIT_ROWS` entries (exact steps, about a dozen). The matrix-free
    steps of larger G~ converge too slowly at real widths (C = 16, width 32: residual 3e-8
    after 100 steps) to be the default there; the alternation keeps its bounded cost."""
    regime = in_bilinear_regime(info, augmented_failed=augmented_failed)
    return regime and info.params_g_tilde <= EXPLICIT_ROWS


class _Pair:
    """J, Jᵀ and the preconditioner at one iterate (F1, F2) on the backend ``impl``."""

    def __init__(self, impl: ModuleType, f1: np.ndarray, f2: np.ndarray) -> None:
        self.impl, self.f1, self.f2 = impl, f1, f2
        self.k1, self.k2 = f1.shape[2:], f2.shape[2:]
        self.f1_t = np.ascontiguousarray(swap_channels(f1))
        self.gram2 = np.asarray(impl.gram_outer(f2, self.k1))  # A2ᵀA2, (C1·|K1|)²
        self.gram1 = np.asarray(impl.gram_outer(self.f1_t, self.k2))  # A1ᵀA1, (C1·|K2|)²
        self.scale = 0.5 * (np.mean(np.diag(self.gram2)) + np.mean(np.diag(self.gram1)))

    def apply(self, e: np.ndarray, d: np.ndarray) -> np.ndarray:
        """J·(E, D) = F2 ⊛ E + D ⊛ F1, (C2, C0, *Kt)."""
        return np.asarray(self.impl.compose(self.f2, e)) + np.asarray(self.impl.compose(d, self.f1))

    def adjoint(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Jᵀ·Y = (A2ᵀY (C1, C0, *K1), A1ᵀY (C2, C1, *K2))."""
        e = np.asarray(self.impl.correlate_outer(self.f2, y, self.k1))
        y_t = np.ascontiguousarray(swap_channels(y))
        d_t = np.asarray(self.impl.correlate_outer(self.f1_t, y_t, self.k2))
        return e, np.ascontiguousarray(swap_channels(d_t))

    def factor(self, lam: float) -> tuple[np.ndarray, np.ndarray]:
        """Cholesky factors of A2ᵀA2 + λI and A1ᵀA1 + λI."""
        shift = lam * self.scale
        return tuple(  # type: ignore[return-value]
            scipy.linalg.cho_factor(g + shift * np.eye(g.shape[0]), lower=True, check_finite=False)
            for g in (self.gram2, self.gram1)
        )

    def normal_matrix(self, c0: int, c2: int) -> np.ndarray:
        """J·Jᵀ (C2·C0·|Kt|)², rows (o, i, t) in G~'s C order:
        δ_ii'·(A2A2ᵀ)[(o, t), (o', t')] + δ_oo'·(A1A1ᵀ)[(i, t), (i', t')]."""
        n2 = np.asarray(self.impl.gram_outer_rows(self.f2, self.k1))
        n1 = np.asarray(self.impl.gram_outer_rows(self.f1_t, self.k2))
        kt = n2.shape[0] // c2
        n2 = n2.reshape(c2, kt, c2, kt)
        n1 = n1.reshape(c0, kt, c0, kt)
        m = np.einsum("atbu,ij->aitbju", n2, np.eye(c0))
        m += np.einsum("itju,ab->aitbju", n1, np.eye(c2))
        return m.reshape(c2 * c0 * kt, c2 * c0 * kt)

    def precondition(
        self, factors: tuple, e: np.ndarray, d: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """P⁻¹·(E, D): E's columns (one per input channel, rows (c1, tap)) through the first
        factor, D's rows (one per output channel, columns (c1, tap)) through the second."""
        c1, c0 = e.shape[:2]
        cols = np.moveaxis(e, 1, -1).reshape(-1, c0)
        e_out = scipy.linalg.cho_solve(factors[0], cols, check_finite=False)
        e_out = np.moveaxis(e_out.reshape(c1, *self.k1, c0), -1, 1)
        rows = d.reshape(d.shape[0], -1).T
        d_out = scipy.linalg.cho_solve(factors[1], rows, check_finite=False).T.reshape(d.shape)
        return np.ascontiguousarray(e_out), d_out


def _dot(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    return float(np.vdot(a[0], b[0]) + np.vdot(a[1], b[1]))


def _damped_step(
    pair: _Pair, r: np.ndarray, lam: float, eta: float
) -> tuple[np.ndarray, np.ndarray]:
    """δ = (E, D) solving (JᵀJ + λ·s·I)·δ = −Jᵀr to a relative residual η by preconditioned
    CG from zero (s the Grams' mean diagonal)."""
    factors = pair.factor(lam)
    shift = lam * pair.scale
    b = pair.adjoint(-r)
    x = (np.zeros_like(b[0]), np.zeros_like(b[1]))
    res = b
    z = pair.precondition(factors, *res)
    p = z
    rz = _dot(res, z)
    target = eta * math.sqrt(_dot(b, b))
    for _ in range(_CG_ITERATIONS):
        jp = pair.apply(*p)
        ap = pair.adjoint(jp)
        ap = (ap[0] + shift * p[0], ap[1] + shift * p[1])
        alpha = rz / _dot(p, ap)
        x = (x[0] + alpha * p[0], x[1] + alpha * p[1])
        res = (res[0] - alpha * ap[0], res[1] - alpha * ap[1])
        if math.sqrt(_dot(res, res)) <= target:
            break
        z = pair.precondition(factors, *res)
        rz_new = _dot(res, z)
        beta = rz_new / rz
        rz = rz_new
        p = (z[0] + beta * p[0], z[1] + beta * p[1])
    return x


def bilinear_working_set(
    c0: int, c1: int, c2: int, k1: tuple[int, ...], k2: tuple[int, ...]
) -> int:
    """Bytes of one step: the two Grams and their factors, and about 16 copies of the pair
    and of G~ (CG vectors, products)."""
    kt = math.prod(a + b - 1 for a, b in zip(k1, k2))
    grams = 2 * ((c1 * math.prod(k1)) ** 2 + (c1 * math.prod(k2)) ** 2)
    vectors = 16 * (c1 * c0 * math.prod(k1) + c2 * c1 * math.prod(k2) + c2 * c0 * kt)
    return 8 * (grams + vectors)


def _exact_step(
    pair: _Pair, r: np.ndarray, lam: float, eta: float
) -> tuple[np.ndarray, np.ndarray]:
    """δ = Jᵀ·(J·Jᵀ + λ·s·I)⁻¹·(−r) with J·Jᵀ assembled (s its mean diagonal): the
    minimum-norm Gauss–Newton step as λ → 0 (``eta`` unused: the solve is direct)."""
    c2, c0 = r.shape[:2]
    m = pair.normal_matrix(c0, c2)
    m[np.diag_indices_from(m)] += lam * float(np.mean(np.diag(m)))
    try:
        y = scipy.linalg.solve(m, -r.ravel(), assume_a="pos", check_finite=False)
    except np.linalg.LinAlgError:  # numerically singular: a null step, so λ grows
        y = np.zeros(r.size)
    return pair.adjoint(y.reshape(r.shape))


def solve_bilinear(
    impl: ModuleType,
    g_tilde: np.ndarray,
    f1: np.ndarray,
    f2: np.ndarray,
    stop_tol: float,
    max_steps: int,
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Levenberg–Marquardt from (F1, F2) until ‖F2 ⊛ F1 − G~‖ / ‖G~‖ ≤ ``stop_tol``,
    ``max_steps`` steps, or λ at its bound (stalled). All float64. Steps are exact
    (J·Jᵀ assembled) while G~ has at most :data:`EXPLICIT_ROWS` entries, else matrix-free
    preconditioned CG.

    Returns (F1, F2, steps taken, relative residual)."""
    c2, c0 = g_tilde.shape[:2]
    explicit = g_tilde.size <= EXPLICIT_ROWS
    extra = 8 * 2 * g_tilde.size**2 if explicit else 0
    check_working_set(
        bilinear_working_set(c0, f1.shape[0], c2, f1.shape[2:], f2.shape[2:]) + extra,
        "the bilinear depth solver",
    )
    step = _exact_step if explicit else _damped_step
    f1 = np.ascontiguousarray(f1, dtype=np.float64)
    f2 = np.ascontiguousarray(f2, dtype=np.float64)
    norm_g = float(np.linalg.norm(g_tilde)) or 1.0
    r = np.asarray(impl.compose(f2, f1)) - g_tilde
    residual = float(np.linalg.norm(r)) / norm_g
    lam = _LAMBDA_EXACT if explicit else _LAMBDA_START
    grow = 2.0
    steps = 0
    pair = _Pair(impl, f1, f2)
    while residual > stop_tol and steps < max_steps:
        e, d = step(pair, r, lam, min(0.1, math.sqrt(residual)))
        t1, t2 = f1 + e, f2 + d
        r_trial = np.asarray(impl.compose(t2, t1)) - g_tilde
        trial = float(np.linalg.norm(r_trial)) / norm_g
        steps += 1
        if trial < residual:
            predicted = float(np.linalg.norm(r + pair.apply(e, d))) / norm_g
            gain = (residual**2 - trial**2) / max(residual**2 - predicted**2, 1e-300)
            f1, f2, r, residual = t1, t2, r_trial, trial
            lam = max(lam * max(1.0 / 3.0, 1.0 - (2.0 * gain - 1.0) ** 3), _LAMBDA_MIN)
            grow = 2.0
            pair = _Pair(impl, f1, f2)
        else:
            if lam >= _LAMBDA_MAX:
                break
            lam = min(lam * grow, _LAMBDA_MAX)
            grow *= 2.0
    return f1, f2, steps, residual
