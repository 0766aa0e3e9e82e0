"""Exact power-of-two scaling (netmorph_core._scaling) and the public compose built on it:
results for inputs scaled by 2^a and 2^b are the unscaled result times 2^(a+b), bit for bit,
with or without a copy of the inputs; errors for NaN, Inf and unrepresentable results."""

from __future__ import annotations

import math

import numpy as np
import pytest

import netmorph_core as nm
from netmorph_core import _scaling as s
from netmorph_core.backends import native

DTYPES = (np.float32, np.float64)


def _spread(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Entries of both signs and every magnitude from 2^−150 to 2^60 (zeros included)."""
    info = np.finfo(dtype)
    low = int(info.minexp) - int(info.nmant) - 2
    x = rng.standard_normal(shape) * np.exp2(rng.integers(low, 60, shape).astype(np.float64))
    x.flat[:3] = 0.0
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_times_power_of_two_rounds_as_ldexp(dtype, rng):
    x = _spread(rng, (4000,), dtype)
    info = np.finfo(dtype)
    span = int(info.maxexp) - int(info.minexp) + int(info.nmant)
    for e in (0, 1, -1, 37, -37, int(info.maxexp) + 5, -span, span, -span - 20):
        with np.errstate(over="ignore"):
            expected = np.ldexp(x, e)
            got = s.times_power_of_two(x, e)
        assert got.dtype == dtype and np.array_equal(got, expected), e
        assert np.array_equal(np.signbit(got), np.signbit(expected))
    y = x.copy()
    out = s.times_power_of_two(y, -3, inplace=True)
    assert out is y and np.array_equal(y, np.ldexp(x, -3))
    strided = x.reshape(40, 100).T[::2]
    out = s.times_power_of_two(strided, 5)
    assert out.flags.c_contiguous and np.array_equal(out, np.ldexp(strided, 5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_peak_and_exponent(dtype, rng):
    x = rng.standard_normal((5, 6, 3)).astype(dtype)
    assert s.peak(x) == float(np.abs(x).max())
    assert s.peak(x[:, ::2, ::-1]) == float(np.abs(x[:, ::2, ::-1]).max())
    assert s.exponent(x) == math.frexp(float(np.abs(x).max()))[1]
    assert s.exponent(np.zeros(3, dtype)) == 0
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 2, 0] = bad
        assert not math.isfinite(s.peak(y))
        with pytest.raises(ValueError, match="W contains NaN or Inf"):
            s.finite_exponent(y, "W")


def test_prescale_copies_only_out_of_range(rng):
    x = rng.standard_normal((4, 5, 3, 3))
    for e in (-s.SAFE_EXPONENT, 0, s.SAFE_EXPONENT - 1):
        y = np.ldexp(x / np.abs(x).max() * 0.75, e)
        out, shift = s.prescale(y, "x")
        assert out is y and shift == 0
    for e in (-s.SAFE_EXPONENT - 1, s.SAFE_EXPONENT + 1, 500, -500):
        y = np.ldexp(x / np.abs(x).max() * 0.75, e)
        out, shift = s.prescale(y, "x")
        assert shift == e and 0.5 <= np.abs(out).max() < 1.0
        assert np.array_equal(np.ldexp(out, shift), y)


#: (K2, K1) of the compose exactness tests: 3/3, 3/1 and 1/3, and 5/5 in float32 (a transform
#: method), each on the shapes where the native kernel splits the work over threads.
PAIRS = [((3, 3), (3, 3)), ((1, 1), (3, 3)), ((3, 3), (1, 1)), ((5, 5), (5, 5))]
#: (a, b): F2·2^a and F1·2^b, in range (no copy) and far out of it on either side.
SHIFTS = {
    np.float32: [(0, 0), (5, -7), (-16, 16), (17, -30), (60, 40), (-70, -45), (-100, 90)],
    np.float64: [(0, 0), (9, -3), (17, 17), (600, 300), (-700, -300), (1000, -990)],
}


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("backend", ["native", "numpy"])
@pytest.mark.parametrize(("k2", "k1"), PAIRS, ids=["3x3", "1x3", "3x1", "5x5"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_compose_scales_exactly(dtype, k2, k1, backend, threads, rng, monkeypatch):
    monkeypatch.setenv(native.ENV_THREADS, threads)
    f2 = (rng.standard_normal((24, 20, *k2)) / 10).astype(dtype)
    f1 = (rng.standard_normal((20, 28, *k1)) / 10).astype(dtype)
    g = nm.compose(f2, f1, backend=backend)
    reference = nm.reference.compose_ref(f2.astype(np.float64), f1.astype(np.float64))
    assert np.abs(g - reference).max() <= 1e-5 * np.abs(reference).max()
    for a, b in SHIFTS[dtype]:
        f2s, f1s = np.ldexp(f2, a), np.ldexp(f1, b)
        got = nm.compose(f2s, f1s, backend=backend)
        assert got.dtype == dtype and np.array_equal(got, np.ldexp(g, a + b)), (a, b)
        # strided views of the same filters: the same answer, the callers' arrays untouched
        v2 = np.swapaxes(np.ascontiguousarray(np.swapaxes(f2s, 0, 1)), 0, 1)
        assert np.array_equal(nm.compose(v2, f1s[:, ::1], backend=backend), got)
        assert np.array_equal(v2, f2s)


@pytest.mark.parametrize("dtype", DTYPES)
def test_compose_refuses_unrepresentable_results_and_non_finite_inputs(dtype, rng):
    f2 = rng.standard_normal((3, 4, 3, 3)).astype(dtype)
    f1 = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
    top = int(np.finfo(dtype).maxexp)
    with pytest.raises(ValueError, match=r"compose\(F2, F1\).*beyond the largest"):
        nm.compose(np.ldexp(f2, top - 3), np.ldexp(f1, top // 2))
    with pytest.raises(ValueError, match=r"compose\(F2, F1\).*below the smallest normal"):
        nm.compose(np.ldexp(f2, -top + 20), np.ldexp(f1, -top // 2))
    for bad in (np.nan, np.inf):
        x = f1.copy()
        x[0, 1, 2, 2] = bad
        with pytest.raises(ValueError, match="F1 contains NaN or Inf"):
            nm.compose(f2, x)
