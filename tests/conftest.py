"""Shared fixtures and per-dtype tolerances."""

from __future__ import annotations

import numpy as np
import pytest

#: Norm-relative tolerances per dtype for results that should equal the float64 reference.
RTOL = {np.dtype(np.float32): 5e-6, np.dtype(np.float64): 1e-12}


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64 (absolute when expected is zero)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    scale = np.linalg.norm(e)
    err = np.linalg.norm(a - e)
    return float(err / scale) if scale > 0 else float(err)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20161)


@pytest.fixture(scope="module")
def one_torch_thread() -> object:
    """One intra-op torch thread per module: tiny matrices need no thread pool on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
