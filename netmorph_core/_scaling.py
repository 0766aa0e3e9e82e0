"""Exact power-of-two scaling, so that an input's magnitude alone never changes an answer.

Every public routine solves on inputs normalised to a largest magnitude in [0.5, 1) —
X = 2^e·Xn with ``e`` the exponent of max|X| (``frexp``), an exact scaling unless entries fall
below the smallest normal number — and scales the result back. Then G·2^k gives exactly the
2^k-scaled answer, no Gram or norm overflows or underflows, and a result that cannot be
represented in the output dtype is a ``ValueError`` naming the arguments, never inf or a
silent zero. Works on NumPy and CuPy arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._arrays import namespace


def exponent(x: Any) -> int:
    """The binary exponent e of max|x| (max|x| = m·2^e, 0.5 ≤ m < 1); 0 for an all-zero x."""
    peak = float(namespace(x).abs(x).max()) if x.size else 0.0
    return int(math.frexp(peak)[1]) if peak > 0 else 0


def normalise(x: Any) -> tuple[Any, int]:
    """(x·2^−e, e) with e = :func:`exponent` (x); the same array type and dtype as ``x``."""
    e = exponent(x)
    return (namespace(x).ldexp(x, -e) if e else x), e


def scale_back(x: Any, e: int, dtype: np.dtype, what: str) -> Any:
    """x·2^e in ``dtype``, or ``ValueError`` (naming ``what``) when its largest entry would
    overflow or fall below the smallest normal number of ``dtype`` (the answer is not
    representable there: inf or a silent zero)."""
    xp = namespace(x)
    if e == 0 and x.dtype == dtype:  # nothing is scaled or cast: nothing can leave the range
        return x
    info = np.finfo(dtype)
    peak = float(xp.abs(x).max()) if x.size else 0.0
    if peak > 0:  # max|x·2^e| lies in [2^(top−1), 2^top)
        top = math.frexp(peak)[1] + e
        if top > info.maxexp:
            raise ValueError(
                f"{what}: the result's largest entry is about 2^{top - 1}, beyond the largest "
                f"{np.dtype(dtype)} number ({float(info.max):.3g}); rescale the inputs"
            )
        if top - 1 < info.minexp:
            raise ValueError(
                f"{what}: the result's largest entry is about 2^{top - 1}, below the smallest "
                f"normal {np.dtype(dtype)} number ({float(info.tiny):.3g}); rescale the inputs"
            )
    return xp.ldexp(x.astype(dtype, copy=False), e) if e else x.astype(dtype, copy=False)


def ldexp_float(x: float, e: int) -> float:
    """x·2^e as a Python float: ±inf on overflow, 0.0 on underflow (never OverflowError)."""
    if x == 0.0 or not math.isfinite(x):
        return x
    m, ex = math.frexp(x)
    if ex + e > 1024:
        return math.copysign(math.inf, x)
    return math.ldexp(m, ex + e) if ex + e >= -1074 else 0.0


def relative_difference(target: np.ndarray, approx: np.ndarray) -> float:
    """‖approx − target‖ / ‖target‖ (the absolute ‖approx‖ when target is zero), with both
    norms taken on power-of-two-normalised arrays: no square underflows to a zero ‖target‖
    (which would turn the relative measure into an absolute one) or overflows."""
    with np.errstate(over="ignore", invalid="ignore"):
        diff = approx.astype(np.float64) - target.astype(np.float64)
    if not np.isfinite(diff).all():
        return math.inf
    diff_n, e_d = normalise(diff)
    target_n, e_t = normalise(target.astype(np.float64))
    err = float(np.linalg.norm(diff_n))
    scale = float(np.linalg.norm(target_n))
    if scale == 0.0:
        return ldexp_float(err, e_d)
    return ldexp_float(err / scale, e_d - e_t)
