"""Depth morphing G~ = F2 ⊛ F1: Algorithm 1 ("general") and Algorithm 2 ("practical")."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import netmorph_core as nm
from netmorph_core.morph.augmented import prefer_augmented
from netmorph_core.morph.depth import morph_depth
from netmorph_core.morph.solvability import solvability
from netmorph_core.reference import compose_ref, pad_centered

TOL64 = 1e-10


def composed(result) -> np.ndarray:
    f1, f2 = result.filters
    return compose_ref(f2.astype(np.float64), f1.astype(np.float64))


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------- general (Algorithm 1)

GENERAL_ONE_SOLVE = [
    # (G shape, width, k1, k2): F1 side (C1·|K1| >= C2·|Kt|), then F2 side only.
    ((3, 2, 3, 3), 9, 3, 1),
    ((2, 3, 3, 3), 9, 1, 3),
    ((2, 2, 1, 1), 9, 3, 3),
    ((2, 3, 3), 4, 3, 3),
    ((3, 2, 3), 4, 3, 3),
    ((3, 5), 3, None, None),
    ((5, 3), 3, (), ()),
    ((2, 2, 1, 3), 8, (3, 3), (1, 1)),
    ((1, 2, 1, 1, 1), 4, 1, 3),
]


@pytest.mark.parametrize(("shape", "width", "k1", "k2"), GENERAL_ONE_SOLVE)
def test_general_exact_in_one_solve(shape, width, k1, k2):
    g = np.random.default_rng(1).standard_normal(shape)
    info = solvability(shape, width, k1, k2)
    assert info.exact_general
    r = morph_depth(g, width, k1, k2, method="general", seed=3)
    # A nearly square one-sided solve gives way to the identity-augmented pair (0 solves).
    assert r.exact and r.iterations == (0 if prefer_augmented(info) else 1)
    assert r.method == "general"
    assert r.residual <= TOL64
    assert nm.residual(g, r.filters[1], r.filters[0]) <= TOL64
    assert rel(composed(r), pad_centered(g, info.kt)) <= TOL64
    assert r.nonzero_ratio == 1.0
    assert r.filters[0].shape == (width, shape[1], *info.k1)
    assert r.filters[1].shape == (shape[0], width, *info.k2)
    assert r.kernel_sizes == (info.k1, info.k2)
    assert np.std(r.filters[0]) == pytest.approx(np.std(r.filters[1]), rel=1e-12)


def test_general_solves_the_exact_side_first():
    # Only the F2 side is exact: F1 keeps its random start, F2 is solved.
    g = np.random.default_rng(2).standard_normal((2, 3, 3, 3))
    r = morph_depth(g, 9, 1, 3, seed=0, max_iter=1)
    assert r.exact and r.iterations == 1


def test_general_alternation_converges_when_no_side_is_exact():
    # C1·|K1| = 9 < C2·|Kt| = 10 and C1·|K2| = 9 < C0·|Kt| = 10, yet alternating converges
    # (a G of kernel 5 fits neither factor: no identity-augmented pair).
    g = np.random.default_rng(0).standard_normal((2, 2, 5))
    info = solvability(g.shape, 3, 3, 3)
    assert not info.exact_general and info.augmented_side is None
    r = morph_depth(g, 3, 3, 3, seed=1, max_iter=50)
    assert r.exact and 1 < r.iterations <= 50
    assert r.nonzero_ratio == 1.0


def test_general_raises_when_it_does_not_converge():
    g = np.random.default_rng(0).standard_normal((2, 2, 3))
    with pytest.raises(ValueError, match="did not reach tol"):
        morph_depth(g, 2, 2, 2, seed=0, max_iter=20)


def test_general_approximate_on_impossible_configuration():
    # A 4 -> 4 linear map through width 1 has rank 1: no exact factorisation exists.
    # Counting refuses it before any work: 8 parameters less 1 (gauge) < 16 equations.
    g = np.random.default_rng(0).standard_normal((4, 4))
    with pytest.raises(ValueError, match=r"i\.e\. 7 < 16 equations"):
        morph_depth(g, 1, method="general", seed=0, max_iter=10)
    with pytest.raises(ValueError, match="did not reach tol"):
        morph_depth(g, 1, method="general", seed=0, max_iter=10, tol=1e-3)
    r = morph_depth(g, 1, method="general", seed=0, max_iter=10, allow_approximate=True)
    assert not r.exact and r.residual > 0.1
    assert r.iterations == 10
    assert r.residual == pytest.approx(nm.residual(g, r.filters[1], r.filters[0]), rel=1e-12)
    # The best rank-1 approximation bounds the residual from below.
    sv = np.linalg.svd(g, compute_uv=False)
    assert r.residual >= np.sqrt(np.sum(sv[1:] ** 2)) / np.linalg.norm(g) - 1e-9


# ---------------------------------------------------------------- practical (Algorithm 2)

PRACTICAL = [
    # (G shape, width, k1, k2)
    ((3, 3, 3, 3), 3, 3, 3),  # F1 expands; F2 shrunk to 1x1
    ((3, 2, 3, 3), 3, 3, 3),
    ((2, 3, 3, 3), 3, 3, 3),  # F2 expands
    ((4, 4, 3, 3), 4, 4, 2),  # odd shrink parity: K1 + 1 − 1 − K = 1
    ((4, 4, 3, 3), 4, 2, 4),  # odd parity, F2 expands
    ((2, 2, 3, 1), 2, (3, 1), (3, 3)),  # non-square
    ((2, 2, 1, 3), 2, (3, 5), (1, 1)),
    ((3, 3, 5), 3, 5, 3),  # 1-D
    ((3, 3, 3), 3, 4, 4),  # 1-D, odd parity
    ((4, 3), 4, None, None),  # linear, F1 side
    ((3, 4), 4, 1, 1),  # linear, F2 side
    ((2, 2, 1, 1, 1), 2, 1, 3),  # 3-D
    ((2, 2, 3, 3), 8, 3, 3),  # generous width: the full kernels are exact
]


@pytest.mark.parametrize(("shape", "width", "k1", "k2"), PRACTICAL)
def test_practical_exact(shape, width, k1, k2):
    g = np.random.default_rng(5).standard_normal(shape)
    info = solvability(shape, width, k1, k2)
    assert info.exact_practical
    r = morph_depth(g, width, k1, k2, method="practical", seed=7)
    assert r.exact and r.method == "practical"
    assert r.residual <= TOL64
    assert rel(composed(r), pad_centered(g, info.kt)) <= TOL64
    f1, f2 = r.filters
    assert f1.shape == (width, shape[1], *info.k1) and f2.shape == (shape[0], width, *info.k2)
    assert np.std(f1) == pytest.approx(np.std(f2), rel=1e-12)


def test_practical_takes_the_largest_exact_kernel():
    g = np.random.default_rng(0).standard_normal((3, 3, 3, 3))
    # Width 9: 9·9 >= 3·25, the full 3x3 kernels are exact, nothing is zero.
    assert morph_depth(g, 9, 3, 3, method="practical", seed=0).nonzero_ratio == 1.0
    # Width 6: 6·9 >= 3·16 with F2 shrunk to 2x2 (off-centre in the 3x3 window: odd parity).
    r = morph_depth(g, 6, 3, 3, method="practical", seed=0)
    assert r.nonzero_ratios[0] == 1.0
    assert np.count_nonzero(r.filters[1]) == 3 * 6 * 4
    assert r.exact and r.iterations == 1


def test_practical_iterations_count_candidates_tried():
    g = np.random.default_rng(0).standard_normal((3, 3, 3, 3))
    assert morph_depth(g, 3, 3, 3, method="practical", seed=0).iterations == 1


def test_practical_raises_without_exact_reduction():
    g = np.random.default_rng(0).standard_normal((4, 4, 3, 3))
    with pytest.raises(ValueError, match="no exact practical depth morph"):
        morph_depth(g, 2, 3, 3, method="practical", seed=0)
    r = morph_depth(g, 2, 3, 3, method="practical", seed=0, allow_approximate=True)
    assert not r.exact and r.residual > 1e-3


@st.composite
def expanding(draw):
    nd = draw(st.integers(0, 2))
    c2, c0 = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = tuple(draw(st.sampled_from([1, 3])) for _ in range(nd))
    if draw(st.booleans()):  # F1 expands: K1 >= K, C1 >= C2
        c1 = draw(st.integers(c2, 4))
        k1 = tuple(k + draw(st.integers(0, 2)) for k in kernel)
        k2 = tuple(draw(st.integers(1, 3)) for _ in kernel)
    else:
        c1 = draw(st.integers(c0, 4))
        k2 = tuple(k + draw(st.integers(0, 2)) for k in kernel)
        k1 = tuple(draw(st.integers(1, 3)) for _ in kernel)
    # Fix the parity of K1 + K2 − 1 − K by growing K1 where it is odd.
    k1 = tuple(a + (a + b - 1 - k) % 2 for a, b, k in zip(k1, k2, kernel))
    return (c2, c0, *kernel), c1, k1, k2, draw(st.integers(0, 2**16))


@settings(max_examples=30, deadline=None)
@given(expanding())
def test_practical_exact_for_expanding_configurations(cfg):
    shape, c1, k1, k2, seed = cfg
    g = np.random.default_rng(seed).standard_normal(shape)
    info = solvability(shape, c1, k1, k2)
    assert info.practical_f1_expands or info.practical_f2_expands
    r = morph_depth(g, c1, k1, k2, method="practical", seed=seed + 1)
    assert r.exact and r.residual <= TOL64
    assert rel(composed(r), pad_centered(g, info.kt)) <= TOL64


# ---------------------------------------------------------------- paper Fig. 3


def test_nonzero_ratio_ordering_of_fig3():
    c, k = 3, 3
    g = np.random.default_rng(0).standard_normal((c, c, k, k))
    # (a) IdMorph: the embedded δ identity layer has C non-zeros out of C²K².
    identity = np.zeros((c, c, k, k))
    identity[np.arange(c), np.arange(c), k // 2, k // 2] = 1.0
    assert np.array_equal(compose_ref(identity, g), pad_centered(g, (5, 5)))
    idmorph_ratio = np.count_nonzero(identity) / identity.size
    assert idmorph_ratio == pytest.approx(1 / 27)
    # (b) practical, worst case (width C): the embedded F2 is a 1x1 core, C² non-zeros.
    worst = morph_depth(g, c, k, k, method="practical", seed=0)
    assert worst.exact
    assert worst.nonzero_ratios == (1.0, pytest.approx(1 / 9))
    assert worst.nonzero_ratio == pytest.approx((81 + 9) / 162)
    # (c) general (width 9 so that C1·K² >= C2·Kt²): every entry non-zero.
    best = morph_depth(g, 9, k, k, method="general", seed=0)
    assert best.exact and best.nonzero_ratios == (1.0, 1.0)
    assert idmorph_ratio < worst.nonzero_ratios[1] <= best.nonzero_ratios[1]


# ---------------------------------------------------------------- determinism, dtypes


@pytest.mark.parametrize("method", ["general", "practical"])
def test_deterministic_given_seed(method):
    g = np.random.default_rng(0).standard_normal((3, 3, 3, 3))
    a = morph_depth(g, 9, 3, 3, method=method, seed=11)
    b = morph_depth(g, 9, 3, 3, method=method, seed=11)
    c = morph_depth(g, 9, 3, 3, method=method, seed=12)
    for fa, fb, fc in zip(a.filters, b.filters, c.filters):
        assert np.array_equal(fa, fb)
        assert not np.allclose(fa, fc)
    gen = morph_depth(g, 9, 3, 3, method=method, seed=np.random.default_rng(11))
    assert all(np.array_equal(x, y) for x, y in zip(gen.filters, a.filters))


@pytest.mark.parametrize("method", ["general", "practical"])
def test_float32(method):
    g = np.random.default_rng(0).standard_normal((3, 3, 3, 3)).astype(np.float32)
    r = morph_depth(g, 9, 3, 3, method=method, seed=0)
    assert all(f.dtype == np.float32 for f in r.filters)
    assert r.exact and r.residual <= 1e-5
    assert nm.residual(g, r.filters[1], r.filters[0]) <= 1e-5


def test_explicit_numpy_backend():
    g = np.random.default_rng(0).standard_normal((2, 2, 3, 3))
    a = morph_depth(g, 8, 3, 3, seed=0, backend="numpy")
    assert a.exact
    with pytest.raises(ValueError, match="backend"):
        morph_depth(g, 8, 3, 3, seed=0, backend="nope")


def test_zero_filter():
    r = morph_depth(np.zeros((2, 2, 3, 3)), 8, 3, 3, seed=0)
    assert r.exact and r.residual == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- bad input


G = np.random.default_rng(0).standard_normal((2, 2, 3, 3))


@pytest.mark.parametrize(
    ("args", "kwargs", "exc"),
    [
        ((G[0], 4, (3, 3), 3), {}, ValueError),  # two kernel sizes for one spatial dim
        ((np.zeros((2,) * 6), 4, 1, 1), {}, ValueError),  # too many dimensions
        ((G.astype(np.int64), 4, 3, 3), {}, TypeError),
        ((G.astype(np.complex128), 4, 3, 3), {}, TypeError),
        ((np.where(G > 1, np.nan, G), 4, 3, 3), {}, ValueError),
        ((np.where(G > 1, np.inf, G), 4, 3, 3), {}, ValueError),
        ((G, 4, 3, 2), {}, ValueError),  # K1 + K2 − 1 − K odd
        ((G, 4, 1, 1), {}, ValueError),  # effective size smaller than the kernel
        ((G, 4, (3, 3, 3), 3), {}, ValueError),
        ((G, 4, None, 3), {}, TypeError),
        ((G, 4, 3.0, 3), {}, TypeError),
        ((G, 0, 3, 3), {}, ValueError),
        ((G, -2, 3, 3), {}, ValueError),
        ((G, 2.5, 3, 3), {}, TypeError),
        ((G, 4, 3, 3), {"method": "fast"}, ValueError),
        ((G, 4, 3, 3), {"method": 1}, TypeError),
        ((G, 4, 3, 3), {"max_iter": 0}, ValueError),
        ((G, 4, 3, 3), {"tol": -1.0}, ValueError),
        ((G, 4, 3, 3), {"tol": "small"}, TypeError),
        ((G, 4, 3, 3), {"allow_approximate": 1}, TypeError),
        ((G, 4, 3, 3), {"seed": -1}, ValueError),
        ((G, 4, 3, 3), {"seed": 1.5}, TypeError),
        ((G[:, :, 0, 0], 4, 3, 1), {}, ValueError),  # a linear layer has no kernel
        (("G", 4, 3, 3), {}, TypeError),
    ],
)
def test_bad_input(args, kwargs, exc):
    copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    with pytest.raises(exc):
        morph_depth(*args, **kwargs)
    for a, c in zip(args, copies):
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, c, equal_nan=a.dtype.kind in "fc")


@pytest.mark.parametrize("method", ["general", "practical"])
def test_inputs_not_modified(method):
    g = np.random.default_rng(0).standard_normal((3, 3, 3, 3))
    before = g.copy()
    r = morph_depth(g, 9, 3, 3, method=method, seed=0)
    assert np.array_equal(g, before)
    assert not any(np.shares_memory(f, g) for f in r.filters)


def test_non_contiguous_input():
    g = np.random.default_rng(0).standard_normal((3, 3, 3, 3)).transpose(1, 0, 3, 2)
    r = morph_depth(g, 9, 3, 3, seed=0)
    assert r.exact and nm.residual(g, r.filters[1], r.filters[0]) <= TOL64
