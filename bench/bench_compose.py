"""Compose F2 ⊛ F1 in float32 on the CPU against the composition written with
``torch.nn.functional.conv2d`` (one group per shape).

``test_compose``: every available CPU backend at its default threads.

``test_compose_threads``: the native backend beside torch at 1 and at 2 threads, and at 2
threads while another process keeps one core busy (:func:`busy_core`, a bounded busy loop
started for the test and stopped after it). Each group times torch (the baseline) and the bare
native kernel (``backends.native.compose``) on the same threads; under load also the native
kernel on 1 thread and with its own thread choice.

``test_compose_paired``: the same three settings, with torch, the bare kernel and the public
``netmorph_core.compose`` called in turn in every round (starting with a different one each
round), so that all three see the same machine load; the minimum of each over the rounds is
recorded (``paired_min``) and the median over the rounds of the per-round ratios torch / kernel
and compose / kernel (``paired_ratio``). On a machine shared with other work these are steadier
than medians of separate runs, which each catch their own stretch of the load.

``bench/compose_table.py`` runs these and prints the summary tables of ``docs/kernels.md``.
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
    "1 thread": ("torch", "native"),
    "2 threads": ("torch", "native"),
    "2 threads, 1 core busy": ("torch", "native", "native 1 thread", "native auto"),
}
THREAD_ROUNDS = {64: 30, 256: 7, 512: 3}
#: Rounds of test_compose_paired (each calls torch, the kernel and the public compose once):
#: many, since minima are kept; a tenth of them (at least 2, no warm-up round) for 5/5, whose
#: calls take seconds.
PAIRED_ROUNDS = {64: 200, 256: 30, 512: 10}
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
    return lambda: native.compose(f2, f1)


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


@pytest.mark.parametrize(
    ("setting", "busy_core"), [(s, SETTINGS[s][1]) for s in SETTINGS], indirect=["busy_core"]
)
@pytest.mark.parametrize(("k1", "k2"), KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("c", CHANNELS, ids=lambda c: f"C{c}")
def test_compose_paired(benchmark, monkeypatch, c, k1, k2, setting, busy_core):
    threads = SETTINGS[setting][0]
    # the public compose runs the native kernel on the same threads
    monkeypatch.setenv(native.ENV_THREADS, str(threads))
    f2, f1 = filters(c, k1, k2, np.float32)
    t2, t1 = torch.from_numpy(f2), torch.from_numpy(f1)
    calls: dict[str, Callable[[], Any]] = {
        "torch": lambda: torch_compose(t2, t1),
        "kernel": lambda: native.compose(f2, f1, threads=threads),
        "compose": lambda: nm.compose(f2, f1, backend="native"),
    }
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}

    def one_round() -> Any:
        first = len(times["kernel"]) % len(names)
        out = None
        for name in names[first:] + names[:first]:
            start = time.perf_counter()
            result = calls[name]()
            times[name].append(time.perf_counter() - start)
            out = result if name == "compose" else out
        return out

    long_calls = (k1, k2) == (5, 5)
    rounds = max(2, PAIRED_ROUNDS[c] // 10) if long_calls else PAIRED_ROUNDS[c]
    shape = f"C={c} K1={k1} K2={k2}"
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            g = run(
                benchmark,
                one_round,
                group=f"compose paired {shape}, {setting}",
                impl="torch, kernel, compose",
                baseline=False,
                rounds=rounds,
                warmup=0 if long_calls else 1,
                shape=shape,
                dtype="float32",
                paired_setting=setting,
            )
    finally:
        torch.set_num_threads(previous)
    kernel = np.array(times["kernel"])
    benchmark.extra_info["paired_min"] = {name: min(t) for name, t in times.items()}
    benchmark.extra_info["paired_ratio"] = {
        name: float(np.median(np.array(times[name]) / kernel)) for name in ("torch", "compose")
    }
    benchmark.extra_info["rel_err"] = rel_err(np.asarray(g), compose_reference(c, k1, k2))
