"""The chain morphs' memory estimates are true: at least what the solve holds at its peak
(NumPy allocations traced with tracemalloc) and not several times more, so a morph that fits is
not refused (a ViT-B patch embedding's (768, 3, 16, 16) into three layers holds ~3.5 GB and
was estimated at 13.6 GiB). A middle layer's LSQR solve in the general subnet morph checks its
own working set as it starts, for chains whose first solve does not finish the morph."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from netmorph_core import ResourceLimitError, morph_depth, morph_subnet
from netmorph_core import _limits as limits
from netmorph_core._limits import general_chain_bytes
from netmorph_core.backends import select_backend
from netmorph_core.morph import chain
from netmorph_core.morph._scaling import general_solves

CASES = [
    ((256, 3, 8, 8), [(256, 1), (256, 8), (None, 1)]),  # a patch embedding's shape
    ((128, 128, 3, 3), [(256, 1), (256, 3), (None, 1)]),
    ((96, 48, 7, 7), [(96, 1), (96, 7), (None, 1)]),
    ((256, 128, 3, 3), [(256, 3), (256, 1), (256, 1), (None, 1)]),
    ((128, 64, 3, 3), [(128, 1), (128, 3), (128, 1), (None, 1)]),
]


def _estimate(shape: tuple[int, ...], layers: list) -> int:
    widths = [w if w is not None else shape[0] for w, _ in layers]
    kernels = [(k, k) for _, k in layers]
    arguments = {"method": "general"}
    g = np.empty(shape)
    solved = general_solves(arguments, g, widths, kernels, 1)
    assert solved is not None
    return general_chain_bytes(shape[0], shape[1], widths, kernels, solved)


@pytest.mark.parametrize(("shape", "layers"), CASES)
def test_the_estimate_bounds_the_peak_and_is_not_far_above_it(
    shape: tuple[int, ...], layers: list
) -> None:
    g = np.random.default_rng(0).standard_normal(shape)
    tracemalloc.start()
    try:
        result = morph_subnet(g, layers, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.residual <= 1e-12
    estimate = _estimate(shape, layers)
    assert peak <= estimate <= 3 * peak


def test_a_wide_patch_embedding_into_three_layers_is_estimated_below_its_old_bound() -> None:
    """(768, 3, 16, 16) → [(768, 1), (768, 16), (None, 1)]: the last layer's one solve is
    exact, so the middle layer's LSQR never runs; about 4.2 GiB (measured: 3.5 GB)."""
    estimate = _estimate((768, 3, 16, 16), [(768, 1), (768, 16), (None, 1)])
    assert 3.5e9 <= estimate <= 5 * 2**30


def test_an_lsqr_solve_checks_its_own_working_set(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    filters = [rng.standard_normal(s) for s in ((64, 8, 3, 3), (64, 64, 5, 5), (32, 64, 1, 1))]
    g_tilde = chain.compose_chain(filters)
    monkeypatch.setenv("NETMORPH_MAX_BYTES", str(1 << 20))
    impl = select_backend("numpy", np.dtype(np.float64), g_tilde)
    with pytest.raises(ResourceLimitError, match=r"solve of layer 1 \(64, 64, 5, 5\)"):
        chain._solve_layer(impl, g_tilde, filters, 1)


@pytest.mark.parametrize(
    ("shape", "k1", "k2"),
    [((768, 3, 32, 32), 32, 1), ((128, 64, 3, 3), 1, 3), ((64, 32, 7, 7), 3, 5)],
)
def test_deepen_checks_bound_the_peak_with_partial_compositions_at_their_own_size(
    shape: tuple[int, ...], k1: int, k2: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partial composition F_P ⊛ … ⊛ F_p has the kernel its layers compose to, not Kt: a
    ViT-B/32 patch embedding (768, 3, 32, 32) deepened to (32×32, 1×1) holds ~0.2 GB and was
    refused at 18.2 GiB. Every check together still bounds the peak."""
    checked: list[int] = []
    real = limits.check_working_set

    def record(nbytes: float, what: str) -> None:
        checked.append(int(nbytes))
        real(nbytes, what)

    monkeypatch.setattr(limits, "check_working_set", record)
    g = np.random.default_rng(0).standard_normal(shape)
    tracemalloc.start()
    try:
        result = morph_depth(g, shape[0], k1, k2, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.residual <= 1e-12
    assert peak <= max(checked) <= 3 * peak
