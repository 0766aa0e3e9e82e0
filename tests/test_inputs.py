"""What the numerical core accepts: torch tensors in any dense layout, NumPy integer scalars and
0-d arrays wherever ints are taken, NumPy Generators as seeds; and typed refusals of the rest
before any work (see docs/inputs.md)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import netmorph_core as nm
from conftest import RTOL, rel_err

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch")

INT_LIKES = [np.int64, np.int32, np.uint16, lambda n: np.array(n)]
INT_IDS = ["int64", "int32", "uint16", "0-d array"]


# --- torch tensors -------------------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compose_of_a_strided_negative_bit_tensor_equals_its_numpy_copy(rng, dtype) -> None:
    import torch

    f2 = rng.standard_normal((4, 3, 3, 2)).astype(dtype)
    f1 = rng.standard_normal((3, 2, 2, 3)).astype(dtype)
    # a non-contiguous view with the negative bit set: −(f2 with its kernel axes swapped)
    t2 = torch._neg_view(torch.from_numpy(f2.copy()).transpose(2, 3))
    assert t2.is_neg() and not t2.is_contiguous()
    expected = nm.compose(np.ascontiguousarray(-f2.transpose(0, 1, 3, 2)), f1)
    got = nm.compose(t2, torch.from_numpy(f1).requires_grad_(True))
    assert isinstance(got, torch.Tensor) and got.dtype == t2.dtype
    assert rel_err(got.numpy(), expected) <= RTOL[np.dtype(dtype)]
    assert t2.is_neg()  # the caller's view is left as it was


@needs_torch
def test_conjugate_view_imaginary_part_is_accepted(rng) -> None:
    import torch

    re = rng.standard_normal((3, 2, 3))
    im = rng.standard_normal((3, 2, 3))
    view = torch.complex(torch.from_numpy(re), torch.from_numpy(im)).conj().imag  # −im, neg bit
    assert view.is_neg()
    f1 = rng.standard_normal((2, 2, 1))
    assert rel_err(nm.compose(view, torch.from_numpy(f1)).numpy(), nm.compose(-im, f1)) <= 1e-15
    g = nm.compose(-im, f1)
    x = nm.deconv(torch.from_numpy(g), outer=view, kernel_size=1)
    assert nm.residual(g, -im, x.numpy()) <= 1e-10


@needs_torch
def test_morphs_take_tensors_and_return_the_numpy_answer(rng) -> None:
    import torch

    g = rng.standard_normal((4, 4, 3, 3))
    t = torch.from_numpy(g.copy()).transpose(0, 1).contiguous().transpose(0, 1)  # same values
    a = nm.morph_depth(g, 8, 3, 1, seed=0)
    b = nm.morph_depth(t, 8, 3, 1, seed=0)
    assert all(isinstance(f, np.ndarray) for f in b.filters)
    for fa, fb in zip(a.filters, b.filters):
        assert rel_err(fb, fa) <= 1e-12
    f1 = rng.standard_normal((5, 3))
    f2 = rng.standard_normal((2, 5))
    wa = nm.morph_width(f1, f2, 7, seed=1, b1=np.zeros(5))
    wb = nm.morph_width(torch.from_numpy(f1), torch.from_numpy(f2), 7, seed=1, b1=torch.zeros(5))
    assert rel_err(wb.f1, wa.f1) <= 1e-12 and rel_err(wb.f2, wa.f2) <= 1e-12
    module = nm.Module(
        [nm.conv_edge("a", "s", "u", 3), nm.conv_edge("b", "u", "t", 1)], channels={"u": 6}
    )
    res = nm.morph_module(torch.from_numpy(g), module, seed=0)
    kernel = nm.compose_module(module, {k: torch.from_numpy(f) for k, f in res.filters.items()})
    assert rel_err(kernel, g) <= 1e-10


@needs_torch
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda t: t.nested.nested_tensor([t.ones(2, 2), t.ones(3, 2)], layout=t.jagged),
            "F2 is a nested tensor",
        ),
        (lambda t: t.ones(3, 2, dtype=t.float64).to_sparse(), "F2 has layout torch.sparse_coo"),
        (lambda t: t.ones(3, 2, dtype=t.float64, device="meta"), "F2 is on the meta device"),
        (lambda t: t.ones(3, 2, dtype=t.float16), "F2 must have dtype float32 or float64"),
    ],
    ids=["nested", "sparse", "meta", "float16"],
)
def test_tensors_without_a_dense_float_view_are_refused_by_name(make, match) -> None:
    import torch

    f2 = make(torch)
    f1 = f2 if f2.device.type == "meta" else torch.ones(2, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match=match):
        nm.compose(f2, f1)
    with pytest.raises(TypeError, match=match.replace("F2", "G")):
        nm.morph_depth(f2, 4, None, None)


def test_missing_arrays_are_refused_by_name() -> None:
    with pytest.raises(TypeError, match="F2 must be an array or a tensor, got None"):
        nm.compose(None, None)
    with pytest.raises(TypeError, match="G must be a NumPy array, a CuPy array or a torch tensor"):
        nm.morph_depth(None, 4)


# --- NumPy integers ------------------------------------------------------------------------


@pytest.mark.parametrize("as_int", INT_LIKES, ids=INT_IDS)
def test_numpy_integers_are_ints_everywhere(rng, as_int) -> None:
    g = rng.standard_normal((4, 4, 3, 3))
    ref = nm.morph_depth(g, 8, 3, 1, seed=3, max_iter=50)
    got = nm.morph_depth(g, as_int(8), as_int(3), as_int(1), seed=as_int(3), max_iter=as_int(50))
    for a, b in zip(ref.filters, got.filters):
        assert rel_err(b, a) <= 1e-12
    assert nm.morph_kernel(g, as_int(5)).filter.shape == (4, 4, 5, 5)
    assert nm.deconv(nm.compose(g, g), outer=g, kernel_size=as_int(3)).shape == g.shape
    assert len(nm.split_filter(g, as_int(3), seed=0)) == 3
    assert nm.solvability(tuple(as_int(n) for n in (4, 4, 3, 3)), as_int(8), 3, 1) == (
        nm.solvability((4, 4, 3, 3), 8, 3, 1)
    )
    sub = nm.morph_subnet(g, [(as_int(8), as_int(3)), (None, 1)], seed=0)
    assert [f.shape[0] for f in sub.filters] == [8, 4]


def test_numpy_integer_edge_sizes_are_stored_as_python_ints(rng) -> None:
    module = nm.Module(
        [
            nm.conv_edge("a", "s", "t", np.int64(1)),
            nm.conv_edge("b", "s", "u", np.array(3)),
            nm.conv_edge("c", "u", "t", [np.int32(1), 1]),
            nm.identity_edge("skip", "s", "t", np.float32(0.5)),
        ],
        channels={"u": np.int64(6)},
    )
    assert [type(e.kernel_size) for e in module.edges[:2]] == [int, int]
    assert module.edge("c").kernel_size == (1, 1)
    assert type(module.edge("skip").scale) is float
    res = nm.morph_module(rng.standard_normal((4, 4, 3, 3)), module, seed=0)
    assert res.exact


@pytest.mark.parametrize("flag", [True, np.bool_(True), np.array(True)], ids=["bool", "np", "0-d"])
def test_bool_is_not_an_int(rng, flag) -> None:
    g = rng.standard_normal((4, 4, 3, 3))
    with pytest.raises(TypeError, match="width must be a positive int, got the bool"):
        nm.morph_depth(g, flag, 3, 1)
    with pytest.raises(TypeError, match=r"kernel_size must be .* got the bool"):
        nm.morph_kernel(g, flag)
    with pytest.raises(TypeError, match="seed must be None, a non-negative int or a numpy"):
        nm.split_filter(g, 2, seed=flag)


@pytest.mark.parametrize("value", [8.0, np.array([8]), "8"], ids=["float", "1-d", "str"])
def test_non_integers_are_refused_by_type(rng, value) -> None:
    with pytest.raises(TypeError, match="width must be a positive int"):
        nm.morph_depth(rng.standard_normal((4, 4, 3, 3)), value, 3, 1)


def test_zero_d_reals_are_numbers(rng) -> None:
    g = rng.standard_normal((4, 4, 3, 3))
    res = nm.morph_depth(g, 8, 3, 1, seed=0, tol=np.array(1e-9))
    assert res.exact
    phi = nm.p_activation("relu", np.array(0.25))
    assert phi(np.array([-4.0, 2.0])).tolist() == [-1.0, 2.0]


# --- seeds ---------------------------------------------------------------------------------


def test_a_generator_seed_is_deterministic_and_advanced(rng) -> None:
    g = rng.standard_normal((4, 4, 3, 3))
    first, second = np.random.default_rng(7), np.random.default_rng(7)
    a = nm.morph_depth(g, 8, 3, 1, seed=first)
    b = nm.morph_depth(g, 8, 3, 1, seed=second)
    for fa, fb in zip(a.filters, b.filters):
        assert rel_err(fb, fa) <= 1e-12
    assert first.bit_generator.state != np.random.default_rng(7).bit_generator.state


@pytest.mark.parametrize(
    ("seed", "error", "match"),
    [
        (-1, ValueError, "seed must be a non-negative int, got -1"),
        (1.5, TypeError, "got float 1.5"),
        (np.random.RandomState(0), TypeError, "numpy.random.mtrand.RandomState"),
    ],
    ids=["negative", "float", "RandomState"],
)
def test_bad_seeds_are_refused_by_type(rng, seed, error, match) -> None:
    with pytest.raises(error, match=match):
        nm.morph_depth(rng.standard_normal((4, 4, 3, 3)), 8, 3, 1, seed=seed)


# --- sizes ---------------------------------------------------------------------------------


def test_a_huge_depthwise_multiplier_is_refused_before_allocating(rng) -> None:
    with pytest.raises(nm.ResourceLimitError, match=r"separable_depth with multiplier=10+ "):
        nm.separable_depth(rng.standard_normal((4, 4, 3, 3)), multiplier=10**9)
