"""Input validation shared by every public routine.

Every check raises ``TypeError`` or ``ValueError`` naming the argument and what was expected,
before any kernel runs. Nothing here modifies the caller's arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._scaling import peak

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MAX_SPATIAL_DIMS = 3
#: The largest kernel extent per spatial dimension any routine accepts: beyond it a single
#: filter's taps (and every solve over them) would take impractically long.
MAX_KERNEL_SIZE = 4096


def as_filter(x: object, name: str, *, finite: bool = True) -> np.ndarray:
    """Return ``x`` as a real floating array (NumPy or CuPy) of shape (C_out, C_in, *kernel).

    A linear layer's (C_out, C_in) matrix is a filter with no spatial dimension. Masked arrays
    are refused (their masked entries would be silently used or dropped); other ndarray
    subclasses (``np.matrix``, memmaps) are viewed as plain arrays. Any strides, read-only.
    NaN and Inf are refused unless ``finite`` is False (the caller then checks them itself,
    e.g. with :func:`netmorph_core._scaling.prescale` in the same pass that reads max|x|).
    """
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} must be a plain array, got a masked array; fill or drop the masked "
            "entries first (e.g. x.filled(0.0))"
        )
    if isinstance(x, np.ndarray):
        arr = x if type(x) is np.ndarray else np.asarray(x)
    elif type(x).__module__.startswith("cupy"):
        arr = x
    elif isinstance(x, (list, tuple)):
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be a rectangular array of floats: {exc}") from None
    else:
        raise TypeError(
            f"{name} must be a NumPy array, a CuPy array or a torch tensor, got {type(x).__name__}"
        )
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} must be real floating point, got complex dtype {arr.dtype}")
    if arr.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if not 2 <= arr.ndim <= 2 + MAX_SPATIAL_DIMS:
        raise ValueError(
            f"{name} must have 2 to {2 + MAX_SPATIAL_DIMS} dimensions "
            f"(C_out, C_in, *kernel), got shape {arr.shape}"
        )
    if 0 in arr.shape:
        raise ValueError(f"{name} must not have an empty dimension, got shape {arr.shape}")
    if finite and not math.isfinite(peak(arr)):
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def same_spatial_rank(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    """Both filters must have the same number of spatial dimensions."""
    if a.ndim != b.ndim:
        raise ValueError(
            f"{a_name} and {b_name} must have the same number of dimensions, "
            f"got {a.shape} and {b.shape}"
        )


def chain_channels(outer: np.ndarray, outer_name: str, inner: np.ndarray, inner_name: str) -> None:
    """``outer`` consumes what ``inner`` produces: outer.shape[1] == inner.shape[0]."""
    if outer.shape[1] != inner.shape[0]:
        raise ValueError(
            f"{outer_name} has {outer.shape[1]} input channels but {inner_name} has "
            f"{inner.shape[0]} output channels; they must match"
        )


def kernel_tuple(k: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """Normalise a kernel size (an int or one int per spatial dimension) to a tuple."""
    if isinstance(k, (bool, np.bool_)):
        raise TypeError(f"{name} must be a positive int or a tuple of {ndim} ints, got {k!r}")
    if isinstance(k, (int, np.integer)):
        sizes = (int(k),) * ndim
    elif isinstance(k, Sequence) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in k
    ):
        sizes = tuple(int(v) for v in k)
    else:
        raise TypeError(f"{name} must be a positive int or a tuple of {ndim} ints, got {k!r}")
    if len(sizes) != ndim:
        raise ValueError(f"{name} must give {ndim} kernel sizes, got {sizes}")
    if any(v < 1 for v in sizes):
        raise ValueError(f"{name} must be positive, got {sizes}")
    if any(v > MAX_KERNEL_SIZE for v in sizes):
        raise ValueError(f"{name} must be at most {MAX_KERNEL_SIZE} per dimension, got {sizes}")
    return sizes


def positive_int(v: object, name: str, maximum: int | None = None) -> int:
    """A strictly positive Python int (at most ``maximum`` when given)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be a positive int, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {v}")
    return int(v)


def real_number(
    x: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """``x`` as a finite Python float in [low, high] ((low, high] when ``low_open``).

    bool, non-numbers, NaN and ±Inf are refused (``TypeError`` / ``ValueError`` naming ``x``).
    """
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {x!r}")
    try:
        value = float(x)
    except OverflowError:
        raise ValueError(f"{name} must be finite, got an int too large for a float") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    below = low is not None and (value <= low if low_open else value < low)
    if below or (high is not None and value > high):
        left = "(-inf" if low is None else f"{'(' if low_open else '['}{low}"
        right = "inf)" if high is None else f"{high}]"
        raise ValueError(f"{name} must be in {left}, {right}, got {value}")
    return value


def effective_size(
    kernel: tuple[int, ...], k_outer: tuple[int, ...], k_inner: tuple[int, ...], name: str
) -> tuple[int, ...]:
    """Effective size Kt = K_outer + K_inner - 1, checked to hold ``kernel`` centred.

    Kt - K must be non-negative and even in every spatial dimension so that G~ is G padded
    symmetrically (DESIGN.md §2).
    """
    kt = tuple(a + b - 1 for a, b in zip(k_outer, k_inner))
    for k, t in zip(kernel, kt):
        if t < k:
            raise ValueError(
                f"{name}: the effective kernel size {kt} (K1 + K2 - 1) is smaller than the "
                f"kernel {kernel} it must reproduce"
            )
        if (t - k) % 2:
            raise ValueError(
                f"{name}: the effective kernel size {kt} minus the kernel {kernel} must be even "
                "so that the kernel can be zero-padded symmetrically"
            )
    return kt


def result_dtype(*arrays: np.ndarray) -> np.dtype:
    """The common floating dtype of the inputs (float64 if any is float64)."""
    return np.result_type(*arrays)
