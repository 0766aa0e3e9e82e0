"""Compose F2 ⊛ F1 in float32 on the CPU against the composition written with
``torch.nn.functional.conv2d`` (one group per shape).

``test_compose``: every available CPU backend at its default threads.

``test_compose_threads``: the native backend beside torch at 1 and at 2 threads, and at 2
threads while another process keeps one core busy (:func:`busy_core`, a bounded busy loop
started for the test and stopped after it). Each group times torch (the baseline), the bare
native kernel (``backends.native.compose``) and the public ``netmorph_core.compose`` on the
same threads; under load also the native kernel on 1 thread and with its own thread choice.
``bench/compose_table.py`` runs these and prints the summary table of ``docs/kernels.md``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

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

import netmorph_core as nm
from netmorph_core.backends import native

CHANNELS = [64, 256, pytest.param(512, marks=FULL_ONLY)]
ROUNDS = {64: 20, 256: 5, 512: 3}
BASELINE = "torch conv2d"

#: Thread settings of test_compose_threads: (name, threads, whether one core is kept busy).
SETTINGS = {"1 thread": (1, False), "2 threads": (2, False), "2 threads, 1 core busy": (2, True)}
#: Implementations timed in each setting; "auto" lets the native backend pick its threads.
IMPLS = {
    "1 thread": ("torch", "native", "compose"),
    "2 threads": ("torch", "native", "compose"),
    "2 threads, 1 core busy": ("torch", "native", "native 1 thread", "native auto", "compose"),
}
THREAD_ROUNDS = {64: 30, 256: 7, 512: 3}
#: The busy loop ends by itself after this many seconds should the fixture not stop it.
BUSY_SECONDS = 600


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


@pytest.fixture
def busy_core(request: pytest.FixtureRequest) -> Iterator[None]:
    """With ``request.param`` true: a Python busy loop pinned to the last core this process
    may use, for the test's duration (it exits by itself after BUSY_SECONDS)."""
    if not request.param:
        yield
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("the busy-core setting needs two cores")
    loop = (
        f"import time\nend = time.monotonic() + {BUSY_SECONDS}\nwhile time.monotonic() < end: pass"
    )
    proc = subprocess.Popen([sys.executable, "-c", loop])
    try:
        os.sched_setaffinity(proc.pid, {cores[-1]})
        time.sleep(0.2)  # running before the first round
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _timed(impl: str, threads: int, f2: np.ndarray, f1: np.ndarray) -> Callable[[], Any]:
    """The call timed for ``impl`` on ``threads`` threads."""
    if impl == "torch":
        t2, t1 = torch.from_numpy(f2), torch.from_numpy(f1)
        return lambda: torch_compose(t2, t1)
    if impl == "native":
        return lambda: native.compose(f2, f1, threads=threads)
    if impl == "native 1 thread":
        return lambda: native.compose(f2, f1, threads=1)
    if impl == "native auto":
        return lambda: native.compose(f2, f1)
    return lambda: nm.compose(f2, f1, backend="native")


@pytest.mark.parametrize(
    ("setting", "impl", "busy_core"),
    [(s, i, SETTINGS[s][1]) for s in SETTINGS for i in IMPLS[s]],
    indirect=["busy_core"],
    ids=[f"{s}-{i}" for s in SETTINGS for i in IMPLS[s]],
)
@pytest.mark.parametrize(("k1", "k2"), KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("c", CHANNELS, ids=lambda c: f"C{c}")
def test_compose_threads(benchmark, monkeypatch, c, k1, k2, setting, impl, busy_core):
    threads = SETTINGS[setting][0]
    # the public compose runs the native kernel on the setting's threads
    monkeypatch.setenv(native.ENV_THREADS, str(threads))
    if impl == "native auto":
        monkeypatch.delenv(native.ENV_THREADS)
    f2, f1 = filters(c, k1, k2, np.float32)
    info = {"shape": f"C={c} K1={k1} K2={k2}", "dtype": "float32", "setting": setting}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            g = run(
                benchmark,
                _timed(impl, threads, f2, f1),
                group=f"compose {info['shape']}, {setting}",
                impl=impl,
                baseline=impl == "torch",
                rounds=THREAD_ROUNDS[c],
                **info,
            )
    finally:
        torch.set_num_threads(previous)
    benchmark.extra_info["rel_err"] = rel_err(np.asarray(g), compose_reference(c, k1, k2))
