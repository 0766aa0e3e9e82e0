"""Helpers shared by the benchmark files: implementations to time, inputs, bookkeeping."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from netmorph_core.backends import backends, get_backend
from netmorph_core.reference import compose_ref, outer_operator, pad_centered, swap_channels

FULL_ONLY = pytest.mark.full_only
#: Kernel pairs (K1, K2) of the compose benchmarks.
KERNELS = [(3, 3), (1, 3), (3, 1), (5, 5)]
KERNEL_IDS = [f"K{a}x{b}" for a, b in KERNELS]
#: Kernel size of both factors in the deconvolution benchmarks.
K = 3
#: Pause before each implementation's rounds: longer than OpenBLAS's idle spin (2^28 cycles).
QUIESCE_SECONDS = 0.3


def available_backends(device: str) -> list[str]:
    """Registered backends that run here on ``device`` ("cpu" or "cuda")."""
    return [row.name for row in backends() if row.available and row.device == device]


def backend(name: str) -> Any:
    return get_backend(name)


def filters(c: int, k1: int, k2: int, dtype: type, seed: int = 0) -> tuple[np.ndarray, ...]:
    """F2 (C, C, K2, K2), F1 (C, C, K1, K1): He-scaled random filters."""
    rng = np.random.default_rng(seed)
    f2 = rng.standard_normal((c, c, k2, k2)) * np.sqrt(2.0 / (c * k2 * k2))
    f1 = rng.standard_normal((c, c, k1, k1)) * np.sqrt(2.0 / (c * k1 * k1))
    return f2.astype(dtype), f1.astype(dtype)


def torch_compose(f2: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
    """G = F2 ⊛ F1 written with conv2d: F1 as a batch of C0 images, F2 flipped."""
    k2 = f2.shape[-1]
    return F.conv2d(f1.transpose(0, 1), f2.flip(-1, -2), padding=k2 - 1).transpose(0, 1)


@functools.lru_cache(maxsize=4)
def compose_reference(c: int, k1: int, k2: int) -> np.ndarray:
    """The float64 composition of the float32 benchmark inputs."""
    f2, f1 = (torch.from_numpy(a.astype(np.float64)) for a in filters(c, k1, k2, np.float32))
    with torch.inference_mode():
        return torch_compose(f2, f1).numpy()


def rel_err(actual: Any, expected: np.ndarray) -> float:
    a = np.asarray(actual, dtype=np.float64)
    return float(np.linalg.norm(a - expected) / np.linalg.norm(expected))


@functools.lru_cache(maxsize=2)
def deconv_problem(c: int, side: str) -> tuple[np.ndarray, ...]:
    """G~ (C, C, 5, 5), the known factor (C, C, 3, 3), and the explicit A and B (columns
    one per right-hand side) of the same problem in the outer form, all float64."""
    f2, f1 = filters(c, K, K, np.float64)
    g = np.random.default_rng(1).standard_normal((c, c, K, K)) / c
    g_tilde = pad_centered(g, (2 * K - 1,) * 2)
    factor = f2 if side == "outer" else f1
    if side == "outer":
        outer, rhs = factor, g_tilde
    else:
        outer, rhs = swap_channels(factor), swap_channels(g_tilde)
    a = outer_operator(outer, (K, K))
    b = np.ascontiguousarray(np.moveaxis(rhs, 1, -1).reshape(-1, rhs.shape[1]))
    return g_tilde, factor, a, b


def from_columns(cols: np.ndarray, c: int, side: str) -> np.ndarray:
    """The least-squares columns of the outer form back to X (C, C, K, K)."""
    x = np.moveaxis(cols.reshape(c, K, K, c), -1, 1)
    return x if side == "outer" else swap_channels(x)


def deconv_residual(g_tilde: np.ndarray, factor: np.ndarray, side: str, x: np.ndarray) -> float:
    """‖factor ⊛ X − G~‖ / ‖G~‖ (X ⊛ factor for the inner side)."""
    pair = (factor, x) if side == "outer" else (x, factor)
    return float(np.linalg.norm(compose_ref(*pair) - g_tilde) / np.linalg.norm(g_tilde))


def run(
    benchmark: Any,
    fn: Callable[[], Any],
    *,
    group: str,
    impl: str,
    baseline: bool,
    rounds: int,
    warmup: int = 1,
    **info: Any,
) -> Any:
    """Time ``fn`` (one call per round) in ``group``; record what the summary table needs.

    Every implementation starts on quiet cores: the worker threads of the BLAS libraries timed
    before it (NumPy's and SciPy's OpenBLAS, PyTorch's) busy-wait for up to about 0.1 s after
    their last call and would otherwise take a core from its first rounds.
    """
    benchmark.group = group
    benchmark.extra_info.update({"impl": impl, "baseline": baseline, **info})
    time.sleep(QUIESCE_SECONDS)
    return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
