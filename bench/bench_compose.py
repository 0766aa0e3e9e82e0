"""Compose F2 ⊛ F1 in float32 on the CPU: every available backend against the composition
written with ``torch.nn.functional.conv2d`` (one group per shape)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _bench_util import (
    FULL_ONLY,
    KERNEL_IDS,
    KERNELS,
    available_backends,
    backend,
    compose_reference,
    filters,
    rel_err,
    run,
    torch_compose,
)

CHANNELS = [64, 256, pytest.param(512, marks=FULL_ONLY)]
ROUNDS = {64: 20, 256: 5, 512: 3}
BASELINE = "torch conv2d"


@pytest.mark.parametrize("impl", [BASELINE, *available_backends("cpu")])
@pytest.mark.parametrize(("k1", "k2"), KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("c", CHANNELS, ids=lambda c: f"C{c}")
def test_compose(benchmark, c, k1, k2, impl):
    f2, f1 = filters(c, k1, k2, np.float32)
    info = {"shape": f"C={c} K1={k1} K2={k2}", "dtype": "float32"}
    group = f"compose {info['shape']}"
    if impl == BASELINE:
        t2, t1 = torch.from_numpy(f2), torch.from_numpy(f1)
        with torch.inference_mode():
            fn = lambda: torch_compose(t2, t1)  # noqa: E731
            g = run(benchmark, fn, group=group, impl=impl, baseline=True, rounds=ROUNDS[c], **info)
        g = g.numpy()
    else:
        module = backend(impl)
        if hasattr(module, "use_transform"):
            info["method"] = "transform" if module.use_transform(f2.shape, f1.shape) else "direct"
        fn = lambda: module.compose(f2, f1)  # noqa: E731
        g = run(benchmark, fn, group=group, impl=impl, baseline=False, rounds=ROUNDS[c], **info)
    benchmark.extra_info["rel_err"] = rel_err(g, compose_reference(c, k1, k2))
