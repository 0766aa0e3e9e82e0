"""The structured normal-equation solver against the explicit least-squares reference."""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import pytest
import scipy.linalg

from conftest import RTOL, rel_err
from netmorph_core import solver
from netmorph_core.reference import (
    compose_ref,
    deconv_inner_ref,
    deconv_outer_ref,
    outer_operator,
    swap_channels,
)
from netmorph_core.solver import deconv_with, solve_deconv


@pytest.fixture(params=["numpy_backend", "native", "numba_cpu"])
def impl(request) -> ModuleType:
    module = importlib.import_module(f"netmorph_core.backends.{request.param}")
    try:
        module.load()
    except ImportError as exc:
        pytest.skip(f"{request.param} unavailable: {exc}")
    return module


def _problem(rng, side, c2, c1, c0, k1, k2, *, init=False):
    """Random G~ and factor for ``side``, with the reference solution and kernel size."""
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    g = rng.standard_normal((c2, c0, *kt))
    if side == "outer":
        factor, k = rng.standard_normal((c2, c1, *k2)), k1
        x0 = rng.standard_normal((c1, c0, *k1)) if init else None
    else:
        factor, k = rng.standard_normal((c1, c0, *k1)), k2
        x0 = rng.standard_normal((c2, c1, *k2)) if init else None
    return g, factor, k, x0


def _reference(g, factor, side, k, x0):
    solve = deconv_outer_ref if side == "outer" else deconv_inner_ref
    return solve(g, factor, k, x0)


def _residual(g, factor, side, x) -> float:
    pair = (factor, x) if side == "outer" else (x, factor)
    return float(np.linalg.norm(compose_ref(*pair) - g))


#: (C2, C1, C0, K1, K2) over- or underdetermined for both sides: equations C2·|Kt| (outer),
#: C0·|Kt| (inner) against unknowns C1·|K1| (outer), C1·|K2| (inner) per column.
OVERDETERMINED = [(4, 3, 2, (3, 3), (3, 3)), (3, 2, 3, (3,), (2,)), (5, 2, 3, (1, 1), (3, 3))]
UNDERDETERMINED = [(2, 7, 2, (3, 3), (3, 3)), (1, 4, 1, (3,), (2,)), (2, 9, 2, (3, 3), (2, 2))]


@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("side", ["outer", "inner"])
@pytest.mark.parametrize("shape", OVERDETERMINED + UNDERDETERMINED)
def test_matches_reference(impl, shape, side, init, rng):
    g, factor, k, x0 = _problem(rng, side, *shape, init=init)
    x = solve_deconv(impl, g, factor, side, k, x0)
    expected = _reference(g, factor, side, k, x0)
    assert x.shape == expected.shape and x.dtype == np.float64 and x.flags.c_contiguous
    assert rel_err(x, expected) <= RTOL[np.dtype(np.float64)]


@pytest.mark.parametrize("side", ["outer", "inner"])
@pytest.mark.parametrize("shape", OVERDETERMINED)
def test_overdetermined_equals_lstsq(impl, shape, side, rng):
    g, factor, k, _ = _problem(rng, side, *shape)
    f2, b = (factor, g) if side == "outer" else (swap_channels(factor), swap_channels(g))
    a = outer_operator(f2, k)
    b_cols = np.moveaxis(b, 1, -1).reshape(-1, b.shape[1])
    sol = np.linalg.lstsq(a, b_cols, rcond=None)[0]
    expected = np.moveaxis(sol.reshape(f2.shape[1], *k, b.shape[1]), -1, 1)
    if side == "inner":
        expected = swap_channels(expected)
    x = solve_deconv(impl, g, factor, side, k)
    assert rel_err(x, expected) <= RTOL[np.dtype(np.float64)]
    best = _residual(g, factor, side, expected)
    assert best > 0.1 * np.linalg.norm(g)  # genuinely inconsistent
    assert _residual(g, factor, side, x) <= 10 * best


@pytest.mark.parametrize("side", ["outer", "inner"])
@pytest.mark.parametrize("shape", UNDERDETERMINED)
def test_underdetermined_is_exact_and_nearest_to_init(impl, shape, side, rng):
    g, factor, k, x0 = _problem(rng, side, *shape, init=True)
    x = solve_deconv(impl, g, factor, side, k, x0)
    x_min = solve_deconv(impl, g, factor, side, k)
    scale = np.linalg.norm(g)
    assert _residual(g, factor, side, x) <= 1e-12 * scale
    assert _residual(g, factor, side, x_min) <= 1e-12 * scale
    # Among exact solutions, x is the one closest to init, x_min the one of least norm.
    assert np.linalg.norm(x - x0) < np.linalg.norm(x_min - x0)
    assert np.linalg.norm(x_min) < np.linalg.norm(x)


def _rank_deficient(rng, side, over):
    """A factor whose operator A has exactly repeated columns (over) or rows (under)."""
    shape = OVERDETERMINED[0] if over else UNDERDETERMINED[0]
    g, factor, k, x0 = _problem(rng, side, *shape, init=True)
    if side == "outer":
        # Outer F2: repeated input channels repeat A's columns; repeated outputs, its rows.
        if over:
            factor[:, -1] = factor[:, 0]
        else:
            factor[-1] = factor[0]
    elif over:
        factor[-1] = factor[0]
    else:
        factor[:, -1] = factor[:, 0]
    return g, factor, k, x0


@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("over", [True, False], ids=["overdetermined", "underdetermined"])
@pytest.mark.parametrize("side", ["outer", "inner"])
def test_rank_deficient_matches_lstsq_semantics(impl, side, over, init, rng):
    g, factor, k, x0 = _rank_deficient(rng, side, over)
    x0 = x0 if init else None
    x = solve_deconv(impl, g, factor, side, k, x0)
    expected = _reference(g, factor, side, k, x0)
    assert rel_err(x, expected) <= 1e-10
    best = _residual(g, factor, side, expected)
    assert _residual(g, factor, side, x) <= 10 * best + 1e-12 * np.linalg.norm(g)


@pytest.mark.parametrize("side", ["outer", "inner"])
def test_zero_factor_returns_init(impl, side, rng):
    g, factor, k, x0 = _problem(rng, side, *OVERDETERMINED[0], init=True)
    zero = np.zeros_like(factor)
    np.testing.assert_array_equal(solve_deconv(impl, g, zero, side, k, x0), x0)
    np.testing.assert_array_equal(solve_deconv(impl, g, zero, side, k), np.zeros_like(x0))


def _ill_conditioned(rng, dtype):
    """Overdetermined outer problem with κ(A) ≈ 5e3 (two nearly equal input channels of F2),
    so κ(AᵀA)·ε ≈ 3e-9 in float64 and ≈ 2 in float32."""
    g, f2, k, _ = _problem(rng, "outer", *OVERDETERMINED[0])
    f2[:, -1] = f2[:, 0] + 1e-3 * rng.standard_normal(f2[:, 0].shape)
    return g.astype(dtype), f2.astype(dtype), k


def test_refinement_recovers_float64_accuracy(impl, rng):
    g, f2, k = _ill_conditioned(rng, np.float64)
    expected = deconv_outer_ref(g, f2, k)
    a = outer_operator(f2, k)
    b = np.moveaxis(g, 1, -1).reshape(-1, g.shape[1])
    plain = scipy.linalg.cho_solve(scipy.linalg.cho_factor(a.T @ a), a.T @ b)
    plain = np.moveaxis(plain.reshape(f2.shape[1], *k, g.shape[1]), -1, 1)
    x = solve_deconv(impl, g, f2, "outer", k)
    assert rel_err(plain, expected) > 1e-11  # the unrefined normal equations lose digits
    assert rel_err(x, expected) <= 1e-11
    assert rel_err(x, expected) * 100 <= rel_err(plain, expected)


def test_float32_inputs_get_the_float64_answer(impl, rng):
    g, f2, k = _ill_conditioned(rng, np.float32)
    x = solve_deconv(impl, g, f2, "outer", k)
    assert x.dtype == np.float32
    assert rel_err(x, deconv_outer_ref(g, f2, k)) <= RTOL[np.dtype(np.float32)]


@pytest.mark.parametrize("side", ["outer", "inner"])
def test_float32_matches_reference(impl, side, rng):
    g, factor, k, x0 = _problem(rng, side, *UNDERDETERMINED[0], init=True)
    args = [a.astype(np.float32) for a in (g, factor, x0)]
    x = solve_deconv(impl, args[0], args[1], side, k, args[2])
    assert x.dtype == np.float32
    assert rel_err(x, _reference(*args[:2], side, k, args[2])) <= RTOL[np.dtype(np.float32)]


def test_linear_layers(impl, rng):
    g = rng.standard_normal((3, 4))
    f2 = rng.standard_normal((3, 5))
    x = solve_deconv(impl, g, f2, "outer", ())
    np.testing.assert_allclose(f2 @ x, g, rtol=1e-12, atol=1e-12)
    assert rel_err(x, np.linalg.lstsq(f2, g, rcond=None)[0]) <= 1e-12


def test_strided_inputs_unchanged(impl, rng):
    g, f2, k, x0 = _problem(rng, "outer", *UNDERDETERMINED[0], init=True)
    views = [np.swapaxes(np.ascontiguousarray(np.swapaxes(a, 0, 1)), 0, 1) for a in (g, f2, x0)]
    copies = [a.copy() for a in views]
    x = solve_deconv(impl, *views[:2], "outer", k, views[2])
    assert all(np.array_equal(a, b) for a, b in zip(views, copies))
    assert rel_err(x, deconv_outer_ref(g, f2, k, x0)) <= RTOL[np.dtype(np.float64)]


def test_deconv_with_is_the_solver():
    assert deconv_with is solve_deconv


@pytest.mark.parametrize(
    ("side", "k", "init", "error", "match"),
    [
        ("sideways", (3, 3), None, ValueError, "side must be"),
        ("outer", (3, 3), np.ones((2, 2, 3, 3)), ValueError, "init must have shape"),
        ("outer", (3,), None, ValueError, "kernel sizes"),
        ("outer", (2, 2), None, ValueError, "effective spatial size"),
        ("outer", 1.5, None, TypeError, "kernel_size"),
        ("inner", (3, 3), None, ValueError, "input channels"),
    ],
)
def test_bad_input(impl, side, k, init, error, match):
    with pytest.raises(error, match=match):
        solve_deconv(impl, np.ones((2, 3, 5, 5)), np.ones((2, 4, 3, 3)), side, k, init)


def test_bad_arrays(impl):
    g = np.ones((2, 3, 5, 5))
    f2 = np.ones((2, 4, 3, 3))
    with pytest.raises(TypeError, match="factor must have dtype"):
        solve_deconv(impl, g, f2.astype(np.int64), "outer", 3)
    with pytest.raises(TypeError, match="g_tilde must be an array"):
        solve_deconv(impl, g.tolist(), f2, "outer", 3)
    with pytest.raises(ValueError, match="output channels"):
        solve_deconv(impl, g, np.ones((3, 4, 3, 3)), "outer", 3)
    with pytest.raises(ValueError, match="same number of dimensions"):
        solve_deconv(impl, g, np.ones((2, 4, 3)), "outer", 3)


@pytest.mark.gpu
def test_cuda_backend_matches_reference(rng):
    cupy = pytest.importorskip("cupy")
    if not cupy.is_available():
        pytest.skip("no CUDA device")
    gpu = importlib.import_module("netmorph_core.backends.cupy_backend")
    try:
        gpu.load()
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"cupy backend unavailable: {exc}")
    for shape in (OVERDETERMINED[0], UNDERDETERMINED[0]):
        for side in ("outer", "inner"):
            g, factor, k, x0 = _problem(rng, side, *shape, init=True)
            x = solve_deconv(gpu, cupy.asarray(g), cupy.asarray(factor), side, k, cupy.asarray(x0))
            assert isinstance(x, cupy.ndarray)
            expected = _reference(g, factor, side, k, x0)
            assert rel_err(cupy.asnumpy(x), expected) <= RTOL[np.dtype(np.float64)]
    g, factor, k, x0 = _rank_deficient(rng, "outer", over=True)
    x = solve_deconv(gpu, cupy.asarray(g), cupy.asarray(factor), "outer", k, cupy.asarray(x0))
    assert rel_err(cupy.asnumpy(x), deconv_outer_ref(g, factor, k, x0)) <= 1e-10


@pytest.mark.parametrize("n", [50, 300])
@pytest.mark.parametrize("kappa", [10.0, 1e4, 1e8, 1e11])
def test_condition_estimate_is_a_close_lower_bound(n, kappa, rng):
    # The estimate decides refinement and the pseudo-inverse fallback: within a factor 2 of
    # κ(Gram) from below, for eigenvalues spread geometrically over [1, κ].
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    gram = (q * np.geomspace(1.0, kappa, n)) @ q.T
    gram = np.ascontiguousarray((gram + gram.T) / 2)
    inverse = solver._invert(solver._cpu_linalg(), gram)
    true = np.linalg.cond(gram)
    assert 0.5 * true <= inverse.cond <= true * (1 + 1e-6)
    rhs = rng.standard_normal((n, 3))
    np.testing.assert_allclose(gram @ inverse.solve(rhs), rhs, rtol=0, atol=kappa * 1e-13)


def test_cpu_linear_algebra_helpers(rng):
    la = solver._cpu_linalg()
    x = rng.standard_normal((3, 4, 5, 6))
    assert la.norm(x) == pytest.approx(np.linalg.norm(x), rel=1e-14)
    assert la.norm(x[:, ::2]) == pytest.approx(np.linalg.norm(x[:, ::2]), rel=1e-14)
    m = rng.standard_normal((7, 7))
    sym = np.ascontiguousarray(m + m.T)
    u = rng.standard_normal((7, 4))
    np.testing.assert_allclose(la.symm(sym, u), sym @ u, rtol=1e-13, atol=1e-13)
