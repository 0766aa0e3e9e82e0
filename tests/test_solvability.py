"""Exactness conditions of a depth morph, by counting (and checked against actual solves)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from netmorph_core.morph.augmented import prefer_augmented
from netmorph_core.morph.depth import morph_depth
from netmorph_core.morph.solvability import Solvability, practical_reductions, solvability
from netmorph_core.reference import outer_operator


def test_concrete_numbers():
    s = solvability((4, 3, 3, 3), 8, 3, 3)
    assert (s.c2, s.c0, s.c1) == (4, 3, 8)
    assert (s.kernel, s.k1, s.k2, s.kt) == ((3, 3), (3, 3), (3, 3), (5, 5))
    assert (s.params_f1, s.params_f2, s.params_g, s.params_g_tilde) == (216, 288, 108, 300)
    # C1·|K1| = 72 < C2·|Kt| = 100 and C1·|K2| = 72 < C0·|Kt| = 75.
    assert not s.f1_last_exact and not s.f2_last_exact
    assert not s.exact_general and not s.paper_condition_7
    assert s.practical_f1_expands and s.practical_f2_expands
    assert s.practical_f1_side and s.practical_f2_side and s.exact_practical
    assert s.paper_expanding_claim


def test_one_side_exact_only():
    # C1·|K1| = 9·9 = 81 >= C2·|Kt| = 3·9 = 27; C1·|K2| = 9 < C0·|Kt| = 18.
    s = solvability((3, 2, 3, 3), 9, 3, 1)
    assert s.f1_last_exact and not s.f2_last_exact
    assert s.exact_general and not s.paper_condition_7


def test_paper_condition_7_is_both_sides():
    s = solvability((2, 2, 3, 3), 8, 3, 3)
    assert s.paper_condition_7 and s.f1_last_exact and s.f2_last_exact


def test_paper_claim_for_algorithm_2_is_not_sufficient():
    # F1 has 2·4·9 = 72 >= 16 parameters of G, but C1 = 2 < C2 = 4: with F1 solved every
    # reduced system has 2·9 unknowns for 4·9 equations; with F2 solved, 2 unknowns for at
    # least 4 equations.
    s = solvability((4, 4, 1, 1), 2, 3, 1)
    assert s.paper_expanding_claim
    assert not s.exact_practical and not s.practical_f1_expands
    assert all(not r.count_ok for r in practical_reductions(4, 2, 4, (1, 1), (3, 3), (1, 1)))
    g = np.random.default_rng(0).standard_normal((4, 4, 1, 1))
    with pytest.raises(ValueError, match="no exact practical"):
        morph_depth(g, 2, 3, 1, method="practical", seed=0)
    approx = morph_depth(g, 2, 3, 1, method="practical", seed=0, allow_approximate=True)
    assert not approx.exact and approx.residual > 0.1


def test_linear():
    s = solvability((3, 5), 3)
    assert s.kernel == s.k1 == s.k2 == s.kt == ()
    assert s.f1_last_exact and not s.f2_last_exact  # 3 >= 3, 3 < 5
    assert s.practical_f1_expands and s.exact_practical
    assert solvability((3, 5), 3, 1, ()) == s


def test_non_square_kernels():
    s = solvability((2, 2, 3, 1), 2, (3, 1), (1, 1))
    assert s.kt == (3, 1) and s.practical_f1_expands
    assert s.params_f1 == 2 * 2 * 3


def test_explain_mentions_numbers():
    s = solvability((4, 3, 3, 3), 8, 3, 3)
    text = s.explain()
    assert str(s) == text
    assert "72 >= C2·|Kt| = 100: no" in text
    assert "condition (7)" in text and "not sufficient" in text


@pytest.mark.parametrize(
    ("args", "exc"),
    [
        (((4, 3, 3, 3), 0, 3, 3), ValueError),
        (((4, 3, 3, 3), 2.0, 3, 3), TypeError),
        (((4, 3, 3, 3), 2, 2, 3), ValueError),  # K1 + K2 − 1 − K odd
        (((4, 3, 3, 3), 2, 1, 1), ValueError),  # effective size smaller than K
        (((4, 3, 3, 3), 2, (3,), 3), ValueError),  # wrong number of sizes
        (((4, 3, 3, 3), 2, None, 3), TypeError),
        (((3, 5), 2, 3, 1), ValueError),  # a linear layer has no kernel
        (((4,), 2, 1, 1), ValueError),
        ((4, 2, 1, 1), TypeError),
        (((4, 0, 3), 2, 1, 3), ValueError),
    ],
)
def test_bad_input(args, exc):
    with pytest.raises(exc):
        solvability(*args)


def test_dataclass_is_frozen():
    s = solvability((2, 2), 2)
    assert isinstance(s, Solvability)
    with pytest.raises(AttributeError):
        s.f1_last_exact = False  # type: ignore[misc]


configs = st.integers(0, 2).flatmap(
    lambda nd: st.tuples(
        st.integers(1, 4),
        st.integers(1, 4),
        st.integers(1, 6),
        st.tuples(*[st.integers(1, 3)] * nd),
        st.tuples(*[st.integers(1, 3)] * nd),
        st.tuples(*[st.integers(0, 1)] * nd),
    )
)


def _shape(c2, c0, k1, k2, shrink):
    kernel = tuple(a + b - 1 - 2 * s for a, b, s in zip(k1, k2, shrink))
    return (c2, c0, *kernel)


@settings(max_examples=60, deadline=None)
@given(configs)
def test_implications(cfg):
    c2, c0, c1, k1, k2, shrink = cfg
    shape = _shape(c2, c0, k1, k2, shrink)
    assume(all(k >= 1 for k in shape[2:]))
    s = solvability(shape, c1, k1, k2)
    assert s.paper_condition_7 == (s.f1_last_exact and s.f2_last_exact)
    assert not s.f1_last_exact or s.practical_f1_side
    assert not s.f2_last_exact or s.practical_f2_side
    assert not s.practical_f1_expands or s.practical_f1_side
    assert not s.practical_f2_expands or s.practical_f2_side
    reds = practical_reductions(c0, c1, c2, shape[2:], k1, k2)
    assert s.exact_practical == any(r.count_ok for r in reds)
    assert [r.nonzeros for r in reds] == sorted((r.nonzeros for r in reds), reverse=True)
    full = [r for r in reds if r.size == (k2 if r.solved == "F1" else k1)]
    assert s.exact_general == any(r.count_ok for r in full)


def _one_solve_rank_is_full(shape, c1, k1, k2, rng) -> bool:
    """Oracle: the side morph_depth solves first has full row rank for a random fixed factor."""
    s = solvability(shape, c1, k1, k2)
    c2, c0 = shape[:2]
    if s.f1_last_exact:
        a = outer_operator(rng.standard_normal((c2, c1, *s.k2)), s.k1)
        return np.linalg.matrix_rank(a) == c2 * math.prod(s.kt)
    a = outer_operator(rng.standard_normal((c0, c1, *s.k1)), s.k2)
    return np.linalg.matrix_rank(a) == c0 * math.prod(s.kt)


@settings(max_examples=30, deadline=None)
@given(configs, st.integers(0, 2**16))
def test_one_solve_exact_iff_the_solved_side_has_full_rank(cfg, seed):
    c2, c0, c1, k1, k2, shrink = cfg
    shape = _shape(c2, c0, k1, k2, shrink)
    assume(all(k >= 1 for k in shape[2:]) and math.prod(shape) <= 200)
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(shape)
    s = solvability(shape, c1, k1, k2)
    r = morph_depth(g, c1, k1, k2, seed=seed + 1, max_iter=1, allow_approximate=True)
    if prefer_augmented(s):  # the identity-augmented pair: closed form, no solve
        assert r.iterations == 0 and r.residual <= 1e-10
        return
    assert r.iterations == 1
    if s.exact_general and _one_solve_rank_is_full(shape, c1, k1, k2, rng):
        assert r.residual <= 1e-10
    else:  # the counts are necessary
        assert r.residual > 1e-6


def test_counts_hold_but_syzygies_lower_the_rank():
    # C2 = C0 = 1, C1 = 3, 3x3 kernels: 27 unknowns for 25 equations on either side, but
    # F2[0, j] ⊛ F2[0, i] − F2[0, i] ⊛ F2[0, j] = 0 gives 3 kernel vectors: rank 24.
    s = solvability((1, 1, 1, 1), 3, 3, 3)
    assert s.f1_last_exact and s.f2_last_exact and s.paper_condition_7
    rng = np.random.default_rng(0)
    assert np.linalg.matrix_rank(outer_operator(rng.standard_normal((1, 3, 3, 3)), (3, 3))) == 24
    g = rng.standard_normal((1, 1, 1, 1))
    # The general morph takes the identity-augmented pair (both one-sided solves nearly
    # square): exact at once; Algorithm 2 takes a smaller kernel.
    general = morph_depth(g, 3, 3, 3, seed=0)
    assert general.exact and general.iterations == 0 and general.nonzero_ratio == 1.0
    practical = morph_depth(g, 3, 3, 3, method="practical", seed=0)
    assert practical.exact and practical.iterations > 1
    assert practical.nonzero_ratios == (1.0, pytest.approx(6 / 9))


@pytest.mark.parametrize(("width", "ok"), [(8, False), (12, False), (13, True), (23, True)])
def test_dense_count_for_3x3_into_two_3x3(width, ok):
    """C0 = C2 = 8: w·(72 + 72) − w² ≥ 1600 holds from w = 13 (w = 12: 1584 < 1600). The
    count is for a generic G~; a 3×3 G zero-padded has the identity-augmented pair from w = 9."""
    info = solvability((8, 8, 3, 3), width, 3, 3)
    assert info.dense_count == width * 144 - width**2
    assert info.generic_count_ok is ok
    assert info.dense_count_ok is (width > 8)
    assert info.augmented_side == ("F1" if width > 8 else None)


def test_dense_count_ignores_the_gauge_beyond_the_fan_in():
    # A linear 2 -> 2 through width 5 is one-sided exact; width > C0 leaves the count silent.
    assert solvability((2, 2), 5).dense_count_ok


@pytest.mark.parametrize("method", ["general", "stable"])
def test_morph_depth_refuses_with_the_counting_argument(method):
    # A 5×5 G fits neither 3×3 factor: no identity-augmented pair, the count decides.
    g = np.random.default_rng(0).standard_normal((8, 8, 5, 5))
    with pytest.raises(ValueError, match=r"1584 < 1600 equations C2·C0·\|Kt\|"):
        morph_depth(g, 12, 3, 3, method=method, seed=0)
