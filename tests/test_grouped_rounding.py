"""Float32 children of grouped and depthwise deepen round like their parents.

The core's noise ratio (rounded factors against the parent's own rounding of G, float64
compositions) and real float32 forward passes: the child's deviation from the float64 parent
is at most 2× the float32 parent's own, measured on the same machine for both sides.
"""

from __future__ import annotations

import numpy as np
import pytest

import netmorph_core as nm
from netmorph_core.grouped import block_diagonal, stack
from netmorph_core.morph.conditioning import (
    balanced_stacked,
    noise_ratio,
    power_of_two_balance,
    power_of_two_gauge,
)
from netmorph_core.reference import pad_centered

#: (G shape, groups, width, k1, k2): RegNet-like grouped (8 channels per group), a wider
#: grouped F1, depthwise 3×3 → (3×3, 1×1) and (1×1, 3×3), a depthwise 5×5.
LAYERS = [
    ((32, 8, 3, 3), 4, 32, 3, 1),
    ((16, 8, 3, 3), 2, 32, 3, 1),
    ((12, 1, 3, 3), 12, 12, 3, 1),
    ((12, 1, 3, 3), 12, 12, 1, 3),
    ((8, 1, 5, 5), 8, 8, 5, 1),
]


def ungrouped(f: np.ndarray, groups: int) -> np.ndarray:
    """A grouped filter as the block-diagonal ungrouped one (same function)."""
    return block_diagonal(stack(f, groups, "F"))


@pytest.mark.parametrize(("shape", "groups", "width", "k1", "k2"), LAYERS)
def test_grouped_depth_rounds_like_the_parent(shape, groups, width, k1, k2, rng) -> None:
    g = rng.standard_normal(shape).astype(np.float32)
    res = nm.morph_depth(g, width, k1, k2, groups=groups, seed=1)
    kt = tuple(a + b - 1 for a, b in zip(*res.kernel_sizes))
    filters = [ungrouped(f, groups) for f in res.filters]
    g_tilde = pad_centered(ungrouped(g.astype(np.float64), groups), kt)
    assert noise_ratio(g_tilde, filters, "float32") <= 2.0
    assert noise_ratio(g_tilde, filters, "bfloat16") <= 2.0


@pytest.mark.parametrize(("shape", "groups"), [((32, 8, 3, 3), 4), ((8, 4, 3, 3), 2)])
def test_separable_depth_rounds_like_the_parent(shape, groups, rng) -> None:
    g = rng.standard_normal(shape)
    f1, f2 = nm.separable_depth(g, groups=groups, seed=2).filters
    c0 = shape[1] * groups
    filters = [ungrouped(f1, c0), ungrouped(f2, groups)]
    assert noise_ratio(ungrouped(g, groups), filters, "float32") <= 2.0


@pytest.mark.parametrize(("separable", "k1", "k2"), [(False, 3, 1), (False, 1, 3), (True, 3, 1)])
def test_depthwise_factors_are_powers_of_two_and_g_scaled(separable, k1, k2, rng) -> None:
    """One channel per group: the 1×1 factor is ±2^k per channel and the other G·2^−k, both
    exact in float32, so F2 ⊛ F1 = G bitwise."""
    g = (rng.standard_normal((10, 1, 3, 3)) * 10.0 ** rng.uniform(-3, 3, (10, 1, 1, 1))).astype(
        np.float32
    )
    if separable:
        f1, f2 = nm.separable_depth(g, groups=10, seed=0).filters
    else:
        f1, f2 = nm.morph_depth(g, 10, k1, k2, groups=10, seed=0).filters
    scalar, kernel = (f2, f1) if k2 == 1 else (f1, f2)
    mantissa, _ = np.frexp(np.abs(scalar.astype(np.float64)))
    assert np.all(mantissa == 0.5)
    product = (scalar.reshape(10, 1) * kernel.reshape(10, -1)).reshape(g.shape)
    assert kernel.dtype == np.float32 and np.array_equal(product, g)


def test_power_of_two_gauge_leaves_zero_groups_and_balances(rng) -> None:
    left = rng.standard_normal((5, 1, 9))
    left[2] = 0.0
    right = rng.standard_normal((5, 1, 1))
    new_left, new_right = power_of_two_gauge(left, right)
    assert np.allclose(new_right * new_left, right * left, rtol=1e-15, atol=0)
    assert np.array_equal(new_left[2], left[2]) and new_right[2] == right[2]
    norms = np.linalg.norm(new_left.reshape(5, -1), axis=1)
    ratio = norms[[0, 1, 3, 4]] / np.abs(new_right[[0, 1, 3, 4], 0, 0])
    assert np.all((ratio >= 0.25) & (ratio <= 4.0))  # within a factor 2 of balanced each


def test_balanced_stacked_matches_the_composition_and_balances(rng) -> None:
    left = rng.standard_normal((6, 4, 9)) * rng.uniform(0.1, 10.0, (6, 4, 1))
    right = rng.standard_normal((6, 5, 4)) @ np.diag([1.0, 1e-2, 1.0, 3.0])
    new_left, new_right = balanced_stacked(left, right, np.random.default_rng(0))
    np.testing.assert_allclose(new_right @ new_left, right @ left, rtol=1e-12, atol=1e-12)
    for lj, rj in zip(new_left, new_right):  # both Gramians have the same spectrum
        np.testing.assert_allclose(
            np.linalg.eigvalsh(lj @ lj.T), np.linalg.eigvalsh(rj.T @ rj), rtol=1e-8
        )
    assert np.linalg.norm(new_left) * np.linalg.norm(new_right) <= (
        np.linalg.norm(left) * np.linalg.norm(right)
    )
    wide = rng.standard_normal((3, 6, 2)), rng.standard_normal((3, 5, 6))
    same = balanced_stacked(*wide, np.random.default_rng(0))
    assert all(a is b for a, b in zip(same, wide))  # w > fan-in: cannot be balanced


def test_power_of_two_balance_is_exact_and_near_equal_std(rng) -> None:
    f1, f2 = rng.standard_normal((4, 3)) * 1e3, rng.standard_normal((5, 4)) * 1e-3
    b1, b2 = power_of_two_balance([f1, f2])
    np.testing.assert_array_equal(b2 @ b1, f2 @ f1)
    assert 0.5 <= np.std(b1) / np.std(b2) <= 2.0
    zero = [np.zeros((2, 2)), f2]
    assert all(a is b for a, b in zip(power_of_two_balance(zero), zero))
