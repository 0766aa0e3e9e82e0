"""Module morphing: the graph abstraction, Algorithm 1 (reduction), Algorithm 2 and morph_module."""

from __future__ import annotations

import numpy as np
import pytest

import netmorph_core as nm
from conftest import rel_err
from netmorph_core.backends import get_backend
from netmorph_core.morph import module as module_solvers
from netmorph_core.morph import newton
from netmorph_core.morph.graph import (
    Edge,
    Module,
    bind_to_layer,
    compose_module,
    conv_edge,
    identity_edge,
    reduce_module,
)
from netmorph_core.morph.module import morph_module
from netmorph_core.reference import compose_ref, pad_centered

#: Module (D) of the notes: G = F5⊛F1 + F6⊛(F3⊛F1 + F4⊛F2) + F7⊛F2 (irreducible).
D_EDGES = [
    conv_edge("F1", "s", "a", 3),
    conv_edge("F2", "s", "b", 3),
    conv_edge("F3", "a", "c", 3),
    conv_edge("F4", "b", "c", 3),
    conv_edge("F5", "a", "t", 3),
    conv_edge("F6", "c", "t", 3),
    conv_edge("F7", "b", "t", 3),
]


def inception(bottleneck: int) -> Module:
    """1×1 | 1×1→3×3 | 1×1→5×5 | identity, summed."""
    return Module(
        [
            conv_edge("b1", "s", "t", 1),
            conv_edge("b2a", "s", "u", 1),
            conv_edge("b2b", "u", "t", 3),
            conv_edge("b3a", "s", "w", 1),
            conv_edge("b3b", "w", "t", 5),
            identity_edge("id", "s", "t"),
        ],
        channels={"u": bottleneck, "w": 4},
    )


def module_d_by_hand(f: dict[str, np.ndarray]) -> np.ndarray:
    """Equation (6) of the notes, written out path by path (an independent oracle)."""

    def c(*fs: np.ndarray) -> np.ndarray:
        out = fs[-1]
        for x in fs[-2::-1]:
            out = compose_ref(x, out)
        return pad_centered(out, (7, 7))

    return (
        c(f["F5"], f["F1"])
        + c(f["F6"], f["F3"], f["F1"])
        + c(f["F6"], f["F4"], f["F2"])
        + c(f["F7"], f["F2"])
    )


# ---------------------------------------------------------------------------------------------
# The module equation


def test_compose_module_matches_equation_6(rng):
    module = Module(D_EDGES)
    widths = {"s": 2, "a": 3, "b": 4, "c": 5, "t": 2}
    f = {e.name: rng.standard_normal((widths[e.head], widths[e.tail], 3, 3)) for e in D_EDGES}
    np.testing.assert_allclose(compose_module(module, f), module_d_by_hand(f), atol=1e-12)


def test_compose_module_identity_edges_and_centring(rng):
    # 0.5·I (1×1) in parallel with a 3×3 conv: the identity sits at the centre tap.
    module = Module([identity_edge("skip", "s", "t", 0.5), conv_edge("c", "s", "t", 3)])
    f = rng.standard_normal((3, 3, 3, 3))
    expected = f.copy()
    expected[:, :, 1, 1] += 0.5 * np.eye(3)
    np.testing.assert_allclose(compose_module(module, {"c": f}), expected, atol=1e-15)
    # The fixed kernel may be passed back in (as morph_module returns it) but must be 0.5·I.
    skip = np.zeros((3, 3, 1, 1))
    skip[:, :, 0, 0] = 0.5 * np.eye(3)
    np.testing.assert_allclose(compose_module(module, {"c": f, "skip": skip}), expected)
    with pytest.raises(ValueError, match="'skip' is the fixed identity"):
        compose_module(module, {"c": f, "skip": 2 * skip})


def test_compose_module_keeps_dtype_and_inputs(rng):
    module = Module([conv_edge("a", "s", "m", 3), conv_edge("b", "m", "t", 1)])
    fa = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    fb = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    copies = (fa.copy(), fb.copy())
    out = compose_module(module, {"a": fa, "b": fb})
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, compose_ref(fb, fa), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(fa, copies[0])
    np.testing.assert_array_equal(fb, copies[1])


# ---------------------------------------------------------------------------------------------
# Algorithm 1


def test_reduction_series_chain():  # module (A): a sequential chain
    m = Module(
        [conv_edge("e1", "s", "a", 3), conv_edge("e2", "a", "b", 1), conv_edge("e3", "b", "t", 3)]
    )
    red = reduce_module(m)
    assert red.reducible
    assert [(s.kind, s.merged, s.parts, s.vertex) for s in red.steps] == [
        ("I", "(e2⊛e1)", ("e1", "e2"), "a"),
        ("I", "(e3⊛(e2⊛e1))", ("(e2⊛e1)", "e3"), "b"),
    ]
    (only,) = red.remainder.edges
    assert (only.tail, only.head, only.kernel_size) == ("s", "t", 5)
    assert red.morph_sequence == red.steps[::-1]


def test_reduction_parallel_branches():  # module (B): parallel edges, merged pairwise
    m = Module(
        [
            conv_edge("p", "s", "t", 1),
            conv_edge("q", "s", "t", 3),
            identity_edge("r", "s", "t", 0.5),
        ]
    )
    red = reduce_module(m)
    assert red.reducible
    assert [(s.kind, s.merged) for s in red.steps] == [("II", "(p+q)"), ("II", "((p+q)+r)")]
    assert red.remainder.edges[0].kernel_size == 3


def test_reduction_nested():  # module (C): a series edge feeding a parallel pair, plus a skip
    m = Module(
        [
            conv_edge("e1", "s", "a", 3),
            conv_edge("e2", "a", "t", 1),
            conv_edge("e3", "a", "b", 3),
            conv_edge("e4", "b", "t", 1),
            identity_edge("skip", "s", "t"),
        ]
    )
    red = reduce_module(m)
    assert red.reducible
    assert [(s.kind, s.merged) for s in red.steps] == [
        ("I", "(e4⊛e3)"),
        ("II", "(e2+(e4⊛e3))"),
        ("I", "((e2+(e4⊛e3))⊛e1)"),
        ("II", "(((e2+(e4⊛e3))⊛e1)+skip)"),
    ]


def test_reduction_identities_merge_to_identities():
    m = Module([identity_edge("i1", "s", "a", 2.0), identity_edge("i2", "a", "t", 0.25)])
    red = reduce_module(m)
    (only,) = red.remainder.edges
    assert only.identity and only.scale == 0.5


def test_module_d_is_irreducible():
    m = Module(D_EDGES)
    red = reduce_module(m)
    assert not red.reducible
    assert red.steps == ()
    assert red.remainder.edge_names == m.edge_names


def test_reduction_stops_at_irreducible_core():
    # (D) with F3 replaced by a chain: the chain merges, the rest is irreducible.
    edges = [e for e in D_EDGES if e.name != "F3"]
    edges += [conv_edge("F3a", "a", "x", 1), conv_edge("F3b", "x", "c", 3)]
    red = reduce_module(Module(edges))
    assert not red.reducible
    assert [(s.kind, s.merged) for s in red.steps] == [("I", "(F3b⊛F3a)")]
    assert len(red.remainder.edges) == 7
    assert "(F3b⊛F3a)" in red.remainder.edge_names


# ---------------------------------------------------------------------------------------------
# morph_module


def test_morph_module_d_exact(rng):
    # C_s = C_t = 2 and inner width 12: solving F6 alone is exact (12·9 ≥ 2·49).
    g = rng.standard_normal((2, 2, 3, 3))
    module = Module(D_EDGES, channels={"a": 12, "b": 12, "c": 12})
    res = morph_module(g, module, seed=0)
    assert res.exact and res.residual <= 1e-10
    assert not res.reduction.reducible
    assert res.effective_size == (7, 7)
    assert rel_err(module_d_by_hand(res.filters), pad_centered(g, (7, 7))) <= 1e-10
    assert res.nonzero_ratio == 1.0
    assert set(res.filters) == {e.name for e in D_EDGES}
    assert res.filters["F3"].shape == (12, 12, 3, 3)


def test_morph_module_d_needs_joint_iterations(rng):
    # Inner width 6: no single edge solve is exact (6·9 < 3·49); Algorithm 2 then Gauss-Newton.
    g = rng.standard_normal((3, 3, 3, 3))
    module = Module(D_EDGES, channels={"a": 6, "b": 6, "c": 6})
    res = morph_module(g, module, seed=1)
    assert res.residual <= 1e-10
    assert rel_err(compose_module(module, res.filters), pad_centered(g, (7, 7))) <= 1e-10


@pytest.mark.parametrize("method", ["general", "practical"])
def test_morph_module_inception_exact(rng, method):
    g = rng.standard_normal((4, 4, 5, 5))
    module = inception(bottleneck=4)
    res = morph_module(g, module, method=method, seed=0)
    assert res.reduction.reducible
    assert res.residual <= 1e-10
    assert rel_err(compose_module(module, res.filters), g) <= 1e-10
    shapes = {n: f.shape for n, f in res.filters.items()}
    assert shapes == {
        "b1": (4, 4, 1, 1),
        "b2a": (4, 4, 1, 1),
        "b2b": (4, 4, 3, 3),
        "b3a": (4, 4, 1, 1),
        "b3b": (4, 4, 5, 5),
        "id": (4, 4, 1, 1),
    }
    np.testing.assert_array_equal(res.filters["id"][:, :, 0, 0], np.eye(4))
    assert set(res.conv_filters) == {"b1", "b2a", "b2b", "b3a", "b3b"}


def test_morph_module_narrow_branch_is_refined(rng):
    # A 2-wide bottleneck cannot carry the 3×3 branch's share alone; the 5×5 branch absorbs
    # the rest when the whole module is refined.
    g = rng.standard_normal((4, 4, 5, 5))
    res = morph_module(g, inception(bottleneck=2), seed=0)
    assert res.residual <= 1e-10
    assert res.filters["b2a"].shape == (2, 4, 1, 1)


def test_morph_module_resnet_1c1(rng):
    # The identity shortcut I = 0.5·I + F2 ⊛ F1 (1×1 convolutions): morph_1c1 of the notes.
    c = 3
    g = np.eye(c).reshape(c, c, 1, 1)
    module = Module(
        [
            identity_edge("half", "s", "t", 0.5),
            conv_edge("f1", "s", "m", 1),
            conv_edge("f2", "m", "t", 1),
        ],
        channels={"m": 5},
    )
    res = morph_module(g, module, seed=0)
    assert res.residual <= 1e-12
    f1, f2 = res.filters["f1"][:, :, 0, 0], res.filters["f2"][:, :, 0, 0]
    np.testing.assert_allclose(f2 @ f1, 0.5 * np.eye(c), atol=1e-12)


def test_morph_module_linear_and_1d(rng):
    g = rng.standard_normal((3, 2))
    module = Module(
        [conv_edge("a", "s", "m"), conv_edge("b", "m", "t"), conv_edge("c", "s", "t")], {"m": 4}
    )
    res = morph_module(g, module, seed=0)
    assert res.residual <= 1e-12 and res.filters["a"].shape == (4, 2)
    g1 = rng.standard_normal((2, 2, 3))
    module1 = Module([conv_edge("a", "s", "m", 3), conv_edge("b", "m", "t", 3)], {"m": 6})
    res1 = morph_module(g1, module1, seed=0)
    assert res1.residual <= 1e-12 and res1.effective_size == (5,)


def test_morph_module_float32(rng):
    g = rng.standard_normal((4, 4, 5, 5)).astype(np.float32)
    res = morph_module(g, inception(bottleneck=4), seed=0)
    assert all(f.dtype == np.float32 for f in res.filters.values())
    assert res.residual <= 1e-5


def test_morph_module_deterministic_and_leaves_inputs(rng):
    g = rng.standard_normal((2, 2, 3, 3))
    g_copy = g.copy()
    module = Module(D_EDGES, channels={"a": 12, "b": 12, "c": 12})
    edges_before = module.edges
    a = morph_module(g, module, seed=7)
    b = morph_module(g, module, seed=7)
    for name in a.filters:
        np.testing.assert_array_equal(a.filters[name], b.filters[name])
    np.testing.assert_array_equal(g, g_copy)
    assert module.edges == edges_before


def test_morph_module_inexact_raises_unless_allowed(rng):
    # Through a 1-channel vertex, F2 ⊛ F1 has rank 1: a random 3×3 linear map is out of reach.
    g = rng.standard_normal((3, 3))
    module = Module([conv_edge("a", "s", "m"), conv_edge("b", "m", "t")], channels={"m": 1})
    with pytest.raises(ValueError, match=r"module: .* 5 < 9 entries"):
        morph_module(g, module, seed=0)
    with pytest.raises(ValueError, match=r"residual .* > tol"):
        morph_module(g, module, seed=0, tol=1e-10)
    res = morph_module(g, module, seed=0, allow_approximate=True)
    assert not res.exact and res.residual > 0.1


# ---------------------------------------------------------------------------------------------
# Gauss-Newton linearisation


def test_linearisation_matrix_matches_operator(rng):
    module = Module(D_EDGES, channels={"a": 2, "b": 3, "c": 2})
    g = rng.standard_normal((2, 2, 3, 3))
    shape = bind_to_layer(module, g)
    f = {e.name: rng.standard_normal(shape.filter_shape(e.name)) for e in D_EDGES}
    lin = newton.Linearisation(shape, f, ["F1", "F3", "F6"])
    jac = lin.matrix()
    op = lin.operator(get_backend("numpy"), np.ones(lin.cols))
    x = rng.standard_normal(lin.cols)
    y = rng.standard_normal(lin.rows)
    np.testing.assert_allclose(op.matvec(x), jac @ x, atol=1e-11)
    np.testing.assert_allclose(op.rmatvec(y), jac.T @ y, atol=1e-11)
    # J is the derivative of the module equation (which is linear in each edge separately).
    moved = dict(f)
    for j, d in lin.split(1e-6 * x).items():
        moved[j] = f[j] + d
    diff = compose_module(module, moved) - compose_module(module, f)
    np.testing.assert_allclose(diff.ravel(), 1e-6 * (jac @ x), atol=1e-10)


def test_matrix_free_step_equals_dense_step(rng, monkeypatch):
    module = Module([conv_edge("a", "s", "m", 3), conv_edge("b", "m", "t", 3)], channels={"m": 4})
    g = rng.standard_normal((2, 2, 3, 3))
    shape = bind_to_layer(module, g)
    f = {n: rng.standard_normal(shape.filter_shape(n)) for n in ("a", "b")}
    lin = newton.Linearisation(shape, f, ["a", "b"])
    r = compose_module(module, f) - pad_centered(g, (5, 5))
    weights = rng.uniform(1.0, 3.0, lin.cols)
    impl = get_backend("numpy")
    dense = newton.weighted_step(lin, r, weights, impl)
    monkeypatch.setattr(newton, "EXPLICIT_JACOBIAN_ENTRIES", 0)
    free = newton.weighted_step(lin, r, weights, impl)
    assert rel_err(free, dense) <= 1e-6
    # A frozen entry (infinite weight) does not move.
    weights[:5] = np.inf
    assert np.all(newton.weighted_step(lin, r, weights, impl)[:5] == 0)


# ---------------------------------------------------------------------------------------------
# Bad input: typed errors naming the vertex or edge


def test_several_sources_or_sinks():
    with pytest.raises(ValueError, match=r"single source.*\['s1', 's2'\]"):
        Module([conv_edge("a", "s1", "t"), conv_edge("b", "s2", "t")])
    with pytest.raises(ValueError, match=r"single sink.*\['t1', 't2'\]"):
        Module([conv_edge("a", "s", "t1"), conv_edge("b", "s", "t2")])


def test_cycles():
    with pytest.raises(ValueError, match=r"cycle through vertex '[uv]'"):
        Module(
            [
                conv_edge("a", "s", "u"),
                conv_edge("b", "u", "v"),
                conv_edge("c", "v", "u"),
                conv_edge("d", "v", "t"),
            ]
        )
    with pytest.raises(ValueError, match="edge 'loop' is a cycle at vertex 'u'"):
        Module([conv_edge("a", "s", "u"), conv_edge("loop", "u", "u"), conv_edge("b", "u", "t")])


def test_incompatible_channels_along_a_path(rng):
    module = Module([conv_edge("F1", "s", "a", 3), conv_edge("F3", "a", "t", 3)])
    f1 = rng.standard_normal((4, 2, 3, 3))
    f3 = rng.standard_normal((2, 5, 3, 3))
    with pytest.raises(ValueError, match=r"vertex 'a' carries 4 channels .*'F1'.* edge 'F3'"):
        compose_module(module, {"F1": f1, "F3": f3})


def test_identity_edge_joining_different_widths(rng):
    module = Module([identity_edge("skip", "s", "t"), conv_edge("c", "s", "t", 3)])
    with pytest.raises(ValueError, match="identity edge 'skip'"):
        morph_module(rng.standard_normal((3, 2, 3, 3)), module)


def test_unknown_and_missing_edges(rng):
    module = Module([conv_edge("a", "s", "m", 1), conv_edge("b", "m", "t", 1)])
    fa = rng.standard_normal((2, 2, 1, 1))
    with pytest.raises(ValueError, match="unknown edge 'nope'"):
        compose_module(module, {"a": fa, "b": fa, "nope": fa})
    with pytest.raises(ValueError, match="missing the filter of edge 'b'"):
        compose_module(module, {"a": fa})
    with pytest.raises(ValueError, match="unknown edge 'zzz'"):
        module.edge("zzz")
    with pytest.raises(ValueError, match="edge 'b' has kernel size"):
        compose_module(module, {"a": fa, "b": rng.standard_normal((2, 2, 3, 3))})


def test_module_construction_errors():
    with pytest.raises(ValueError, match="duplicate edge name 'a'"):
        Module([conv_edge("a", "s", "m"), conv_edge("a", "m", "t")])
    with pytest.raises(ValueError, match="channels: unknown vertex 'q'"):
        Module([conv_edge("a", "s", "t")], channels={"q": 3})
    with pytest.raises(ValueError, match=r"channels\['m'\]"):
        Module([conv_edge("a", "s", "m"), conv_edge("b", "m", "t")], channels={"m": 0})
    with pytest.raises(TypeError, match="Edge instances"):
        Module([("a", "s", "t")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one edge"):
        Module([])
    with pytest.raises(ValueError, match="identity edge 'i' has kernel size 1"):
        Edge("i", "s", "t", 3, identity=True)
    with pytest.raises(ValueError, match="edge 'c' is a convolution"):
        Edge("c", "s", "t", 3, scale=0.5)
    with pytest.raises(ValueError, match="kernel_size of edge 'c' must be positive"):
        conv_edge("c", "s", "t", 0)
    with pytest.raises(TypeError, match="edge name"):
        conv_edge("", "s", "t")


def test_binding_errors(rng):
    g = rng.standard_normal((2, 2, 3, 3))
    with pytest.raises(ValueError, match="vertex 'm' has no channel count"):
        morph_module(g, Module([conv_edge("a", "s", "m", 3), conv_edge("b", "m", "t", 1)]))
    parity = Module([conv_edge("a", "s", "t", 2), conv_edge("b", "s", "t", 1)])
    with pytest.raises(ValueError, match=r"paths into vertex 't' .* different parity"):
        morph_module(g, parity)
    small = Module([conv_edge("a", "s", "t", 1)])
    with pytest.raises(ValueError, match="effective kernel size"):
        morph_module(g, small)
    with pytest.raises(ValueError, match="no convolution edge"):
        morph_module(np.eye(2).reshape(2, 2, 1, 1), Module([identity_edge("i", "s", "t")]))
    with pytest.raises(TypeError, match="module must be a Module"):
        morph_module(g, D_EDGES)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kernel_size of edge 'a'"):
        morph_module(g, Module([conv_edge("a", "s", "t", (3, 3, 3))]))
    with pytest.raises(ValueError, match="method"):
        morph_module(g, Module([conv_edge("a", "s", "t", 3)]), method="magic")


def test_morph_module_cancelling_identities(rng):
    # 0.5·I − 0.5·I is the zero map: edge c behind it is free (random), d carries all of G.
    module = Module(
        [
            identity_edge("p", "s", "a", 0.5),
            identity_edge("q", "s", "a", -0.5),
            conv_edge("c", "a", "t", 3),
            conv_edge("d", "s", "t", 3),
        ]
    )
    g = rng.standard_normal((2, 2, 3, 3))
    res = morph_module(g, module, seed=0)
    assert res.residual <= 1e-12
    np.testing.assert_allclose(res.filters["d"], g, atol=1e-12)
    assert res.nonzero_ratios["c"] == 1.0


def test_inner_edge_solve_matrix_free_equals_explicit(rng, monkeypatch):
    # F3 (a → c) touches neither source nor sink: a two-sided deconvolution.
    g = rng.standard_normal((2, 2, 3, 3))
    module = Module(D_EDGES, channels={"a": 2, "b": 2, "c": 3})
    shape = bind_to_layer(module, g)
    f = {e.name: rng.standard_normal(shape.filter_shape(e.name)) for e in D_EDGES}
    target = pad_centered(g, (7, 7))
    impl = get_backend("numpy")
    explicit = module_solvers._solve_edge(shape, target, f, "F3", impl)
    monkeypatch.setattr(module_solvers, "EXPLICIT_TWO_SIDED_ENTRIES", 0)
    lsqr = module_solvers._solve_edge(shape, target, f, "F3", impl)
    assert rel_err(lsqr, explicit) <= 1e-6
    # Solving an edge never raises the residual (each solve is a least-squares minimiser).
    before = rel_err(compose_module(module, f), target)
    f["F3"] = explicit
    assert rel_err(compose_module(module, f), target) <= before


def test_series_edge_of_a_padded_kernel_is_solved_at_its_support():
    # 0.5·I + (3×3 → 3×3): the series part must reproduce a 1×1 kernel padded to 5×5; solved at
    # its 1×1 support, the practical depth morph is exact at equal width.
    c = 4
    module = nm.Module(
        [
            nm.identity_edge("skip", "s", "t", 0.5),
            nm.conv_edge("a", "s", "u", 3),
            nm.conv_edge("b", "u", "t", 3),
        ],
        channels={"u": c},
    )
    g = np.eye(c)[:, :, None, None].copy()
    res = nm.morph_module(g, module, method="practical", seed=0)
    assert res.exact and res.residual <= 1e-10
    merged = nm.compose_module(module, res.filters)
    np.testing.assert_allclose(merged, np.pad(g, [(0, 0), (0, 0), (2, 2), (2, 2)]), atol=1e-12)
