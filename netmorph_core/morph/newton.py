"""Gauss–Newton on the module equation: every free edge at once, minimum-norm steps.

The residual r(F) = M(F) − G~ (M the module equation of :mod:`netmorph_core.morph.graph`) is
linear in each edge, so its Jacobian applied to a step δ is

    J·δ = Σ_j pad_Kt(C1_j ⊛ δ_j ⊛ C2_j),

C1_j = Σ of the path compositions from edge j's head to the sink, C2_j = Σ from the source to
its tail. A step solves  min Σ_i w_i·δ_i²  subject to  J·δ = −r  (least squares when that is
inconsistent): δ = W^{−1/2}·(J·W^{−1/2})⁺·(−r), the step nearest the current iterate in the
w-weighted norm. It is halved until the residual drops. Where the linearisation is onto, the
iteration converges quadratically; at a singular point of the solution set, linearly.
J is built explicitly (``numpy.linalg.lstsq``) while it has at most
``EXPLICIT_JACOBIAN_ENTRIES`` entries, and applied matrix-free otherwise (two compositions per
edge and product, on the selected backend), each step then being ``LSMR_ITERATIONS`` of LSMR:
an inexact Newton step, slower to converge but bounded in time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import ModuleType

import numpy as np
from scipy.sparse.linalg import LinearOperator, lsmr

from ..reference import pad_centered, swap_channels
from ..reference.two_sided import two_sided_operator
from .graph import ModuleShape, module_kernel, path_sums

#: Largest Jacobian (rows × columns) built explicitly: 2**24 float64 entries = 128 MiB.
EXPLICIT_JACOBIAN_ENTRIES = 2**24
#: LSMR iterations per matrix-free step: an inexact step, which the halving still accepts only
#: when it lowers the residual (bounded time per step rather than an exact solve).
LSMR_ITERATIONS = 300
#: Halvings of a step before the iteration is declared stalled.
_MAX_HALVINGS = 12


def relative_error(g_tilde: np.ndarray, m: np.ndarray) -> float:
    """‖M − G~‖ / ‖G~‖ (the absolute error when G~ is zero)."""
    err = float(np.linalg.norm(m - g_tilde))
    scale = float(np.linalg.norm(g_tilde))
    return err / scale if scale > 0 else err


def crop_centred(x: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """The centred window of spatial ``size`` of x (C_out, C_in, *K)."""
    window = tuple(slice((n - k) // 2, (n - k) // 2 + k) for n, k in zip(x.shape[2:], size))
    return x[(slice(None), slice(None), *window)]


class Linearisation:
    """J of the module equation at ``filters`` for the edges ``free`` (columns in that order,
    each edge's filter flattened in C order); rows are G~'s entries in C order."""

    def __init__(
        self, shape: ModuleShape, filters: Mapping[str, np.ndarray], free: Sequence[str]
    ) -> None:
        into = path_sums(shape, filters, "in")
        out = path_sums(shape, filters, "out")
        self.shape = shape
        self.free = list(free)
        self.pre = {j: into[shape.module.edge(j).tail] for j in self.free}
        self.post = {j: out[shape.module.edge(j).head] for j in self.free}
        self.shapes = {j: shape.filter_shape(j) for j in self.free}
        kt = shape.effective_size
        c_out, c_in = shape.channels[shape.module.sink], shape.channels[shape.module.source]
        self.out_shape = (c_out, c_in, *kt)
        self.rows = math.prod(self.out_shape)
        self.cols = sum(math.prod(s) for s in self.shapes.values())

    def split(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The flat step ``x`` as one array per free edge."""
        parts, offset = {}, 0
        for j in self.free:
            n = math.prod(self.shapes[j])
            parts[j] = x[offset : offset + n].reshape(self.shapes[j])
            offset += n
        return parts

    def matrix(self) -> np.ndarray:
        """J as a dense (rows, cols) float64 matrix."""
        kt = self.shape.effective_size
        blocks = []
        for j in self.free:
            k = self.shapes[j][2:]
            t = two_sided_operator(self.post[j], self.pre[j], k)
            c_out, c_in = self.out_shape[:2]
            size = tuple(
                a + b + c - 2 for a, b, c in zip(self.post[j].shape[2:], k, self.pre[j].shape[2:])
            )
            t = t.reshape(c_out, c_in, *size, -1)
            pads = [(0, 0), (0, 0), *(((n - s) // 2,) * 2 for n, s in zip(kt, size)), (0, 0)]
            blocks.append(np.pad(t, pads).reshape(self.rows, -1))
        return np.hstack(blocks)

    def operator(self, impl: ModuleType, scale: np.ndarray) -> LinearOperator:
        """J·diag(``scale``) as a matrix-free operator (compose and its adjoint)."""
        kt = self.shape.effective_size

        def matvec(x: np.ndarray) -> np.ndarray:
            out = np.zeros(self.out_shape)
            for j, d in self.split(np.ravel(x) * scale).items():
                inner = impl.compose(np.ascontiguousarray(d), self.pre[j])
                out += pad_centered(np.asarray(impl.compose(self.post[j], inner)), kt)
            return out.ravel()

        def rmatvec(y: np.ndarray) -> np.ndarray:
            y = np.reshape(y, self.out_shape)
            parts = []
            for j in self.free:
                k = self.shapes[j][2:]
                pre, post = self.pre[j], self.post[j]
                ky = tuple(a + b - 1 for a, b in zip(k, pre.shape[2:]))
                size = tuple(a + b - 1 for a, b in zip(post.shape[2:], ky))
                z = impl.correlate_outer(post, np.ascontiguousarray(crop_centred(y, size)), ky)
                zt = np.ascontiguousarray(swap_channels(np.asarray(z)))
                xt = impl.correlate_outer(np.ascontiguousarray(swap_channels(pre)), zt, k)
                parts.append(swap_channels(np.asarray(xt)).ravel())
            return np.concatenate(parts) * scale

        return LinearOperator(
            (self.rows, self.cols), matvec=matvec, rmatvec=rmatvec, dtype=np.float64
        )


def weighted_step(
    lin: Linearisation, r: np.ndarray, weights: np.ndarray, impl: ModuleType
) -> np.ndarray:
    """δ minimising Σ w_i δ_i² among the least-squares solutions of J·δ = −r."""
    scale = 1.0 / np.sqrt(weights)
    if lin.rows * lin.cols <= EXPLICIT_JACOBIAN_ENTRIES:
        y = np.linalg.lstsq(lin.matrix() * scale, -r.ravel(), rcond=None)[0]
    else:
        op = lin.operator(impl, scale)
        y = lsmr(op, -r.ravel(), atol=1e-15, btol=1e-15, maxiter=LSMR_ITERATIONS)[0]
    return y * scale


def gauss_newton(
    shape: ModuleShape,
    g_tilde: np.ndarray,
    filters: Mapping[str, np.ndarray],
    free: Sequence[str],
    impl: ModuleType,
    stop_tol: float,
    max_steps: int,
    weights: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], int, float]:
    """Gauss–Newton steps on the edges ``free`` until the relative residual is ≤ ``stop_tol``,
    a step no longer lowers it, or ``max_steps`` steps. ``weights`` (per edge, shaped like the
    filter, positive; default 1) make heavy entries move less.

    Returns (filters as float64, steps taken, relative residual).
    """
    current = {n: np.asarray(f, dtype=np.float64) for n, f in filters.items()}
    residual = relative_error(g_tilde, module_kernel(shape, current))
    w = np.concatenate(
        [(np.ones(shape.filter_shape(j)) if weights is None else weights[j]).ravel() for j in free]
    )
    steps = 0
    while free and residual > stop_tol and steps < max_steps:
        lin = Linearisation(shape, current, free)
        r = module_kernel(shape, current) - g_tilde
        delta = lin.split(weighted_step(lin, r, w, impl))
        t = 1.0
        for _ in range(_MAX_HALVINGS):
            trial = dict(current)
            for j, d in delta.items():
                trial[j] = current[j] + t * d
            trial_residual = relative_error(g_tilde, module_kernel(shape, trial))
            if trial_residual < residual:
                break
            t *= 0.5
        else:
            return current, steps, residual
        current, residual = trial, trial_residual
        steps += 1
    return current, steps, residual
