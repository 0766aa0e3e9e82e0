"""Deconvolution in float64 on the CPU, K1 = K2 = 3 (A is 25C × 9C, C right-hand sides): the
structured solver on every available backend against ``numpy.linalg.lstsq`` and
``torch.linalg.lstsq`` on the explicit matrix (built outside the timing), one group per shape
and side."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _bench_util import (
    FULL_ONLY,
    K,
    available_backends,
    backend,
    deconv_problem,
    deconv_residual,
    from_columns,
    run,
)

from netmorph_core.solver import solve_deconv

CHANNELS = [64, 128, pytest.param(256, marks=FULL_ONLY)]
ROUNDS = {64: 5, 128: 3, 256: 2}


@pytest.mark.parametrize("impl", ["numpy lstsq", "torch lstsq", *available_backends("cpu")])
@pytest.mark.parametrize("side", ["outer", "inner"])
@pytest.mark.parametrize("c", CHANNELS, ids=lambda c: f"C{c}")
def test_deconv(benchmark, c, side, impl):
    g_tilde, factor, a, b = deconv_problem(c, side)
    info = {
        "shape": f"C={c} K1=K2={K} solve {'F1' if side == 'outer' else 'F2'}",
        "dtype": "float64",
        "matrix": f"{a.shape[0]}x{a.shape[1]}, {b.shape[1]} right-hand sides",
    }
    group = f"deconv {info['shape']}"
    rounds = ROUNDS[c]
    if impl == "numpy lstsq":
        fn = lambda: np.linalg.lstsq(a, b, rcond=None)[0]  # noqa: E731
        cols = run(benchmark, fn, group=group, impl=impl, baseline=True, rounds=rounds, **info)
        x = from_columns(cols, c, side)
    elif impl == "torch lstsq":
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fn = lambda: torch.linalg.lstsq(ta, tb).solution  # noqa: E731
        cols = run(benchmark, fn, group=group, impl=impl, baseline=True, rounds=rounds, **info)
        x = from_columns(cols.numpy(), c, side)
    else:
        module = backend(impl)
        fn = lambda: solve_deconv(module, g_tilde, factor, side, (K, K))  # noqa: E731
        name = f"solver[{impl}]"
        x = run(benchmark, fn, group=group, impl=name, baseline=False, rounds=rounds, **info)
    benchmark.extra_info["residual"] = deconv_residual(g_tilde, factor, side, x)
