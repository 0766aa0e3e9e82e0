"""Counting refusals of subnet and module morphs: refused before any work with the numbers,
and a neighbouring wider configuration solved exactly."""

from __future__ import annotations

import pytest

from netmorph_core.morph import chain as chain_module
from netmorph_core.morph.common import compose_chain
from netmorph_core.morph.graph import Module, conv_edge
from netmorph_core.morph.module import morph_module
from netmorph_core.morph.newton import relative_error
from netmorph_core.morph.subnet import morph_subnet
from netmorph_core.reference import pad_centered

#: Through a 1-channel blob, the cut after layer 1 is a (1, 2, 3) ⊛ (2, 1, 1) pair: 8
#: parameters less 1 for the gauge against 2·2·3 = 12 equations.
NARROW = [(2, 1), (1, 3), (2, 1)]
WIDE = [(2, 1), (2, 3), (2, 1)]
NARROW_MESSAGE = r"layers: .* at blob 1 \(width 1\).* 7 < 12 entries C2·C0·\|K\| of G"


def _no_work(*args, **kwargs):
    raise AssertionError("a refused configuration must fail before any solve")


@pytest.mark.parametrize("method", ["general", "stable"])
def test_subnet_refused_by_counting_before_any_work(rng, monkeypatch, method) -> None:
    g = rng.standard_normal((2, 2, 3))
    with monkeypatch.context() as patch:
        patch.setattr(chain_module, "random_start", _no_work)
        with pytest.raises(ValueError, match=NARROW_MESSAGE):
            morph_subnet(g, NARROW, method=method, seed=0)
    res = morph_subnet(g, WIDE, method=method, seed=0)
    assert res.exact and res.residual <= 1e-10
    assert relative_error(pad_centered(g, (3,)), compose_chain(res.filters)) <= 1e-10


def test_subnet_counting_skipped_for_an_explicit_tol_or_approximation(rng) -> None:
    g = rng.standard_normal((2, 2, 3))
    res = morph_subnet(g, NARROW, seed=0, max_iter=6, allow_approximate=True)
    assert not res.exact and res.residual > 1e-3
    with pytest.raises(ValueError, match="did not reach tol"):
        morph_subnet(g, NARROW, seed=0, max_iter=6, tol=1e-10)


def test_subnet_with_a_one_solve_exact_layer_is_never_refused(rng) -> None:
    g = rng.standard_normal((4, 4, 3, 3))
    res = morph_subnet(g, [(4, 1), (4, 3), (None, 1)], seed=0)
    assert res.exact and res.iterations == 1


def test_module_refused_by_counting_and_the_wider_one_exact(rng) -> None:
    g = rng.standard_normal((3, 2, 3, 3))
    edges = [conv_edge("a", "s", "m", 3), conv_edge("b", "m", "t", 3)]
    # m = 1: 1·2·9 + 3·1·9 − 1² = 44 < 3·2·9 = 54; m = 6 solves F2 last in one step.
    with pytest.raises(ValueError, match=r"module: .* 44 < 54 entries C_out·C_in·\|K\| of G"):
        morph_module(g, Module(edges, channels={"m": 1}), seed=0)
    res = morph_module(g, Module(edges, channels={"m": 6}), seed=0)
    assert res.exact
    composed = compose_chain([res.filters["a"], res.filters["b"]])
    assert relative_error(pad_centered(g, (5, 5)), composed) <= 1e-10


def test_counting_admits_a_chain_whose_zero_border_needs_sparse_compositions(rng) -> None:
    # A 1×1 G (4, 16) into (1×1, 5×5, 1×1): the first cut's pair has 4·(16 + 100) − 16 = 448
    # parameters, far short of G~'s 4·16·25 = 1600 equations but not of G's 64 entries, and
    # the dense chain reaches G~'s zero border (no layer is exact in one solve).
    g = rng.standard_normal((4, 16, 1, 1))
    assert not any(chain_module.chain_exact_layers(16, [4, 16, 4], [(1, 1), (5, 5), (1, 1)]))
    res = morph_subnet(g, [(4, 1), (16, 5), (4, 1)], seed=0)
    assert res.exact and res.nonzero_ratio == 1.0
