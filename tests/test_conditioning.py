"""Noise ratio of low-precision children, and the gauge's floor repair."""

from __future__ import annotations

import numpy as np
import pytest

from netmorph_core.morph.common import compose_chain, orthogonal_filter
from netmorph_core.morph.conditioning import noise_ratio, round_to
from netmorph_core.morph.depth import morph_depth
from netmorph_core.morph.gauge import below_floor, repair_floor
from netmorph_core.reference import pad_centered

#: (G shape, width, k1, k2): one-sided-exact layers (linear, 3×3 → (3×3, 1×1), (1×1, 3×3)).
ONE_SIDED = [((40, 24), 48, None, None), ((8, 8, 3, 3), 8, 3, 1), ((8, 6, 3, 3), 8, 1, 3)]


def test_bfloat16_rounding_matches_torch(rng) -> None:
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(1000) * 10.0 ** rng.integers(-5, 5, 1000)
    expected = torch.from_numpy(x).to(torch.float32).to(torch.bfloat16).to(torch.float64)
    np.testing.assert_array_equal(round_to(x, "bfloat16"), expected.numpy())


def test_round_to_rejects_an_unknown_dtype() -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        round_to(np.ones(3), "float16")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("method", ["general", "stable"])
@pytest.mark.parametrize(("shape", "width", "k1", "k2"), ONE_SIDED)
def test_child_rounding_stays_near_the_parents(rng, shape, width, k1, k2, method, dtype) -> None:
    """Rounded factors deviate at most 2× the parent's own rounding (both against float64)."""
    g = rng.standard_normal(shape)
    res = morph_depth(g, width, k1, k2, method=method, seed=3)
    kt = tuple(a + b - 1 for a, b in zip(*res.kernel_sizes))
    assert noise_ratio(pad_centered(g, kt), res.filters, dtype) <= 2.0


def test_noise_ratio_detects_ill_conditioned_factors(rng) -> None:
    """The same exact decomposition through T = U·diag(1, …, 1e-4)·Vᵀ (U, V random
    orthogonal; a diagonal T alone would only rescale rows) amplifies rounding."""
    g = rng.standard_normal((8, 8))
    res = morph_depth(g, 8, method="general", seed=0)
    u, v = (np.linalg.qr(rng.standard_normal((8, 8)))[0] for _ in range(2))
    t = u @ np.diag(np.logspace(0, -4, 8)) @ v.T
    f1, f2 = np.linalg.solve(t, res.filters[0]), res.filters[1] @ t
    assert np.linalg.norm(f2 @ f1 - g) <= 1e-10 * np.linalg.norm(g)
    assert noise_ratio(g, [f1, f2], "float32") > 20.0


def test_orthogonal_filter_has_equal_singular_values_and_he_scale(rng) -> None:
    for shape in [(6, 4, 3), (30, 4, 1), (5, 5)]:
        f = orthogonal_filter(shape, rng)
        s = np.linalg.svd(f.reshape(shape[0], -1), compute_uv=False)
        np.testing.assert_allclose(s, s[0], rtol=1e-12)
        fan_in = int(np.prod(shape[1:]))
        assert abs(np.mean(f**2) - 2.0 / fan_in) <= 1e-12


def test_repair_floor_lifts_small_entries_and_keeps_the_composition(rng) -> None:
    f1 = rng.standard_normal((12, 6, 3, 3))
    f2 = rng.standard_normal((10, 12, 1, 1))
    before = compose_chain([f1, f2])
    assert below_floor(f1, 0.05).any()
    fixed, sweeps = repair_floor([f1, f2], 0.05)
    assert sweeps >= 1
    assert not any(below_floor(f, 0.05).any() for f in fixed)
    assert np.linalg.norm(compose_chain(fixed) - before) <= 1e-12 * np.linalg.norm(before)


@pytest.mark.parametrize(("shape", "width", "k1", "k2"), ONE_SIDED)
def test_stable_one_sided_is_exact_dense_and_above_the_floor(rng, shape, width, k1, k2) -> None:
    g = rng.standard_normal(shape)
    res = morph_depth(g, width, k1, k2, method="stable", seed=5)
    assert res.exact and res.residual <= 1e-10
    assert not any(below_floor(f, 0.05).any() for f in res.filters)
    again = morph_depth(g, width, k1, k2, method="stable", seed=5)
    for a, b in zip(res.filters, again.filters):
        np.testing.assert_array_equal(a, b)


def test_balanced_pair_keeps_the_composition_and_shrinks_the_norm_product(rng) -> None:
    from netmorph_core.morph.conditioning import balanced_pair

    f1 = rng.standard_normal((12, 4, 3, 3)) * rng.uniform(0.1, 10.0, (12, 1, 1, 1))
    f2 = rng.standard_normal((4, 12, 3, 3))
    b1, b2 = balanced_pair(f1, f2, np.random.default_rng(0))
    before = compose_chain([f1, f2])
    assert np.linalg.norm(compose_chain([b1, b2]) - before) <= 1e-12 * np.linalg.norm(before)
    assert np.linalg.norm(b1) * np.linalg.norm(b2) < 0.9 * np.linalg.norm(f1) * np.linalg.norm(f2)
    g = pad_centered(before, (5, 5))
    assert noise_ratio(g, [b1, b2], "float32") < noise_ratio(g, [f1, f2], "float32")
