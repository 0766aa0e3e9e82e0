"""Kernel-size morphing: a real conv with the padding grown accordingly gives the same output."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netmorph_core.morph import KernelResult, morph_kernel

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = {np.float64: 1e-12, np.float32: 1e-5}


def conv(x: np.ndarray, w: np.ndarray, **kw) -> np.ndarray:
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[w.ndim - 2]
    return fn(torch.from_numpy(x), torch.from_numpy(w), **kw).numpy()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


@settings(max_examples=30, deadline=None)
@given(
    data=st.data(),
    ndim=st.integers(1, 3),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_conv_output_preserved(data, ndim, dtype, seed):
    kernel = tuple(data.draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    growth = tuple(data.draw(st.lists(st.sampled_from([0, 2, 4]), min_size=ndim, max_size=ndim)))
    padding = tuple(data.draw(st.lists(st.integers(0, 2), min_size=ndim, max_size=ndim)))
    stride = data.draw(st.integers(1, 2))
    dilation = data.draw(st.integers(1, 2))
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((2, 3, *kernel)).astype(dtype)
    g_copy = g.copy()
    side = 9 if ndim < 3 else 7
    x = (rng.standard_normal((2, 3, *(side,) * ndim)) * 5).astype(dtype)
    new_size = tuple(k + e for k, e in zip(kernel, growth, strict=True))

    r = morph_kernel(g, new_size)

    assert r.filter.shape == (2, 3, *new_size) and r.filter.dtype == dtype
    assert r.padding_increase == tuple(e // 2 for e in growth)
    centre = tuple(slice(e // 2, e // 2 + k) for e, k in zip(growth, kernel, strict=True))
    assert np.array_equal(r.filter[(slice(None), slice(None), *centre)], g)
    assert np.count_nonzero(r.filter) == np.count_nonzero(g)
    grown = tuple(p + dilation * e for p, e in zip(padding, r.padding_increase, strict=True))
    want = conv(x, g, padding=padding, stride=stride, dilation=dilation)
    got = conv(x, r.filter, padding=grown, stride=stride, dilation=dilation)
    assert got.shape == want.shape
    assert rel_err(got, want) <= RTOL[dtype]
    assert np.array_equal(g, g_copy)


def test_int_kernel_size_and_non_square():
    g = np.arange(2 * 3 * 1 * 3, dtype=np.float64).reshape(2, 3, 1, 3) + 1
    r = morph_kernel(g, (5, 3))
    assert isinstance(r, KernelResult)
    assert r.filter.shape == (2, 3, 5, 3) and r.padding_increase == (2, 0)
    assert np.array_equal(r.filter[:, :, 2:3, :], g)
    assert not r.filter[:, :, [0, 1, 3, 4], :].any()
    r = morph_kernel(np.ones((1, 1, 3, 1)), 5)
    assert r.filter.shape == (1, 1, 5, 5) and r.padding_increase == (1, 2)


def test_same_size_is_a_copy():
    g = np.ones((2, 2, 3, 3), dtype=np.float32)
    r = morph_kernel(g, 3)
    assert r.padding_increase == (0, 0)
    assert np.array_equal(r.filter, g) and r.filter.dtype == np.float32
    r.filter[...] = 5
    assert np.array_equal(g, np.ones((2, 2, 3, 3)))


def test_bad_input():
    g = np.ones((2, 2, 3, 3))
    with pytest.raises(ValueError, match="smaller"):
        morph_kernel(g, 1)
    with pytest.raises(ValueError, match="even"):
        morph_kernel(g, (4, 5))
    with pytest.raises(ValueError, match="2 kernel sizes"):
        morph_kernel(g, (5, 5, 5))
    with pytest.raises(ValueError, match="positive"):
        morph_kernel(g, (0, 3))
    with pytest.raises(TypeError, match="kernel_size"):
        morph_kernel(g, 5.0)
    with pytest.raises(TypeError, match="kernel_size"):
        morph_kernel(g, True)
    with pytest.raises(ValueError, match="linear"):
        morph_kernel(np.ones((2, 2)), 3)
    with pytest.raises(TypeError, match="G"):
        morph_kernel(np.ones((2, 2, 3), dtype=np.int64), 5)
    with pytest.raises(ValueError, match="NaN"):
        morph_kernel(np.full((2, 2, 3), np.nan), 5)
    assert np.array_equal(g, np.ones((2, 2, 3, 3)))
