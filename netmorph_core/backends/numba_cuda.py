"""The ``numba_cuda`` backend: ``numba.cuda`` kernels, one thread per output element.

Straightforward kernels (no shared memory, no warp intrinsics) that also run on Numba's CUDA
simulator. Sums accumulate in float64 and are rounded once to the operands' dtype.

Arrays:

- On a GPU, operands are any objects exposing ``__cuda_array_interface__`` (Numba device
  arrays, CuPy arrays, CUDA torch tensors), any strides, read in place; results are Numba
  device arrays (``cupy.asarray`` wraps them without a copy). Launches use the default stream.
- Under the simulator (``NUMBA_ENABLE_CUDASIM=1`` set before Numba is first imported),
  operands and results are NumPy arrays.

Spatial kernels of 0 to 3 dimensions are lifted to 3 (leading sizes 1), so one kernel per
routine serves every rank.
"""

from __future__ import annotations

import importlib
import math
import warnings
from typing import Any

import numpy as np
from numba import config, cuda

from .. import _validation as v

DEVICE = "cuda"
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_THREADS = 128


def _performance_warnings() -> tuple[type[Warning], ...]:
    """NumbaPerformanceWarning of numba and, when installed, of the separate numba-cuda."""
    found = []
    for name in ("numba.core.errors", "numba.cuda.core.errors"):
        try:
            found.append(importlib.import_module(name).NumbaPerformanceWarning)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


_PERFORMANCE_WARNINGS = _performance_warnings()


def simulated() -> bool:
    """Whether Numba runs CUDA kernels on its CPU simulator."""
    return bool(config.ENABLE_CUDASIM)


def load() -> None:
    """Runs on a CUDA GPU, or on the simulator when ``NUMBA_ENABLE_CUDASIM=1``."""
    if simulated():
        return
    if not cuda.is_available():
        raise RuntimeError(
            "numba.cuda finds no usable CUDA GPU (set NUMBA_ENABLE_CUDASIM=1 before importing "
            "numba to run the kernels on the simulator)"
        )


# ------------------------------------------------------------------------- kernels


@cuda.jit(device=True)
def _unravel3(t, nh, nw):
    """(d, h, w) of flat position t in C order over a box (·, nh, nw)."""
    return t // (nh * nw), (t // nw) % nh, t % nw


@cuda.jit(device=True)
def _block_entry(e, cols, n):
    """(row, col, a, s, b, t) of flat position e in a matrix (·, cols) whose rows and columns
    are indexed (channel, tap) in C order with n taps: row = (a, s), col = (b, t)."""
    row = e // cols
    col = e % cols
    return row, col, row // n, row % n, col // n, col % n


@cuda.jit(device=True)
def _unravel5(e, n1, n2, n3, n4):
    """(a, b, d, h, w) of flat position e in C order over an array (·, n1, n2, n3, n4)."""
    d, h, w = _unravel3(e % (n2 * n3 * n4), n3, n4)
    r = e // (n2 * n3 * n4)
    return r // n1, r % n1, d, h, w


@cuda.jit
def _compose_kernel(f2, f1, g, total):
    """g[o, i, t] = Σ_m Σ_u f2[o, m, u] · f1[m, i, t - u] (5-D lifted arrays)."""
    e = cuda.grid(1)
    if e >= total:
        return
    c0, td_n, th_n, tw_n = g.shape[1], g.shape[2], g.shape[3], g.shape[4]
    c1 = f2.shape[1]
    k2d, k2h, k2w = f2.shape[2], f2.shape[3], f2.shape[4]
    k1d, k1h, k1w = f1.shape[2], f1.shape[3], f1.shape[4]
    o, i, td, th, tw = _unravel5(e, c0, td_n, th_n, tw_n)
    acc = 0.0
    for m in range(c1):
        for ud in range(max(0, td - k1d + 1), min(k2d, td + 1)):
            for uh in range(max(0, th - k1h + 1), min(k2h, th + 1)):
                for uw in range(max(0, tw - k1w + 1), min(k2w, tw + 1)):
                    acc += f2[o, m, ud, uh, uw] * f1[m, i, td - ud, th - uh, tw - uw]
    g[o, i, td, th, tw] = acc


@cuda.jit
def _correlate_kernel(f2, y, x, total):
    """x[m, i, s] = Σ_o Σ_u f2[o, m, u] · y[o, i, s + u] (5-D lifted arrays)."""
    e = cuda.grid(1)
    if e >= total:
        return
    c0, sd_n, sh_n, sw_n = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    c2 = f2.shape[0]
    k2d, k2h, k2w = f2.shape[2], f2.shape[3], f2.shape[4]
    m, i, sd, sh, sw = _unravel5(e, c0, sd_n, sh_n, sw_n)
    acc = 0.0
    for o in range(c2):
        for ud in range(k2d):
            for uh in range(k2h):
                for uw in range(k2w):
                    acc += f2[o, m, ud, uh, uw] * y[o, i, sd + ud, sh + uh, sw + uw]
    x[m, i, sd, sh, sw] = acc


@cuda.jit
def _gram_kernel(f2, out, k1d, k1h, k1w, total):
    """out[(m, s), (m', s')] = Σ_o Σ_u f2[o, m, u] · f2[o, m', u + s - s'] (f2 lifted to 5-D)."""
    e = cuda.grid(1)
    if e >= total:
        return
    row, col, m, s, m2, s2 = _block_entry(e, out.shape[1], k1d * k1h * k1w)
    ad, ah, aw = _unravel3(s, k1h, k1w)
    bd, bh, bw = _unravel3(s2, k1h, k1w)
    dd, dh, dw = ad - bd, ah - bh, aw - bw
    c2 = f2.shape[0]
    k2d, k2h, k2w = f2.shape[2], f2.shape[3], f2.shape[4]
    acc = 0.0
    for o in range(c2):
        for ud in range(max(0, -dd), min(k2d, k2d - dd)):
            for uh in range(max(0, -dh), min(k2h, k2h - dh)):
                for uw in range(max(0, -dw), min(k2w, k2w - dw)):
                    acc += f2[o, m, ud, uh, uw] * f2[o, m2, ud + dd, uh + dh, uw + dw]
    out[row, col] = acc


@cuda.jit
def _gram_rows_kernel(f2, out, k1d, k1h, k1w, total):
    """out[(o, t), (o', t')] = Σ_m Σ_s f2[o, m, t - s] · f2[o', m, t' - s] (f2 lifted to 5-D)."""
    e = cuda.grid(1)
    if e >= total:
        return
    c1 = f2.shape[1]
    k2d, k2h, k2w = f2.shape[2], f2.shape[3], f2.shape[4]
    ktd, kth, ktw = k1d + k2d - 1, k1h + k2h - 1, k1w + k2w - 1
    row, col, o, t, o2, t2 = _block_entry(e, out.shape[1], ktd * kth * ktw)
    ad, ah, aw = _unravel3(t, kth, ktw)
    bd, bh, bw = _unravel3(t2, kth, ktw)
    acc = 0.0
    for m in range(c1):
        for sd in range(max(0, max(ad, bd) - k2d + 1), min(k1d, min(ad, bd) + 1)):
            for sh in range(max(0, max(ah, bh) - k2h + 1), min(k1h, min(ah, bh) + 1)):
                for sw in range(max(0, max(aw, bw) - k2w + 1), min(k1w, min(aw, bw) + 1)):
                    acc += (f2[o, m, ad - sd, ah - sh, aw - sw]
                            * f2[o2, m, bd - sd, bh - sh, bw - sw])
    out[row, col] = acc


# ------------------------------------------------------------------------- arrays


class _Lifted:
    """A view, through ``__cuda_array_interface__``, of a device filter with unit spatial
    dimensions inserted in front so that it has exactly 5 dimensions."""

    def __init__(self, owner: Any, interface: dict[str, Any], shape: tuple[int, ...]) -> None:
        itemsize = np.dtype(interface["typestr"]).itemsize
        strides = interface.get("strides")
        if strides is None:  # C-contiguous
            strides = tuple(
                itemsize * math.prod(shape[k + 1:]) for k in range(len(shape))
            )
        pad = 5 - len(shape)
        self._owner = owner
        self.__cuda_array_interface__ = {
            "shape": (*shape[:2], *(1,) * pad, *shape[2:]),
            "strides": (*strides[:2], *(itemsize,) * pad, *strides[2:]),
            "typestr": interface["typestr"],
            "data": interface["data"],
            "version": 3,
            "stream": interface.get("stream"),
        }


class _Operand:
    """A validated operand: its shape and dtype, and a 5-D lifted array for the kernels."""

    def __init__(self, x: object, name: str) -> None:
        if simulated():
            if not isinstance(x, np.ndarray):
                raise TypeError(
                    f"{name} must be a NumPy array under the CUDA simulator, got {type(x).__name__}"
                )
            shape, dtype = x.shape, x.dtype
        else:
            interface = getattr(x, "__cuda_array_interface__", None)
            if interface is None:
                raise TypeError(
                    f"{name} must be a CUDA device array (exposing __cuda_array_interface__), "
                    f"got {type(x).__name__}"
                )
            shape, dtype = tuple(interface["shape"]), np.dtype(interface["typestr"])
        if dtype not in DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64, got {dtype}")
        if not 2 <= len(shape) <= 2 + v.MAX_SPATIAL_DIMS:
            raise ValueError(
                f"{name} must have 2 to {2 + v.MAX_SPATIAL_DIMS} dimensions "
                f"(C_out, C_in, *kernel), got shape {shape}"
            )
        if 0 in shape:
            raise ValueError(f"{name} must not have an empty dimension, got shape {shape}")
        self.shape = shape
        self.ndim = len(shape)
        self.dtype = dtype
        self._source = x

    def lifted(self) -> Any:
        """The operand as a 5-D array (a copy under the simulator, a view on a GPU)."""
        pad = (None,) * (5 - self.ndim)
        if simulated():
            return np.ascontiguousarray(self._source[(slice(None), slice(None), *pad)])
        interface = self._source.__cuda_array_interface__
        return cuda.as_cuda_array(_Lifted(self._source, interface, self.shape))


def _same_dtype(a: _Operand, a_name: str, b: _Operand, b_name: str) -> None:
    if a.dtype != b.dtype:
        raise TypeError(
            f"{a_name} and {b_name} must have the same dtype, got {a.dtype} and {b.dtype}"
        )
    v.same_spatial_rank(a, a_name, b, b_name)


def _lift(k: tuple[int, ...]) -> tuple[int, ...]:
    return (1,) * (3 - len(k)) + tuple(k)


def _empty(shape: tuple[int, ...], dtype: np.dtype) -> Any:
    return np.empty(shape, dtype=dtype) if simulated() else cuda.device_array(shape, dtype=dtype)


def _launch(kernel: Any, total: int, *args: object) -> None:
    blocks = max(1, -(-total // _THREADS))
    with warnings.catch_warnings():
        # Small problems leave the GPU idle; that is expected, not worth a warning.
        for category in _PERFORMANCE_WARNINGS:
            warnings.simplefilter("ignore", category)
        kernel[blocks, _THREADS](*args, total)


# ------------------------------------------------------------------------- the protocol


def compose(f2: Any, f1: Any) -> Any:
    """G = F2 ⊛ F1: F2 (C2, C1, *K2), F1 (C1, C0, *K1) -> G (C2, C0, *(K1 + K2 - 1)).

    G[o, i] = Σ_m full_convolution(F2[o, m], F1[m, i]).
    """
    a = _Operand(f2, "F2")
    b = _Operand(f1, "F1")
    _same_dtype(a, "F2", b, "F1")
    v.chain_channels(a, "F2", b, "F1")
    kt = tuple(x + y - 1 for x, y in zip(b.shape[2:], a.shape[2:]))
    g = _empty((a.shape[0], b.shape[1], *kt), a.dtype)
    _launch(_compose_kernel, math.prod(g.shape), a.lifted(), b.lifted(),
            g.reshape(*g.shape[:2], *_lift(kt)))
    return g


def correlate_outer(f2: Any, y: Any, k1: tuple[int, ...]) -> Any:
    """X = Aᵀ·Y: F2 (C2, C1, *K2), Y (C2, C0, *Kt) -> X (C1, C0, *k1), Kt = k1 + K2 - 1.

    X[m, i, s] = Σ_{o, t} F2[o, m, t - s] · Y[o, i, t].
    """
    a = _Operand(f2, "F2")
    b = _Operand(y, "Y")
    _same_dtype(a, "F2", b, "Y")
    k1 = v.kernel_tuple(k1, a.ndim - 2, "k1")
    kt = tuple(x + z - 1 for x, z in zip(k1, a.shape[2:]))
    if b.shape[0] != a.shape[0] or b.shape[2:] != kt:
        raise ValueError(f"Y must have shape ({a.shape[0]}, C0, *{kt}) for F2 {a.shape} and "
                         f"k1 {k1}, got {b.shape}")
    x = _empty((a.shape[1], b.shape[1], *k1), a.dtype)
    _launch(_correlate_kernel, math.prod(x.shape), a.lifted(), b.lifted(),
            x.reshape(*x.shape[:2], *_lift(k1)))
    return x


def gram_outer(f2: Any, k1: tuple[int, ...]) -> Any:
    """M = AᵀA (C1·|k1|, C1·|k1|), rows/columns (m, s) in C order:

    M[(m, s), (m', s')] = Σ_{o, u} F2[o, m, u] · F2[o, m', u + s - s'].
    M = Mᵀ bit for bit: the two mirrored entries sum the same products in the same order.
    """
    a = _Operand(f2, "F2")
    k1 = v.kernel_tuple(k1, a.ndim - 2, "k1")
    n = a.shape[1] * math.prod(k1)
    out = _empty((n, n), a.dtype)
    _launch(_gram_kernel, n * n, a.lifted(), out, *_lift(k1))
    return out


def gram_outer_rows(f2: Any, k1: tuple[int, ...]) -> Any:
    """N = A·Aᵀ (C2·|Kt|, C2·|Kt|), rows/columns (o, t) in C order:

    N[(o, t), (o', t')] = Σ_{m, s} F2[o, m, t - s] · F2[o', m, t' - s].
    N = Nᵀ bit for bit: the two mirrored entries sum the same products in the same order.
    """
    a = _Operand(f2, "F2")
    k1 = v.kernel_tuple(k1, a.ndim - 2, "k1")
    n = a.shape[0] * math.prod(x + z - 1 for x, z in zip(k1, a.shape[2:]))
    out = _empty((n, n), a.dtype)
    _launch(_gram_rows_kernel, n * n, a.lifted(), out, *_lift(k1))
    return out
