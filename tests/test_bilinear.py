"""The bilinear regime of the depth morph: both factors solved at once (Levenberg–Marquardt)
where counting admits a dense exact pair but neither one-sided solve is exact and the
identity-augmented pair does not exist (here: a 5×5 G into two 3×3 factors, which G fits
neither of)."""

import numpy as np
import pytest

import netmorph_core as nm
from netmorph_core.backends import select_backend
from netmorph_core.morph import bilinear
from netmorph_core.morph.common import random_start
from netmorph_core.morph.depth import morph_depth
from netmorph_core.morph.solvability import solvability
from netmorph_core.reference import pad_centered

TOL64 = 1e-10


def _g(c: int, seed: int = 0, k: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((c, c, k, k))


@pytest.mark.parametrize("c", [4, 6])
def test_width_2c_is_exact_and_dense(c):
    g = _g(c)
    info = solvability(g.shape, 2 * c, 3, 3)
    assert bilinear.use_bilinear(info)
    r = morph_depth(g, 2 * c, 3, 3, method="general", seed=1)
    assert r.exact and r.residual <= TOL64
    assert r.residual == pytest.approx(nm.residual(g, r.filters[1], r.filters[0]), rel=1e-6)
    assert all(np.all(f != 0) for f in r.filters)
    assert r.iterations > bilinear.WARMUP_SOLVES  # the alternation alone does not get there


def test_joint_solver_only_on_the_exact_steps_sizes():
    # C = 16, width 32: in the regime, but G~ has 6400 > EXPLICIT_ROWS entries.
    info = solvability((16, 16, 5, 5), 32, 3, 3)
    assert bilinear.in_bilinear_regime(info) and not bilinear.use_bilinear(info)
    assert not bilinear.in_bilinear_regime(solvability((8, 8, 5, 5), 23, 3, 3))  # one-sided
    # A 3×3 G fits a 3×3 factor: the identity-augmented pair serves instead.
    augmented = solvability((8, 8, 3, 3), 16, 3, 3)
    assert augmented.augmented_side == "F1" and not bilinear.in_bilinear_regime(augmented)
    assert bilinear.use_bilinear(solvability((8, 8, 3, 3), 16, 3, 3), augmented_failed=True)


def test_alternation_alone_stalls_in_the_regime():
    g = _g(6)
    with pytest.raises(ValueError, match="did not reach tol"):
        morph_depth(g, 12, 3, 3, method="general", seed=1, max_iter=bilinear.WARMUP_SOLVES)


def test_same_seed_same_filters():
    g = _g(5, seed=3)
    a = morph_depth(g, 10, 3, 3, seed=7)
    b = morph_depth(g, 10, 3, 3, seed=7)
    for fa, fb in zip(a.filters, b.filters):
        np.testing.assert_array_equal(fa, fb)


def test_rectangular_and_float32():
    g = np.random.default_rng(4).standard_normal((5, 4, 5, 5)).astype(np.float32)
    info = solvability(g.shape, 9, 3, 3)
    assert bilinear.in_bilinear_regime(info)
    r = morph_depth(g, 9, 3, 3, seed=0)
    assert r.exact and r.residual <= 1e-5
    assert all(f.dtype == np.float32 for f in r.filters)


def test_matrix_free_steps_converge(monkeypatch):
    # Force the preconditioned-CG steps (the path of large G~) on a small problem.
    monkeypatch.setattr(bilinear, "EXPLICIT_ROWS", 0)
    c, w = 4, 8
    g_tilde = pad_centered(_g(c, seed=2, k=3), (5, 5))
    rng = np.random.default_rng(0)
    f1, f2 = random_start([(w, c, 3, 3), (c, w, 3, 3)], g_tilde, rng)
    impl = select_backend("auto", np.dtype(np.float64), g_tilde)
    f1, f2, steps, residual = bilinear.solve_bilinear(impl, g_tilde, f1, f2, 1e-11, 200)
    assert residual <= 1e-11 and 0 < steps < 200
    assert nm.residual(g_tilde, f2, f1) <= 1e-10


def test_below_the_count_is_refused_before_any_work(monkeypatch):
    # C = 8, width 12: 12·144 − 12² = 1584 < 1600 equations (5×5 G: no augmented pair).
    def fail(*args, **kwargs):
        raise AssertionError("no solver may run")

    monkeypatch.setattr("netmorph_core.morph.depth.solve_bilinear", fail)
    monkeypatch.setattr("netmorph_core.morph.depth.alternate", fail)
    with pytest.raises(ValueError, match=r"i\.e\. 1584 < 1600 equations"):
        morph_depth(_g(8), 12, 3, 3, method="general", seed=0)


def test_stable_in_the_regime():
    g = _g(4, seed=5)
    r = morph_depth(g, 8, 3, 3, method="stable", seed=0)
    assert r.exact and r.residual <= TOL64
    for f in r.filters:
        assert np.all(np.abs(f) >= 0.05 * np.std(f) * (1 - 1e-9))


def test_assembled_normal_matrix_is_j_jt():
    # J built column by column from J·(E, D) = F2 ⊛ E + D ⊛ F1; Jᵀ checked through the adjoint.
    rng = np.random.default_rng(6)
    c0, w, c2 = 2, 3, 3
    f1 = rng.standard_normal((w, c0, 3, 3))
    f2 = rng.standard_normal((c2, w, 3, 3))
    impl = select_backend("auto", np.dtype(np.float64), f1)
    pair = bilinear._Pair(impl, f1, f2)
    n1, n2 = f1.size, f2.size
    cols = []
    for j in range(n1 + n2):
        x = np.zeros(n1 + n2)
        x[j] = 1.0
        cols.append(pair.apply(x[:n1].reshape(f1.shape), x[n1:].reshape(f2.shape)).ravel())
    jac = np.stack(cols, axis=1)
    np.testing.assert_allclose(pair.normal_matrix(c0, c2), jac @ jac.T, rtol=1e-12, atol=1e-10)
    y = rng.standard_normal((c2, c0, 5, 5))
    e, d = pair.adjoint(y)
    np.testing.assert_allclose(
        np.concatenate([e.ravel(), d.ravel()]), jac.T @ y.ravel(), atol=1e-10
    )
