"""The Net2Net baselines: IdMorph and Net2WiderNet, on real forward passes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netmorph_core.activations import ACTIVATIONS
from netmorph_core.morph import MorphResult, Net2NetWidthResult, idmorph, net2net_widen
from netmorph_core.reference import compose_ref, pad_centered

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = {np.float64: 1e-12, np.float32: 1e-5}


def conv(x: np.ndarray, w: np.ndarray, b=None, **kw) -> np.ndarray:
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[w.ndim - 2]
    tb = None if b is None else torch.from_numpy(b)
    return fn(torch.from_numpy(x), torch.from_numpy(w), tb, **kw).numpy()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


def scaled_err(actual: np.ndarray, expected: np.ndarray, magnitude: np.ndarray) -> float:
    """‖actual − expected‖ / max(‖magnitude‖, tiny) in float64: the error relative to the
    size of the terms summed into ``expected`` (a tiny floor: an all-zero ``magnitude`` asks
    for exact agreement)."""
    diff = np.asarray(actual, np.float64) - np.asarray(expected, np.float64)
    scale = max(float(np.linalg.norm(np.asarray(magnitude, np.float64))), np.finfo(float).tiny)
    return float(np.linalg.norm(diff)) / scale


def rand(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


# IdMorph ----------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    ndim=st.integers(0, 3),
    c0=st.integers(1, 4),
    c2=st.integers(1, 4),
    k=st.integers(1, 3),
    k_id=st.sampled_from([1, 3]),
    position=st.sampled_from(["after", "before"]),
    dtype=st.sampled_from([np.float64, np.float32]),
)
def test_idmorph_composes_to_g(ndim, c0, c2, k, k_id, position, dtype):
    k_id = k_id if ndim else 1
    g = rand(np.random.default_rng(ndim * 100 + c0 * 10 + c2), (c2, c0, *(k,) * ndim), dtype)
    g_copy = g.copy()
    r = idmorph(g, k_id, position=position)
    assert isinstance(r, MorphResult)
    assert (r.method, r.iterations, r.exact, r.residual) == ("idmorph", 0, True, 0.0)
    f1, f2 = r.filters
    assert f1.dtype == f2.dtype == dtype
    ident, kept = (f2, f1) if position == "after" else (f1, f2)
    c = c2 if position == "after" else c0
    assert ident.shape == (c, c, *(k_id,) * ndim)
    assert np.array_equal(kept, g) and kept is not g
    assert r.kernel_sizes == (f1.shape[2:], f2.shape[2:])
    # The identity layer has C non-zeros out of C²·k^d (paper Fig. 3a).
    assert np.count_nonzero(ident) == c
    assert r.nonzero_ratios[1 if position == "after" else 0] == pytest.approx(1 / (c * k_id**ndim))
    kt = (k + k_id - 1,) * ndim
    assert np.array_equal(compose_ref(f2, f1), pad_centered(g, kt))
    assert np.array_equal(g, g_copy)


@pytest.mark.parametrize("position", ["after", "before"])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_idmorph_conv_forward(position, ndim):
    rng = np.random.default_rng(ndim)
    g, b = rand(rng, (3, 2, *(3,) * ndim)), rand(rng, (3,))
    x = rand(rng, (2, 2, *(6,) * ndim)) * 4
    relu = ACTIVATIONS["relu"]
    r = idmorph(g, 3, position=position)
    want = relu(conv(x, g, b, padding=1))
    f1, f2 = r.filters
    if position == "after":
        # relu is idempotent: relu(I ⊛ relu(G x + b)) = relu(G x + b), the Net2DeeperNet case.
        got = relu(conv(relu(conv(x, f1, b, padding=1)), f2, padding=1))
    else:
        got = relu(conv(conv(x, f1, padding=1), f2, b, padding=1))
    assert rel_err(got, want) <= 1e-12


def test_idmorph_bad_input():
    g = np.ones((3, 2, 3, 3))
    with pytest.raises(ValueError, match="odd"):
        idmorph(g, 2)
    with pytest.raises(ValueError, match="odd"):
        idmorph(g, (3, 4))
    with pytest.raises(ValueError, match="position"):
        idmorph(g, 3, position="middle")
    with pytest.raises(ValueError, match="linear"):
        idmorph(np.ones((3, 2)), 3)
    with pytest.raises(TypeError, match="kernel_size"):
        idmorph(g, 1.0)
    with pytest.raises(ValueError, match="2 kernel sizes"):
        idmorph(g, (3,))
    with pytest.raises(TypeError, match="G"):
        idmorph(np.ones((3, 2), dtype=np.int64))
    assert np.array_equal(g, np.ones((3, 2, 3, 3)))


# Net2WiderNet -----------------------------------------------------------------------------------


def linear_net(x, f1, b1, f2, phi):
    return phi(x @ f1.T + b1) @ f2.T


@settings(max_examples=20, deadline=None)
@given(
    ndim=st.integers(0, 2),
    c1=st.integers(1, 4),
    extra=st.integers(0, 6),
    act=st.sampled_from(sorted(ACTIVATIONS)),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_net2net_forward_preserved_any_activation(ndim, c1, extra, act, dtype, seed):
    rng = np.random.default_rng(seed)
    k = (3,) * ndim
    f1, b1, f2 = (
        rand(rng, (c1, 2, *k), dtype),
        rand(rng, (c1,), dtype),
        rand(rng, (3, c1, *k), dtype),
    )
    copies = (f1.copy(), b1.copy(), f2.copy())
    phi = ACTIVATIONS[act]
    r = net2net_widen(f1, f2, c1 + extra, b1=b1, seed=seed)
    assert isinstance(r, Net2NetWidthResult) and r.exact
    assert r.f1.shape[0] == r.b1.shape[0] == r.f2.shape[1] == c1 + extra
    assert r.f1.dtype == r.b1.dtype == r.f2.dtype == dtype
    assert np.array_equal(r.mapping[:c1], np.arange(c1))
    assert r.mapping.min() >= 0 and r.mapping.max() < c1
    assert np.array_equal(r.counts, np.bincount(r.mapping, minlength=c1))
    assert np.array_equal(r.new_channels, np.arange(c1 + extra) >= c1)
    assert np.array_equal(r.f1, f1[r.mapping]) and np.array_equal(r.b1, b1[r.mapping])
    # The outgoing weights of every parent unit still sum to the original.
    summed = np.zeros_like(f2, dtype=np.float64)
    np.add.at(summed, (slice(None), r.mapping), r.f2.astype(np.float64))
    assert rel_err(summed, f2) <= RTOL[dtype]
    if ndim == 0:
        x = rand(rng, (5, 2), dtype)
        got, want = linear_net(x, r.f1, r.b1, r.f2, phi), linear_net(x, f1, b1, f2, phi)
        hidden = phi(x @ f1.T + b1)
        magnitude = np.abs(hidden) @ np.abs(f2).T
    else:
        x = rand(rng, (2, 2, *(5,) * ndim), dtype) * 3
        got = conv(phi(conv(x, r.f1, r.b1, padding=1)), r.f2, padding=1)
        want = conv(phi(conv(x, f1, b1, padding=1)), f2, padding=1)
        hidden = phi(conv(x, f1, b1, padding=1))
        magnitude = conv(np.abs(hidden), np.abs(f2), padding=1)
    # Rounding is relative to the magnitude of the summed terms Σ|F2|·|φ(h)|, not to the
    # output, which may cancel to (near) zero (e.g. relu of negative pre-activations): measured
    # against it, and exactly zero output demanded when every term is zero.
    assert scaled_err(got, want, magnitude) <= RTOL[dtype]
    for arr, orig in zip((f1, b1, f2), copies, strict=True):
        assert np.array_equal(arr, orig)


def test_net2net_noise_breaks_symmetry_and_exactness():
    rng = np.random.default_rng(3)
    f1, b1, f2 = rand(rng, (3, 4)), rand(rng, (3,)), rand(rng, (2, 3))
    x = rand(rng, (6, 4))
    tanh = ACTIVATIONS["tanh"]
    want = linear_net(x, f1, b1, f2, tanh)
    clean = net2net_widen(f1, f2, 7, b1=b1, seed=4)
    noisy = net2net_widen(f1, f2, 7, b1=b1, noise_std=0.1, seed=4)
    assert clean.exact and not noisy.exact
    assert np.array_equal(noisy.mapping, clean.mapping)
    assert np.array_equal(noisy.f1, clean.f1)
    assert np.array_equal(noisy.f2[:, :3], clean.f2[:, :3])
    assert not np.any(noisy.f2[:, 3:] == clean.f2[:, 3:])
    assert rel_err(linear_net(x, clean.f1, clean.b1, clean.f2, tanh), want) <= 1e-12
    assert rel_err(linear_net(x, noisy.f1, noisy.b1, noisy.f2, tanh), want) > 1e-4
    # No new channel: nothing to add noise to, still exact.
    same = net2net_widen(f1, f2, 3, noise_std=0.1, seed=4)
    assert same.exact and np.array_equal(same.f2, f2)


def test_net2net_seeded():
    f1, f2 = np.arange(8.0).reshape(4, 2), np.arange(12.0).reshape(3, 4)
    a = net2net_widen(f1, f2, 20, seed=7)
    b = net2net_widen(f1, f2, 20, seed=7)
    c = net2net_widen(f1, f2, 20, seed=8)
    assert np.array_equal(a.mapping, b.mapping) and np.array_equal(a.f2, b.f2)
    assert not np.array_equal(a.mapping, c.mapping)
    assert np.array_equal(a.widen_channels(np.arange(4) * 10), a.mapping * 10)
    with pytest.raises(ValueError, match="4 entries"):
        a.widen_channels(np.arange(5))


def test_net2net_bad_input():
    f1, f2 = np.ones((3, 2)), np.ones((4, 3))
    with pytest.raises(ValueError, match="width"):
        net2net_widen(f1, f2, 2)
    with pytest.raises(TypeError, match="width"):
        net2net_widen(f1, f2, "5")
    with pytest.raises(ValueError, match="noise_std"):
        net2net_widen(f1, f2, 5, noise_std=-0.1)
    with pytest.raises(TypeError, match="noise_std"):
        net2net_widen(f1, f2, 5, noise_std=None)
    with pytest.raises(ValueError, match="b1"):
        net2net_widen(f1, f2, 5, b1=np.ones(2))
    with pytest.raises(TypeError, match="seed"):
        net2net_widen(f1, f2, 5, seed=1.5)
    with pytest.raises(ValueError, match="input channels"):
        net2net_widen(f1, np.ones((4, 2)), 5)
    assert np.array_equal(f1, np.ones((3, 2))) and np.array_equal(f2, np.ones((4, 3)))
