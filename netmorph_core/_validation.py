"""Input validation shared by every public routine.

Every check raises ``TypeError`` or ``ValueError`` naming the argument and what was expected,
before any kernel runs. Nothing here modifies the caller's arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._arrays import namespace

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MAX_SPATIAL_DIMS = 3


def as_filter(x: object, name: str) -> np.ndarray:
    """Return ``x`` as a real floating array (NumPy or CuPy) of shape (C_out, C_in, *kernel).

    A linear layer's (C_out, C_in) matrix is a filter with no spatial dimension.
    """
    if isinstance(x, np.ndarray) or type(x).__module__.startswith("cupy"):
        arr = x
    elif isinstance(x, (list, tuple)):
        arr = np.asarray(x)
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
    if not bool(namespace(arr).isfinite(arr).all()):
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
    return sizes


def positive_int(v: object, name: str) -> int:
    """A strictly positive Python int."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be a positive int, got {v}")
    return int(v)


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
