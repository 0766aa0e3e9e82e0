"""The ``native`` backend (C++/OpenMP kernels on SciPy's BLAS): every kernel and every
algorithm against the explicit operator, its error bound, layouts, threads and errors."""

from __future__ import annotations

import math
import sys
import threading

import numpy as np
import pytest

from conftest import RTOL, rel_err
from netmorph_core.backends import native
from netmorph_core.reference import compose_ref, outer_operator

try:
    native.load()
except ImportError as exc:
    pytest.skip(f"native extension unavailable: {exc}", allow_module_level=True)

METHODS = ("direct", "toom", "dft")

#: (C2, C1, C0, K2, K1): C = 1, primes, K ∈ {1, 2, 3, 5}, non-square kernels, 0-3 dimensions.
CASES = [
    (1, 1, 1, (), ()),
    (3, 5, 7, (), ()),
    (1, 1, 1, (1,), (1,)),
    (3, 5, 2, (3,), (5,)),
    (5, 3, 7, (5,), (2,)),
    (2, 3, 5, (2,), (3,)),
    (1, 1, 1, (3, 3), (3, 3)),
    (3, 2, 5, (3, 3), (3, 3)),
    (7, 3, 5, (5, 5), (5, 5)),
    (2, 5, 3, (1, 3), (3, 1)),
    (3, 7, 2, (5, 5), (1, 1)),
    (5, 2, 3, (1, 1), (5, 2)),
    (5, 2, 3, (2, 3), (3, 2)),
    (2, 3, 2, (3, 2, 3), (2, 3, 3)),
    (3, 2, 3, (3, 3, 3), (1, 1, 1)),
]
IDS = [f"{c2}x{c1}x{c0}-k2{k2}-k1{k1}" for c2, c1, c0, k2, k1 in CASES]


def _kt(k2, k1):
    return tuple(a + b - 1 for a, b in zip(k1, k2))


def _expected_correlate(f2, y, k1):
    """AᵀY through the explicit operator A of X ↦ F2 ⊛ X (float64)."""
    a = outer_operator(f2, k1)
    c0 = y.shape[1]
    y_cols = np.moveaxis(y.astype(np.float64), 1, -1).reshape(-1, c0)
    return np.moveaxis((a.T @ y_cols).reshape(f2.shape[1], *k1, c0), -1, 1)


def _exact_tolerance(method, k2, k1, dtype):
    """The accuracy a forced method must reach: RTOL when ``auto`` may pick it for ``dtype``;
    float32 toom beyond the amplification limit is only bounded by eps·amplification."""
    dtype = np.dtype(dtype)
    if method == "direct" or not k2:
        return RTOL[dtype]
    amplification = native._plan("compose", method, k2, k1)[1]
    if amplification <= native._MAX_AMPLIFICATION[dtype]:
        return RTOL[dtype]
    return 50 * np.finfo(dtype).eps * amplification


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", ("auto", *METHODS))
@pytest.mark.parametrize(("c2", "c1", "c0", "k2", "k1"), CASES, ids=IDS)
def test_compose_and_correlate_match_reference(c2, c1, c0, k2, k1, method, dtype, rng):
    f2 = rng.standard_normal((c2, c1, *k2)).astype(dtype)
    f1 = rng.standard_normal((c1, c0, *k1)).astype(dtype)
    y = rng.standard_normal((c2, c0, *_kt(k2, k1))).astype(dtype)
    tol = RTOL[np.dtype(dtype)] if method == "auto" else _exact_tolerance(method, k2, k1, dtype)

    g = native.compose(f2, f1, method=method)
    assert g.shape == (c2, c0, *_kt(k2, k1)) and g.dtype == dtype and g.flags.c_contiguous
    assert rel_err(g, compose_ref(f2.astype(np.float64), f1.astype(np.float64))) <= tol

    x = native.correlate_outer(f2, y, k1, method=method)
    assert x.shape == (c1, c0, *k1) and x.dtype == dtype
    assert rel_err(x, _expected_correlate(f2, y, k1)) <= 2 * tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("c2", "c1", "c0", "k2", "k1"), CASES, ids=IDS)
def test_grams_match_explicit_operator(c2, c1, c0, k2, k1, dtype, rng):
    f2 = rng.standard_normal((c2, c1, *k2)).astype(dtype)
    a = outer_operator(f2, k1)
    tol = RTOL[np.dtype(dtype)]

    m = native.gram_outer(f2, k1)
    assert m.shape == (c1 * math.prod(k1),) * 2 and m.dtype == dtype
    assert rel_err(m, a.T @ a) <= tol
    assert np.array_equal(m, m.T)  # R(0)'s lower triangle and R(-δ) = R(δ)ᵀ are copies

    n = native.gram_outer_rows(f2, k1)
    assert n.shape == (c2 * math.prod(_kt(k2, k1)),) * 2 and n.dtype == dtype
    assert rel_err(n, a @ a.T) <= tol
    assert np.array_equal(n, n.T)  # N_{t,t}'s lower triangle and N_{t',t} = N_{t,t'}ᵀ are copies


@pytest.mark.parametrize(
    ("method", "k", "c"),
    [("toom", (3, 3), 128), ("dft", (5, 5), 64), ("dft", (3, 3, 3), 32), ("toom", (3,), 256)],
)
def test_transform_methods_meet_float32_bound(method, k, c, rng):
    """The transform-domain products stay within 5e-6 of the float64 result in float32."""
    f2 = rng.standard_normal((c, c, *k)).astype(np.float32)
    f1 = rng.standard_normal((c, c, *k)).astype(np.float32)
    y = rng.standard_normal((c, c, *_kt(k, k))).astype(np.float32)
    g = native.compose(f2, f1, method=method)
    assert rel_err(g, compose_ref(f2.astype(np.float64), f1.astype(np.float64))) <= 5e-6
    x = native.correlate_outer(f2, y, k, method=method)
    assert rel_err(x, _expected_correlate(f2, y, k)) <= 5e-6


def test_auto_respects_the_error_budget():
    f4, f8 = np.dtype(np.float32), np.dtype(np.float64)
    # Toom-Cook at 0, ±1, ±2 is accurate enough for 3x3 ⊛ 3x3 in float32 ...
    assert native.choose_method("compose", (256, 256, 256), (3, 3), (3, 3), f4) == "toom"
    # ... but not at nine points (5x5 ⊛ 5x5): float32 takes the DFT, float64 may keep Toom.
    assert native.choose_method("compose", (256, 256, 256), (5, 5), (5, 5), f4) == "dft"
    assert native.choose_method("compose", (256, 256, 256), (5, 5), (5, 5), f8) == "toom"
    for c in (1, 8, 64, 512):
        for k in ((5, 5), (4, 4), (3, 5), (3, 3, 3), (5,)):
            assert native.choose_method("compose", (c, c, c), k, k, f4) != "toom"
            assert native.choose_method("correlate", (c, c, c), k, k, f4) != "toom"
    # A 1-tap factor makes compose a single GEMM.
    assert native.choose_method("compose", (512, 512, 512), (3, 3), (1, 1), f4) == "direct"
    assert native.choose_method("compose", (512, 512, 512), (1, 1), (3, 3), f4) == "direct"


def test_plan_info():
    products, amplification, maps = native._plan("compose", "direct", (3, 3), (3, 3))
    assert products == 81 and amplification == pytest.approx(1.0)
    assert all(identity for _, _, identity in maps)
    products, amplification, _ = native._plan("compose", "toom", (3, 3), (3, 3))
    assert products == 25 and 1.0 < amplification < native._MAX_AMPLIFICATION[np.dtype("f4")]
    # One real product for the zero frequency and three per conjugate pair: 1 + 3 * 40.
    assert native._plan("compose", "dft", (5, 5), (5, 5))[0] == 121
    assert native._plan("correlate", "direct", (3, 3), (3, 3))[0] == 81


def _views(rng, shape, dtype):
    """Non-contiguous arrays of ``shape``: channel axes swapped, every other channel, reversed,
    Fortran order."""

    def rand(s):
        return rng.standard_normal(s).astype(dtype)

    return [
        np.swapaxes(rand((shape[1], shape[0], *shape[2:])), 0, 1),
        rand((shape[0], 2 * shape[1], *shape[2:]))[:, ::2],
        rand(shape)[::-1],
        np.asfortranarray(rand(shape)),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_contiguous_inputs_and_callers_arrays_unchanged(dtype, rng):
    k2, k1 = (3, 2), (2, 3)
    tol = RTOL[np.dtype(dtype)]
    for f2 in _views(rng, (4, 5, *k2), dtype):
        for f1 in _views(rng, (5, 3, *k1), dtype):
            y = np.swapaxes(rng.standard_normal((3, 4, *_kt(k2, k1))).astype(dtype), 0, 1)
            before = [a.copy() for a in (f2, f1, y)]
            assert not (f2.flags.c_contiguous or f1.flags.c_contiguous or y.flags.c_contiguous)
            g = native.compose(f2, f1)
            assert rel_err(g, compose_ref(f2.astype(np.float64), f1.astype(np.float64))) <= tol
            x = native.correlate_outer(f2, y, k1)
            assert rel_err(x, _expected_correlate(f2, y, k1)) <= tol
            a = outer_operator(f2, k1)
            assert rel_err(native.gram_outer(f2, k1), a.T @ a) <= tol
            assert rel_err(native.gram_outer_rows(f2, k1), a @ a.T) <= tol
            assert all(np.array_equal(b, c) for b, c in zip((f2, f1, y), before))


def test_workspace_reuse_across_sizes(rng):
    """Scratch memory is kept between calls; results never depend on what it held."""
    small = [rng.standard_normal(s).astype(np.float32) for s in ((3, 4, 3, 3), (4, 2, 3, 3))]
    large = [rng.standard_normal(s).astype(np.float32) for s in ((24, 20, 5, 5), (20, 16, 5, 5))]
    first = native.compose(*large, method="dft")
    for pair, method in ((small, "toom"), (large, "direct"), (small, "dft")):
        g = native.compose(*pair, method=method)
        assert rel_err(g, compose_ref(*(p.astype(np.float64) for p in pair))) <= 5e-6
    assert np.array_equal(native.compose(*large, method="dft"), first)
    native._extension().release_workspace()
    assert np.array_equal(native.compose(*large, method="dft"), first)


def test_concurrent_calls_from_threads(rng):
    """The kernels release the GIL and keep per-thread scratch memory; overlapping calls leave
    the BLAS's thread count as it was."""
    blas = native._extension().blas_threads()
    pairs = [
        (rng.standard_normal((6, 5, 3, 3)), rng.standard_normal((5, 7, 3, 3))) for _ in range(4)
    ]
    expected = [compose_ref(a, b) for a, b in pairs]
    results: list[np.ndarray | None] = [None] * len(pairs)

    def work(i):
        for _ in range(20):
            results[i] = native.compose(*pairs[i], method="toom", threads=1 + i % 2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert rel_err(got, want) <= RTOL[np.dtype(np.float64)]
    assert native._extension().blas_threads() == blas


def test_bad_inputs_raise_typed_errors(rng):
    f2 = rng.standard_normal((3, 4, 3, 3))
    f1 = rng.standard_normal((4, 2, 3, 3))
    with pytest.raises(TypeError, match="f2 must be a NumPy array"):
        native.compose(f2.tolist(), f1)
    with pytest.raises(TypeError, match="float32 or float64"):
        native.compose(f2.astype(np.float16), f1)
    with pytest.raises(TypeError, match="same dtype"):
        native.compose(f2, f1.astype(np.float32))
    with pytest.raises(ValueError, match="input channels"):
        native.compose(f2, f1[:3])
    with pytest.raises(ValueError, match="4 dimensions"):
        native.compose(f2, f1[..., 0])
    with pytest.raises(ValueError, match="method must be one of"):
        native.compose(f2, f1, method="fft")
    with pytest.raises(ValueError, match="toom method supports"):
        native.compose(
            rng.standard_normal((2, 2, 6, 6)), rng.standard_normal((2, 2, 5, 5)), method="toom"
        )
    y = rng.standard_normal((3, 2, 5, 5))
    with pytest.raises(ValueError, match="y must have shape"):
        native.correlate_outer(f2, y, (2, 2))
    with pytest.raises(ValueError, match="k1 must give 2 kernel sizes"):
        native.correlate_outer(f2, y, (3, 3, 3))
    with pytest.raises(ValueError, match="k1 must be positive"):
        native.gram_outer(f2, (0, 3))
    with pytest.raises(TypeError, match="k1 must be a positive int"):
        native.gram_outer_rows(f2, 2.5)
    with pytest.raises(ValueError, match="shape"):
        native.gram_outer(rng.standard_normal((3, 4, 1, 1, 1, 1)), 1)


def test_missing_extension_reports_the_reason(monkeypatch):
    import netmorph_core

    native._extension.cache_clear()
    monkeypatch.delattr(netmorph_core, "_native")
    monkeypatch.setitem(sys.modules, "netmorph_core._native", None)
    try:
        with pytest.raises(ImportError, match=r"netmorph_core\._native is not compiled"):
            native.load()
    finally:
        monkeypatch.undo()
        native._extension.cache_clear()
    native.load()


#: (C2, C1, C0, K2, K1) large enough for every split of a multi-threaded call to make several
#: pieces: 3/1 (column blocks of one product), 1/3 (row blocks of the stacked product), 3/3
#: and 5/5 (products and row blocks of the tap maps), a 1-D and a 3-D case.
THREADED = [
    (24, 20, 28, (1, 1), (3, 3)),
    (24, 20, 28, (3, 3), (1, 1)),
    (24, 20, 28, (3, 3), (3, 3)),
    (20, 24, 16, (5, 5), (5, 5)),
    (40, 36, 44, (3,), (1,)),
    (12, 10, 14, (3, 3, 3), (1, 1, 1)),
]
THREADED_IDS = [f"{c2}x{c1}x{c0}-k2{k2}-k1{k1}" for c2, c1, c0, k2, k1 in THREADED]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("c2", "c1", "c0", "k2", "k1"), THREADED, ids=THREADED_IDS)
def test_threaded_calls_match_reference(c2, c1, c0, k2, k1, dtype, threads, rng):
    f2 = rng.standard_normal((c2, c1, *k2)).astype(dtype)
    f1 = rng.standard_normal((c1, c0, *k1)).astype(dtype)
    y = rng.standard_normal((c2, c0, *_kt(k2, k1))).astype(dtype)
    tol = RTOL[np.dtype(dtype)]
    expected = compose_ref(f2.astype(np.float64), f1.astype(np.float64))
    for method in ("auto", "direct", "dft"):
        g = native.compose(f2, f1, method=method, threads=threads)
        assert g.dtype == dtype and rel_err(g, expected) <= tol, method
        x = native.correlate_outer(f2, y, k1, method=method, threads=threads)
        assert x.dtype == dtype and rel_err(x, _expected_correlate(f2, y, k1)) <= tol, method


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_calls_take_non_contiguous_inputs(dtype, threads, rng):
    for k2, k1 in (((1, 1), (3, 3)), ((3, 3), (1, 1)), ((3, 3), (3, 3))):
        for f2 in _views(rng, (24, 20, *k2), dtype):
            f1 = np.swapaxes(rng.standard_normal((28, 20, *k1)).astype(dtype), 0, 1)
            before = (f2.copy(), f1.copy())
            g = native.compose(f2, f1, threads=threads)
            assert (
                rel_err(g, compose_ref(f2.astype(np.float64), f1.astype(np.float64)))
                <= RTOL[np.dtype(dtype)]
            )
            assert np.array_equal(f2, before[0]) and np.array_equal(f1, before[1])


def test_calls_restore_the_thread_settings(rng):
    """A call sets OpenMP's threads (of the calling thread) and the BLAS's for its duration."""
    ext = native._extension()
    blas, omp = ext.blas_threads(), ext.openmp_threads()
    f2, f1 = rng.standard_normal((24, 20, 3, 3)), rng.standard_normal((20, 28, 1, 1))
    for threads in (1, 2, 3):
        native.compose(f2, f1, threads=threads)
        native.compose(f1.transpose(1, 0, 2, 3), f2.transpose(1, 0, 2, 3), threads=threads)
        assert (ext.blas_threads(), ext.openmp_threads()) == (blas, omp)


def test_thread_count_choice(monkeypatch):
    monkeypatch.delenv(native.ENV_THREADS, raising=False)
    big = 64 * native.MIN_PARALLEL_WORK
    assert native.threads_for(big, 3) == 3
    assert native.threads_for(1.0) == 1  # too little work for a second thread
    assert 1 <= native.threads_for(big) <= native._start_up_threads()
    monkeypatch.setattr(native, "_busy_cores", lambda: 0)
    assert native.threads_for(big) == native._start_up_threads()
    monkeypatch.setattr(native, "_busy_cores", lambda: 64)  # every core held by others
    assert native.threads_for(big) == 1
    monkeypatch.setenv(native.ENV_THREADS, " 2 ")
    assert native.threads_for(1.0) == 2
    assert native.threads_for(1.0, 1) == 1  # the argument before the variable
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv(native.ENV_THREADS, bad)
        with pytest.raises(ValueError, match=native.ENV_THREADS):
            native.threads_for(big)


def test_bad_thread_counts_raise_typed_errors(rng):
    f2, f1 = rng.standard_normal((3, 4, 3, 3)), rng.standard_normal((4, 2, 3, 3))
    for bad, err in ((0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="threads must be a positive int"):
            native.compose(f2, f1, threads=bad)
        with pytest.raises(err, match="threads must be a positive int"):
            native.correlate_outer(f2, rng.standard_normal((3, 2, 5, 5)), 3, threads=bad)
    with pytest.raises(ValueError, match="threads must be at most"):
        native.compose(f2, f1, threads=native.MAX_THREADS + 1)
