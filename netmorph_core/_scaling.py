"""Exact power-of-two scaling, so that an input's magnitude alone never changes an answer.

Every public routine solves on inputs normalised to a largest magnitude in [0.5, 1) —
X = 2^e·Xn with ``e`` the exponent of max|X| (``frexp``), an exact scaling unless entries fall
below the smallest normal number — and scales the result back. Then G·2^k gives exactly the
2^k-scaled answer, no Gram or norm overflows or underflows, and a result that cannot be
represented in the output dtype is a ``ValueError`` naming the arguments, never inf or a
silent zero. Works on NumPy and CuPy arrays.

Costs: max|x| is read as max(x.max(), −x.min()), two reductions over a view (no temporary;
the public ``compose`` reads plain NumPy arrays in one native pass instead, see
:func:`netmorph_core.backends.native.compose_in_range`),
and x·2^e is a multiplication by powers of two (rounded once, as ``ldexp``, at memory speed).
:func:`prescale` leaves inputs whose exponent lies in [−:data:`SAFE_EXPONENT`,
:data:`SAFE_EXPONENT`] as they are: every intermediate of a product of such inputs is then
exactly 2^(e1+e2) times the normalised one (none can overflow, and only values within a
factor 2^(2·SAFE_EXPONENT) of the smallest normal number could round differently), so the
answer is the normalised one, scaled, without any copy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._arrays import namespace

#: Inputs with max|x| in [2^−(SAFE_EXPONENT+1), 2^SAFE_EXPONENT) are used unscaled.
SAFE_EXPONENT = 16


def peak(x: Any) -> float:
    """max|x| as a Python float (NaN when x holds a NaN, inf when it holds ±inf), from two
    reductions over ``x`` itself: no temporary array."""
    if not x.size:
        return 0.0
    if isinstance(x, np.ndarray):  # the ufuncs themselves: no Python wrapper per call
        hi = float(np.maximum.reduce(x, axis=None))
        lo = float(np.minimum.reduce(x, axis=None))
    else:
        hi, lo = float(x.max()), float(x.min())
    if math.isnan(hi) or math.isnan(lo):
        return math.nan
    return max(hi, -lo)


def exponent(x: Any) -> int:
    """The binary exponent e of max|x| (max|x| = m·2^e, 0.5 ≤ m < 1); 0 for an all-zero x."""
    top = peak(x)
    return int(math.frexp(top)[1]) if top > 0 else 0


def finite_exponent(x: Any, name: str) -> int:
    """:func:`exponent` of ``x``, or ``ValueError`` naming ``name`` when x holds NaN or Inf."""
    top = peak(x)
    if not math.isfinite(top):
        raise ValueError(f"{name} contains NaN or Inf")
    return int(math.frexp(top)[1]) if top > 0 else 0


def times_power_of_two(x: Any, e: int, *, inplace: bool = False) -> Any:
    """x·2^e rounded once, as ``ldexp`` rounds it, by multiplications with powers of two.

    2^e is split into representable factors when it is not one; when scaling down, the
    smaller factor goes first, so an intermediate result is below the normal range only if
    the final one rounds to zero either way. ``inplace`` overwrites ``x`` (an array the caller
    owns); otherwise a new C-contiguous array is returned (a kernel needs no second copy),
    or ``x`` itself when e = 0."""
    xp = namespace(x)
    info = np.finfo(x.dtype)
    lowest = int(info.minexp) - int(info.nmant)  # 2^lowest: the smallest subnormal number
    highest = int(info.maxexp) - 1
    steps: list[int] = []
    while e > highest:
        steps.append(highest)
        e -= highest
    while e < lowest:
        steps.append(lowest)
        e -= lowest
    if e:
        steps.insert(0, e)
    if not steps:
        return x
    out = x if inplace else xp.empty(x.shape, dtype=x.dtype)  # C order
    x = xp.multiply(x, x.dtype.type(2.0 ** steps[0]), out=out)
    for step in steps[1:]:
        xp.multiply(x, x.dtype.type(2.0**step), out=x)
    return x


def normalise(x: Any) -> tuple[Any, int]:
    """(x·2^−e, e) with e = :func:`exponent` (x); the same array type and dtype as ``x``."""
    e = exponent(x)
    return (times_power_of_two(x, -e) if e else x), e


def prescale(x: Any, name: str) -> tuple[Any, int]:
    """(x·2^−e, e) when x's exponent e lies outside [−SAFE_EXPONENT, SAFE_EXPONENT], else
    (x, 0) without a copy (see the module docstring); ``ValueError`` naming ``name`` when x
    holds NaN or Inf."""
    e = finite_exponent(x, name)
    if abs(e) <= SAFE_EXPONENT:
        return x, 0
    return times_power_of_two(x, -e), e


def scale_back(x: Any, e: int, dtype: np.dtype, what: str, *, owned: bool = False) -> Any:
    """x·2^e in ``dtype``, or ``ValueError`` (naming ``what``) when its largest entry would
    overflow or fall below the smallest normal number of ``dtype`` (the answer is not
    representable there: inf or a silent zero). ``owned``: x is a fresh array of ``dtype``
    that may be scaled in place."""
    if e == 0 and x.dtype == dtype:  # nothing is scaled or cast: nothing can leave the range
        return x
    info = np.finfo(dtype)
    top_x = peak(x)
    if top_x > 0:  # max|x·2^e| lies in [2^(top−1), 2^top)
        top = math.frexp(top_x)[1] + e
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
    if x.dtype != dtype:
        # in float64 (every float32 exactly), then rounded once into ``dtype``
        wide = times_power_of_two(x.astype(np.float64), e, inplace=True) if e else x
        return wide.astype(dtype, copy=False)
    return times_power_of_two(x, e, inplace=owned) if e else x


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
