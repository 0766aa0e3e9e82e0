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

import netmorph_core as nm
from netmorph_core.reference import outer_operator, pad_centered
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


GROUPED = [128, pytest.param(256, marks=FULL_ONLY)]


@pytest.mark.parametrize("impl", ["numpy lstsq", "netmorph"])
@pytest.mark.parametrize("c", GROUPED, ids=lambda c: f"C{c}")
def test_grouped_deconv_pointwise_factor(benchmark, c, impl):
    """G~ = F2 ⊛ X with a 1×1 F2 in 2 groups of C channels (ResNeSt's grouped 3×3 deepened
    into 3×3 then 1×1): netmorph solves tap by tap; the baseline solves each group's explicit
    (C·9) × (C·9) operator with ``numpy.linalg.lstsq`` (built outside the timing)."""
    groups, rng = 2, np.random.default_rng(0)
    g = rng.standard_normal((groups * c, c // 2, K, K))
    f2 = rng.standard_normal((groups * c, c, 1, 1))
    a = [outer_operator(fj, (K, K)) for fj in np.split(f2, groups)]
    b = [
        pad_centered(gj, (K, K)).transpose(0, 2, 3, 1).reshape(-1, c // 2)
        for gj in np.split(g, groups)
    ]
    info = {"shape": f"groups=2 C={c} 1x1 F2, solve 3x3 X", "dtype": "float64"}
    group = f"grouped deconv {info['shape']}"
    if impl == "numpy lstsq":
        fn = lambda: [np.linalg.lstsq(aj, bj, rcond=None)[0] for aj, bj in zip(a, b)]  # noqa: E731
        run(benchmark, fn, group=group, impl=impl, baseline=True, rounds=2, **info)
    else:
        fn = lambda: nm.deconv(g, outer=f2, kernel_size=K, groups=groups)  # noqa: E731
        x = run(benchmark, fn, group=group, impl=impl, baseline=False, rounds=2, **info)
        benchmark.extra_info["residual"] = float(nm.residual(g, f2, x, groups=groups))
