"""What the public ``netmorph_core.compose`` adds to the bare native kernel, paired.

    python bench/compose_overhead.py                 # the shapes of docs/kernels.md
    python bench/compose_overhead.py 64,3,1,1,1000   # C,K1,K2,threads,rounds ...

Float32 inputs as in ``bench_compose.py``. Every round calls the kernel
(``backends.native.compose``), the public ``compose`` on the same threads and the native call
of ``compose`` on an input outside the unscaled exponent range (which reads both inputs and
stops: the cost of the finiteness and exponent check alone), each round starting with another
of the three. Printed: the minima over the rounds, the overhead of the minima, the median over
the rounds of the per-round ratio compose / kernel, and the reading's share of the kernel.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import numpy as np
from _bench_util import filters

import netmorph_core as nm
from netmorph_core._scaling import SAFE_EXPONENT
from netmorph_core.backends import native

#: (C, K1, K2, threads, rounds): many rounds, since the minima and medians are kept.
SHAPES = [
    (64, 1, 3, 1, 1000),
    (64, 3, 1, 1, 1000),
    (64, 3, 3, 1, 300),
    (256, 3, 1, 1, 200),
    (256, 1, 3, 1, 200),
    (256, 3, 1, 2, 200),
    (256, 1, 3, 2, 200),
    (256, 3, 3, 1, 40),
    (512, 3, 1, 1, 40),
    (512, 1, 3, 1, 30),
    (512, 3, 1, 2, 40),
    (512, 1, 3, 2, 30),
]


def measure(c: int, k1: int, k2: int, threads: int, rounds: int) -> str:
    """One line of results for F2 (C, C, K2, K2), F1 (C, C, K1, K1) on ``threads`` threads."""
    f2, f1 = filters(c, k1, k2, np.float32)
    os.environ[native.ENV_THREADS] = str(threads)  # the public compose's threads
    far = np.ldexp(f2, 2 * SAFE_EXPONENT)  # outside the range: the native call reads and stops
    calls: dict[str, Callable[[], object]] = {
        "kernel": lambda: native.compose(f2, f1, threads=threads),
        "compose": lambda: nm.compose(f2, f1, backend="native"),
        "reading": lambda: native.compose_in_range(far, f1, SAFE_EXPONENT),
    }
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    kernel, public, reading = (min(times[n]) for n in names)
    ratio = float(np.median(np.array(times["compose"]) / np.array(times["kernel"])))
    return (
        f"C={c} {k1}/{k2}, {threads} thread(s), {rounds} rounds: kernel {kernel * 1e3:.4g} ms, "
        f"compose {public * 1e3:.4g} ms ({100 * (public / kernel - 1):+.1f}%; median of the "
        f"per-round ratios {100 * (ratio - 1):+.1f}%), reading both inputs "
        f"{reading * 1e3:.3g} ms ({100 * reading / kernel:.1f}% of the kernel)"
    )


def main(argv: list[str]) -> int:
    shapes = [tuple(int(v) for v in arg.split(",")) for arg in argv] or SHAPES
    for shape in shapes:
        print(measure(*shape), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
