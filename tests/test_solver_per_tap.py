"""Per-tap solves (a 1×1 fixed factor) and the solver's size and working-set checks."""

from __future__ import annotations

import pytest

from conftest import rel_err
from netmorph_core._limits import check_chain, check_deconv
from netmorph_core._memory import ENV_LIMIT, ResourceLimitError
from netmorph_core.backends import get_backend
from netmorph_core.reference import deconv_inner_ref, deconv_outer_ref
from netmorph_core.solver import solve_deconv


@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize(("c2", "c1", "c0"), [(3, 5, 2), (5, 3, 2), (4, 4, 3)])
def test_outer_with_a_1x1_factor_matches_the_reference(rng, c2, c1, c0, init) -> None:
    """F2 1×1, X 3×3 (K1 = Kt): the per-tap solve equals the explicit least squares."""
    g = rng.standard_normal((c2, c0, 3, 3))
    f2 = rng.standard_normal((c2, c1, 1, 1))
    x0 = rng.standard_normal((c1, c0, 3, 3)) if init else None
    x = solve_deconv(get_backend("numpy"), g, f2, "outer", (3, 3), x0)
    assert rel_err(x, deconv_outer_ref(g, f2, (3, 3), x0)) < 1e-10


@pytest.mark.parametrize(("c2", "c1", "c0"), [(3, 5, 2), (2, 3, 4)])
def test_inner_with_a_1x1_factor_matches_the_reference(rng, c2, c1, c0) -> None:
    g = rng.standard_normal((c2, c0, 5))
    f1 = rng.standard_normal((c1, c0, 1))
    x0 = rng.standard_normal((c2, c1, 5))
    x = solve_deconv(get_backend("numpy"), g, f1, "inner", (5,), x0)
    assert rel_err(x, deconv_inner_ref(g, f1, (5,), x0)) < 1e-10


def test_bounds_of_a_1x1_factor_have_no_tap_squared_gram(monkeypatch) -> None:
    """ViT patch embedding: a 192 × 192 Gram fits in 16 MiB; a 3×3 factor's is (192·256)²."""
    monkeypatch.setenv(ENV_LIMIT, str(2**24))
    check_deconv(192, 192, 3, (1, 1), (16, 16), "per-tap solve")
    with pytest.raises(ValueError, match=r"^dense solve: .*Gram has order 49152"):
        check_deconv(192, 192, 3, (3, 3), (16, 16), "dense solve")


def test_depth_morph_bounds_admit_a_1x1_outer_layer(monkeypatch) -> None:
    """The chain morphs' entry bound solves the first layer against a 1×1 rest per tap: the
    ViT patch embedding deepened with k2 = 1 is admitted, with k2 = 3 its Gram is refused."""
    monkeypatch.setenv(ENV_LIMIT, str(2**30))
    check_chain(192, 3, [192, 192], [(16, 16), (1, 1)], "morph_depth")
    with pytest.raises(ValueError, match=r"^morph_depth: .*Gram has order 49152"):
        check_chain(192, 3, [192, 192], [(16, 16), (3, 3)], "morph_depth")


def test_solver_refuses_a_gram_over_the_memory_limit(rng, monkeypatch) -> None:
    g = rng.standard_normal((6, 2, 5, 5))
    f2 = rng.standard_normal((6, 8, 3, 3))
    monkeypatch.setenv(ENV_LIMIT, "1000")
    with pytest.raises(ResourceLimitError, match=r"deconvolution of G~ .* needs about"):
        solve_deconv(get_backend("numpy"), g, f2, "outer", (3, 3))
