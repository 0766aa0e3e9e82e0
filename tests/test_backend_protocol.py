"""One test body run on every registered CPU backend: the four kernels against the explicit
operator A of X ↦ F2 ⊛ X (``outer_operator``), per dtype, on contiguous and strided inputs."""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import pytest

from conftest import RTOL, rel_err
from netmorph_core.backends import backends, get_backend
from netmorph_core.reference import compose_ref, outer_operator

#: (C2, C1, C0, K2, K1): C = 1, primes, K ∈ {1, 2, 3, 5}, non-square kernels, 0-2 dimensions.
CASES = [
    (1, 1, 1, (), ()),
    (3, 5, 2, (), ()),
    (1, 1, 1, (1,), (1,)),
    (3, 5, 2, (3,), (5,)),
    (2, 3, 5, (2,), (3,)),
    (5, 3, 7, (5,), (2,)),
    (1, 1, 1, (3, 3), (3, 3)),
    (3, 2, 5, (3, 3), (3, 3)),
    (2, 5, 3, (1, 3), (3, 1)),
    (3, 2, 2, (5, 5), (1, 1)),
    (2, 3, 2, (1, 1), (5, 2)),
    (5, 2, 3, (2, 3), (3, 2)),
]


def _backend(name: str) -> ModuleType:
    row = next(r for r in backends() if r.name == name)
    if not row.available:
        pytest.skip(f"backend {name!r} unavailable: {row.reason}")
    if row.device != "cpu":
        pytest.skip(f"backend {name!r} runs on {row.device}, not on the CPU")
    return get_backend(name)


def _array(rng: np.random.Generator, shape: tuple[int, ...], dtype: type, strided: bool):
    """Random array of ``shape``; when ``strided``, a non-contiguous view (channel axes
    swapped, every other element of a buffer)."""
    if not strided:
        return rng.standard_normal(shape).astype(dtype)
    buf = rng.standard_normal((shape[1], shape[0], *shape[2:], 2)).astype(dtype)
    return np.swapaxes(buf, 0, 1)[..., 0]


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("c2", "c1", "c0", "k2", "k1"), CASES)
@pytest.mark.parametrize("name", [r.name for r in backends()])
def test_kernels_match_explicit_operator(name, c2, c1, c0, k2, k1, dtype, strided, rng):
    impl = _backend(name)
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    f2 = _array(rng, (c2, c1, *k2), dtype, strided)
    f1 = _array(rng, (c1, c0, *k1), dtype, strided)
    y = _array(rng, (c2, c0, *kt), dtype, strided)
    inputs = [a.copy() for a in (f2, f1, y)]
    tol = RTOL[np.dtype(dtype)]
    a = outer_operator(f2, k1)  # float64 (C2·|Kt|, C1·|K1|)

    g = impl.compose(f2, f1)
    assert g.shape == (c2, c0, *kt) and g.dtype == dtype
    assert rel_err(g, compose_ref(f2.astype(np.float64), f1.astype(np.float64))) <= tol

    x = impl.correlate_outer(f2, y, k1)
    assert x.shape == (c1, c0, *k1) and x.dtype == dtype
    y_cols = np.moveaxis(y.astype(np.float64), 1, -1).reshape(-1, c0)
    expected = np.moveaxis((a.T @ y_cols).reshape(c1, *k1, c0), -1, 1)
    assert rel_err(x, expected) <= tol

    n_cols, n_rows = c1 * math.prod(k1), c2 * math.prod(kt)
    m = impl.gram_outer(f2, k1)
    assert m.shape == (n_cols, n_cols) and m.dtype == dtype
    assert rel_err(m, a.T @ a) <= tol
    assert np.array_equal(m, m.T)

    n = impl.gram_outer_rows(f2, k1)
    assert n.shape == (n_rows, n_rows) and n.dtype == dtype
    assert rel_err(n, a @ a.T) <= tol
    assert np.array_equal(n, n.T)

    assert all(np.array_equal(b, c) for b, c in zip((f2, f1, y), inputs))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("shape", "k1"),
    [((24, 19, 3, 3), (3, 3)), ((40, 33, 3), (5,)), ((9, 70), ()), ((17, 13, 2, 3), (3, 2))],
)
@pytest.mark.parametrize("name", [r.name for r in backends()])
def test_grams_are_symmetric_bit_for_bit(name, shape, k1, dtype, rng):
    """Symmetric by construction, whatever order the CPU's BLAS kernel sums (i, j) and (j, i)
    in: channel counts large enough for the GEMMs to differ between the two triangles."""
    impl = _backend(name)
    f2 = rng.standard_normal(shape).astype(dtype)
    a = outer_operator(f2, k1)
    m = impl.gram_outer(f2, k1)
    n = impl.gram_outer_rows(f2, k1)
    assert rel_err(m, a.T @ a) <= RTOL[np.dtype(dtype)]
    assert rel_err(n, a @ a.T) <= RTOL[np.dtype(dtype)]
    assert np.array_equal(m, m.T) and np.array_equal(n, n.T)


@pytest.mark.parametrize("name", [r.name for r in backends()])
def test_protocol_attributes(name):
    impl = _backend(name)
    assert impl.DEVICE == "cpu"
    assert set(impl.DTYPES) <= {np.dtype(np.float32), np.dtype(np.float64)}
    for kernel in ("compose", "correlate_outer", "gram_outer", "gram_outer_rows", "load"):
        assert callable(getattr(impl, kernel))
