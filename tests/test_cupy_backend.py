"""The ``cupy`` backend (and the compiled ``_native_cuda`` module when built) against the NumPy
reference, for every method. Needs a CUDA device: skipped, not failed, without one."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from conftest import RTOL, rel_err
from netmorph_core.backends import cupy_backend
from netmorph_core.reference import compose_ref, outer_operator

try:
    cupy_backend.load()
    AVAILABLE, WHY_NOT = True, ""
except (ImportError, RuntimeError, OSError) as exc:
    AVAILABLE, WHY_NOT = False, str(exc)


def gpu(test):
    """Marks a test that needs the backend to run: skipped with the reason without a GPU."""
    skip = pytest.mark.skipif(not AVAILABLE, reason=f"cupy backend unavailable: {WHY_NOT}")
    return pytest.mark.gpu(skip(test))


CASES = [
    # (C2, C1, C0, K2, K1): C = 1, primes, K in {1, 2, 3, 5}, non-square, linear, 1-D to 3-D
    (1, 1, 1, (3,), (3,)),
    (3, 5, 7, (5,), (2,)),
    (2, 3, 4, (1, 1), (3, 3)),
    (5, 3, 7, (3, 3), (3, 3)),
    (2, 7, 3, (5, 5), (1, 1)),
    (3, 2, 5, (2, 3), (3, 2)),
    (4, 3, 2, (3, 5), (5, 3)),
    (4, 3, 2, (), ()),
    (2, 3, 2, (3, 1, 2), (2, 3, 1)),
    (37, 41, 43, (3, 3), (3, 3)),
]
DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]


def transform_fits(k2: tuple[int, ...], k1: tuple[int, ...], dtype: np.dtype) -> bool:
    return all(a + b - 1 <= cupy_backend.TRANSFORM_LIMIT[dtype] for a, b in zip(k1, k2))


def routine_cases() -> list:
    """(case, dtype, method) for every method that applies to the case."""
    out = []
    for case in CASES:
        for dtype in DTYPES:
            out.append(pytest.param(case, dtype, "direct", id=f"{case}-{dtype}-direct"))
            if transform_fits(case[3], case[4], dtype):
                out.append(pytest.param(case, dtype, "transform", id=f"{case}-{dtype}-transform"))
    return out


def filters(rng, case, dtype):
    c2, c1, c0, k2, k1 = case
    return (
        rng.standard_normal((c2, c1, *k2)).astype(dtype),
        rng.standard_normal((c1, c0, *k1)).astype(dtype),
    )


def correlate_reference(f2: np.ndarray, y: np.ndarray, k1: tuple[int, ...]) -> np.ndarray:
    """Aᵀ·Y with A built explicitly, Y's input channels as columns."""
    a = outer_operator(f2, k1)
    c1, c0 = f2.shape[1], y.shape[1]
    b = np.moveaxis(y.astype(np.float64), 1, -1).reshape(-1, c0)
    return np.moveaxis((a.T @ b).reshape(c1, *k1, c0), -1, 1)


def test_load_explains_why_it_cannot_run():
    if AVAILABLE:
        cupy_backend.load()
        return
    assert "CuPy" in WHY_NOT or "NVRTC" in WHY_NOT or "csrc" in WHY_NOT


def test_method_choice_follows_the_transform_limit():
    f32, f64 = DTYPES
    assert cupy_backend.choose_method("auto", f32, (3, 3), (3, 3)) == "transform"
    assert cupy_backend.choose_method("auto", f32, (1, 1), (3, 3)) == "direct"  # no fewer products
    assert cupy_backend.choose_method("auto", f32, (5, 5), (3, 3)) == "direct"  # Kt = 7 > 5
    assert cupy_backend.choose_method("auto", f64, (5, 5), (3, 3)) == "transform"
    assert cupy_backend.choose_method("direct", f32, (3, 3), (3, 3)) == "direct"
    with pytest.raises(ValueError, match="up to 5"):
        cupy_backend.choose_method("transform", f32, (5,), (3,))
    with pytest.raises(ValueError, match="method must be one of"):
        cupy_backend.choose_method("fft", f32, (3,), (3,))


@gpu
@pytest.mark.parametrize(("case", "dtype", "method"), routine_cases())
def test_compose(rng, case, dtype, method):
    import cupy as cp

    f2, f1 = filters(rng, case, dtype)
    g = cupy_backend.compose(cp.asarray(f2), cp.asarray(f1), method=method)
    assert isinstance(g, cp.ndarray) and g.dtype == dtype
    expected = compose_ref(f2.astype(np.float64), f1.astype(np.float64))
    assert rel_err(g.get(), expected) <= RTOL[dtype]


@gpu
@pytest.mark.parametrize(("case", "dtype", "method"), routine_cases())
def test_correlate_outer_is_the_adjoint(rng, case, dtype, method):
    import cupy as cp

    c2, c1, c0, k2, k1 = case
    f2, _ = filters(rng, case, dtype)
    y = rng.standard_normal((c2, c0, *(a + b - 1 for a, b in zip(k1, k2)))).astype(dtype)
    x = cupy_backend.correlate_outer(cp.asarray(f2), cp.asarray(y), k1, method=method)
    assert x.shape == (c1, c0, *k1) and x.dtype == dtype
    assert rel_err(x.get(), correlate_reference(f2, y, k1)) <= RTOL[dtype]


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_gram_outer_and_rows(rng, case, dtype):
    import cupy as cp

    f2, _ = filters(rng, case, dtype)
    k1 = case[4]
    a = outer_operator(f2, k1)
    m = cupy_backend.gram_outer(cp.asarray(f2), k1)
    n = cupy_backend.gram_outer_rows(cp.asarray(f2), k1)
    assert rel_err(m.get(), a.T @ a) <= RTOL[dtype]
    assert rel_err(n.get(), a @ a.T) <= RTOL[dtype]
    assert np.array_equal(m.get(), m.get().T) and np.array_equal(n.get(), n.get().T)


@gpu
@pytest.mark.parametrize("method", ["direct", "transform"])
def test_strided_operands_are_read_and_left_unchanged(rng, method):
    import cupy as cp

    f2 = cp.asarray(rng.standard_normal((6, 5, 3, 4)))
    f1 = cp.asarray(rng.standard_normal((4, 5, 3, 3)))
    y = cp.asarray(rng.standard_normal((3, 4, 5, 6)))
    copies = [a.copy() for a in (f2, f1, y)]
    f2_view = f2[::2, :, :, ::-1][..., :3]  # (3, 5, 3, 3), negative and gapped strides
    f1_view = f1.transpose(1, 0, 3, 2)  # (5, 4, 3, 3)
    y_view = y[:, :, ::-1][..., :5].transpose(0, 1, 3, 2)  # (3, 4, 5, 5)
    g = cupy_backend.compose(f2_view, f1_view, method=method)
    x = cupy_backend.correlate_outer(f2_view, y_view, (3, 3), method=method)
    f2_host, f1_host, y_host = (a.get() for a in (f2_view, f1_view, y_view))
    assert rel_err(g.get(), compose_ref(f2_host, f1_host)) <= RTOL[np.dtype(np.float64)]
    assert rel_err(x.get(), correlate_reference(f2_host, y_host, (3, 3))) <= 1e-12
    for original, copy in zip((f2, f1, y), copies):
        assert bool((original == copy).all())


@gpu
def test_float32_never_uses_tf32(rng):
    """Even with CuPy's float32 matmul switched to TF32, results keep float32 accuracy."""
    import cupy as cp
    from cupy._core import _routines_linalg as linalg

    f2 = rng.standard_normal((256, 256, 3, 3))
    f1 = rng.standard_normal((256, 256, 3, 3))
    expected = compose_ref(f2, f1)
    f32 = np.dtype(np.float32)
    previous = linalg.get_compute_type(f32)
    linalg.set_compute_type(f32, linalg.COMPUTE_TYPE_TF32)
    try:
        for method in ("direct", "transform"):
            g = cupy_backend.compose(cp.asarray(f2, f32), cp.asarray(f1, f32), method=method)
            assert rel_err(g.get(), expected) <= RTOL[f32]
        assert linalg.get_compute_type(f32) == linalg.COMPUTE_TYPE_TF32
    finally:
        linalg.set_compute_type(f32, previous)


@gpu
def test_bad_operands_raise_typed_errors(rng):
    import cupy as cp

    f2 = cp.asarray(rng.standard_normal((2, 3, 3)))
    f1 = cp.asarray(rng.standard_normal((3, 2, 3)))
    with pytest.raises(TypeError, match=r"F2 must be a cupy\.ndarray"):
        cupy_backend.compose(f2.get(), f1)
    with pytest.raises(TypeError, match="float32 or float64"):
        cupy_backend.compose(f2.astype(cp.float16), f1)
    with pytest.raises(TypeError, match="same dtype"):
        cupy_backend.compose(f2.astype(cp.float32), f1)
    with pytest.raises(ValueError, match="input channels"):
        cupy_backend.compose(f2, f1[:2])
    with pytest.raises(ValueError, match="method must be one of"):
        cupy_backend.compose(f2, f1, method="fast")
    with pytest.raises(ValueError, match="Y must have shape"):
        cupy_backend.correlate_outer(f2, cp.zeros((2, 2, 4)), (3,))
    with pytest.raises(ValueError, match="k1"):
        cupy_backend.gram_outer(f2, (0,))


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_kernel_with_strided_operands(rng, dtype):
    """nm_gemm (the compiled module's GEMM) through NVRTC: transposed, batched, strided."""
    import cupy as cp

    a = cp.asarray(rng.standard_normal((3, 70, 45)).astype(dtype))  # batches of A: 45 × 70
    b = cp.asarray(rng.standard_normal((3, 70, 130)).astype(dtype))
    c = cp.full((3, 45, 133), cp.nan, dtype=dtype)
    module = cp.RawModule(code=cupy_backend.kernel_source("gemm_cuda.cu"))
    kernel = module.get_function("nm_gemm_" + ("f32" if dtype == np.float32 else "f64"))
    m, n, k = 45, 130, 70
    strides = [1, 45, 70 * 45, 130, 1, 70 * 130, 133, 1, 45 * 133]
    kernel((3, 1, 3), (256,), (a, b, c, *map(np.int64, (m, n, k, *strides))))
    expected = np.matmul(a.get().transpose(0, 2, 1).astype(np.float64), b.get())
    assert rel_err(c[:, :, :n].get(), expected) <= RTOL[dtype]
    assert bool(cp.isnan(c[:, :, n:]).all())


def native_module():
    try:
        return importlib.import_module("netmorph_core._native_cuda")
    except ImportError:
        return None


NATIVE = native_module()
native = pytest.mark.skipif(NATIVE is None, reason="netmorph_core._native_cuda is not built")


@gpu
@native
@pytest.mark.parametrize(("case", "dtype", "method"), routine_cases())
def test_native_module_matches_the_reference(rng, case, dtype, method):
    import cupy as cp

    c2, c1, c0, k2, k1 = case
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    f2, f1 = filters(rng, case, dtype)
    y = rng.standard_normal((c2, c0, *kt)).astype(dtype)
    d2, d1, dy = cp.asarray(f2), cp.asarray(f1), cp.asarray(y)
    g = cp.full((c2, c0, *kt), cp.nan, dtype=dtype)
    x = cp.full((c1, c0, *k1), cp.nan, dtype=dtype)
    n1, nt = c1 * math.prod(k1), c2 * math.prod(kt)
    m = cp.full((n1, n1), cp.nan, dtype=dtype)
    n = cp.full((nt, nt), cp.nan, dtype=dtype)
    stream = cp.cuda.get_current_stream().ptr
    sizes = dict(dtype=dtype.name, c2=c2, c1=c1, k2=list(k2), k1=list(k1), stream=stream)
    NATIVE.compose(d2.data.ptr, d1.data.ptr, g.data.ptr, c0=c0, method=method, **sizes)
    NATIVE.correlate_outer(d2.data.ptr, dy.data.ptr, x.data.ptr, c0=c0, method=method, **sizes)
    NATIVE.gram_outer(d2.data.ptr, m.data.ptr, **sizes)
    NATIVE.gram_outer_rows(d2.data.ptr, n.data.ptr, **sizes)
    a = outer_operator(f2, k1)
    expected = compose_ref(f2.astype(np.float64), f1.astype(np.float64))
    assert rel_err(g.get(), expected) <= RTOL[dtype]
    assert rel_err(x.get(), correlate_reference(f2, y, k1)) <= RTOL[dtype]
    assert rel_err(m.get(), a.T @ a) <= RTOL[dtype]
    assert rel_err(n.get(), a @ a.T) <= RTOL[dtype]
    assert np.array_equal(m.get(), m.get().T) and np.array_equal(n.get(), n.get().T)


@native
def test_native_module_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        NATIVE.compose(1, 1, 1, "float16", 2, 2, 2, [3], [3])
    with pytest.raises(ValueError, match="same number of spatial dimensions"):
        NATIVE.compose(1, 1, 1, "float32", 2, 2, 2, [3, 3], [3])
    with pytest.raises(ValueError, match="method"):
        NATIVE.compose(1, 1, 1, "float32", 2, 2, 2, [3], [3], 0, "fast")
    with pytest.raises(ValueError, match="null pointer"):
        NATIVE.gram_outer(0, 1, "float64", 2, 2, [3], [3])
    with pytest.raises(ValueError, match="positive"):
        NATIVE.gram_outer_rows(1, 1, "float64", 0, 2, [3], [3])
