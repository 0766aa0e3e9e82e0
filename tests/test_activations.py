"""Parametric activations φ^a = (1 − a)·φ + a·x: the named bases, the end points, the errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from netmorph_core.activations import ACTIVATIONS, p_activation, zero_preserving

torch = pytest.importorskip("torch")
F = torch.nn.functional

TORCH_REFERENCE = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "silu": F.silu,
}
BASES = [*sorted(ACTIVATIONS), np.sin, lambda x: x * x + 1.0]
X = np.linspace(-8.0, 8.0, 161)


def test_names():
    assert set(ACTIVATIONS) == set(TORCH_REFERENCE)
    with pytest.raises(TypeError):
        ACTIVATIONS["relu"] = np.sin  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(TORCH_REFERENCE))
@pytest.mark.parametrize(("dtype", "atol"), [(np.float64, 1e-15), (np.float32, 1e-6)])
def test_named_bases_match_torch(name, dtype, atol):
    x = X.astype(dtype)
    got = ACTIVATIONS[name](x)
    want = TORCH_REFERENCE[name](torch.from_numpy(x)).numpy()
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    assert np.array_equal(x, X.astype(dtype))


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_end_points_are_exact(base, dtype):
    x = X.astype(dtype)
    phi = ACTIVATIONS[base] if isinstance(base, str) else base
    one, zero = p_activation(base, 1.0)(x), p_activation(base, 0)(x)
    assert one.dtype == zero.dtype == dtype
    assert np.array_equal(one, x)
    assert np.array_equal(zero, phi(x))


@settings(max_examples=30, deadline=None)
@given(
    x=hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=4), elements=st.floats(-50, 50)),
    a=st.floats(-2.0, 3.0),
    name=st.sampled_from(sorted(ACTIVATIONS)),
)
def test_interpolation(x, a, name):
    got = p_activation(name, a)(x)
    phi = TORCH_REFERENCE[name](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, (1 - a) * phi + a * x, rtol=1e-12, atol=1e-12)
    assert np.array_equal(p_activation(name, 1.0)(x), x)


def test_relu_family_is_prelu():
    x = X.copy()
    for a in (0.0, 0.25, 1.0):
        want = F.prelu(torch.from_numpy(x), torch.tensor([a], dtype=torch.float64)).numpy()
        np.testing.assert_allclose(p_activation("relu", a)(x), want, rtol=0, atol=1e-15)


def test_integer_a_and_numpy_scalar_keep_dtype():
    x = X.astype(np.float32)
    assert p_activation("tanh", np.float64(0.5))(x).dtype == np.float32
    assert p_activation("tanh", np.int64(1))(x).dtype == np.float32


def test_zero_preserving():
    expected = {
        "relu": True,
        "leaky_relu": True,
        "elu": True,
        "tanh": True,
        "gelu": True,
        "silu": True,
        "sigmoid": False,
    }
    assert {name: zero_preserving(name) for name in ACTIVATIONS} == expected
    assert zero_preserving(np.sin)
    assert not zero_preserving(lambda x: x * x + 1.0)
    # φ^1 is the identity, so even the sigmoid family preserves zero at a = 1.
    assert zero_preserving(p_activation("sigmoid", 1.0))
    assert not zero_preserving(p_activation("sigmoid", 0.5))


def test_bad_input():
    with pytest.raises(ValueError, match="relu") as info:
        p_activation("swish", 0.5)
    assert all(name in str(info.value) for name in ACTIVATIONS)
    with pytest.raises(ValueError, match="unknown"):
        zero_preserving("softplus")
    with pytest.raises(TypeError, match="callable"):
        p_activation(3, 0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        zero_preserving(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a must"):
        p_activation("relu", "0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a must"):
        p_activation("relu", True)
    with pytest.raises(TypeError, match="a must"):
        p_activation("relu", np.array([0.5]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        p_activation("relu", float("nan"))
    with pytest.raises(ValueError, match="one value"):
        zero_preserving(lambda x: np.zeros(3))


@pytest.mark.parametrize(
    ("name", "base"),
    [("PReLU", "relu"), ("PTanh", "tanh"), ("psigmoid", "sigmoid"), ("GELU", "gelu")],
)
def test_paper_names(name, base):
    np.testing.assert_array_equal(p_activation(name, 0.3)(X), p_activation(base, 0.3)(X))
    assert zero_preserving(name) == zero_preserving(base)


def test_unknown_name_lists_paper_names():
    with pytest.raises(ValueError, match="PReLU, PLeakyReLU, PELU, PTanh, PSigmoid"):
        p_activation("swish", 0.5)


def test_in_place_callable_never_writes_into_x():
    x = X.copy()
    y = p_activation(lambda v: np.maximum(v, 0, out=v), 1.0)(x)
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(y, X)
