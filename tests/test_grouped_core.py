"""Grouped and depthwise filters in the numerical core, against the per-group reference."""

from __future__ import annotations

import numpy as np
import pytest

import netmorph_core as nm
from conftest import RTOL, rel_err
from netmorph_core.grouped import BLOCK_MAX_GROUPS
from netmorph_core.reference import (
    compose_grouped_ref,
    deconv_grouped_ref,
    pad_centered,
)

CPU = [b.name for b in nm.backends() if b.available and b.device == "cpu"]
# (groups, C2, C1, C0): grouped through the backend's block layout, grouped batched, depthwise
SHAPES = [(2, 4, 6, 4), (BLOCK_MAX_GROUPS + 2, 12, 12, 6), (8, 8, 8, 8), (6, 12, 6, 6)]


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("groups", "c2", "c1", "c0"), SHAPES)
def test_compose_matches_reference(backend, dtype, groups, c2, c1, c0, rng) -> None:
    f2 = rng.standard_normal((c2, c1 // groups, 3, 1)).astype(dtype)
    f1 = rng.standard_normal((c1, c0 // groups, 3, 3)).astype(dtype)
    before = (f2.copy(), f1.copy())
    out = nm.compose(f2, f1, groups=groups, backend=backend)
    ref = compose_grouped_ref(f2.astype(np.float64), f1.astype(np.float64), groups)
    assert out.shape == (c2, c0 // groups, 5, 3) and out.dtype == dtype
    assert rel_err(out, ref) <= RTOL[np.dtype(dtype)]
    assert np.array_equal(f2, before[0]) and np.array_equal(f1, before[1])


@pytest.mark.parametrize("side", ["outer", "inner"])
@pytest.mark.parametrize("with_init", [False, True])
@pytest.mark.parametrize(("groups", "c2", "c1", "c0"), SHAPES)
def test_deconv_matches_reference(side, with_init, groups, c2, c1, c0, rng) -> None:
    g = rng.standard_normal((c2, c0 // groups, 3, 3))
    if side == "outer":
        factor = rng.standard_normal((c2, c1 // groups, 3, 3))
        x_shape = (c1, c0 // groups, 1, 1)
    else:
        factor = rng.standard_normal((c1, c0 // groups, 1, 3))
        x_shape = (c2, c1 // groups, 3, 1)
    init = rng.standard_normal(x_shape) if with_init else None
    kwargs = {side: factor}
    x = nm.deconv(g, kernel_size=x_shape[2:], init=init, groups=groups, **kwargs)
    ref = deconv_grouped_ref(pad_centered(g, (3, 3)), factor, side, x_shape[2:], groups, init)
    assert x.shape == x_shape
    assert rel_err(x, ref) <= 1e-9


@pytest.mark.parametrize("side", ["outer", "inner"])
@pytest.mark.parametrize("with_init", [False, True])
@pytest.mark.parametrize(("groups", "c2", "c1", "c0"), SHAPES)
def test_pointwise_factor_deconv_matches_reference(side, with_init, groups, c2, c1, c0, rng):
    """A 1×1 factor is solved tap by tap (pinv(F) ⊗ I): the same least-squares solution as
    the reference's full operator, rank-deficient factors (C1 > C2) included."""
    g = rng.standard_normal((c2, c0 // groups, 3, 3))
    if side == "outer":
        factor = rng.standard_normal((c2, c1 // groups, 1, 1))
        x_shape = (c1, c0 // groups, 3, 3)
    else:
        factor = rng.standard_normal((c1, c0 // groups, 1, 1))
        x_shape = (c2, c1 // groups, 3, 3)
    init = rng.standard_normal(x_shape) if with_init else None
    x = nm.deconv(g, kernel_size=x_shape[2:], init=init, groups=groups, **{side: factor})
    ref = deconv_grouped_ref(pad_centered(g, (3, 3)), factor, side, x_shape[2:], groups, init)
    assert x.shape == x_shape
    assert rel_err(x, ref) <= 1e-9


def test_deconv_exact_when_solvable(rng) -> None:
    """Depthwise with multiplier 3: F2 (C, 3, 1×1) groups C, 3 unknowns ≥ 1 equation per tap."""
    g = rng.standard_normal((5, 1, 3, 3))
    f2 = rng.standard_normal((5, 3, 1, 1))
    x = nm.deconv(g, outer=f2, kernel_size=3, groups=5)
    assert nm.residual(g, f2, x, groups=5) <= 1e-12


@pytest.mark.parametrize("method", ["general", "practical"])
def test_morph_depth_depthwise_and_grouped(method, rng) -> None:
    dw = rng.standard_normal((6, 1, 3, 3))
    res = nm.morph_depth(dw, 6, 3, 1, groups=6, method=method, seed=0)
    assert [f.shape for f in res.filters] == [(6, 1, 3, 3), (6, 1, 1, 1)]
    assert nm.residual(dw, res.filters[1], res.filters[0], groups=6) <= 1e-10
    g = rng.standard_normal((8, 4, 3, 3))
    res = nm.morph_depth(g, 16, 3, 3, groups=2, method="practical", seed=0)
    assert [f.shape for f in res.filters] == [(16, 4, 3, 3), (8, 8, 3, 3)]
    assert res.exact and nm.residual(g, res.filters[1], res.filters[0], groups=2) <= 1e-10


def test_morph_depth_grouped_float32_and_expanding_depthwise(rng) -> None:
    dw = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    res = nm.morph_depth(dw, 12, 3, 3, groups=4, seed=1)  # 3 channels per group: 27 ≥ 25
    assert res.filters[0].dtype == np.float32 and res.nonzero_ratio == 1.0
    assert nm.residual(dw, res.filters[1], res.filters[0], groups=4) <= 1e-5


def test_morph_subnet_kernel_width_separable(rng) -> None:
    g = rng.standard_normal((8, 4, 3, 3))
    res = nm.morph_subnet(g, [(16, 3), (16, 1), (8, 1)], groups=2, seed=0)
    f0, f1, f2 = res.filters
    chain = nm.compose(f2, nm.compose(f1, f0, groups=2), groups=2)
    assert rel_err(chain, g) <= 1e-10
    grown = nm.morph_kernel(g, 5, groups=2).filter
    assert grown.shape == (8, 4, 5, 5) and np.array_equal(grown[:, :, 1:4, 1:4], g)
    f2 = rng.standard_normal((6, 4, 1, 1))
    for side in ("inner", "outer"):
        w = nm.morph_width(g, f2, 12, groups=2, zero_side=side, seed=0)
        assert w.f1.shape == (12, 4, 3, 3) and w.f2.shape == (6, 6, 1, 1)
        kept = w.permutation[~w.new_channels]
        assert np.array_equal(w.f1[~w.new_channels], g[kept])
        # every group keeps its own parent channels
        assert np.array_equal(np.flatnonzero(~w.new_channels) // 6, kept // 4)
        expected = nm.compose(f2, g, groups=2)
        assert rel_err(nm.compose(w.f2, w.f1, groups=2), expected) <= 1e-14
    sep = nm.separable_depth(g, groups=2)
    assert [f.shape for f in sep.filters] == [(32, 1, 3, 3), (8, 16, 1, 1)]
    assert sep.residual <= 1e-12


def test_bad_grouped_input_names_the_argument(rng) -> None:
    g = rng.standard_normal((8, 4, 3, 3))
    with pytest.raises(ValueError, match=r"width \(15\) must be divisible by groups=2"):
        nm.morph_depth(g, 15, 3, 1, groups=2)
    with pytest.raises(ValueError, match=r"F2's output channels \(4\) must be divisible"):
        nm.compose(rng.standard_normal((4, 4, 1, 1)), g, groups=3)
    with pytest.raises(ValueError, match="F2 has 2 input channels per group, 4 in all"):
        nm.compose(rng.standard_normal((4, 2, 1, 1)), g, groups=2)
    with pytest.raises(ValueError, match=r"width \(11\) must be divisible by groups=2"):
        nm.morph_width(g, rng.standard_normal((4, 4, 1, 1)), 11, groups=2)
    with pytest.raises(ValueError, match=r"layers\[0\]'s width \(9\) must be divisible"):
        nm.morph_subnet(g, [(9, 3), (8, 1)], groups=2)
    with pytest.raises(ValueError, match="multiplier must be at least"):
        nm.separable_depth(g, groups=2, multiplier=3)
    with pytest.raises(ValueError, match=r"G's output channels \(8\) must be divisible"):
        nm.deconv(g, outer=rng.standard_normal((8, 2, 1, 1)), kernel_size=3, groups=3)
    with pytest.raises(TypeError, match="groups must be a positive int"):
        nm.compose(g, g, groups=1.5)


@pytest.mark.parametrize(("groups", "c2", "c1", "c0"), SHAPES[:2])
def test_grouped_results_scale_exactly_by_powers_of_two(groups, c2, c1, c0, rng) -> None:
    f2 = rng.standard_normal((c2, c1 // groups, 3, 3))
    f1 = rng.standard_normal((c1, c0 // groups, 3, 3))
    g = nm.compose(f2, f1, groups=groups)
    k = 700  # 2^1400 overflows float64 in any Gram or norm of the unscaled inputs
    assert np.array_equal(nm.compose(np.ldexp(f2, k), np.ldexp(f1, -k), groups=groups), g)
    x = nm.deconv(g, outer=f2, kernel_size=3, groups=groups)
    big = nm.deconv(np.ldexp(g, k), outer=np.ldexp(f2, 2), kernel_size=3, groups=groups)
    assert np.array_equal(big, np.ldexp(x, k - 2))
    assert nm.residual(np.ldexp(g, k), np.ldexp(f2, k), f1, groups=groups) <= 1e-12
    with pytest.raises(ValueError, match="beyond the largest float32"):
        nm.compose(
            np.ldexp(f2, 100).astype(np.float32),
            np.ldexp(f1, 100).astype(np.float32),
            groups=groups,
        )


def test_grouped_memory_bound_before_work(monkeypatch, rng) -> None:
    monkeypatch.setenv("NETMORPH_MAX_BYTES", "20000")
    f2 = rng.standard_normal((8, 1, 5, 5))
    f1 = rng.standard_normal((8, 1, 5, 5))
    with pytest.raises(nm.ResourceLimitError, match="compose"):
        nm.compose(f2, f1, groups=8)
    with pytest.raises(nm.ResourceLimitError, match="deconv"):
        nm.deconv(rng.standard_normal((8, 1, 9, 9)), outer=f2, kernel_size=5, groups=8)
    with pytest.raises(nm.ResourceLimitError, match="morph_depth"):
        nm.morph_depth(rng.standard_normal((8, 1, 9, 9)), 8, 5, 5, groups=8)


def _per_group(fn, g: np.ndarray, groups: int, *args, **kwargs) -> list[nm.MorphResult]:
    """The per-group reference: the ungrouped morph of each group G_j on its own."""
    return [fn(gj, *args, **kwargs) for gj in np.split(g, groups)]


def _zero_pattern(filters, groups: int) -> list[np.ndarray]:
    return [np.stack(np.split(f == 0, groups)) for f in filters]


# (G shape, groups, width, k1, k2): depthwise 3×3 → (3×3, 1×1) and → (3×3, 3×3) (F2 shrunk),
# grouped, and a 1-D grouped layer whose F2 is the solved side.
PRACTICAL_CASES = [
    ((6, 1, 3, 3), 6, 6, 3, 1),
    ((6, 1, 3, 3), 6, 6, 3, 3),
    ((8, 2, 3, 3), 4, 8, 3, 3),
    ((6, 2, 3), 2, 6, 1, 3),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "groups", "width", "k1", "k2"), PRACTICAL_CASES, ids=str)
def test_practical_depth_batched_matches_per_group(dtype, shape, groups, width, k1, k2, rng):
    g = rng.standard_normal(shape).astype(dtype)
    before = g.copy()
    res = nm.morph_depth(g, width, k1, k2, groups=groups, method="practical", seed=0)
    ref = _per_group(nm.morph_depth, g, groups, width // groups, k1, k2, method="practical")
    tol = 1e-10 if dtype == np.float64 else 1e-5
    assert res.exact and res.residual <= tol and res.method == "practical"
    assert all(f.dtype == dtype for f in res.filters)
    assert nm.residual(g, res.filters[1], res.filters[0], groups=groups) <= tol
    # the same candidate in every group: the reference's shapes, zero taps and solve count
    for got, want in zip(_zero_pattern(res.filters, groups), zip(*(r.filters for r in ref))):
        assert np.array_equal(got, np.stack([w == 0 for w in want]))
    assert res.iterations == sum(r.iterations for r in ref)
    # each group balanced on its own, as the reference does
    for f1j, f2j in zip(*(np.split(f, groups) for f in res.filters)):
        assert np.std(f1j) == pytest.approx(np.std(f2j) or np.sqrt(np.mean(f2j**2)), rel=1e-5)
    assert np.array_equal(g, before)


def test_practical_subnet_batched_matches_per_group(rng) -> None:
    g = rng.standard_normal((8, 2, 3, 3))
    layers = [(8, 1), (8, 3), (None, 1)]
    res = nm.morph_subnet(g, layers, groups=4, method="practical", seed=0)
    ref = _per_group(nm.morph_subnet, g, 4, [(2, 1), (2, 3), (None, 1)], method="practical")
    assert res.exact and [f.shape for f in res.filters] == [
        (8, 2, 1, 1),
        (8, 2, 3, 3),
        (8, 2, 1, 1),
    ]
    chain = nm.compose(
        res.filters[2], nm.compose(res.filters[1], res.filters[0], groups=4), groups=4
    )
    assert rel_err(chain, g) <= 1e-10
    for got, want in zip(_zero_pattern(res.filters, 4), zip(*(r.filters for r in ref))):
        assert np.array_equal(got, np.stack([w == 0 for w in want]))


def test_practical_grouped_refusal_and_approximation(rng) -> None:
    # 2 → 2 channels per group through one: no side has enough unknowns
    g = rng.standard_normal((4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"no exact practical depth morph exists \(groups=2"):
        nm.morph_depth(g, 2, 3, 1, groups=2, method="practical")
    res = nm.morph_depth(g, 2, 3, 1, groups=2, method="practical", allow_approximate=True, seed=0)
    # every group kept its least-squares candidate: no worse than the zero solution
    assert not res.exact and 0 < res.residual < 1
    assert res.residual == pytest.approx(
        nm.residual(g, res.filters[1], res.filters[0], groups=2), rel=1e-9
    )


def test_grouped_general_bilinear_regime_per_group(rng) -> None:
    """Depthwise 3×3 → (3×3, 3×3) at 2 channels per group: no one-sided solve is exact
    (2·9 < 25), the dense count is (2·(9 + 9) − 2² = 32 ≥ 25): Levenberg–Marquardt per group."""
    g = rng.standard_normal((4, 1, 3, 3))
    res = nm.morph_depth(g, 8, 3, 3, groups=4, seed=0)
    assert [f.shape for f in res.filters] == [(8, 1, 3, 3), (4, 2, 3, 3)]
    assert res.exact and res.nonzero_ratio == 1.0
    assert nm.residual(g, res.filters[1], res.filters[0], groups=4) <= 1e-10
    # one channel per group: 18 − 1 < 25, refused with the count before any solve
    with pytest.raises(
        ValueError, match=r"no exact dense general \(groups=4, per group\).*17 < 25"
    ):
        nm.morph_depth(g, 4, 3, 3, groups=4, seed=0)
