"""Stable morphing: exact decompositions whose entries are all non-zero and on one scale."""

from __future__ import annotations

import numpy as np
import pytest

import netmorph_core as nm
from netmorph_core.morph.depth import morph_depth, relative_residual
from netmorph_core.morph.stable import DEFAULT_MIN_MAGNITUDE, stable_depth, stable_subnet
from netmorph_core.reference import pad_centered


def floor_ratio(f: np.ndarray) -> float:
    """min |w| / std(F): every entry is at least this many standard deviations from zero."""
    return float(np.abs(f).min() / np.std(f))


def check_stable(res, g: np.ndarray, kt: tuple[int, ...], m: float, tol: float) -> None:
    assert res.method == "stable"
    assert res.nonzero_ratio == 1.0
    assert all(floor_ratio(f) >= m for f in res.filters)
    stds = [float(np.std(f)) for f in res.filters]
    assert max(stds) <= 2 * min(stds)
    g_tilde = pad_centered(g.astype(np.float64), kt)
    assert res.residual == pytest.approx(relative_residual(g_tilde, res.filters), rel=1e-6)
    assert res.residual <= tol and res.exact


@pytest.mark.parametrize(
    ("c", "width", "kernel"),
    [(2, 4, 3), (2, 4, 1)],  # G 3×3 or 1×1 into 3×3 ⊛ 3×3 (Kt = 5)
)
def test_stable_where_practical_pads_zeros(rng, c, width, kernel):
    g = rng.standard_normal((c, c, kernel, kernel))
    practical = morph_depth(g, width, 3, 3, method="practical", seed=0)
    assert practical.nonzero_ratio < 1.0  # the practical algorithm shrank F2 and padded zeros
    res = stable_depth(g, width, 3, 3, seed=0)
    check_stable(res, g, (5, 5), DEFAULT_MIN_MAGNITUDE, 1e-10)
    assert res.kernel_sizes == ((3, 3), (3, 3))
    assert res.filters[0].shape == (width, c, 3, 3) and res.filters[1].shape == (c, width, 3, 3)


def test_stable_larger_floor(rng):
    g = rng.standard_normal((2, 2, 3, 3))
    res = stable_depth(g, 6, 3, 3, seed=1, min_magnitude=0.2)
    check_stable(res, g, (5, 5), 0.2, 1e-10)


def test_stable_is_deterministic_and_leaves_g(rng):
    g = rng.standard_normal((2, 2, 3, 3))
    g_copy = g.copy()
    a = stable_depth(g, 4, 3, 3, seed=5)
    b = stable_depth(g, 4, 3, 3, seed=5)
    for fa, fb in zip(a.filters, b.filters):
        np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(g, g_copy)


def test_stable_float32(rng):
    g = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    res = stable_depth(g, 4, 3, 3, seed=0)
    assert all(f.dtype == np.float32 for f in res.filters)
    check_stable(res, g, (5, 5), DEFAULT_MIN_MAGNITUDE, 1e-5)


def test_stable_linear_1d_and_backend(rng):
    g = rng.standard_normal((3, 2))
    res = stable_depth(g, 5, seed=0, backend="numpy")
    check_stable(res, g, (), DEFAULT_MIN_MAGNITUDE, 1e-10)
    g1 = rng.standard_normal((2, 2, 3))
    res1 = stable_depth(g1, 4, 3, 3, seed=0)
    check_stable(res1, g1, (5,), DEFAULT_MIN_MAGNITUDE, 1e-10)


def test_stable_subnet_three_layers(rng):
    g = rng.standard_normal((2, 2, 3, 3))
    res = stable_subnet(g, [(6, 3), (6, 1), (None, 3)], seed=0)
    check_stable(res, g, (5, 5), DEFAULT_MIN_MAGNITUDE, 1e-10)
    assert [f.shape for f in res.filters] == [(6, 2, 3, 3), (6, 6, 1, 1), (2, 6, 3, 3)]


def test_stable_without_exact_solution(rng):
    # Width 2 = C: 2·2·(9 + 9) − 2² = 68 free parameters for 2·2·25 = 100 equations.
    g = rng.standard_normal((2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"68 < 100 equations C2·C0·\|Kt\|"):
        stable_depth(g, 2, 3, 3, seed=0, max_iter=10)
    with pytest.raises(ValueError, match=r"stable morph residual .* > tol"):
        stable_depth(g, 2, 3, 3, seed=0, max_iter=10, tol=1e-3)
    res = stable_depth(g, 2, 3, 3, seed=0, max_iter=10, allow_approximate=True)
    assert not res.exact and res.residual > 1e-10
    assert res.nonzero_ratio == 1.0
    assert all(floor_ratio(f) >= DEFAULT_MIN_MAGNITUDE for f in res.filters)
    loose = stable_depth(g, 2, 3, 3, seed=0, max_iter=10, tol=0.5)
    assert loose.exact and loose.residual <= 0.5


def test_stable_bad_input(rng):
    g = rng.standard_normal((2, 2, 3, 3))
    with pytest.raises(ValueError, match="min_magnitude"):
        stable_depth(g, 4, 3, 3, min_magnitude=0.0)
    with pytest.raises(ValueError, match="min_magnitude"):
        stable_depth(g, 4, 3, 3, min_magnitude=0.6)
    with pytest.raises(TypeError, match="min_magnitude"):
        stable_depth(g, 4, 3, 3, min_magnitude="big")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least two layers"):
        stable_subnet(g, [(2, 3)])
    with pytest.raises(ValueError, match="k1, k2"):
        stable_depth(g, 4, 3, 2)
    with pytest.raises(TypeError, match="width"):
        stable_depth(g, 4.0, 3, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tol"):
        stable_depth(g, 4, 3, 3, tol=-1.0)
    with pytest.raises(TypeError, match="seed"):
        stable_depth(g, 4, 3, 3, seed="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="G must"):
        stable_depth(g.astype(np.int64), 4, 3, 3)  # type: ignore[arg-type]


def test_method_stable_dispatches_from_morph_depth_and_subnet():
    g = np.random.default_rng(7).standard_normal((4, 4, 3, 3))
    depth = nm.morph_depth(g, 8, 3, 3, method="stable", seed=0)
    assert depth.exact and depth.residual <= 1e-10
    assert depth.nonzero_ratio == 1.0
    assert min(np.abs(f).min() / f.std() for f in depth.filters) >= 0.05
    subnet = nm.morph_subnet(g, [(8, 3), (8, 1), (None, 1)], method="stable", seed=0)
    assert subnet.exact and subnet.nonzero_ratio == 1.0
