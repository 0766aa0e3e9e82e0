"""Depth and subnet morphs at real layer widths, float64 on the CPU, each group timed against
its baseline in one run: the general (or practical) morph of the same layer.

- stable 3×3 → (3×3, 1×1) at width C against the general morph of the same layer;
- 3×3 → (3×3, 3×3) at width 3C (one-sided exact) and 2C (the identity-augmented pair, general
  and stable) against the practical morph;
- 5×5 → (3×3, 3×3) at width 2C, the bilinear (Levenberg–Marquardt) solver against the
  practical morph;
- morph_subnet(G, [(C, 1), (C, 3), (None, 1)]) general against practical;
- the ViT patch embedding (192, 3, 16, 16) with k2 = 1 against a C = 256 3/1 general morph;
- a 512 → 1000 Linear deepened to width 1024, with the float32 and bfloat16 noise ratios
  (child's deviation over the parent's own rounding, :mod:`netmorph_core.morph.conditioning`).
"""

from __future__ import annotations

import numpy as np
import pytest
from _bench_util import FULL_ONLY, run

from netmorph_core.morph import morph_depth, morph_subnet
from netmorph_core.morph.conditioning import noise_ratio
from netmorph_core.morph.gauge import below_floor
from netmorph_core.reference import pad_centered


def _layer(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed).standard_normal(shape)
    return g / np.sqrt(np.prod(shape[1:]))


def _record(benchmark, res, g: np.ndarray) -> None:
    kt = tuple(
        sum(k[d] for k in res.kernel_sizes) - len(res.kernel_sizes) + 1 for d in range(g.ndim - 2)
    )
    g_tilde = pad_centered(g, kt)
    benchmark.extra_info["residual"] = res.residual
    benchmark.extra_info["nonzero_ratio"] = res.nonzero_ratio
    benchmark.extra_info["below_floor"] = int(sum(below_floor(f, 0.05).sum() for f in res.filters))
    for dtype in ("float32", "bfloat16"):
        benchmark.extra_info[f"noise_ratio_{dtype}"] = noise_ratio(g_tilde, res.filters, dtype)


def _morph_bench(benchmark, g: np.ndarray, fn, *, shape: str, group: str, **run_args):
    """Time the morph ``fn`` of ``g`` in ``group`` with :func:`run` and record its residual,
    non-zero ratio, entries below the floor and noise ratios; returns the MorphResult."""
    res = run(benchmark, fn, group=group, shape=shape, dtype="float64", **run_args)
    _record(benchmark, res, g)
    return res


@pytest.mark.parametrize("method", ["general", "stable"])
@pytest.mark.parametrize("c", [64, pytest.param(256, marks=FULL_ONLY)], ids=lambda c: f"C{c}")
def test_stable_3_into_3_1(benchmark, c, method):
    g = _layer((c, c, 3, 3))
    fn = lambda: morph_depth(g, c, 3, 1, method=method, seed=0)  # noqa: E731
    shape = f"G ({c}, {c}, 3, 3) -> (3x3, 1x1) width {c}"
    _morph_bench(
        benchmark,
        g,
        fn,
        shape=shape,
        group=f"depth {shape}",
        impl=method,
        baseline=method == "general",
        rounds=2,
    )


#: (C, width factor, method). Width 2C: no one-sided solve is exact; the general and stable
#: morphs take the identity-augmented pair (:mod:`netmorph_core.morph.augmented`). Width 3C:
#: one-sided exact.
BILINEAR_CASES = [
    *((16, f, m) for f in (2, 3) for m in ("practical", "general", "stable")),
    *(
        pytest.param(c, 2, m, marks=FULL_ONLY)
        for c in (64, 128, 256)
        for m in ("practical", "general", "stable")
    ),
    *(pytest.param(64, 3, m, marks=FULL_ONLY) for m in ("practical", "general", "stable")),
]


@pytest.mark.parametrize(("c", "factor", "method"), BILINEAR_CASES, ids=str)
def test_3_into_3_3(benchmark, c, factor, method):
    g = _layer((c, c, 3, 3))
    width = factor * c
    fn = lambda: morph_depth(  # noqa: E731
        g, width, 3, 3, method=method, seed=0, max_iter=30, allow_approximate=True
    )
    shape = f"G ({c}, {c}, 3, 3) -> (3x3, 3x3) width {width}"
    _morph_bench(
        benchmark,
        g,
        fn,
        shape=shape,
        group=f"depth {shape}",
        impl=method,
        baseline=method == "practical",
        rounds=1,
    )


#: The bilinear regime proper: a 5×5 G into two 3×3 factors at width 2C fits neither factor
#: (no identity-augmented pair) and neither one-sided solve is exact; two alternating solves,
#: then Levenberg–Marquardt on both factors (:mod:`netmorph_core.morph.bilinear`) while G~
#: has at most 4096 entries (C ≤ 12), against the practical morph.
BILINEAR_2C_CASES = [
    *((c, m) for c in (4, 8) for m in ("practical", "general", "stable")),
]


@pytest.mark.parametrize(("c", "method"), BILINEAR_2C_CASES, ids=str)
def test_bilinear_width_2c(benchmark, c, method):
    g = _layer((c, c, 5, 5))
    fn = lambda: morph_depth(  # noqa: E731
        g, 2 * c, 3, 3, method=method, seed=0, max_iter=100, allow_approximate=True
    )
    shape = f"G ({c}, {c}, 5, 5) -> (3x3, 3x3) width {2 * c}"
    res = _morph_bench(
        benchmark,
        g,
        fn,
        shape=shape,
        group=f"bilinear {shape}",
        impl=method,
        baseline=method == "practical",
        rounds=1,
    )
    benchmark.extra_info["iterations"] = res.iterations


@pytest.mark.parametrize("method", ["practical", "general"])
@pytest.mark.parametrize("c", [32, pytest.param(128, marks=FULL_ONLY)], ids=lambda c: f"C{c}")
def test_subnet_1_3_1(benchmark, c, method):
    g = _layer((c, c, 3, 3))
    layers = [(c, 1), (c, 3), (None, 1)]
    fn = lambda: morph_subnet(g, layers, method=method, seed=0, allow_approximate=True)  # noqa: E731
    shape = f"G ({c}, {c}, 3, 3) -> [(C,1),(C,3),(C,1)]"
    _morph_bench(
        benchmark,
        g,
        fn,
        shape=shape,
        group=f"subnet {shape}",
        impl=method,
        baseline=method == "practical",
        rounds=1,
    )


@pytest.mark.parametrize("layer", ["C256 3/1", "ViT patch 16/1"])
def test_vit_patch_embedding(benchmark, layer):
    if layer == "C256 3/1":
        g, width, k1 = _layer((256, 256, 3, 3)), 256, 3
    else:
        g, width, k1 = _layer((192, 3, 16, 16)), 192, 16
    fn = lambda: morph_depth(g, width, k1, 1, method="general", seed=0)  # noqa: E731
    shape = f"G {g.shape} k1={k1} k2=1 width {width}"
    _morph_bench(
        benchmark,
        g,
        fn,
        shape=shape,
        group="depth ViT patch embedding vs C=256 3/1",
        impl=layer,
        baseline=layer == "C256 3/1",
        rounds=2,
    )


@pytest.mark.parametrize("method", ["general", "stable"])
def test_linear_512_1000_width_1024(benchmark, method):
    g = _layer((1000, 512))
    fn = lambda: morph_depth(g, 1024, method=method, seed=0)  # noqa: E731
    shape = "Linear 512 -> 1000 width 1024"
    _morph_bench(
        benchmark,
        g,
        fn,
        shape=shape,
        group=f"depth {shape}",
        impl=method,
        baseline=method == "general",
        rounds=1,
    )


#: Grouped layers, practical morph: every group solved in one stacked call (depthwise: C
#: single-channel problems) against the general morph of the same layer (one stacked solve is
#: exact at k2 = 1). At k2 = 3 the general morph is in the bilinear regime per group (minutes),
#: so the practical morph is timed alone.
GROUPED_CASES = [
    *(((256, 1, 3, 3), 256, 1, m) for m in ("general", "practical")),
    *(((256, 8, 3, 3), 32, 1, m) for m in ("general", "practical")),
    ((256, 8, 3, 3), 32, 3, "practical"),
]


@pytest.mark.parametrize(("shape", "groups", "k2", "method"), GROUPED_CASES, ids=str)
def test_grouped_practical(benchmark, shape, groups, k2, method):
    g = _layer(shape)
    fn = lambda: morph_depth(  # noqa: E731
        g, shape[0], 3, k2, groups=groups, method=method, seed=0, allow_approximate=True
    )
    label = f"G {shape} groups={groups} -> (3x3, {k2}x{k2}) width {shape[0]}"
    # grouped filters: the ungrouped noise ratios of _record do not apply
    res = run(
        benchmark,
        fn,
        group=f"grouped {label}",
        shape=label,
        dtype="float64",
        impl=method,
        baseline=method == "general" or k2 == 3,
        rounds=2,
    )
    benchmark.extra_info["residual"] = res.residual
    benchmark.extra_info["nonzero_ratio"] = res.nonzero_ratio
