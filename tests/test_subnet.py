"""Sequential and stacked subnet morphing, the two-sided deconvolution and filter splitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netmorph_core.backends import get_backend
from netmorph_core.morph import chain as subnet_module
from netmorph_core.morph.depth import compose_chain, morph_depth, scale_of
from netmorph_core.morph.split import morph_stacked, split_filter
from netmorph_core.morph.subnet import chain_exact_layers, deconv_two_sided_lsqr, morph_subnet
from netmorph_core.reference import compose_ref, pad_centered, solve_nearest
from netmorph_core.reference.two_sided import deconv_two_sided_ref, two_sided_operator

TOL64 = 1e-10
NUMPY = get_backend("numpy")


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def brute_force_operator(post: np.ndarray, pre: np.ndarray, k: tuple[int, ...]) -> np.ndarray:
    """Column j is Post ⊛ E_j ⊛ Pre for the j-th unit filter E_j (C order)."""
    x_shape = (post.shape[1], pre.shape[0], *k)
    cols = []
    for j in range(math.prod(x_shape)):
        e = np.zeros(math.prod(x_shape))
        e[j] = 1.0
        cols.append(compose_ref(post, compose_ref(e.reshape(x_shape), pre)).ravel())
    return np.stack(cols, axis=1)


def chain_residual(g: np.ndarray, filters) -> float:
    out = compose_chain(filters)
    return rel(out, pad_centered(g.astype(np.float64), out.shape[2:]))


# ---------------------------------------------------------------- two-sided deconvolution

TWO_SIDED = [
    # (post shape, pre shape, k)
    ((2, 3, 2), (2, 2, 2), (2,)),
    ((2, 2, 2, 1), (3, 1, 1, 2), (2, 2)),
    ((3, 2), (2, 3), ()),
    ((1, 2, 1, 1, 2), (2, 2, 2, 1, 1), (1, 2, 1)),
]


@pytest.mark.parametrize(("post_shape", "pre_shape", "k"), TWO_SIDED)
def test_two_sided_operator_equals_brute_force(post_shape, pre_shape, k):
    rng = np.random.default_rng(0)
    post = rng.standard_normal(post_shape)
    pre = rng.standard_normal(pre_shape)
    np.testing.assert_allclose(
        two_sided_operator(post, pre, k), brute_force_operator(post, pre, k), rtol=0, atol=1e-13
    )


@pytest.mark.parametrize(("post_shape", "pre_shape", "k"), TWO_SIDED)
@pytest.mark.parametrize("with_init", [False, True])
def test_two_sided_solve_equals_lstsq(post_shape, pre_shape, k, with_init):
    rng = np.random.default_rng(1)
    post = rng.standard_normal(post_shape)
    pre = rng.standard_normal(pre_shape)
    x_shape = (post.shape[1], pre.shape[0], *k)
    kt = tuple(a + b + c - 2 for a, b, c in zip(post.shape[2:], k, pre.shape[2:]))
    g_tilde = rng.standard_normal((post.shape[0], pre.shape[1], *kt))
    init = rng.standard_normal(x_shape) if with_init else None
    a = brute_force_operator(post, pre, k)
    x0 = None if init is None else init.reshape(-1, 1)
    expected = solve_nearest(a, g_tilde.reshape(-1, 1), x0).reshape(x_shape)
    x = deconv_two_sided_ref(g_tilde, post, pre, k, init)
    np.testing.assert_allclose(x, expected, rtol=1e-10, atol=1e-10)
    if init is not None:
        lsqr_x = deconv_two_sided_lsqr(NUMPY, g_tilde, post, pre, k, init)
        np.testing.assert_allclose(lsqr_x, expected, rtol=1e-7, atol=1e-7)


def test_two_sided_exact_when_underdetermined():
    rng = np.random.default_rng(2)
    post = rng.standard_normal((2, 4, 2))
    pre = rng.standard_normal((4, 2, 2))
    g_tilde = rng.standard_normal((2, 2, 5))  # 20 equations, 4·4·3 = 48 unknowns
    init = rng.standard_normal((4, 4, 3))
    for x in (
        deconv_two_sided_ref(g_tilde, post, pre, (3,), init),
        deconv_two_sided_lsqr(NUMPY, g_tilde, post, pre, (3,), init),
    ):
        assert rel(compose_ref(post, compose_ref(x, pre)), g_tilde) <= 1e-10
        assert np.abs(x).min() > 0


def test_two_sided_operator_size_limit():
    post = np.ones((2, 2, 3))
    pre = np.ones((2, 2, 3))
    with pytest.raises(ValueError, match="max_entries"):
        two_sided_operator(post, pre, (3,), max_entries=100)


# ---------------------------------------------------------------- sequential subnet

GENERAL_CHAINS = [
    # (G shape, layers, layer whose one-solve condition holds)
    ((1, 2, 3), [(3, 3), (3, 3), (1, 3)], 0),
    ((2, 1, 3), [(3, 3), (3, 3), (2, 3)], 2),
    ((1, 1, 1), [(2, 1), (2, 3), (1, 1)], 1),  # only the middle (two-sided) layer
    ((2, 2), [(4, None), (4, 1), (2, ())], 0),
    ((1, 2, 1), [(4, 3), (4, 1), (4, 1), (1, 3)], 0),
    ((1, 1, 1, 1), [(2, 1), (2, (3, 3)), (2, 1), (1, 1)], 1),
    ((1, 1, 1), [(2, 1), (2, 1), (2, 3), (1, 1)], 2),
]


@pytest.mark.parametrize(("shape", "layers", "first"), GENERAL_CHAINS)
def test_general_chain_exact_in_one_solve(shape, layers, first):
    g = np.random.default_rng(3).standard_normal(shape)
    widths = [w for w, _ in layers]
    kernels = [(k,) * (len(shape) - 2) if isinstance(k, int) else k or () for _, k in layers]
    exact = chain_exact_layers(shape[1], widths, kernels)
    n = len(layers)
    assert next(p for p in [0, n - 1, *range(1, n - 1)] if exact[p]) == first
    r = morph_subnet(g, layers, method="general", seed=0)
    assert r.exact and r.iterations == 1 and r.method == "general"
    assert r.residual <= TOL64 and chain_residual(g, r.filters) <= TOL64
    assert r.nonzero_ratio == 1.0
    assert len(r.filters) == len(layers)
    stds = [np.std(f) for f in r.filters]
    assert max(stds) == pytest.approx(min(stds), rel=1e-12)


def test_general_chain_middle_layer_by_lsqr(monkeypatch):
    monkeypatch.setattr(subnet_module, "EXPLICIT_TWO_SIDED_ENTRIES", 0)
    monkeypatch.setattr(subnet_module, "sandwich_solvable", lambda *args: False)
    g = np.random.default_rng(3).standard_normal((1, 1, 1))
    r = morph_subnet(g, [(2, 1), (2, 3), (1, 1)], method="general", seed=0)
    assert r.exact and r.iterations == 1


@pytest.mark.parametrize(
    ("post_shape", "pre_shape", "k"),
    [((3, 5), (4, 2), (3, 3)), ((2, 2), (6, 3), (2,)), ((4, 6), (5, 5), ())],
)
def test_sandwiched_solve_is_the_nearest_exact_layer(post_shape, pre_shape, k):
    """Between pointwise layers (Post onto, Pre one-to-one) a middle layer is solved in closed
    form: exact, and the solution nearest its start (the minimum-norm correction of lstsq on
    the explicit operator)."""
    rng = np.random.default_rng(7)
    post = rng.standard_normal((*post_shape, *(1,) * len(k)))
    pre = rng.standard_normal((*pre_shape, *(1,) * len(k)))
    g = rng.standard_normal((post_shape[0], pre_shape[1], *k))
    init = rng.standard_normal((post_shape[1], pre_shape[0], *k))
    x = subnet_module.deconv_sandwiched(g, post, pre, init)
    assert rel(compose_ref(post, compose_ref(x, pre)), g) <= TOL64
    op = brute_force_operator(post, pre, k)
    rhs = (g - compose_ref(post, compose_ref(init, pre))).ravel()
    want = init + np.linalg.lstsq(op, rhs, rcond=None)[0].reshape(init.shape)
    assert rel(x, want) <= TOL64


def test_general_chain_raises_or_approximates():
    g = np.random.default_rng(0).standard_normal((2, 2, 3))
    layers = [(2, 3), (2, 3), (2, 3)]
    with pytest.raises(ValueError, match="did not reach tol"):
        morph_subnet(g, layers, method="general", seed=0, max_iter=12)
    r = morph_subnet(g, layers, method="general", seed=0, max_iter=12, allow_approximate=True)
    assert not r.exact and r.iterations == 12 and r.residual > 1e-6


PRACTICAL_CHAINS = [
    ((3, 3, 3, 3), [(3, 3), (3, 3), (3, 3)]),
    ((4, 4, 3, 3), [(4, 1), (4, 3), (4, 1)]),  # needs R solved at step 0 (bottleneck)
    ((2, 2, 3, 3), [(2, 1), (2, 3), (2, 1)]),
    ((2, 2, 3), [(2, 3), (2, 3), (2, 3)]),  # the look-ahead must reject the denser R-solved step
    ((2, 2, 3), [(2, 3), (2, 3), (2, 3), (2, 3)]),
    ((2, 3, 3), [(3, 3), (4, 1), (4, 3), (2, 1)]),
    ((2, 2, 3, 1), [(2, (3, 1)), (2, (3, 3)), (2, (1, 3))]),
    ((3, 2), [(3, None), (4, None), (3, None)]),
    ((2, 2, 1, 1, 1), [(2, 1), (2, 3), (2, 1)]),
    ((2, 2, 3), [(3, 4), (3, 2), (2, 1)]),  # odd parity at the first step
    ((2, 2, 3), [(2, 1), (2, 3), (2, 3), (2, 1)]),  # needs the split between layers 1 and 2
    ((1, 1, 3), [(1, 1), (1, 3), (1, 3), (1, 1)]),
]


@pytest.mark.parametrize(("shape", "layers"), PRACTICAL_CHAINS)
def test_practical_chain_exact(shape, layers):
    g = np.random.default_rng(4).standard_normal(shape)
    r = morph_subnet(g, layers, method="practical", seed=0)
    assert r.exact and r.method == "practical"
    assert r.residual <= TOL64 and chain_residual(g, r.filters) <= TOL64
    ins = [shape[1], *(w for w, _ in layers[:-1])]
    for f, (w, _), c_in in zip(r.filters, layers, ins):
        assert f.shape[:2] == (w, c_in)
    assert r.iterations >= len(layers) - 1
    stds = [scale_of(f) for f in r.filters]
    assert max(stds) == pytest.approx(min(stds), rel=1e-12)


def test_practical_chain_raises_or_approximates():
    g = np.random.default_rng(0).standard_normal((4, 4, 3, 3))
    layers = [(2, 3), (2, 3), (4, 3)]
    with pytest.raises(ValueError, match="no tree of practical"):
        morph_subnet(g, layers, method="practical", seed=0)
    r = morph_subnet(g, layers, method="practical", seed=0, allow_approximate=True)
    assert not r.exact and r.residual > 1e-3


@pytest.mark.parametrize("method", ["general", "practical"])
def test_two_layers_equal_morph_depth(method):
    g = np.random.default_rng(0).standard_normal((3, 3, 3, 3))
    a = morph_subnet(g, [(9, 3), (None, 3)], method=method, seed=5)
    b = morph_depth(g, 9, 3, 3, method=method, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a.filters, b.filters))


def test_single_layer_pads():
    g = np.random.default_rng(0).standard_normal((2, 3, 1, 3))
    r = morph_subnet(g, [(2, (3, 5))])
    assert np.array_equal(r.filters[0], pad_centered(g, (3, 5)))
    assert r.exact and r.residual == 0.0 and r.iterations == 0


@settings(max_examples=15, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.lists(st.sampled_from([1, 3]), min_size=2, max_size=4),
    st.integers(0, 2**16),
)
def test_practical_chain_of_expanding_layers(c2, c0, ks, seed):
    # Layers at least as wide as G's channels: the split tree finds an exact decomposition.
    g = np.random.default_rng(seed).standard_normal((c2, c0, max(ks)))
    layers = [(max(c0, c2), k) for k in ks[:-1]] + [(c2, ks[-1])]
    r = morph_subnet(g, layers, method="practical", seed=seed + 1)
    assert r.exact and chain_residual(g, r.filters) <= TOL64


SMALL_CHAINS = [("practical", [(2, 3), (2, 3), (2, 3)]), ("general", [(6, 3), (6, 3), (2, 3)])]


def test_deterministic_given_seed():
    g = np.random.default_rng(0).standard_normal((2, 2, 3))
    for method, layers in SMALL_CHAINS:
        a = morph_subnet(g, layers, method=method, seed=1)
        b = morph_subnet(g, layers, method=method, seed=1)
        c = morph_subnet(g, layers, method=method, seed=2)
        assert all(np.array_equal(x, y) for x, y in zip(a.filters, b.filters))
        assert not all(np.allclose(x, y) for x, y in zip(a.filters, c.filters))


def test_float32_chain():
    g = np.random.default_rng(0).standard_normal((2, 2, 3)).astype(np.float32)
    for method, layers in SMALL_CHAINS:
        r = morph_subnet(g, layers, method=method, seed=0)
        assert r.exact and r.residual <= 1e-5
        assert all(f.dtype == np.float32 for f in r.filters)


G = np.random.default_rng(0).standard_normal((2, 2, 3, 3))


@pytest.mark.parametrize(
    ("layers", "kwargs", "exc"),
    [
        ([(4, 3), (3, 3)], {}, ValueError),  # last width is not C2
        ([], {}, TypeError),
        ("3x3", {}, TypeError),
        ([(4, 3, 1), (2, 3)], {}, TypeError),
        ([(None, 3), (2, 3)], {}, TypeError),  # only the last width may be None
        ([(0, 3), (2, 3)], {}, ValueError),
        ([(4, 3), (2, 2)], {}, ValueError),  # Σ K − P − K odd
        ([(4, 1), (2, 1)], {}, ValueError),  # effective size smaller than K
        ([(4, (3, 3, 3)), (2, 3)], {}, ValueError),
        ([(4, 3), (2, 3)], {"method": "both"}, ValueError),
        ([(4, 3), (2, 3)], {"max_iter": -1}, ValueError),
    ],
)
def test_bad_input(layers, kwargs, exc):
    before = G.copy()
    with pytest.raises(exc):
        morph_subnet(G, layers, **kwargs)
    assert np.array_equal(G, before)


@pytest.mark.parametrize(
    ("g", "exc"),
    [
        (G.astype(np.float16), TypeError),
        (G.astype(np.complex64), TypeError),
        (np.full((2, 2, 3, 3), np.nan), ValueError),
        (np.zeros((2, 2, 3, 3, 1, 1)), ValueError),
    ],
)
def test_bad_filter(g, exc):
    with pytest.raises(exc):
        morph_subnet(g, [(4, 3), (2, 3)])


# ---------------------------------------------------------------- split and stacked


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_split_sums_to_g(dtype, n):
    g = np.random.default_rng(0).standard_normal((3, 2, 3, 3)).astype(dtype)
    before = g.copy()
    bound = 1e-15 if dtype == np.float64 else 1e-6
    for mode in ("equal", "random"):
        parts = split_filter(g, n, seed=0, mode=mode)
        assert len(parts) == n
        assert all(p.shape == g.shape and p.dtype == g.dtype for p in parts)
        total = parts[0].astype(np.float64)
        for p in parts[1:]:
            total = total + p
        assert rel(total, g.astype(np.float64)) <= bound * n
        assert not any(np.shares_memory(p, g) for p in parts)
    assert np.array_equal(g, before)


def test_split_equal_and_random():
    g = np.random.default_rng(0).standard_normal((2, 2, 3))
    equal = split_filter(g, 3, mode="equal")
    assert all(np.array_equal(p, g / 3) for p in equal)
    rand = split_filter(g, 3, seed=0)
    assert not np.allclose(rand[0], rand[1]) and not np.allclose(rand[1], rand[2])
    # Noise on G's scale: each term stays within a few times its share.
    for p in rand:
        assert 0.2 < np.linalg.norm(p) / np.linalg.norm(g / 3) < 5
    again = split_filter(g, 3, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(rand, again))
    other = split_filter(g, 3, seed=1)
    assert not np.allclose(rand[0], other[0])


@pytest.mark.parametrize(
    ("args", "kwargs", "exc"),
    [
        ((np.ones((2, 2)), 0), {}, ValueError),
        ((np.ones((2, 2)), 1.5), {}, TypeError),
        ((np.ones((2, 2)), 2), {"mode": "half"}, ValueError),
        ((np.ones((2, 2), dtype=int), 2), {}, TypeError),
        ((np.ones((2, 2)), 2), {"seed": "x"}, TypeError),
    ],
)
def test_split_bad_input(args, kwargs, exc):
    with pytest.raises(exc):
        split_filter(*args, **kwargs)


@pytest.mark.parametrize("method", ["practical", "general"])
def test_stacked_branches_sum_to_g(method):
    g = np.random.default_rng(0).standard_normal((2, 2, 3, 3))
    if method == "practical":
        branches = [[(2, 3)], [(2, 3), (2, 3)], [(4, 1), (4, 3), (2, 1)]]
    else:
        branches = [[(2, 5)], [(8, 3), (2, 3)], [(8, 3), (8, 1), (2, 3)]]
    results = morph_stacked(g, branches, method=method, seed=0)
    assert len(results) == 3 and all(r.exact for r in results)
    composed = [compose_chain(r.filters) for r in results]
    size = tuple(max(c.shape[d] for c in composed) for d in (2, 3))
    total = sum(pad_centered(c, size) for c in composed)
    assert rel(total, pad_centered(g, size)) <= TOL64
    again = morph_stacked(g, branches, method=method, seed=0)
    assert all(
        np.array_equal(a, b) for r, s in zip(results, again) for a, b in zip(r.filters, s.filters)
    )


def test_stacked_equal_split_single_layers():
    g = np.random.default_rng(0).standard_normal((2, 3))
    results = morph_stacked(g, [[(2, None)], [(2, None)]], split="equal")
    assert all(np.array_equal(r.filters[0], g / 2) for r in results)


@pytest.mark.parametrize(
    ("branches", "kwargs", "exc"),
    [
        ([], {}, TypeError),
        ([[(2, 3)], [(3, 3)]], {}, ValueError),  # second branch ends with the wrong width
        ([[(2, 3)], [(2, 2)]], {}, ValueError),
        ([[(2, 3)]], {"split": "thirds"}, ValueError),
        ([[(2, 3)]], {"method": "x"}, ValueError),
    ],
)
def test_stacked_bad_input(branches, kwargs, exc):
    g = np.random.default_rng(0).standard_normal((2, 2, 3, 3))
    with pytest.raises(exc):
        morph_stacked(g, branches, **kwargs)
