"""Input validation shared by every public routine.

Every check raises ``TypeError`` or ``ValueError`` naming the argument and what was expected,
before any kernel runs. Nothing here modifies the caller's arrays.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

from ._arrays import from_torch
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
    A torch tensor (any strides, negative or conjugate bit, requires_grad; CPU or CUDA) becomes
    a NumPy array on the host (:func:`netmorph_core._arrays.from_torch`).
    NaN and Inf are refused unless ``finite`` is False (the caller then checks them itself,
    e.g. with :func:`netmorph_core._scaling.prescale` in the same pass that reads max|x|).
    """
    if type(x).__module__.startswith("torch"):
        x = from_torch(x, name, host=True)
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
            f"{name} must be a NumPy array, a CuPy array or a torch tensor, got "
            f"{type_name(x)}"
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


def type_name(x: object) -> str:
    """The qualified name of ``x``'s type ("numpy.ndarray", "int"), for error messages."""
    cls = type(x)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def as_int(v: object, name: str, what: str = "an int") -> int:
    """``v`` as a Python int: an int, a NumPy integer scalar, or a 0-d integer array or tensor
    (anything with ``__index__``). bool and boolean arrays are refused: True is not a size.
    ``TypeError`` naming ``name`` (and saying ``what`` was expected) otherwise."""
    dtype = getattr(v, "dtype", None)
    if isinstance(v, (bool, np.bool_)) or (dtype is not None and "bool" in str(dtype)):
        raise TypeError(f"{name} must be {what}, got the bool {v!r}")
    if getattr(v, "ndim", 0) != 0:
        raise TypeError(f"{name} must be {what}, got {type_name(v)} of shape {tuple(v.shape)}")
    try:
        return operator.index(v)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be {what}, got {type_name(v)} {v!r}") from None


def int_sequence(k: object) -> list[object] | None:
    """The items of a list, tuple, ``torch.Size`` or 1-d array ``k``; None for anything else
    (str and bytes included)."""
    if isinstance(k, (str, bytes)):
        return None
    if isinstance(k, Sequence):
        return list(k)
    if getattr(k, "ndim", None) == 1 and hasattr(k, "tolist"):
        return list(k)
    return None


def kernel_tuple(k: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """Normalise a kernel size (an int or one int per spatial dimension) to a tuple."""
    what = f"a positive int or a tuple of {ndim} ints"
    items = int_sequence(k)
    if items is None:
        sizes = (as_int(k, name, what),) * ndim
    else:
        sizes = tuple(as_int(x, f"{name}[{i}]", what) for i, x in enumerate(items))
    if len(sizes) != ndim:
        raise ValueError(f"{name} must give {ndim} kernel sizes, got {sizes}")
    if any(v < 1 for v in sizes):
        raise ValueError(f"{name} must be positive, got {sizes}")
    if any(v > MAX_KERNEL_SIZE for v in sizes):
        raise ValueError(f"{name} must be at most {MAX_KERNEL_SIZE} per dimension, got {sizes}")
    return sizes


def positive_int(v: object, name: str, maximum: int | None = None) -> int:
    """A strictly positive Python int (at most ``maximum`` when given); NumPy integers and 0-d
    integer arrays count (:func:`as_int`)."""
    value = as_int(v, name, "a positive int")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


def as_generator(seed: object, name: str = "seed") -> np.random.Generator:
    """A NumPy Generator from ``seed``: None (fresh entropy), a non-negative int (NumPy
    integers included) or a Generator, which is used as is (the caller's generator advances)."""
    if seed is None or isinstance(seed, np.random.Generator):
        return np.random.default_rng(seed)
    value = as_int(seed, name, "None, a non-negative int or a numpy Generator")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value}")
    return np.random.default_rng(value)


def real_number(
    x: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """``x`` as a finite Python float in [low, high] ((low, high] when ``low_open``).

    NumPy scalars and 0-d arrays or tensors count; bool, non-numbers, NaN and ±Inf are refused
    (``TypeError`` / ``ValueError`` naming ``x``).
    """
    if getattr(x, "ndim", None) == 0 and hasattr(x, "item"):
        x = x.item()  # a 0-d array or tensor: its Python scalar, checked below
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


#: Seeds of torch generators are unsigned 64-bit integers.
MAX_TORCH_SEED = 2**64 - 1


def torch_seed(seed: object, name: str = "seed", default: int = 0) -> int:
    """The integer seed of a ``torch.Generator`` from ``seed``: None (``default``), a
    non-negative int (NumPy integers included, below 2⁶⁴) or a ``numpy.random.Generator``, of
    which one 63-bit integer is drawn (the caller's generator advances by that one draw, as it
    does when a NumPy routine uses it; the same generator state gives the same seed)."""
    if seed is None:
        return default
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63))
    value = as_int(seed, name, "None, a non-negative int or a numpy Generator")
    if not 0 <= value <= MAX_TORCH_SEED:
        raise ValueError(f"{name} must be a non-negative int below 2**64, got {value}")
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
