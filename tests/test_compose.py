"""The ⊛ operator against independent oracles: scipy.signal.convolve loops and torch conv."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import convolve

import netmorph_core as nm
from conftest import RTOL, rel_err


def compose_by_loops(f2: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """G[o, i] = Σ_m full_convolution(F2[o, m], F1[m, i]) by explicit loops."""
    c2, c1 = f2.shape[:2]
    c0 = f1.shape[1]
    kt = tuple(a + b - 1 for a, b in zip(f1.shape[2:], f2.shape[2:]))
    g = np.zeros((c2, c0, *kt))
    for o, i, m in itertools.product(range(c2), range(c0), range(c1)):
        g[o, i] += convolve(f2[o, m], f1[m, i], mode="full", method="direct")
    return g


SHAPES = [
    # (C2, C1, C0, K2, K1)
    (3, 4, 2, (3,), (5,)),
    (1, 1, 1, (1, 1), (1, 1)),
    (5, 3, 7, (3, 3), (3, 3)),
    (2, 5, 3, (2, 3), (1, 4)),
    (4, 2, 3, (1, 1), (5, 5)),
    (2, 3, 2, (3, 1, 2), (2, 3, 3)),
]


@pytest.mark.parametrize(("c2", "c1", "c0", "k2", "k1"), SHAPES)
def test_compose_matches_scipy_loops(rng, c2, c1, c0, k2, k1):
    f2 = rng.standard_normal((c2, c1, *k2))
    f1 = rng.standard_normal((c1, c0, *k1))
    g = nm.compose(f2, f1)
    assert g.shape == (c2, c0, *(a + b - 1 for a, b in zip(k1, k2)))
    assert rel_err(g, compose_by_loops(f2, f1)) <= 1e-13


def test_compose_linear_is_matrix_product(rng):
    f2 = rng.standard_normal((6, 4))
    f1 = rng.standard_normal((4, 5))
    np.testing.assert_allclose(nm.compose(f2, f1), f2 @ f1, rtol=1e-13, atol=0)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_compose_matches_torch_formula(rng, dims):
    torch = pytest.importorskip("torch")
    conv = {
        1: torch.nn.functional.conv1d,
        2: torch.nn.functional.conv2d,
        3: torch.nn.functional.conv3d,
    }[dims]
    k1 = (3, 2, 1)[:dims]
    k2 = (2, 3, 3)[:dims]
    f1 = rng.standard_normal((4, 3, *k1))
    f2 = rng.standard_normal((5, 4, *k2))
    flip = tuple(range(2, 2 + dims))
    expected = conv(
        torch.from_numpy(f1).transpose(0, 1),
        torch.from_numpy(f2).flip(flip),
        padding=tuple(k - 1 for k in k2),
    ).transpose(0, 1)
    assert rel_err(nm.compose(f2, f1), expected.numpy()) <= 1e-13


def test_compose_is_associative(rng):
    f1 = rng.standard_normal((3, 2, 3, 3))
    f2 = rng.standard_normal((4, 3, 1, 3))
    f3 = rng.standard_normal((2, 4, 3, 1))
    left = nm.compose(f3, nm.compose(f2, f1))
    right = nm.compose(nm.compose(f3, f2), f1)
    assert rel_err(left, right) <= 1e-13


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compose_dtype_and_tolerance(rng, dtype):
    f2 = rng.standard_normal((6, 5, 3, 3)).astype(dtype)
    f1 = rng.standard_normal((5, 4, 3, 3)).astype(dtype)
    g = nm.compose(f2, f1)
    assert g.dtype == dtype
    reference = compose_by_loops(f2.astype(np.float64), f1.astype(np.float64))
    assert rel_err(g, reference) <= RTOL[np.dtype(dtype)]


def test_compose_mixed_dtypes_promote(rng):
    f2 = rng.standard_normal((2, 3, 3)).astype(np.float32)
    f1 = rng.standard_normal((3, 2, 3))
    assert nm.compose(f2, f1).dtype == np.float64


@settings(max_examples=25, deadline=None)
@given(
    c=st.tuples(*[st.integers(1, 4)] * 3),
    k1=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    k2=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    seed=st.integers(0, 2**32 - 1),
)
def test_compose_property_matches_loops(c, k1, k2, seed):
    r = np.random.default_rng(seed)
    f2 = r.standard_normal((c[2], c[1], *k2))
    f1 = r.standard_normal((c[1], c[0], *k1))
    assert rel_err(nm.compose(f2, f1), compose_by_loops(f2, f1)) <= 1e-13


def test_compose_leaves_inputs_unchanged(rng):
    f2 = rng.standard_normal((3, 2, 3, 3))
    f1 = rng.standard_normal((2, 4, 3, 3))
    copies = f2.copy(), f1.copy()
    nm.compose(f2, f1)
    assert np.array_equal(f2, copies[0]) and np.array_equal(f1, copies[1])


@pytest.mark.parametrize(
    ("f2", "f1", "error", "match"),
    [
        (np.ones((2, 3, 3, 3)), np.ones((4, 2, 3, 3)), ValueError, "input channels"),
        (np.ones((2, 3, 3)), np.ones((3, 2, 3, 3)), ValueError, "same number of dimensions"),
        (np.ones((2, 3, 3, 3), dtype=int), np.ones((3, 2, 3, 3)), TypeError, "F2 must have dtype"),
        (np.ones((2, 3), dtype=complex), np.ones((3, 2)), TypeError, "complex"),
        (np.ones(3), np.ones((3, 2)), ValueError, "F2 must have 2 to 5 dimensions"),
        (np.full((2, 3), np.nan), np.ones((3, 2)), ValueError, "NaN or Inf"),
        (np.ones((2, 3)), np.full((3, 2), np.inf), ValueError, "F1 contains NaN or Inf"),
        ("abc", np.ones((3, 2)), TypeError, "F2 must be a NumPy array"),
        (np.ones((2, 3, 0)), np.ones((3, 2, 1)), ValueError, "empty"),
        (np.ones((2, 3), dtype=np.float16), np.ones((3, 2)), TypeError, "float32 or float64"),
    ],
)
def test_compose_bad_input(f2, f1, error, match):
    with pytest.raises(error, match=match):
        nm.compose(f2, f1)


def test_compose_unknown_backend():
    with pytest.raises(ValueError, match="backend must be"):
        nm.compose(np.ones((2, 2)), np.ones((2, 2)), backend="fortran")
