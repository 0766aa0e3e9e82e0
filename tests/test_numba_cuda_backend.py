"""The ``numba_cuda`` backend against the NumPy reference.

The cases run in this process when Numba can run CUDA kernels here (a GPU, or the simulator
already enabled). ``test_cases_pass_on_the_simulator`` runs this file again in a subprocess
with ``NUMBA_ENABLE_CUDASIM=1``, so that a CPU-only machine checks the kernels too without
switching Numba to the simulator in this process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import RTOL, rel_err
from netmorph_core.backends import numba_cuda
from netmorph_core.reference import compose_ref, outer_operator

ROOT = Path(__file__).resolve().parent.parent

try:
    numba_cuda.load()
    RUNNABLE, WHY_NOT = True, ""
except (ImportError, RuntimeError) as exc:
    RUNNABLE, WHY_NOT = False, str(exc)
runs_here = pytest.mark.skipif(not RUNNABLE, reason=f"numba_cuda cannot run here: {WHY_NOT}")

CASES = [
    # (C2, C1, C0, K2, K1): C = 1, primes, K in {1, 2, 3, 5}, non-square, linear, 1-D to 3-D
    (1, 1, 1, (3,), (3,)),
    (3, 2, 5, (5,), (2,)),
    (2, 3, 2, (1, 1), (3, 3)),
    (3, 2, 2, (3, 3), (3, 3)),
    (2, 3, 1, (2, 3), (3, 1)),
    (3, 2, 2, (), ()),
    (2, 2, 3, (2, 1, 2), (1, 2, 2)),
]
DTYPES = [np.float32, np.float64]
N_CASES = 5 * len(CASES) * len(DTYPES)  # the tests parametrised over CASES and DTYPES


def to_backend(x: np.ndarray) -> object:
    """A backend operand: NumPy under the simulator, a Numba device array on a GPU."""
    if numba_cuda.simulated():
        return x
    from numba import cuda

    return cuda.to_device(x)


def to_host(x: object) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.copy_to_host()


def filters(rng, c2, c1, c0, k2, k1, dtype):
    f2 = rng.standard_normal((c2, c1, *k2)).astype(dtype)
    f1 = rng.standard_normal((c1, c0, *k1)).astype(dtype)
    return f2, f1


def correlate_reference(f2: np.ndarray, y: np.ndarray, k1: tuple[int, ...]) -> np.ndarray:
    """Aᵀ·Y with A built explicitly, Y's input channels as columns."""
    a = outer_operator(f2, k1)
    c1, c0 = f2.shape[1], y.shape[1]
    b = np.moveaxis(y.astype(np.float64), 1, -1).reshape(-1, c0)
    return np.moveaxis((a.T @ b).reshape(c1, *k1, c0), -1, 1)


@runs_here
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("c2", "c1", "c0", "k2", "k1"), CASES)
def test_compose(rng, c2, c1, c0, k2, k1, dtype):
    f2, f1 = filters(rng, c2, c1, c0, k2, k1, dtype)
    g = to_host(numba_cuda.compose(to_backend(f2), to_backend(f1)))
    assert g.dtype == dtype
    assert rel_err(g, compose_ref(f2.astype(np.float64), f1.astype(np.float64))) <= RTOL[g.dtype]


@runs_here
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("c2", "c1", "c0", "k2", "k1"), CASES)
def test_correlate_outer_is_the_adjoint(rng, c2, c1, c0, k2, k1, dtype):
    f2, _ = filters(rng, c2, c1, c0, k2, k1, dtype)
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    y = rng.standard_normal((c2, c0, *kt)).astype(dtype)
    x = to_host(numba_cuda.correlate_outer(to_backend(f2), to_backend(y), k1))
    assert x.shape == (c1, c0, *k1)
    assert rel_err(x, correlate_reference(f2, y, k1)) <= RTOL[x.dtype]


@runs_here
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("c2", "c1", "c0", "k2", "k1"), CASES)
def test_gram_outer(rng, c2, c1, c0, k2, k1, dtype):
    f2, _ = filters(rng, c2, c1, c0, k2, k1, dtype)
    a = outer_operator(f2, k1)
    m = to_host(numba_cuda.gram_outer(to_backend(f2), k1))
    assert rel_err(m, a.T @ a) <= RTOL[m.dtype]
    assert np.array_equal(m, m.T)  # (m', s'), (m, s) sum the same products in the same order


@runs_here
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("c2", "c1", "c0", "k2", "k1"), CASES)
def test_gram_outer_rows(rng, c2, c1, c0, k2, k1, dtype):
    f2, _ = filters(rng, c2, c1, c0, k2, k1, dtype)
    a = outer_operator(f2, k1)
    n = to_host(numba_cuda.gram_outer_rows(to_backend(f2), k1))
    assert rel_err(n, a @ a.T) <= RTOL[n.dtype]
    assert np.array_equal(n, n.T)


@runs_here
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("c2", "c1", "c0", "k2", "k1"), CASES)
def test_strided_operands_are_read_and_left_unchanged(rng, c2, c1, c0, k2, k1, dtype):
    f2, f1 = filters(rng, c2, c1, c0, k2, k1, dtype)
    f2_wide = np.concatenate([f2, f2[:1] + 1], axis=0)
    f1_t = np.ascontiguousarray(np.swapaxes(f1, 0, 1))
    f2_view, f1_view = f2_wide[:c2], np.swapaxes(f1_t, 0, 1)  # non-contiguous views
    before = (f2_wide.copy(), f1_t.copy())
    g = to_host(
        numba_cuda.compose(f2_view, f1_view)
        if numba_cuda.simulated()
        else _on_device(f2_wide, f1_t, c2)
    )
    assert rel_err(g, compose_ref(f2.astype(np.float64), f1.astype(np.float64))) <= RTOL[g.dtype]
    np.testing.assert_array_equal(f2_wide, before[0])
    np.testing.assert_array_equal(f1_t, before[1])


def _on_device(f2_wide: np.ndarray, f1_t: np.ndarray, c2: int) -> object:
    """compose on strided device views of device copies, which must stay unchanged."""
    from numba import cuda

    d2, d1 = cuda.to_device(f2_wide), cuda.to_device(f1_t)
    d1_view = cuda.as_cuda_array(_SwappedView(d1))
    g = numba_cuda.compose(d2[:c2], d1_view)
    np.testing.assert_array_equal(d2.copy_to_host(), f2_wide)
    np.testing.assert_array_equal(d1.copy_to_host(), f1_t)
    return g


class _SwappedView:
    """A device array with its first two axes exchanged, through __cuda_array_interface__."""

    def __init__(self, array: object) -> None:
        interface = dict(array.__cuda_array_interface__)
        shape, itemsize = interface["shape"], np.dtype(interface["typestr"]).itemsize
        strides = interface.get("strides") or tuple(
            itemsize * int(np.prod(shape[k + 1 :])) for k in range(len(shape))
        )
        interface["shape"] = (shape[1], shape[0], *shape[2:])
        interface["strides"] = (strides[1], strides[0], *strides[2:])
        self._array = array
        self.__cuda_array_interface__ = interface


@runs_here
def test_bad_operands_raise_typed_errors(rng):
    f2, f1 = filters(rng, 2, 3, 2, (3,), (3,), np.float64)
    with pytest.raises(TypeError, match="F2"):
        numba_cuda.compose([[1.0]], to_backend(f1))
    with pytest.raises(TypeError, match="float32 or float64"):
        numba_cuda.compose(to_backend(f2.astype(np.float16)), to_backend(f1))
    with pytest.raises(TypeError, match="same dtype"):
        numba_cuda.compose(to_backend(f2.astype(np.float32)), to_backend(f1))
    with pytest.raises(ValueError, match="input channels"):
        numba_cuda.compose(to_backend(f2), to_backend(f1[:2]))
    with pytest.raises(ValueError, match="same number of dimensions"):
        numba_cuda.compose(to_backend(f2), to_backend(f1[..., None]))
    with pytest.raises(ValueError, match="Y must have shape"):
        numba_cuda.correlate_outer(to_backend(f2), to_backend(np.zeros((2, 2, 4))), (3,))
    with pytest.raises(ValueError, match="k1"):
        numba_cuda.gram_outer(to_backend(f2), (0,))
    with pytest.raises(TypeError, match="k1"):
        numba_cuda.gram_outer_rows(to_backend(f2), 2.5)


def test_load_explains_why_it_cannot_run():
    if RUNNABLE:
        numba_cuda.load()
    else:
        assert "NUMBA_ENABLE_CUDASIM" in WHY_NOT


@pytest.mark.skipif(numba_cuda.simulated(), reason="this process already runs the simulator")
def test_cases_pass_on_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "not on_the_simulator",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed is not None and int(passed.group(1)) == N_CASES + 2, done.stdout[-2000:]
    assert "skipped" not in done.stdout.splitlines()[-1]
