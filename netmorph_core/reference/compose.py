"""NumPy reference of the composition operator ⊛ and its zero-padding helper.

compose(F2, F1)[o, i] = Σ_m full_convolution(F2[o, m], F1[m, i]):
the single kernel of "cross-correlate with F1, then with F2" (DESIGN.md §2).
"""

from __future__ import annotations

import itertools

import numpy as np


def compose_ref(f2: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """F2 ⊛ F1 for F2 (C2, C1, *K2) and F1 (C1, C0, *K1) -> G (C2, C0, *(K1 + K2 - 1)).

    One GEMM per tap of F2, accumulated into the output window that tap shifts F1 to.
    Computed in the inputs' common dtype.
    """
    dtype = np.result_type(f2, f1)
    k2 = f2.shape[2:]
    k1 = f1.shape[2:]
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    g = np.zeros((f2.shape[0], f1.shape[1], *kt), dtype=dtype)
    f1c = f1.astype(dtype, copy=False)
    for tap in itertools.product(*(range(k) for k in k2)):
        window = tuple(slice(t, t + k) for t, k in zip(tap, k1))
        g[(slice(None), slice(None), *window)] += np.tensordot(
            f2[(slice(None), slice(None), *tap)].astype(dtype, copy=False), f1c, axes=(1, 0)
        )
    return g


def pad_centered(g: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """G zero-padded symmetrically to spatial ``size`` (each size - K must be even and >= 0)."""
    pads = [(0, 0), (0, 0)]
    for k, t in zip(g.shape[2:], size):
        extra = t - k
        if extra < 0 or extra % 2:
            raise ValueError(f"cannot pad a kernel of size {g.shape[2:]} centred to {size}")
        pads.append((extra // 2, extra // 2))
    return np.pad(g, pads)


def pad_at(g: np.ndarray, size: tuple[int, ...], offset: tuple[int, ...]) -> np.ndarray:
    """G placed at ``offset`` inside a zero kernel of spatial ``size``."""
    out = np.zeros((*g.shape[:2], *size), dtype=g.dtype)
    window = tuple(slice(o, o + k) for o, k in zip(offset, g.shape[2:]))
    out[(slice(None), slice(None), *window)] = g
    return out


def swap_channels(f: np.ndarray) -> np.ndarray:
    """F with its two channel axes exchanged: (C_out, C_in, *K) -> (C_in, C_out, *K).

    Full convolution commutes, so (F2 ⊛ F1)^T = F1^T ⊛ F2^T with ^T this swap.
    """
    return np.swapaxes(f, 0, 1)
