"""The public compose's native path for plain NumPy arrays (one native call that checks
finiteness and the largest exponents, then runs the kernel unscaled): the same answers as the
general path, the same refusals, the general path for everything else; and the environment
reading it relies on."""

from __future__ import annotations

import math
import os
import sys
import types

import numpy as np
import pytest

import netmorph_core as nm
from netmorph_core import _environ
from netmorph_core._scaling import SAFE_EXPONENT
from netmorph_core.backends import native

DTYPES = (np.float32, np.float64)


class Plain(np.ndarray):
    """An ndarray subclass: the public compose views it as an array on its general path."""


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records, per call of the native path, whether it ran the kernel (not None)."""
    calls: list[bool] = []
    original = native.compose_in_range

    def recording(*args: object) -> object:
        out = original(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(native, "compose_in_range", recording)
    monkeypatch.setenv(native.ENV_THREADS, "1")
    return calls


@pytest.mark.parametrize(
    ("k2", "k1"), [((3, 3), (3, 3)), ((1, 1), (3, 3)), ((3, 3), (1, 1)), ((5,), (2,)), ((), ())]
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_native_path_matches_the_general_path(dtype, k2, k1, rng, spy):
    f2 = rng.standard_normal((6, 5, *k2)).astype(dtype)
    f1 = rng.standard_normal((5, 7, *k1)).astype(dtype)
    fast = nm.compose(f2, f1)
    assert spy == [True]
    general = nm.compose(f2.view(Plain), f1.view(Plain))
    assert spy == [True] and type(general) is np.ndarray
    assert fast.dtype == dtype and np.array_equal(fast, general)
    # any strides (transposed, reversed): the same answer, the caller's arrays untouched
    t2 = np.ascontiguousarray(np.swapaxes(f2, 0, 1)).swapaxes(0, 1)
    r1 = np.ascontiguousarray(f1[::-1])[::-1]
    assert np.array_equal(nm.compose(t2, r1), fast) and np.array_equal(t2, f2)
    frozen = f1.copy()
    frozen.flags.writeable = False
    assert np.array_equal(nm.compose(f2, frozen), fast)
    assert spy == [True, True, True]


@pytest.mark.parametrize("dtype", DTYPES)
def test_native_path_takes_only_what_it_can_answer(dtype, rng, spy):
    f2 = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    f1 = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
    expected = nm.compose(f2, f1)
    spy.clear()
    swapped = f1.astype(f1.dtype.newbyteorder())  # non-native byte order: refused as before
    with pytest.raises(TypeError, match="F1 must have dtype float32 or float64"):
        nm.compose(f2, swapped)
    with pytest.raises(TypeError, match="groups"):
        nm.compose(f2, f1, groups=True)
    numpy_backend = nm.compose(f2, f1, backend="numpy")
    assert np.abs(numpy_backend - expected).max() <= 1e-5 * np.abs(expected).max()
    assert np.array_equal(nm.compose(f2, f1, groups=1, backend="native"), expected)
    assert spy == [True]  # only the last call: the others go the general way
    mixed = nm.compose(f2.astype(np.float32), f1.astype(np.float64))
    assert mixed.dtype == np.float64 and spy == [True]


@pytest.mark.parametrize("dtype", DTYPES)
def test_exponent_bounds_of_the_native_path(dtype):
    """The kernel runs unscaled exactly when both largest magnitudes have a binary exponent
    within ±SAFE_EXPONENT; otherwise it answers None and runs nothing."""
    info = np.finfo(dtype)
    tiny_sub = float(np.ldexp(dtype(1), int(info.minexp) - int(info.nmant)))
    ones = np.ones((2, 2, 3), dtype)
    tops = [
        0.0,
        tiny_sub,
        float(info.tiny),
        2.0**-18,
        2.0**-17,
        2.0**-17 * 0.75,
        0.5,
        1.0,
        2.0**15,
        2.0**16 * (1 - 2.0**-20),
        2.0**16,
        float(info.max),
    ]
    for top in tops:
        for sign in (1.0, -1.0):
            x = np.zeros((2, 2, 3), dtype)
            x[1, 0, 2] = sign * top
            x[0, 1, 1] = sign * top / 4
            e = math.frexp(top)[1] if top else 0
            for f2, f1 in ((x, ones), (ones, x)):
                out = native.compose_in_range(f2, f1, SAFE_EXPONENT)
                assert (out is None) == (abs(e) > SAFE_EXPONENT), (top, sign)
                if out is not None:
                    assert np.array_equal(out, native.compose(f2, f1))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
def test_native_path_refuses_non_finite_inputs_by_name(dtype, bad, rng, spy):
    f2 = rng.standard_normal((3, 4, 3, 3)).astype(dtype)
    f1 = rng.standard_normal((4, 5, 1, 1)).astype(dtype)
    for name in ("F2", "F1"):
        x = (f2 if name == "F2" else f1).copy()
        x.flat[x.size // 2 + 1] = bad
        copy = x.copy()
        args = (x, f1) if name == "F2" else (f2, x)
        with pytest.raises(ValueError, match=f"^{name} contains NaN or Inf"):
            nm.compose(*args)
        strided = np.repeat(x, 2, axis=1)[:, ::2]  # a non-contiguous view of the same values
        args = (strided, f1) if name == "F2" else (f2, strided)
        with pytest.raises(ValueError, match=f"^{name} contains NaN or Inf"):
            nm.compose(*args)
        assert np.array_equal(x, copy, equal_nan=True)
    both = f2.copy()
    both[0, 0, 0, 0] = bad
    worse = f1.copy()
    worse[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"^F2 contains"):  # F2 is checked first, as before
        nm.compose(both, worse)
    assert spy == []  # refused before any result


def test_getenv_agrees_with_os_environ(monkeypatch):
    name = "NETMORPH_TEST_VARIABLE"
    monkeypatch.delenv(name, raising=False)
    assert _environ.getenv(name) is None
    for value in ("", " 3 ", "é"):
        monkeypatch.setenv(name, value)
        assert _environ.getenv(name) == os.environ.get(name) == value
    monkeypatch.delenv(name)
    assert _environ.getenv(name) is None
    monkeypatch.setattr(os, "environ", {name: "7"})  # any other mapping
    assert _environ.getenv(name) == "7"


def test_an_extension_built_from_older_sources_is_reported(monkeypatch):
    current = nm._native
    stale = types.ModuleType("netmorph_core._native")
    for name in dir(current):
        if name != "compose_in_range" and not name.startswith("__"):
            setattr(stale, name, getattr(current, name))
    native._extension.cache_clear()
    monkeypatch.setattr(nm, "_native", stale)
    monkeypatch.setitem(sys.modules, "netmorph_core._native", stale)
    try:
        with pytest.raises(ImportError, match=r"built from older sources.*rebuild it"):
            native.load()
    finally:
        monkeypatch.undo()
        native._extension.cache_clear()
    native.load()
