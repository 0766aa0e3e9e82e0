"""Width morphing: exact on real forward passes, zero-side rules, permutation, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netmorph_core.activations import ACTIVATIONS, p_activation
from netmorph_core.morph import WidthResult, morph_width
from netmorph_core.reference import compose_ref

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = {np.float64: 1e-12, np.float32: 1e-5}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


def linear_net(x, f1, b1, f2, phi):
    """x (N, C0) -> φ(x F1ᵀ + b1) F2ᵀ."""
    h = x @ f1.T
    if b1 is not None:
        h = h + b1
    return phi(h) @ f2.T


def conv(x: np.ndarray, w: np.ndarray, b=None, **kw) -> np.ndarray:
    """Cross-correlation with torch's convNd (the layer a network actually runs)."""
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[w.ndim - 2]
    tb = None if b is None else torch.from_numpy(b)
    return fn(torch.from_numpy(x), torch.from_numpy(w), tb, **kw).numpy()


def conv_net(x, f1, b1, f2, phi, padding1=0, padding2=0, stride=1):
    return conv(phi(conv(x, f1, b1, padding=padding1, stride=stride)), f2, padding=padding2)


def rand(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


@settings(max_examples=25, deadline=None)
@given(
    ndim=st.integers(0, 2),
    c0=st.integers(1, 3),
    c1=st.integers(1, 4),
    c2=st.integers(1, 3),
    k1=st.integers(1, 3),
    k2=st.integers(1, 3),
    extra=st.integers(0, 4),
    side=st.sampled_from(["inner", "outer", "auto"]),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_composition_preserved_random_shapes(ndim, c0, c1, c2, k1, k2, extra, side, dtype, seed):
    rng = np.random.default_rng(seed)
    f1 = rand(rng, (c1, c0, *(k1,) * ndim), dtype)
    f2 = rand(rng, (c2, c1, *(k2,) * ndim), dtype)
    b1 = rand(rng, (c1,), dtype)
    f1_copy, f2_copy, b1_copy = f1.copy(), f2.copy(), b1.copy()

    r = morph_width(f1, f2, c1 + extra, b1=b1, zero_side=side, seed=seed)

    assert r.f1.shape == (c1 + extra, c0, *(k1,) * ndim) and r.f1.dtype == dtype
    assert r.f2.shape == (c2, c1 + extra, *(k2,) * ndim) and r.f2.dtype == dtype
    assert r.b1.shape == (c1 + extra,) and r.b1.dtype == dtype
    assert np.array_equal(np.sort(r.permutation), np.arange(c1 + extra))
    assert np.array_equal(r.new_channels, r.permutation >= c1)
    assert r.new_channels.sum() == extra
    old = ~r.new_channels
    assert np.array_equal(r.f1[old], f1[r.permutation[old]])
    assert np.array_equal(r.b1[old], b1[r.permutation[old]])
    assert np.array_equal(r.f2[:, old], f2[:, r.permutation[old]])
    if r.zero_side == "inner":
        assert not r.f1[r.new_channels].any() and not r.b1[r.new_channels].any()
    else:
        assert not r.f2[:, r.new_channels].any()
    assert rel_err(compose_ref(r.f2, r.f1), compose_ref(f2, f1)) <= RTOL[dtype]
    assert r.exact
    assert np.array_equal(f1, f1_copy) and np.array_equal(f2, f2_copy)
    assert np.array_equal(b1, b1_copy)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("act", ["relu", "tanh", "gelu", "elu"])
@pytest.mark.parametrize("side", ["inner", "outer", "auto"])
def test_linear_forward_preserved(dtype, act, side):
    rng = np.random.default_rng(0)
    f1, b1, f2 = rand(rng, (4, 5), dtype), rand(rng, (4,), dtype), rand(rng, (3, 4), dtype)
    x = rand(rng, (7, 5), dtype)
    phi = ACTIVATIONS[act]
    r = morph_width(f1, f2, 9, b1=b1, zero_side=side, seed=1)
    got = linear_net(x, r.f1, r.b1, r.f2, phi)
    assert got.dtype == dtype
    assert rel_err(got, linear_net(x, f1, b1, f2, phi)) <= RTOL[dtype]


def test_sigmoid_only_outer_is_exact():
    """φ(0) = 1/2 for sigmoid: zeroed F1 rows give non-zero channels, only 'outer' is exact."""
    rng = np.random.default_rng(1)
    f1, b1, f2 = rand(rng, (3, 4)), rand(rng, (3,)), rand(rng, (2, 3))
    x = rand(rng, (6, 4))
    sig = ACTIVATIONS["sigmoid"]
    want = linear_net(x, f1, b1, f2, sig)

    for side in ("outer", "auto"):
        r = morph_width(f1, f2, 8, b1=b1, zero_side=side, zero_preserving=False, seed=2)
        assert r.zero_side == "outer"
        assert rel_err(linear_net(x, r.f1, r.b1, r.f2, sig), want) <= 1e-12
    with pytest.raises(ValueError, match="zero_preserving"):
        morph_width(f1, f2, 8, b1=b1, zero_side="inner", zero_preserving=False)
    # The rule matters: zeroing F1's rows under sigmoid changes the function.
    wrong = morph_width(f1, f2, 8, b1=b1, zero_side="inner", zero_preserving=True, seed=2)
    assert rel_err(linear_net(x, wrong.f1, wrong.b1, wrong.f2, sig), want) > 1e-3


def test_p_activation_between_layers_preserved():
    """A P-activation with a < 1 of a zero-preserving φ still maps 0 to 0."""
    rng = np.random.default_rng(2)
    f1, f2 = rand(rng, (3, 4)), rand(rng, (5, 3))
    x = rand(rng, (6, 4))
    phi = p_activation("tanh", 0.3)
    r = morph_width(f1, f2, 7, zero_side="inner", seed=0)
    assert rel_err(linear_net(x, r.f1, None, r.f2, phi), linear_net(x, f1, None, f2, phi)) <= 1e-12


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize(
    ("side", "act"), [("inner", "tanh"), ("outer", "sigmoid"), ("auto", "relu")]
)
def test_conv_forward_preserved(dtype, ndim, side, act):
    rng = np.random.default_rng(ndim)
    f1 = rand(rng, (3, 2, *(3,) * ndim), dtype)
    b1 = rand(rng, (3,), dtype)
    f2 = rand(rng, (2, 3, *(1 if ndim == 3 else 3,) * ndim), dtype)
    x = rand(rng, (2, 2, *(6,) * ndim), dtype) * 4
    zp = act != "sigmoid"
    phi = ACTIVATIONS[act]
    r = morph_width(f1, f2, 6, b1=b1, zero_side=side, zero_preserving=zp, seed=3)
    kw = {"padding1": 1, "padding2": 1, "stride": 2}
    got = conv_net(x, r.f1, r.b1, r.f2, phi, **kw)
    assert rel_err(got, conv_net(x, f1, b1, f2, phi, **kw)) <= RTOL[dtype]


def test_batchnorm_between_widened_with_widen_channels():
    """A per-channel BN (eval) widened by widen_channels with 0 ↦ 0 parameters stays exact."""
    rng = np.random.default_rng(4)
    f1, b1, f2 = rand(rng, (3, 2, 3, 3)), rand(rng, (3,)), rand(rng, (4, 3, 3, 3))
    mean, var = rand(rng, (3,)), rng.uniform(0.5, 2.0, 3)
    gamma, beta = rand(rng, (3,)), rand(rng, (3,))
    x = rand(rng, (2, 2, 7, 7))

    def net(f1_, b1_, f2_, mean_, var_, gamma_, beta_):
        h = conv(x, f1_, b1_, padding=1)
        h = F.batch_norm(
            torch.from_numpy(h),
            *map(torch.from_numpy, (mean_, var_, gamma_, beta_)),
            training=False,
            eps=1e-5,
        ).numpy()
        return conv(np.maximum(h, 0), f2_, padding=1)

    r = morph_width(f1, f2, 8, b1=b1, zero_side="inner", seed=5)
    widened = (
        r.widen_channels(mean, 0.0),
        r.widen_channels(var, 1.0),
        r.widen_channels(gamma, 1.0),
        r.widen_channels(beta, 0.0),
    )
    assert np.array_equal(r.widen_channels(b1, 0.0), r.b1)
    got = net(r.f1, r.b1, r.f2, *widened)
    assert rel_err(got, net(f1, b1, f2, mean, var, gamma, beta)) <= 1e-12
    with pytest.raises(ValueError, match="3 entries"):
        r.widen_channels(np.zeros(4))


def test_permutation_seeded_and_random():
    rng = np.random.default_rng(6)
    f1, f2 = rand(rng, (4, 3)), rand(rng, (2, 4))
    a = morph_width(f1, f2, 16, seed=11)
    b = morph_width(f1, f2, 16, seed=11)
    c = morph_width(f1, f2, 16, seed=12)
    assert np.array_equal(a.permutation, b.permutation)
    assert np.array_equal(a.f1, b.f1) and np.array_equal(a.f2, b.f2)
    assert not np.array_equal(a.permutation, c.permutation)
    assert not np.array_equal(a.permutation, np.arange(16))
    # The new channels are spread, not all at the end.
    assert not a.new_channels[4:].all()
    g = morph_width(f1, f2, 16, seed=np.random.default_rng(11))
    assert np.array_equal(g.permutation, a.permutation)


def test_auto_zeroes_the_smaller_side():
    rng = np.random.default_rng(7)
    # F1 rows: C0 = 2 params per new channel; F2 columns: C2 * 9 = 18.
    f1, f2 = rand(rng, (3, 2, 1, 1)), rand(rng, (2, 3, 3, 3))
    assert morph_width(f1, f2, 5, seed=0).zero_side == "inner"
    assert morph_width(f1, f2, 5, zero_preserving=False, seed=0).zero_side == "outer"
    # F1 rows: 8 * 9 = 72 params; F2 columns: 2.
    f1, f2 = rand(rng, (3, 8, 3, 3)), rand(rng, (2, 3, 1, 1))
    assert morph_width(f1, f2, 5, seed=0).zero_side == "outer"
    # A tie goes to "outer" (exact for any activation).
    f1, f2 = rand(rng, (3, 2)), rand(rng, (2, 3))
    assert morph_width(f1, f2, 5, seed=0).zero_side == "outer"
    # The bias counts as a parameter of F1's side: 1 + 1 > 1.
    f1, f2 = rand(rng, (3, 1)), rand(rng, (2, 3))
    assert morph_width(f1, f2, 5, seed=0).zero_side == "inner"
    assert morph_width(f1, f2, 5, b1=rand(rng, (3,)), seed=0).zero_side == "outer"


def test_noise_scale():
    rng = np.random.default_rng(8)
    f1, f2 = rand(rng, (2, 50)) * 3.0, rand(rng, (60, 2)) * 0.5
    b1 = rand(rng, (2,)) * 2.0
    outer = morph_width(f1, f2, 42, b1=b1, zero_side="outer", seed=0)
    new_rows = outer.f1[outer.new_channels]
    assert np.count_nonzero(new_rows) == new_rows.size
    assert np.std(new_rows) == pytest.approx(np.std(f1), rel=0.1)
    assert np.count_nonzero(outer.b1[outer.new_channels]) == 40
    inner = morph_width(f1, f2, 42, zero_side="inner", seed=0)
    assert np.std(inner.f2[:, inner.new_channels]) == pytest.approx(np.std(f2), rel=0.1)
    given_scale = morph_width(f1, f2, 42, zero_side="inner", scale=0.01, seed=0)
    assert np.std(given_scale.f2[:, given_scale.new_channels]) == pytest.approx(0.01, rel=0.1)
    # A filter whose entries are all equal has std 0: its RMS is used.
    const = morph_width(np.full((2, 3), 2.0), f2[:5], 200, zero_side="outer", seed=0)
    assert np.std(const.f1[const.new_channels]) == pytest.approx(2.0, rel=0.1)


def test_same_width_only_permutes():
    rng = np.random.default_rng(9)
    f1, f2 = rand(rng, (5, 3, 3)), rand(rng, (2, 5, 3))
    r = morph_width(f1, f2, 5, seed=1)
    assert not r.new_channels.any()
    assert rel_err(compose_ref(r.f2, r.f1), compose_ref(f2, f1)) <= 1e-12
    assert isinstance(r, WidthResult)


def test_result_is_frozen():
    r = morph_width(np.ones((2, 2)), np.ones((2, 2)), 3, seed=0)
    with pytest.raises(AttributeError):
        r.zero_side = "inner"  # type: ignore[misc]


def test_bad_input():
    f1, f2, b1 = np.ones((3, 2)), np.ones((4, 3)), np.ones(3)
    before = (f1.copy(), f2.copy(), b1.copy())
    cases = [
        (ValueError, "width", dict(width=2)),
        (TypeError, "width", dict(width=4.0)),
        (TypeError, "width", dict(width=True)),
        (ValueError, "zero_side", dict(zero_side="both")),
        (ValueError, "zero_preserving", dict(zero_side="inner", zero_preserving=False)),
        (TypeError, "zero_preserving", dict(zero_preserving="yes")),
        (ValueError, "b1", dict(b1=np.ones(4))),
        (TypeError, "b1", dict(b1=[1.0, 2.0, 3.0])),
        (TypeError, "b1", dict(b1=np.ones(3, dtype=np.int64))),
        (ValueError, "b1", dict(b1=np.array([1.0, np.nan, 0.0]))),
        (ValueError, "seed", dict(seed=-1)),
        (TypeError, "seed", dict(seed="abc")),
        (ValueError, "scale", dict(scale=-1.0)),
        (ValueError, "scale", dict(scale=float("inf"))),
        (TypeError, "scale", dict(scale="big")),
    ]
    for exc, match, kw in cases:
        args = {"width": 5, "b1": b1, **kw}
        with pytest.raises(exc, match=match):
            morph_width(f1, f2, **args)
    with pytest.raises(ValueError, match="input channels"):
        morph_width(f1, np.ones((4, 2)), 5)
    with pytest.raises(ValueError, match="dimensions"):
        morph_width(f1, np.ones((4, 3, 3)), 5)
    with pytest.raises(TypeError, match="F1"):
        morph_width(np.ones((3, 2), dtype=np.int32), f2, 5)
    with pytest.raises(TypeError, match="F2"):
        morph_width(f1, "f2", 5)
    for arr, orig in zip((f1, f2, b1), before, strict=True):
        assert np.array_equal(arr, orig)
