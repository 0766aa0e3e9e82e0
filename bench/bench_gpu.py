"""GPU benchmarks (skipped without CUDA): compose on every available CUDA backend against the
cuDNN conv2d composition (float32), and the structured deconvolution against
``torch.linalg.lstsq`` on the GPU (float64). Every timed call ends with a device
synchronisation; the CUDA-event time of the same call is kept in ``extra_info["cuda_ms"]``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from _bench_util import (
    FULL_ONLY,
    KERNEL_IDS,
    KERNELS,
    K,
    available_backends,
    backend,
    compose_reference,
    deconv_problem,
    deconv_residual,
    filters,
    from_columns,
    rel_err,
    run,
    torch_compose,
)

from netmorph_core.solver import solve_deconv

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

CHANNELS = [64, 256, pytest.param(512, marks=FULL_ONLY)]
DECONV_CHANNELS = [64, 128, pytest.param(256, marks=FULL_ONLY)]
ROUNDS = {"compose": 20, "deconv": 5}
EVENT_REPEATS = 10


def synchronized(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` followed by a wait for the device, so that a wall-clock timer sees its work."""

    def call() -> Any:
        out = fn()
        torch.cuda.synchronize()
        return out

    return call


def cuda_ms(fn: Callable[[], Any]) -> float:
    """Mean milliseconds of ``fn`` between two CUDA events over EVENT_REPEATS calls."""
    fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(EVENT_REPEATS):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / EVENT_REPEATS


@pytest.mark.parametrize("impl", ["torch conv2d (cuDNN)", *available_backends("cuda")])
@pytest.mark.parametrize(("k1", "k2"), KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("c", CHANNELS, ids=lambda c: f"C{c}")
def test_compose_gpu(benchmark, c, k1, k2, impl):
    f2, f1 = filters(c, k1, k2, np.float32)
    info = {"shape": f"C={c} K1={k1} K2={k2}", "dtype": "float32", "device": "cuda"}
    group = f"gpu compose {info['shape']}"
    rounds = ROUNDS["compose"]
    if impl.startswith("torch"):
        # Plain FP32 as in the backends: PyTorch lets cuDNN use TF32 unless told otherwise.
        torch.backends.cudnn.allow_tf32 = False
        t2, t1 = torch.from_numpy(f2).cuda(), torch.from_numpy(f1).cuda()
        with torch.inference_mode():
            fn = synchronized(lambda: torch_compose(t2, t1))
            g = run(benchmark, fn, group=group, impl=impl, baseline=True, rounds=rounds, **info)
            benchmark.extra_info["cuda_ms"] = cuda_ms(fn)
        g = g.cpu().numpy()
    else:
        import cupy

        module = backend(impl)
        d2, d1 = cupy.asarray(f2), cupy.asarray(f1)
        fn = synchronized(lambda: module.compose(d2, d1))
        g = run(benchmark, fn, group=group, impl=impl, baseline=False, rounds=rounds, **info)
        benchmark.extra_info["cuda_ms"] = cuda_ms(fn)
        g = cupy.asnumpy(g)
    benchmark.extra_info["rel_err"] = rel_err(g, compose_reference(c, k1, k2))


@pytest.mark.parametrize("impl", ["torch lstsq (GPU)", *available_backends("cuda")])
@pytest.mark.parametrize("side", ["outer", "inner"])
@pytest.mark.parametrize("c", DECONV_CHANNELS, ids=lambda c: f"C{c}")
def test_deconv_gpu(benchmark, c, side, impl):
    g_tilde, factor, a, b = deconv_problem(c, side)
    info = {
        "shape": f"C={c} K1=K2={K} solve {'F1' if side == 'outer' else 'F2'}",
        "dtype": "float64",
        "device": "cuda",
    }
    group = f"gpu deconv {info['shape']}"
    rounds = ROUNDS["deconv"]
    if impl.startswith("torch"):
        ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
        fn = synchronized(lambda: torch.linalg.lstsq(ta, tb).solution)
        cols = run(benchmark, fn, group=group, impl=impl, baseline=True, rounds=rounds, **info)
        x = from_columns(cols.cpu().numpy(), c, side)
    else:
        import cupy

        module = backend(impl)
        dg, df = cupy.asarray(g_tilde), cupy.asarray(factor)
        fn = synchronized(lambda: solve_deconv(module, dg, df, side, (K, K)))
        name = f"solver[{impl}]"
        x = cupy.asnumpy(
            run(benchmark, fn, group=group, impl=name, baseline=False, rounds=rounds, **info)
        )
    benchmark.extra_info["cuda_ms"] = cuda_ms(fn)
    benchmark.extra_info["residual"] = deconv_residual(g_tilde, factor, side, x)
