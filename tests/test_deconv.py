"""Deconvolution: exact where solvable, least squares where overdetermined, nearest to init."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import netmorph_core as nm
from netmorph_core.reference import outer_operator, pad_centered


def test_outer_exact_when_underdetermined(rng):
    # C1·K1² = 8·9 = 72 unknowns per column >= C2·Kt² = 2·25 = 50 equations.
    g = rng.standard_normal((2, 3, 3, 3))
    f2 = rng.standard_normal((2, 8, 3, 3))
    x = nm.deconv(g, outer=f2, kernel_size=3)
    assert x.shape == (8, 3, 3, 3)
    assert nm.residual(g, f2, x) <= 1e-12


def test_inner_exact_when_underdetermined(rng):
    g = rng.standard_normal((3, 2, 3, 3))
    f1 = rng.standard_normal((8, 2, 3, 3))
    x = nm.deconv(g, inner=f1, kernel_size=3)
    assert x.shape == (3, 8, 3, 3)
    assert nm.residual(g, x, f1) <= 1e-12


def test_outer_overdetermined_equals_lstsq(rng):
    g = rng.standard_normal((6, 3, 3, 3))
    f2 = rng.standard_normal((6, 2, 3, 3))
    x = nm.deconv(g, outer=f2, kernel_size=1)
    a = outer_operator(f2, (1, 1))
    b = g.transpose(0, 2, 3, 1).reshape(-1, 3)
    expected = np.linalg.lstsq(a, b, rcond=None)[0].reshape(2, 1, 1, 3).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x, expected, rtol=1e-10, atol=1e-12)
    assert nm.residual(g, f2, x) > 0.1  # genuinely not representable


def test_underdetermined_nearest_to_init(rng):
    g = rng.standard_normal((2, 2, 3))
    f2 = rng.standard_normal((2, 6, 1))
    init = rng.standard_normal((6, 2, 3))
    x = nm.deconv(g, outer=f2, kernel_size=3, init=init)
    x_min = nm.deconv(g, outer=f2, kernel_size=3)
    assert nm.residual(g, f2, x) <= 1e-12
    # x − init is orthogonal to the null space, so it is the closest exact solution to init.
    a = outer_operator(f2, (3,))
    null = np.linalg.svd(a)[2][np.linalg.matrix_rank(a) :]
    delta = (x - init).transpose(0, 2, 1).reshape(-1, 2)
    assert np.abs(null @ delta).max() <= 1e-10
    assert np.linalg.norm(x - init) < np.linalg.norm(x_min - init)
    # The minimum-norm solution has no component in the null space.
    assert np.abs(null @ x_min.transpose(0, 2, 1).reshape(-1, 2)).max() <= 1e-10


def test_linear_case(rng):
    g = rng.standard_normal((3, 4))
    f2 = rng.standard_normal((3, 5))
    x = nm.deconv(g, outer=f2, kernel_size=())
    np.testing.assert_allclose(f2 @ x, g, rtol=1e-12, atol=1e-12)


def test_pads_g_to_effective_size(rng):
    g = rng.standard_normal((2, 2, 1, 1))
    f2 = rng.standard_normal((2, 9, 3, 3))
    x = nm.deconv(g, outer=f2, kernel_size=(3, 3))
    kt = nm.compose(f2, x)
    np.testing.assert_allclose(kt, pad_centered(g, (5, 5)), atol=1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(rng, dtype):
    g = rng.standard_normal((2, 3, 3, 3)).astype(dtype)
    f2 = rng.standard_normal((2, 8, 3, 3)).astype(dtype)
    x = nm.deconv(g, outer=f2, kernel_size=3)
    assert x.dtype == dtype
    assert nm.residual(g, f2, x) <= {np.float32: 1e-5, np.float64: 1e-12}[dtype]


@settings(max_examples=20, deadline=None)
@given(
    c0=st.integers(1, 3),
    c2=st.integers(2, 3),
    k=st.sampled_from([1, 3]),
    k2=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_exact_when_f1_side_condition_holds(c0, c2, k, k2, seed):
    # With a single output channel (C2 = 1) the K1² ≥ Kt² count is not enough in 2-D: the C1
    # bivariate polynomials of F2 can share zeros, so A loses rank. C2 ≥ 2 avoids that corner.
    r = np.random.default_rng(seed)
    k1 = k + 2 - k2 + 1 if (k + 2 - k2 + 1) >= 1 else 1  # some K1 with K1 + K2 - 1 >= K
    kt = k1 + k2 - 1
    if kt < k or (kt - k) % 2:
        k1 += 1
        kt += 1
    c1 = -(-c2 * kt * kt // (k1 * k1))  # smallest C1 with C1·K1² >= C2·Kt²
    g = r.standard_normal((c2, c0, k, k))
    f2 = r.standard_normal((c2, c1, k2, k2))
    x = nm.deconv(g, outer=f2, kernel_size=k1)
    assert nm.residual(g, f2, x) <= 1e-9


def test_fixed_seed_results_are_deterministic(rng):
    g = rng.standard_normal((2, 3, 3, 3))
    f2 = rng.standard_normal((2, 8, 3, 3))
    first = nm.deconv(g, outer=f2, kernel_size=3)
    assert np.array_equal(first, nm.deconv(g, outer=f2, kernel_size=3))


def test_inputs_unchanged(rng):
    g = rng.standard_normal((2, 3, 3, 3))
    f2 = rng.standard_normal((2, 8, 3, 3))
    init = rng.standard_normal((8, 3, 3, 3))
    copies = [a.copy() for a in (g, f2, init)]
    nm.deconv(g, outer=f2, kernel_size=3, init=init)
    assert all(np.array_equal(a, b) for a, b in zip((g, f2, init), copies))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"outer": np.ones((2, 3, 3, 3)), "inner": np.ones((3, 2, 3, 3))},
            ValueError,
            "exactly one",
        ),
        ({}, ValueError, "exactly one"),
        ({"outer": np.ones((3, 3, 3, 3))}, ValueError, "output channels"),
        ({"inner": np.ones((3, 4, 3, 3))}, ValueError, "input channels"),
        ({"outer": np.ones((2, 3, 2, 2))}, ValueError, "must be even"),
        ({"outer": np.ones((2, 3, 1, 1)), "kernel_size": 1}, ValueError, "smaller than"),
        ({"outer": np.ones((2, 3, 3, 3)), "kernel_size": (3, 3, 3)}, ValueError, "kernel sizes"),
        ({"outer": np.ones((2, 3, 3, 3)), "kernel_size": 1.5}, TypeError, "kernel_size"),
        ({"outer": np.ones((2, 3, 3, 3)), "kernel_size": 0}, ValueError, "positive"),
        ({"outer": np.ones((2, 3, 3, 3)), "init": np.ones((3, 3, 3, 3))}, ValueError, "init must"),
        ({"outer": np.ones((2, 3, 3, 3), dtype=np.int64)}, TypeError, "outer must have dtype"),
    ],
)
def test_bad_input(kwargs, error, match):
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(error, match=match):
        nm.deconv(np.ones((2, 2, 3, 3)), **kwargs)


def test_residual_checks_shapes():
    with pytest.raises(ValueError, match="channels"):
        nm.residual(np.ones((3, 3, 3, 3)), np.ones((2, 4, 3, 1)), np.ones((4, 3, 1, 3)))
