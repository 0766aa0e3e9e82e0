"""What every morph shares: validated options, the random start, chain compositions, the
residual, scale balancing and the final checks (no algorithm lives here)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import scipy.linalg

from .. import _validation as v
from ..backends import select_backend
from ..reference import compose_ref
from .result import MorphResult

METHODS = ("general", "practical", "stable")
#: Default tolerance on the relative residual per input dtype.
DEFAULT_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}

Seed = int | np.integer | np.random.Generator | None


@dataclass(frozen=True)
class Options:
    """Validated options shared by the depth and subnet morphs."""

    method: str
    max_iter: int
    tol: float
    stop_tol: float
    allow_approximate: bool
    rng: np.random.Generator
    backend: ModuleType


def check_options(
    g: np.ndarray,
    method: object,
    seed: object,
    max_iter: object,
    tol: object,
    allow_approximate: object,
    backend: object,
) -> Options:
    """Validate the common keyword arguments (typed errors) and select the backend.

    ``stop_tol`` is the residual the float64 iterations aim for: ``tol`` for float64 output, a
    tenth of it for float32 so that rounding the filters to float32 stays within ``tol``.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be one of {METHODS}, got {method!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    max_iter = v.positive_int(max_iter, "max_iter")
    if tol is None:
        tol = DEFAULT_TOL[g.dtype]
    tol = v.real_number(tol, "tol", low=0.0, low_open=True)
    if not isinstance(allow_approximate, (bool, np.bool_)):
        raise TypeError(f"allow_approximate must be a bool, got {allow_approximate!r}")
    rng = as_rng(seed)
    impl = select_backend(backend, np.dtype(np.float64), g)
    stop_tol = float(tol) if g.dtype == np.float64 else 0.1 * float(tol)
    return Options(method, max_iter, float(tol), stop_tol, bool(allow_approximate), rng, impl)


def as_rng(seed: object) -> np.random.Generator:
    """A NumPy Generator from None (fresh entropy), a non-negative int, or a Generator."""
    return v.as_generator(seed)


def compose_chain(filters: Sequence[np.ndarray]) -> np.ndarray:
    """F_last ⊛ … ⊛ F_first for ``filters`` in data-flow order (float64)."""
    out = filters[0].astype(np.float64)
    for f in filters[1:]:
        out = compose_ref(f.astype(np.float64), out)
    return out


def relative_residual(g_tilde: np.ndarray, filters: Sequence[np.ndarray]) -> float:
    """‖F_last ⊛ … ⊛ F_first − G~‖ / ‖G~‖ in float64 (absolute when G~ is zero)."""
    err = float(np.linalg.norm(compose_chain(filters) - g_tilde))
    scale = float(np.linalg.norm(g_tilde))
    return err / scale if scale > 0 else err


#: Aspect ratio from which a random Gaussian matrix stands in for an orthonormal one.
NEAR_ORTHOGONAL_ASPECT = 64


def orthogonal_filter(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A random filter (C_out, C_in, *K) whose matrix (C_out, C_in·|K|) has orthonormal rows
    (or columns, when taller than wide), scaled to He's std √(2 / fan-in).

    Every singular value of the matrix is equal, so a factor drawn this way does not amplify
    the rounding of the other factor solved against it (for a 1×1 factor the deconvolution's
    operator is this matrix itself). A matrix at least :data:`NEAR_ORTHOGONAL_ASPECT` times
    longer than wide is a Gaussian one instead (its singular values within 1 ± 1/8 of each
    other's mean, no QR: a 768 × 768·16·16 filter's costs 20 s)."""
    rows, cols = shape[0], math.prod(shape[1:])
    long, short = max(rows, cols), min(rows, cols)
    a = rng.standard_normal((long, short))
    if long >= NEAR_ORTHOGONAL_ASPECT * short:
        q = a / math.sqrt(long)
    else:
        q, r = scipy.linalg.qr(a, mode="economic", overwrite_a=True, check_finite=False)
        q = q * np.where(np.diag(r) < 0, -1.0, 1.0)  # the Haar measure: sign of R's diagonal
    mat = q.T if rows <= cols else q
    return (mat * math.sqrt(2.0 * max(rows, cols) / cols)).reshape(shape)


def random_start(
    shapes: Sequence[tuple[int, ...]], g_tilde: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Random orthogonal filters (:func:`orthogonal_filter`, He's std √(2 / fan-in)), scaled
    together to the norm of G~."""
    filters = [orthogonal_filter(shape, rng) for shape in shapes]
    target = float(np.linalg.norm(g_tilde))
    current = float(np.linalg.norm(compose_chain(filters)))
    if target > 0 and current > 0:
        alpha = (target / current) ** (1.0 / len(filters))
        filters = [f * alpha for f in filters]
    return filters


def scale_of(f: np.ndarray) -> float:
    """A filter's scale: its standard deviation, or its RMS when that is zero (one entry)."""
    std = float(np.std(f))
    return std if std > 0 else float(np.sqrt(np.mean(np.square(f))))


def balance(filters: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Rescale F_p by s_p (Π s_p = 1) so that every filter has the same :func:`scale_of`
    (the standard deviation); the composition is unchanged. All-zero filters: no change."""
    scales = [scale_of(f) for f in filters]
    if len(filters) == 1 or min(scales) == 0.0:
        return list(filters)
    common = math.exp(sum(math.log(s) for s in scales) / len(scales))
    return [f * (common / s) for f, s in zip(filters, scales)]


def finish(
    g: np.ndarray,
    g_tilde: np.ndarray,
    filters: Sequence[np.ndarray],
    iterations: int,
    opts: Options,
) -> MorphResult:
    """Balance the scales, cast to G's dtype, and measure the residual of what is returned
    (``ValueError`` when it exceeds ``tol``, unless approximate results are allowed)."""
    out = tuple(np.ascontiguousarray(f, dtype=g.dtype) for f in balance(filters))
    residual = relative_residual(g_tilde, out)
    if residual > opts.tol and not opts.allow_approximate:
        raise ValueError(
            f"the {opts.method} morph's filters in {g.dtype} have relative residual "
            f"{residual:.3g} > tol={opts.tol}; use a larger tol or allow_approximate=True"
        )
    return MorphResult(
        filters=out,
        residual=residual,
        iterations=iterations,
        exact=residual <= opts.tol,
        method=opts.method,
        kernel_sizes=tuple(tuple(f.shape[2:]) for f in out),
    )
