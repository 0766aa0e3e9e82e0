"""Robustness of the numerical core: magnitude invariance, size and work bounds, typed errors.

Every public routine gives the answer for G·s that it gives for G, scaled (never zero, inf or
an underflowed residual), a typed error when that answer is not representable, a fast typed
error for sizes beyond the memory or work bounds, and never modifies its inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import netmorph_core as nm
from netmorph_core import ResourceLimitError

SCALES_F64 = (1e-300, 1e-170, 1e-50, 1.0, 1e50, 1e160, 1e200)
SCALES_F32 = (1e-30, 1e-15, 1.0, 1e15, 1e30)
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """max|a − b| / max|b| computed without overflow (both arrays normalised by b's scale)."""
    s = float(np.max(np.abs(b.astype(np.float64))))
    return float(np.max(np.abs(a.astype(np.float64) / s - b.astype(np.float64) / s)))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


# ----------------------------------------------------------------------------------------------
# Magnitude invariance


@pytest.mark.parametrize("s", SCALES_F64)
def test_deconv_scales_with_g_and_inverse_with_the_factor(rng, s):
    g = rng.standard_normal((3, 2, 3, 3))
    f2 = rng.standard_normal((3, 8, 1, 1))
    x = nm.deconv(g, outer=f2, kernel_size=3)
    xs = nm.deconv(g * s, outer=f2, kernel_size=3)
    assert np.abs(xs).max() > 0 and np.isfinite(xs).all()
    assert rel(xs, x * s) <= 1e-12
    xf = nm.deconv(g, outer=f2 * s, kernel_size=3)
    assert rel(xf, x / s) <= 1e-12
    xi = nm.deconv(g * s, inner=rng.standard_normal((8, 2, 3, 3)), kernel_size=1)
    assert np.isfinite(xi).all() and np.abs(xi).max() > 0


def test_deconv_power_of_two_scaling_is_exact(rng):
    g = rng.standard_normal((3, 2, 3, 3))
    f2 = rng.standard_normal((3, 8, 1, 1))
    x = nm.deconv(g, outer=f2, kernel_size=3)
    for k in (-900, -500, 500, 900):
        assert np.array_equal(nm.deconv(np.ldexp(g, k), outer=f2, kernel_size=3), np.ldexp(x, k))


@pytest.mark.parametrize("s", SCALES_F32)
def test_deconv_float32_scales(rng, s):
    g = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    f2 = rng.standard_normal((3, 8, 1, 1)).astype(np.float32)
    x = nm.deconv(g, outer=f2, kernel_size=3)
    xs = nm.deconv(g * np.float32(s), outer=f2, kernel_size=3)
    assert xs.dtype == np.float32 and rel(xs, x * np.float64(s)) <= 1e-5


@pytest.mark.parametrize(
    ("gs", "fs", "match"), [(1e300, 1e-300, "beyond the largest"), (1e-300, 1e300, "below")]
)
def test_deconv_unrepresentable_answer_is_a_value_error(rng, gs, fs, match):
    g = rng.standard_normal((3, 2, 3, 3)) * gs
    f2 = rng.standard_normal((3, 8, 1, 1)) * fs
    with pytest.raises(ValueError, match=match):
        nm.deconv(g, outer=f2, kernel_size=3)


def test_compose_scales_and_refuses_overflow(rng):
    f2 = rng.standard_normal((3, 4, 3, 3))
    f1 = rng.standard_normal((4, 2, 3, 3))
    ref = nm.compose(f2, f1)
    for s in (1e-150, 1e150):
        assert rel(nm.compose(f2 * s, f1 * s), ref * (s * s)) <= 1e-12
    with pytest.raises(ValueError, match=r"compose.*beyond the largest float64"):
        nm.compose(f2 * 1e200, f1 * 1e200)
    with pytest.raises(ValueError, match=r"compose.*below the smallest normal float32"):
        nm.compose((f2 * 1e-25).astype(np.float32), (f1 * 1e-25).astype(np.float32))


@pytest.mark.parametrize("s", SCALES_F64)
def test_residual_is_relative_at_every_scale(rng, s):
    res = nm.morph_depth(rng.standard_normal((3, 3, 3, 3)), 8, 3, 1, seed=0)
    g = rng.standard_normal((3, 3, 3, 3))
    f1, f2 = res.filters
    # an unrelated G: the residual is about 1 at every scale, never an underflowed ~0
    base = nm.residual(g, f2, f1)
    r = math.sqrt(s)
    assert abs(nm.residual(g * s, f2 * r, f1 * r) - base) <= 1e-12 * base
    # G far above the composition: the relative residual is 1, not the absolute difference
    assert abs(nm.residual(g * s, f2 * 1e-80, f1 * 1e-80) - 1.0) <= 1e-12 if s > 1e-100 else True


def test_residual_of_a_tiny_g_does_not_underflow_to_absolute(rng):
    """A composition of ~1e-16 against a G of 1e-170 is not exact."""
    g = rng.standard_normal((3, 3, 3, 3)) * 1e-170
    f2 = rng.standard_normal((3, 4, 1, 1)) * 1e-8
    f1 = rng.standard_normal((4, 3, 3, 3)) * 1e-8
    assert nm.residual(g, f2, f1) > 1e100


@pytest.mark.parametrize("method", ["general", "practical"])
@pytest.mark.parametrize("s", SCALES_F64)
def test_morph_depth_is_magnitude_invariant(rng, method, s):
    g = rng.standard_normal((3, 3, 3, 3))
    base = nm.morph_depth(g, 8, 3, 1, method=method, seed=0)
    res = nm.morph_depth(g * s, 8, 3, 1, method=method, seed=0)
    assert res.exact and res.residual <= 1e-12
    assert nm.residual(g * s, res.filters[1], res.filters[0]) <= 1e-12
    r = math.sqrt(s)
    for f, f0 in zip(res.filters, base.filters):
        assert rel(f, f0 * r) <= 1e-12


def test_morph_depth_stable_and_float32_scales(rng):
    g = rng.standard_normal((2, 2, 3, 3))
    base = nm.morph_depth(g, 6, 3, 3, method="stable", seed=0)
    for s in (1e-170, 1e200):
        res = nm.morph_depth(g * s, 6, 3, 3, method="stable", seed=0)
        assert res.exact and nm.residual(g * s, res.filters[1], res.filters[0]) <= 1e-10
        for f, f0 in zip(res.filters, base.filters):
            assert rel(f, f0 * math.sqrt(s)) <= 1e-9
    g32 = g.astype(np.float32)
    base32 = nm.morph_depth(g32, 8, 3, 1, method="practical", seed=0)
    for s in SCALES_F32:
        res = nm.morph_depth(g32 * np.float32(s), 8, 3, 1, method="practical", seed=0)
        assert res.exact and res.filters[0].dtype == np.float32
        for f, f0 in zip(res.filters, base32.filters):
            assert rel(f, f0 * math.sqrt(s)) <= 1e-5


def test_morph_depth_power_of_two_is_exact(rng):
    g = rng.standard_normal((3, 3, 3, 3))
    base = nm.morph_depth(g, 8, 3, 1, seed=0)
    res = nm.morph_depth(np.ldexp(g, 600), 8, 3, 1, seed=0)
    for f, f0 in zip(res.filters, base.filters):
        assert np.array_equal(f, np.ldexp(f0, 300))
    assert res.residual == base.residual


@pytest.mark.parametrize("s", SCALES_F64)
def test_subnet_stacked_and_module_are_magnitude_invariant(rng, s):
    g = rng.standard_normal((2, 2, 3, 3))
    layers = [(6, 3), (6, 1), (2, 1)]
    base = nm.morph_subnet(g, layers, method="practical", seed=0)
    res = nm.morph_subnet(g * s, layers, method="practical", seed=0)
    assert res.exact
    for f, f0 in zip(res.filters, base.filters):
        assert rel(f, f0 * s ** (1 / 3)) <= 1e-12
    for branch in nm.morph_stacked(g * s, [[(6, 3), (2, 1)], [(2, 3)]], seed=0):
        assert branch.exact and all(np.isfinite(f).all() for f in branch.filters)
    m = nm.Module(
        [nm.conv_edge("a", "s", "u", 3), nm.conv_edge("b", "u", "t", 1)], channels={"u": 8}
    )
    mod = nm.morph_module(g * s, m, seed=0)
    assert mod.exact and rel(nm.compose_module(m, mod.filters), g * s) <= 1e-12


def test_module_with_identity_edge_is_exact_or_refused(rng):
    g = rng.standard_normal((3, 3, 3, 3))
    m = nm.Module(
        [
            nm.conv_edge("a", "s", "u", 1),
            nm.conv_edge("b", "u", "t", 3),
            nm.identity_edge("skip", "s", "t", 0.5),
        ],
        channels={"u": 8},
    )
    res = nm.morph_module(g * 1e200, m, seed=0)
    assert res.exact and np.array_equal(res.filters["skip"][:, :, 0, 0], 0.5 * np.eye(3))
    assert rel(nm.compose_module(m, res.filters), g * 1e200) <= 1e-12
    # a G 1e-300 against a fixed 0.5·I: not resolvable, never a silently "exact" result
    with pytest.raises(ValueError, match="relative residual"):
        nm.morph_module(g * 1e-300, m, seed=0)


@pytest.mark.parametrize("s", SCALES_F64)
def test_width_split_and_baselines_scale(rng, s):
    f1 = rng.standard_normal((3, 2, 3, 3)) * s
    f2 = rng.standard_normal((4, 3, 1, 1)) * s
    w = nm.morph_width(f1, f2, 6, seed=0)
    w0 = nm.morph_width(f1 / s, f2 / s, 6, seed=0)
    assert rel(w.f1, w0.f1 * s) <= 1e-12 and rel(w.f2, w0.f2 * s) <= 1e-12
    n2n = nm.net2net_widen(f1, f2, 6, seed=0)
    assert np.isfinite(n2n.f2).all() and rel(n2n.f2.sum(axis=1), f2.sum(axis=1)) <= 1e-12
    parts = nm.split_filter(f1, 3, seed=0)
    assert rel(sum(parts), f1) <= 1e-12
    assert rel(parts[0], nm.split_filter(f1 / s, 3, seed=0)[0] * s) <= 1e-12
    idm = nm.idmorph(f1, 3)
    assert idm.exact and idm.residual <= 1e-15


# ----------------------------------------------------------------------------------------------
# Validation gaps


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix on purpose
def test_masked_and_odd_array_types(rng):
    g = rng.standard_normal((2, 2, 3, 3))
    masked = np.ma.array(g, mask=np.zeros_like(g, dtype=bool))
    masked.data[0, 0, 0, 0] = np.nan
    masked.mask[0, 0, 0, 0] = True
    for call in (
        lambda: nm.compose(masked, g),
        lambda: nm.morph_depth(masked, 4, 3, 1),
        lambda: nm.morph_kernel(masked, 5),
    ):
        with pytest.raises(TypeError, match="masked array"):
            call()
    with pytest.raises(TypeError, match="float32 or float64"):
        nm.compose(g.astype(object), g)
    with pytest.raises(ValueError, match="dimensions"):
        nm.compose(np.array(1.0), g)
    with pytest.raises(TypeError, match="F2 must be a NumPy array"):
        nm.compose(np.float64(1.0), g)
    lin = rng.standard_normal((3, 3))
    assert np.allclose(nm.compose(np.asmatrix(lin), np.asmatrix(lin)), lin @ lin)


def test_strided_and_read_only_inputs_work_and_are_not_written(rng):
    big = rng.standard_normal((6, 4, 3, 3))
    f2 = big[::-2, ::2]  # negative and non-unit strides
    f1 = np.ascontiguousarray(rng.standard_normal((2, 2, 3, 3)))
    f1.setflags(write=False)
    before = (f2.copy(), f1.copy())
    assert np.allclose(nm.compose(f2, f1), nm.compose(np.ascontiguousarray(f2), f1))
    g = nm.compose(f2, f1)
    g.setflags(write=False)
    x = nm.deconv(g, outer=f2, kernel_size=3, init=f1)
    assert nm.residual(g, f2, x) <= 1e-10
    nm.morph_depth(g[:, :, ::-1], 8, 3, 3, method="practical", seed=0)
    assert np.array_equal(f2, before[0]) and np.array_equal(f1, before[1])


BAD_FLOATS = [
    (float("nan"), ValueError),
    (float("inf"), ValueError),
    (-1e-3, ValueError),
    (0.0, ValueError),
    (True, TypeError),
    ("1e-3", TypeError),
    (10**400, ValueError),
]


@pytest.mark.parametrize(("tol", "err"), BAD_FLOATS)
def test_bad_tol_is_refused_everywhere(rng, tol, err):
    g = rng.standard_normal((2, 2, 3, 3))
    m = nm.Module([nm.conv_edge("a", "s", "t", 3)])
    calls = [
        lambda: nm.morph_depth(g, 4, 3, 1, tol=tol),
        lambda: nm.morph_depth(g, 4, 3, 1, tol=tol, method="stable"),
        lambda: nm.morph_subnet(g, [(4, 3), (2, 1)], tol=tol),
        lambda: nm.morph_stacked(g, [[(4, 3), (2, 1)]], tol=tol),
        lambda: nm.morph_module(g, m, tol=tol),
    ]
    for call in calls:
        with pytest.raises(err, match="tol"):
            call()


@pytest.mark.parametrize(("value", "err"), [(float("nan"), ValueError), (True, TypeError)])
def test_bad_float_options(rng, value, err):
    f1 = rng.standard_normal((2, 2, 3, 3))
    f2 = rng.standard_normal((2, 2, 1, 1))
    with pytest.raises(err, match="scale"):
        nm.morph_width(f1, f2, 4, scale=value)
    with pytest.raises(err, match="noise_std"):
        nm.net2net_widen(f1, f2, 4, noise_std=value)
    with pytest.raises(err, match="min_magnitude"):
        nm.stable_depth(f1, 4, 3, 1, min_magnitude=value)
    with pytest.raises(err, match="a "):
        nm.p_activation("relu", value)


@pytest.mark.parametrize(
    ("value", "err"),
    [(True, TypeError), (4.0, TypeError), (-3, ValueError), (0, ValueError)],
)
def test_bad_int_options(rng, value, err):
    g = rng.standard_normal((2, 2, 3, 3))
    with pytest.raises(err, match="width"):
        nm.morph_depth(g, value, 3, 1)
    with pytest.raises(err, match="k1"):
        nm.morph_depth(g, 4, value, 1)
    with pytest.raises(err, match="kernel_size"):
        nm.morph_kernel(g, value)
    with pytest.raises(err, match="n"):
        nm.split_filter(g, value)
    with pytest.raises(err, match="max_iter"):
        nm.morph_depth(g, 4, 3, 1, max_iter=value)
    with pytest.raises(err, match="width"):
        nm.solvability(g.shape, value, 3, 1)
    if value != 0:
        with pytest.raises(err, match="seed"):
            nm.morph_depth(g, 4, 3, 1, seed=value)


def test_huge_ints_fail_fast_with_typed_errors(rng):
    g = rng.standard_normal((3, 3, 3, 3))
    f2 = rng.standard_normal((3, 8, 1, 1))
    # refused from the sizes alone, before anything is allocated or solved
    with pytest.raises(ResourceLimitError, match="morph_depth"):
        nm.morph_depth(g, 10**9, 3, 1)
    with pytest.raises(ValueError, match="kernel_size must be at most"):
        nm.morph_kernel(g, 10001)
    with pytest.raises(ValueError, match="kernel_size must be at most"):
        nm.deconv(g, outer=f2, kernel_size=10001)
    with pytest.raises(ValueError, match="max_iter must be at most"):
        nm.morph_depth(g, 8, 3, 1, max_iter=10**12)
    with pytest.raises(ResourceLimitError, match="morph_width"):
        nm.morph_width(g, f2.transpose(1, 0, 2, 3)[:3], 10**12)
    with pytest.raises(ResourceLimitError, match="split_filter"):
        nm.split_filter(g, 10**12)


def test_deconv_init_out_of_scale_is_refused(rng):
    g = rng.standard_normal((3, 2, 3, 3)) * 1e-300
    f2 = rng.standard_normal((3, 8, 1, 1)) * 1e300
    init = rng.standard_normal((8, 2, 3, 3)) * 1e300
    with pytest.raises(ValueError, match="init is too large"):
        nm.deconv(g, outer=f2, kernel_size=3, init=init)


# ----------------------------------------------------------------------------------------------
# Size and work bounds


def test_every_allocating_routine_checks_the_memory_limit(rng, monkeypatch):
    g = rng.standard_normal((3, 3, 3, 3))
    f2 = rng.standard_normal((3, 8, 1, 1))
    f1 = rng.standard_normal((8, 3, 3, 3))
    m = nm.Module([nm.conv_edge("a", "s", "u", 3), nm.conv_edge("b", "u", "t", 1)], {"u": 8})
    monkeypatch.setenv("NETMORPH_MAX_BYTES", "2000")
    calls = {
        "compose": lambda: nm.compose(f2, f1),
        "deconv": lambda: nm.deconv(g, outer=f2, kernel_size=3),
        "residual": lambda: nm.residual(g, f2, f1),
        "morph_depth": lambda: nm.morph_depth(g, 8, 3, 1),
        "morph_subnet": lambda: nm.morph_subnet(g, [(8, 3), (3, 1)]),
        "morph_module": lambda: nm.morph_module(g, m),
        "morph_width": lambda: nm.morph_width(f1, f2, 64),
        "net2net_widen": lambda: nm.net2net_widen(f1, f2, 64),
        "morph_kernel": lambda: nm.morph_kernel(g, 31),
        "idmorph": lambda: nm.idmorph(g, 31),
        "split_filter": lambda: nm.split_filter(g, 50),
    }
    for name, call in calls.items():
        with pytest.raises(ResourceLimitError, match=rf"^{name}.* of memory"):
            call()


def test_a_gram_too_large_to_factorise_is_refused_before_allocating(rng):
    g = rng.standard_normal((1, 1, 400, 400))
    f2 = rng.standard_normal((1, 1, 200, 200))
    with pytest.raises(ValueError, match=r"Gram has order 40401.*above the 40000"):
        nm.deconv(g, outer=f2, kernel_size=201)
    m = nm.Module([nm.conv_edge("a", "s", "u", 201), nm.conv_edge("b", "u", "t", 200)], {"u": 1})
    with pytest.raises(ValueError, match=r"edge 'a'.*Gram has order 40401"):
        nm.morph_module(g, m)
    with pytest.raises(ValueError, match=r"morph_depth.*Gram has order 40401"):
        nm.morph_depth(g, 1, 201, 200)


def test_reference_operators_check_memory(rng, monkeypatch):
    from netmorph_core.reference import deconv_two_sided_ref, outer_operator

    monkeypatch.setenv("NETMORPH_MAX_BYTES", "1000")
    with pytest.raises(ResourceLimitError, match="explicit deconvolution operator"):
        outer_operator(rng.standard_normal((3, 4, 3, 3)), (3, 3))
    with pytest.raises(ResourceLimitError, match="explicit"):
        deconv_two_sided_ref(
            rng.standard_normal((2, 2, 5, 5)),
            rng.standard_normal((2, 3, 3, 3)),
            rng.standard_normal((3, 2, 1, 1)),
            (3, 3),
        )


# ----------------------------------------------------------------------------------------------
# Fuzzing the public API: only ValueError/TypeError escape, inputs never change, no inf/NaN out

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ_SCALES = (1e-300, 1e-170, 1e-40, 1e-8, 1.0, 1e8, 1e40, 1e160, 1e300)
CORRUPTIONS = (
    "none", "none", "none", "nan", "inf", "masked", "int", "object", "list", "zero_d",
    "empty", "read_only", "reversed", "zeros", "huge_range",
)  # fmt: skip


def make_filter(rng, shape, dtype, scale, corruption):
    """A random filter of ``shape`` damaged as ``corruption`` says."""
    with np.errstate(all="ignore"):  # a product of scales may overflow: an inf input
        x = (rng.standard_normal(shape) * scale).astype(dtype)
    if corruption == "nan":
        x.flat[0] = np.nan
    elif corruption == "inf":
        x.flat[-1] = np.inf
    elif corruption == "masked":
        return np.ma.array(x, mask=np.zeros(x.shape, bool))
    elif corruption == "int":
        return rng.integers(-3, 3, shape)
    elif corruption == "object":
        return x.astype(object)
    elif corruption == "list":
        return x.tolist()
    elif corruption == "zero_d":
        return np.asarray(x.flat[0])
    elif corruption == "empty":
        return np.zeros((0, *shape[1:]), dtype)
    elif corruption == "read_only":
        x.setflags(write=False)
    elif corruption == "reversed":
        return np.flip(np.repeat(x, 2, axis=0), axis=0)[::2]
    elif corruption == "zeros":
        return np.zeros(shape, dtype)
    elif corruption == "huge_range":
        x.flat[0] = np.finfo(dtype).max / 4
    return x


def snapshot(x):
    if isinstance(x, np.ma.MaskedArray):
        return ("masked", x.data.copy(), np.ma.getmaskarray(x).copy())
    if isinstance(x, np.ndarray):
        return ("array", x.copy())
    return ("other", repr(x))


def same(a, b) -> bool:
    return a[0] == b[0] and all(
        np.array_equal(p, q, equal_nan=p.dtype.kind == "f") if isinstance(p, np.ndarray) else p == q
        for p, q in zip(a[1:], b[1:])
    )


def outputs(result):
    """Every array in a result (tuples, lists, dicts and dataclasses of arrays)."""
    if isinstance(result, np.ndarray):
        yield result
    elif isinstance(result, (list, tuple)):
        for r in result:
            yield from outputs(r)
    elif isinstance(result, dict):
        for r in result.values():
            yield from outputs(r)
    elif hasattr(result, "__dataclass_fields__"):
        for name in result.__dataclass_fields__:
            yield from outputs(getattr(result, name))


def assert_not_silently_wrong(op, result, f2, f1, g) -> None:
    """What a returned result claims is measured again, independently and scale-safely."""
    tol = (
        1e-5 if np.result_type(*(np.asarray(x).dtype for x in (f2, f1, g))) == np.float32 else 1e-10
    )
    if op == "compose":
        assert nm.residual(result, f2, f1) <= tol
    elif isinstance(result, nm.MorphResult) and result.exact and len(result.filters) == 2:
        assert nm.residual(g, result.filters[1], result.filters[0]) <= 2 * tol
    elif isinstance(result, nm.ModuleMorphResult) and result.exact:
        from netmorph_core._scaling import relative_difference
        from netmorph_core.reference import pad_centered

        kernel = nm.compose_module(result.module, result.filters)
        target = pad_centered(np.asarray(g, dtype=np.float64), result.effective_size)
        assert relative_difference(target, kernel) <= 2 * tol


OPERATIONS = (
    "compose", "deconv_outer", "deconv_inner", "residual", "depth_general", "depth_practical",
    "subnet", "width", "net2net", "kernel", "split", "idmorph", "solvability", "module",
)  # fmt: skip

ODD_VALUES = (0, -1, 2.5, True, None, "3", 10**30, float("nan"), (1, 2, 3, 4))


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    op=st.sampled_from(OPERATIONS),
    seed=st.integers(0, 2**16),
    ndim=st.integers(0, 2),
    chans=st.tuples(*[st.integers(1, 4)] * 3),
    kernels=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dtype=st.sampled_from([np.float32, np.float64]),
    scales=st.tuples(st.sampled_from(FUZZ_SCALES), st.sampled_from(FUZZ_SCALES)),
    corruption=st.one_of(st.just("none"), st.sampled_from(CORRUPTIONS)),
    odd=st.one_of(st.none(), st.none(), st.sampled_from(ODD_VALUES)),
)
def test_fuzz_public_core_api(op, seed, ndim, chans, kernels, dtype, scales, corruption, odd):
    rng = np.random.default_rng(seed)
    c0, c1, c2 = chans
    k1, k2 = kernels
    kt = k1 + k2 - 1
    sp = lambda k: (k,) * ndim  # noqa: E731
    f1 = make_filter(rng, (c1, c0, *sp(k1)), dtype, scales[0], corruption)
    f2 = make_filter(rng, (c2, c1, *sp(k2)), dtype, scales[1], "none")
    g = make_filter(rng, (c2, c0, *sp(kt)), dtype, scales[0] * scales[1], corruption)
    k_arg = odd if odd is not None else k1
    width = odd if odd is not None else c1 + 2
    calls = {
        "compose": lambda: nm.compose(f2, f1),
        "deconv_outer": lambda: nm.deconv(g, outer=f2, kernel_size=k_arg if ndim else 1),
        "deconv_inner": lambda: nm.deconv(g, inner=f1, kernel_size=k2 if odd is None else odd),
        "residual": lambda: nm.residual(g, f2, f1),
        "depth_general": lambda: nm.morph_depth(
            g,
            width,
            k_arg if ndim else None,
            1 if ndim else None,
            seed=0,
            max_iter=4,
            allow_approximate=True,
        ),
        "depth_practical": lambda: nm.morph_depth(
            g,
            width,
            k1 if ndim else None,
            k2 if ndim else None,
            method="practical",
            seed=0,
            tol=odd if odd is not None else None,
        ),
        "subnet": lambda: nm.morph_subnet(
            g,
            [(width, k1 if ndim else None), (c2, k2 if ndim else None)],
            method="practical",
            seed=0,
        ),
        "width": lambda: nm.morph_width(f1, f2, width, seed=0),
        "net2net": lambda: nm.net2net_widen(f1, f2, width, noise_std=0.1, seed=0),
        "kernel": lambda: nm.morph_kernel(f1, k_arg + 2 if isinstance(k_arg, int) else k_arg),
        "split": lambda: nm.split_filter(g, width, seed=0),
        "idmorph": lambda: nm.idmorph(g, 1 if odd is None else odd),
        "solvability": lambda: nm.solvability(
            getattr(g, "shape", (c2, c0)), width, k1 if ndim else None, k2 if ndim else None
        ),
        "module": lambda: nm.morph_module(
            g,
            nm.Module(
                [nm.conv_edge("a", "s", "u", k1), nm.conv_edge("b", "u", "t", k2)],
                channels={"u": 8},
            ),
            seed=0,
            max_iter=5,
            allow_approximate=True,
        ),
    }
    before = [snapshot(x) for x in (f1, f2, g)]
    try:
        result = calls[op]()
    except (ValueError, TypeError) as exc:
        event(f"{op}: {type(exc).__name__}")
    else:
        event(f"{op}: returned")
        for out in outputs(result):
            if out.dtype.kind == "f":
                assert np.isfinite(out).all(), f"{op} returned a non-finite array"
        assert_not_silently_wrong(op, result, f2, f1, g)
    assert all(same(b, snapshot(x)) for b, x in zip(before, (f1, f2, g))), f"{op} wrote its input"
