"""The ``numba`` backend's own methods: direct and transform-domain compose, 3-D, loading."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import RTOL, rel_err
from netmorph_core.backends import numba_cpu as nc
from netmorph_core.reference import compose_ref, outer_operator

if nc._k is None:
    pytest.skip(f"numba unavailable: {nc._MISSING}", allow_module_level=True)


def _pair(rng, c2, c1, c0, k2, k1, dtype):
    return (
        rng.standard_normal((c2, c1, *k2)).astype(dtype),
        rng.standard_normal((c1, c0, *k1)).astype(dtype),
    )


def _expected(f2, f1):
    return compose_ref(f2.astype(np.float64), f1.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("k2", "k1"),
    [((3,), (3,)), ((3, 3), (3, 3)), ((2, 3), (3, 2)), ((1, 3), (3, 1)), ((3, 3, 3), (3, 3, 3))],
)
def test_transform_method_matches_reference(k2, k1, dtype, rng):
    f2, f1 = _pair(rng, 6, 40, 5, k2, k1, dtype)
    g = nc.compose_transform(f2, f1)
    assert g.dtype == dtype and g.flags.c_contiguous
    # Interpolation amplifies rounding (float32: about 4e-7 for 3×3, 1e-6 for 3×3×3) but
    # stays within the tolerance every backend meets.
    assert rel_err(g, _expected(f2, f1)) <= RTOL[np.dtype(dtype)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("k2", "k1"), [((3, 2, 1), (1, 2, 3)), ((5,), (1,)), ((2, 2, 2), (2, 2, 2)), ((), ())]
)
def test_direct_method_matches_reference(k2, k1, dtype, rng):
    f2, f1 = _pair(rng, 3, 4, 5, k2, k1, dtype)
    assert rel_err(nc.compose_direct(f2, f1), _expected(f2, f1)) <= RTOL[np.dtype(dtype)]


def test_three_dimensional_gram_kernels(rng):
    f2 = rng.standard_normal((3, 2, 2, 3, 1))
    k1 = (2, 1, 3)
    a = outer_operator(f2, k1)
    assert rel_err(nc.gram_outer(f2, k1), a.T @ a) <= 1e-12
    assert rel_err(nc.gram_outer_rows(f2, k1), a @ a.T) <= 1e-12
    y = rng.standard_normal((3, 4, 3, 3, 3))
    x = nc.correlate_outer(f2, y, k1)
    cols = np.moveaxis(y, 1, -1).reshape(-1, 4)
    assert rel_err(x, np.moveaxis((a.T @ cols).reshape(2, *k1, 4), -1, 1)) <= 1e-12


@pytest.mark.parametrize(
    ("f2_shape", "f1_shape", "expected"),
    [
        ((128, 128, 3, 3), (128, 128, 3, 3), True),
        ((128, 128, 2, 3), (128, 128, 3, 2), True),
        ((127, 128, 3, 3), (128, 128, 3, 3), False),  # too few channels to pay
        ((128, 128, 3, 3), (128, 128, 1, 1), False),  # nothing to save
        ((128, 128, 5, 5), (128, 128, 5, 5), False),  # Kt = 9: no well-conditioned points
        ((128, 128, 3), (128, 128, 3), False),  # 5 points against 9 taps: not worth it
        ((128, 128), (128, 128), False),
    ],
)
def test_method_choice(f2_shape, f1_shape, expected):
    assert nc.use_transform(f2_shape, f1_shape) is expected


def test_compose_dispatches_to_transform(monkeypatch, rng):
    f2, f1 = _pair(rng, 4, 4, 4, (3, 3), (3, 3), np.float64)
    monkeypatch.setattr(nc, "TRANSFORM_MIN_CHANNELS", 1)
    calls = []
    monkeypatch.setattr(nc, "compose_transform", lambda a, b: calls.append(1) or _expected(a, b))
    nc.compose(f2, f1)
    assert calls == [1]


def test_transform_rejects_large_kernels(rng):
    f2, f1 = _pair(rng, 2, 2, 2, (5, 5), (3, 3), np.float64)
    with pytest.raises(ValueError, match="K1 \\+ K2 - 1"):
        nc.compose_transform(f2, f1)


def test_mixed_dtypes_promote(rng):
    f2, _ = _pair(rng, 3, 4, 2, (3,), (3,), np.float32)
    _, f1 = _pair(rng, 3, 4, 2, (3,), (3,), np.float64)
    g = nc.compose(f2, f1)
    assert g.dtype == np.float64
    assert rel_err(g, _expected(f2, f1)) <= 1e-12


def test_load_reports_missing_numba(monkeypatch):
    monkeypatch.setattr(nc, "_k", None)
    monkeypatch.setattr(nc, "_MISSING", "No module named 'numba'")
    with pytest.raises(ImportError, match="needs numba"):
        nc.load()
