"""The identity-augmented pair: an exact dense depth morph in closed form where no one-sided
solve is exact (e.g. 3×3 → (3×3, 3×3) at any width between C and 25/9·C)."""

import numpy as np
import pytest

import netmorph_core as nm
from netmorph_core.morph import augmented
from netmorph_core.morph.conditioning import noise_ratio
from netmorph_core.morph.depth import morph_depth
from netmorph_core.morph.solvability import solvability
from netmorph_core.reference import pad_centered

TOL64 = 1e-12


def _g(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize(
    ("g_shape", "width", "k1", "k2", "side"),
    [
        ((8, 8, 3, 3), 9, 3, 3, "F1"),  # below the generic count (9·144 − 81 < 1600)
        ((8, 8, 3, 3), 16, 3, 3, "F1"),
        ((4, 6, 3, 3), 8, 3, 3, "F2"),  # more random channels on the F2 side (8 − 4 > 8 − 6)
        ((8, 8, 3), 9, 3, 5, "F1"),  # K1 < K2: Q has K2 − K1 + 1 taps
        ((8, 8, 3), 9, 5, 3, "F2"),  # the mirror image
        ((3, 3, 3, 3, 3), 5, 3, 3, "F1"),  # 3-D
    ],
)
def test_exact_dense_in_closed_form(g_shape, width, k1, k2, side):
    g = _g(g_shape)
    info = solvability(g.shape, width, k1, k2)
    assert not info.exact_general and info.augmented_side == side and info.dense_count_ok
    r = morph_depth(g, width, k1, k2, method="general", seed=1)
    assert r.exact and r.residual <= TOL64 and r.iterations == 0
    assert r.residual == pytest.approx(nm.residual(g, r.filters[1], r.filters[0]), rel=1e-6)
    assert all(np.all(f != 0) for f in r.filters)


def test_construction_is_exact_before_mixing():
    # F1 = [δ_a·I; B], F2 = [window − Q ⊛ B, Q]: the composition is G~ by construction.
    g = _g((5, 4, 3, 3), seed=2)
    g_tilde = pad_centered(g, (5, 5))
    branch = augmented._draw(g_tilde, (3, 3), 7, (3, 3), (3, 3), np.random.default_rng(0))
    f1, f2 = branch.factors()
    assert np.count_nonzero(f1[:4]) == 4  # the identity channels: one tap each
    assert nm.residual(g_tilde, f2, f1) <= 1e-15
    branch_norm = np.linalg.norm(nm.compose(branch.q, branch.b))
    assert branch_norm == pytest.approx(augmented.BRANCH_WEIGHT * np.linalg.norm(g), rel=1e-12)


def test_width_at_most_c_is_refused_by_counting():
    with pytest.raises(ValueError, match=r"no exact dense general depth morph"):
        morph_depth(_g((8, 8, 3, 3)), 8, 3, 3, method="general", seed=0)
    assert solvability((8, 8, 3, 3), 8, 3, 3).augmented_side is None


def test_same_seed_same_filters():
    g = _g((6, 6, 3, 3), seed=3)
    a = morph_depth(g, 10, 3, 3, seed=7)
    b = morph_depth(g, 10, 3, 3, seed=7)
    for fa, fb in zip(a.filters, b.filters):
        np.testing.assert_array_equal(fa, fb)
    c = morph_depth(g, 10, 3, 3, seed=8)
    assert not np.array_equal(a.filters[0], c.filters[0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_low_precision_noise_ratio(dtype):
    # Rounding the factors costs at most twice what rounding G itself costs.
    g = _g((16, 16, 3, 3), seed=4)
    r = morph_depth(g, 32, 3, 3, seed=0)
    assert noise_ratio(pad_centered(g, (5, 5)), r.filters, dtype) <= 2.0


def test_float32_input():
    g = _g((8, 8, 3, 3), seed=5).astype(np.float32)
    r = morph_depth(g, 16, 3, 3, seed=0)
    assert r.exact and r.residual <= 1e-5
    assert all(f.dtype == np.float32 for f in r.filters)


def test_caller_array_unchanged():
    g = _g((6, 6, 3, 3), seed=6)
    before = g.copy()
    morph_depth(g, 12, 3, 3, seed=0)
    np.testing.assert_array_equal(g, before)


@pytest.mark.parametrize("c", [8, 16])
def test_stable_keeps_the_floor(c):
    g = _g((c, c, 3, 3), seed=7)
    r = morph_depth(g, 2 * c, 3, 3, method="stable", seed=0)
    assert r.exact and r.residual <= 1e-10
    for f in r.filters:
        assert np.all(np.abs(f) >= 0.05 * np.std(f) * (1 - 1e-9))


def test_stable_refused_when_the_branch_is_too_narrow():
    # C = 6, width 7: one random channel cannot carry the floor moves, and the generic count
    # (7·108 − 49 = 707 < 900) rules out a search.
    with pytest.raises(ValueError, match="could not be lifted above the floor"):
        morph_depth(_g((6, 6, 3, 3)), 7, 3, 3, method="stable", seed=0)


def test_depthwise_two_channels_per_group():
    # Depthwise 3×3 → (3×3, 3×3) with two middle channels per group: one C0 = C2 = 1 problem
    # per group, each below one-sided exactness and solved by the construction.
    g = _g((4, 1, 3, 3), seed=8)
    r = morph_depth(g, 8, 3, 3, groups=4, seed=0)
    assert r.exact and r.residual <= TOL64
    assert all(np.all(f != 0) for f in r.filters)


def test_nearly_square_one_sided_solves_give_way():
    # Width 3C: 27·C unknowns for 25·C equations per row; the one-sided solve would leave a
    # float32 noise ratio near 2.9, the identity-augmented pair stays below 2.
    g = _g((16, 16, 3, 3), seed=9)
    info = solvability(g.shape, 48, 3, 3)
    assert info.exact_general and augmented.prefer_augmented(info)
    r = morph_depth(g, 48, 3, 3, seed=0)
    assert r.exact and r.iterations == 0
    assert noise_ratio(pad_centered(g, (5, 5)), r.filters, "float32") <= 2.0
    # 1×1 or linear factors keep the one-sided solve (its operator is orthogonal there).
    assert not augmented.prefer_augmented(solvability((16, 16, 3, 3), 17, 3, 1))
    assert not augmented.prefer_augmented(solvability((16, 16, 3, 3), 48, 3, 5))


def test_memory_is_checked_before_the_pair_is_built(monkeypatch):
    # The mixing matrices are w × w: their working set is estimated first.
    monkeypatch.setenv("NETMORPH_MAX_BYTES", str(1 << 20))
    with pytest.raises(ValueError, match="identity-augmented pair"):
        augmented.augmented_pair(
            np.zeros((64, 64, 5, 5)), (3, 3), 128, (3, 3), (3, 3), "F1", np.random.default_rng(0)
        )
