"""The ``native`` backend: C++/OpenMP kernels (``netmorph_core._native``) on SciPy's BLAS.

Every channel product is a GEMM of the BLAS SciPy ships: its ``sgemm``/``dgemm`` entry points
(``scipy.linalg.cython_blas``) are handed to the extension once, at load time. 1-D, 2-D and 3-D
filters (and linear layers) all run natively.

``compose`` and ``correlate_outer`` are bilinear algorithms (``csrc/bilinear.h``):

- ``"direct"``: one (C2×C1)·(C1×C0) product per pair of taps, |K1|·|K2| of them; a 1-tap
  factor makes the whole operation a single GEMM.
- ``"toom"``: Toom-Cook evaluation at Kt points per dimension (0, ±1, ±2, ±1/2, 1/4, ∞):
  |Kt| products, e.g. 25 instead of 81 for 3×3 ⊛ 3×3, but interpolation magnifies rounding.
- ``"dft"``: a real DFT of size Kt per dimension, three products (Gauss's trick) per
  conjugate pair of frequencies: 121 instead of 625 for 5×5 ⊛ 5×5, as accurate as direct.

:func:`compose_in_range` is the public ``compose``'s path for plain arrays: one native call
that reads each input once for finiteness and its largest exponent (an integer maximum over
the bits, ``csrc/magnitude.h``) and then runs the kernel unscaled, or stops when an input needs
the exact power-of-two scaling of :mod:`netmorph_core._scaling`.

``method="auto"`` keeps the transform methods whose rounding-error magnification (relative to
direct, computed from the algorithm's matrices) fits the dtype's budget, then takes the
cheapest by a cost model of GEMM flops, per-call overhead and transform work.

Threads (``compose`` and ``correlate_outer``): with more than one, the work is cut into
independent pieces (channel products, row or column blocks of the one product of a 1-tap
composition, row blocks of the tap maps) that the calling thread and helpers from a
process-wide pool take one at a time, while the BLAS runs each piece on the thread that called
it (``csrc/threads.h``): a thread that another process slows down takes fewer pieces instead
of holding up the others at every product, and a thread with nothing left to do sleeps. How
many (:func:`threads_for`): the ``threads=`` argument, else ``$NETMORPH_NUM_THREADS``, else one
thread for work below :data:`MIN_PARALLEL_WORK` multiply-adds and otherwise the cores this
process may use (``os.sched_getaffinity``, at most the OpenMP and BLAS thread counts set at
start-up: ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``) less those other runnable tasks hold
(``/proc/loadavg``). The BLAS's thread count is the library's global setting: it is 1 while
any such call runs and restored when the last one ends. The Grams run either on OpenMP threads
(small products) or on the BLAS's own threads, never both. The kernels release the GIL and
keep their scratch memory per calling thread between calls (the largest any call on that
thread needed; fresh pages cost as much as the transforms); ``_native.release_workspace()``
frees it.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from types import ModuleType

import numpy as np

from .. import _validation as v
from .._environ import getenv

DEVICE = "cpu"
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
METHODS = ("auto", "direct", "toom", "dft")

_MISSING = (
    "netmorph_core._native is not compiled: reinstall with a C++ compiler and CMake (pip install .)"
)
#: Largest error magnification (relative to the direct method) a transform method may have:
#: measured float32 errors of direct stay below 4e-7 up to C = 512, and the bound is 5e-6.
_MAX_AMPLIFICATION = {np.dtype(np.float32): 8.0, np.dtype(np.float64): 300.0}
#: Cost model in flop-equivalents, fitted to timings: the overhead of one GEMM call, of one
#: element moved by a transpose, and of one multiply-add of a tap map. Beside small channel
#: products (m·n·k ≤ 2^18) the tap maps cost _SMALL_MAP_FACTOR times more per multiply-add.
_CALL_COST = 5.0e3
_MOVE_COST = 10.0
_MAP_COST = 2.0
_SMALL_PRODUCT = 2.0**18
_SMALL_MAP_FACTOR = 3.0
#: Environment variable fixing the threads of every call (a positive int).
ENV_THREADS = "NETMORPH_NUM_THREADS"
#: Direct-method multiply-adds below which a call runs on one thread (fitted to timings: a
#: second thread saves less than it costs to wake and join).
MIN_PARALLEL_WORK = 2.0**24
#: The most threads a call accepts.
MAX_THREADS = 1024


@functools.cache
def _extension() -> ModuleType:
    try:
        from .. import _native
    except ImportError as exc:
        raise ImportError(f"{_MISSING} ({exc})") from exc
    if not hasattr(_native, "compose_in_range"):
        raise ImportError(
            "netmorph_core._native was built from older sources (it has no compose_in_range): "
            "rebuild it (python setup.py build_ext --inplace, or pip install .)"
        )
    if not _native.blas_ready():
        from scipy.linalg import cython_blas

        capi = cython_blas.__pyx_capi__
        _native.set_blas(capi["sgemm"], capi["dgemm"])
    return _native


@functools.cache
def _start_up_threads() -> int:
    """Threads this process may use: its CPU affinity, at most the OpenMP and BLAS thread
    counts the extension found at start-up (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``)."""
    ext = _extension()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limits = [cores or 1, ext.openmp_threads()]
    if ext.blas_threads() > 0:
        limits.append(ext.blas_threads())
    return max(1, min(limits))


def _busy_cores() -> int:
    """Runnable tasks besides the caller, from /proc/loadavg's running count (0 where it
    cannot be read). The kernels' own helper threads sleep between calls: they are not
    counted."""
    try:
        with open("/proc/loadavg", "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(running - 1, 0)


@functools.lru_cache(maxsize=16)
def _env_threads(raw: str) -> int:
    """The thread count ``$NETMORPH_NUM_THREADS`` = ``raw`` (stripped, not empty) sets."""
    try:
        return v.positive_int(int(raw), ENV_THREADS, MAX_THREADS)
    except (TypeError, ValueError):
        raise ValueError(
            f"{ENV_THREADS} must be a positive int up to {MAX_THREADS}, got {raw!r}"
        ) from None


def threads_for(work: float, threads: int | None = None) -> int:
    """Threads of a call doing ``work`` direct-method multiply-adds: ``threads`` when given,
    else ``$NETMORPH_NUM_THREADS``, else chosen from the work and the free cores (module
    docstring)."""
    if threads is not None:
        return v.positive_int(threads, "threads", MAX_THREADS)
    raw = (getenv(ENV_THREADS) or "").strip()
    if raw:
        return _env_threads(raw)
    cores = _start_up_threads()
    if cores == 1 or work < MIN_PARALLEL_WORK:
        return 1
    wanted = min(cores, int(work // MIN_PARALLEL_WORK))
    return max(1, min(wanted, cores - _busy_cores()))


def load() -> None:
    """Import the compiled extension and hand it SciPy's BLAS; ImportError says why not."""
    _extension()


def _check_filter(x: object, name: str, ndim: int | None = None) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    if x.dtype not in DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if not 2 <= x.ndim <= 2 + v.MAX_SPATIAL_DIMS or 0 in x.shape:
        raise ValueError(
            f"{name} must have shape (C_out, C_in, *kernel) with 0 to {v.MAX_SPATIAL_DIMS} "
            f"non-empty spatial dimensions, got {x.shape}"
        )
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions like f2, got shape {x.shape}")
    return x


def _same_dtype(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{names} must have the same dtype, got {a.dtype} and {b.dtype}")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


@functools.lru_cache(maxsize=4096)
def _plan(operation: str, method: str, k2: tuple[int, ...], k1: tuple[int, ...]) -> tuple:
    return _extension().plan_info(operation, method, list(k2), list(k1))


def _cost(info: tuple, channel_pairs: tuple[int, int, int], gemm_work: float) -> float:
    """Flop-equivalents of running a plan: its channel products (m·n·k = ``gemm_work`` each)
    plus its three tap maps, each applied to ``channel_pairs`` rows."""
    products, _, maps = info
    map_cost = _MAP_COST * (_SMALL_MAP_FACTOR if gemm_work <= _SMALL_PRODUCT else 1.0)
    cost = products * (2.0 * gemm_work + _CALL_COST)
    for (rows, cols, identity), n in zip(maps, channel_pairs):
        if rows * cols > 1:
            cost += n * (rows * _MOVE_COST if identity else rows * cols * map_cost)
    return cost


@functools.lru_cache(maxsize=4096)
def choose_method(
    operation: str,
    channels: tuple[int, int, int],
    k2: tuple[int, ...],
    k1: tuple[int, ...],
    dtype: np.dtype,
) -> str:
    """The method ``"auto"`` runs for ``operation`` ("compose" or "correlate") with channels
    (C2, C1, C0), outer kernel ``k2``, inner kernel ``k1`` and ``dtype`` (cached)."""
    if math.prod(k2) == 1 or math.prod(k1) == 1:
        return "direct"
    c2, c1, c0 = channels
    pairs = (c2 * c1, c1 * c0, c2 * c0) if operation == "compose" else (c2 * c1, c2 * c0, c1 * c0)
    work = float(c2 * c1 * c0)
    best, best_cost = "direct", _cost(_plan(operation, "direct", k2, k1), pairs, work)
    for method in ("toom", "dft"):
        if method == "toom" and max(a + b - 1 for a, b in zip(k2, k1)) > 9:
            continue
        info = _plan(operation, method, k2, k1)
        if info[1] > _MAX_AMPLIFICATION[np.dtype(dtype)]:
            continue
        cost = _cost(info, pairs, work)
        if cost < best_cost:
            best, best_cost = method, cost
    return best


def _work(c2: int, c1: int, c0: int, k2: tuple[int, ...], k1: tuple[int, ...]) -> float:
    """Multiply-adds of the direct method: c2·c1·c0·|K2|·|K1|."""
    return float(c2 * c1 * c0) * math.prod(k2) * math.prod(k1)


def compose(
    f2: np.ndarray, f1: np.ndarray, *, method: str = "auto", threads: int | None = None
) -> np.ndarray:
    """G = F2 ⊛ F1: F2 (C2, C1, *K2), F1 (C1, C0, *K1) -> G (C2, C0, *(K1 + K2 - 1)),
    G[o, i] = Σ_m full_convolution(F2[o, m], F1[m, i]), in the inputs' dtype; on ``threads``
    threads (None: :func:`threads_for`). Any strides: non-contiguous inputs are copied."""
    _check_method(method)
    f2 = _check_filter(f2, "f2")
    f1 = _check_filter(f1, "f1", f2.ndim)
    _same_dtype(f2, f1, "f2 and f1")
    v.chain_channels(f2, "f2", f1, "f1")
    channels = (f2.shape[0], f2.shape[1], f1.shape[1])
    n = threads_for(_work(*channels, f2.shape[2:], f1.shape[2:]), threads)
    if method == "auto":
        method = choose_method("compose", channels, f2.shape[2:], f1.shape[2:], f2.dtype)
    return _extension().compose(f2, f1, method, n)


def compose_in_range(f2: np.ndarray, f1: np.ndarray, max_exponent: int) -> np.ndarray | None:
    """:func:`compose` (method and threads chosen as for ``"auto"`` and ``None``) of inputs the
    caller has checked (NumPy arrays of one dtype of :data:`DTYPES`, 2 to 5 dimensions alike,
    none empty, F2's input channels F1's output channels), when both are finite and the binary
    exponent e of each one's largest magnitude (``frexp``) has |e| <= ``max_exponent``; None,
    without running the kernel, when one has not. ``ValueError`` "F2 (or F1) contains NaN or
    Inf" for a non-finite input. The check is one pass over each input's bits, in the same
    native call as the kernel (non-contiguous inputs are copied first, as the kernel needs)."""
    k2, k1 = f2.shape[2:], f1.shape[2:]
    channels = (f2.shape[0], f2.shape[1], f1.shape[1])
    n = threads_for(_work(*channels, k2, k1))
    method = choose_method("compose", channels, k2, k1, f2.dtype)
    return _extension().compose_in_range(f2, f1, method, n, max_exponent)


def correlate_outer(
    f2: np.ndarray,
    y: np.ndarray,
    k1: int | Sequence[int],
    *,
    method: str = "auto",
    threads: int | None = None,
) -> np.ndarray:
    """X = AᵀY for A: X ↦ F2 ⊛ X: F2 (C2, C1, *K2), Y (C2, C0, *(k1 + K2 - 1)) ->
    X (C1, C0, *k1), X[m, i, s] = Σ_{o,t} F2[o, m, t - s]·Y[o, i, t]; on ``threads`` threads
    (None: :func:`threads_for`)."""
    _check_method(method)
    f2 = _check_filter(f2, "f2")
    y = _check_filter(y, "y", f2.ndim)
    _same_dtype(f2, y, "f2 and y")
    k = v.kernel_tuple(k1, f2.ndim - 2, "k1")
    kt = tuple(a + b - 1 for a, b in zip(k, f2.shape[2:]))
    if y.shape[0] != f2.shape[0] or y.shape[2:] != kt:
        raise ValueError(
            f"y must have shape ({f2.shape[0]}, C0, *{kt}) for f2 of shape {f2.shape} and "
            f"k1 = {k}, got {y.shape}"
        )
    channels = (f2.shape[0], f2.shape[1], y.shape[1])
    n = threads_for(_work(*channels, f2.shape[2:], k), threads)
    if method == "auto":
        method = choose_method("correlate", channels, f2.shape[2:], k, f2.dtype)
    return _extension().correlate_outer(f2, y, list(k), method, n)


def gram_outer(f2: np.ndarray, k1: int | Sequence[int]) -> np.ndarray:
    """M = AᵀA, (C1·|k1|, C1·|k1|): M[(m, s), (m', s')] = Σ_{o,u} F2[o, m, u]·F2[o, m', u+s−s']."""
    f2 = _check_filter(f2, "f2")
    k = v.kernel_tuple(k1, f2.ndim - 2, "k1")
    return _extension().gram_outer(f2, list(k))


def gram_outer_rows(f2: np.ndarray, k1: int | Sequence[int]) -> np.ndarray:
    """N = AAᵀ, (C2·|Kt|, C2·|Kt|): N[(o, t), (o', t')] = Σ_{m,s} F2[o, m, t−s]·F2[o', m, t'−s]."""
    f2 = _check_filter(f2, "f2")
    k = v.kernel_tuple(k1, f2.ndim - 2, "k1")
    return _extension().gram_outer_rows(f2, list(k))
