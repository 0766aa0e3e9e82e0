"""Subnet morphing of a Conv/Linear layer inside a model (NetMorph §3.5).

``morph_subnet``: the layer becomes a sequential chain F_0 → … → F_P with
F_P ⊛ … ⊛ F_0 = G~ (:func:`netmorph_core.morph.subnet.morph_subnet`), laid out like a depth
morph (all padding before F_0, stride on the last non-pointwise layer, PActivation(a = 1) and an
optional identity BN between layers).

``morph_stacked``: the layer becomes :class:`StackedBranches`, parallel chains whose outputs
are summed, from a split G = Σ_i G_i (equation (20)) with every G_i morphed into its branch
(:func:`netmorph_core.morph.split.morph_stacked`). Each branch pads for its own effective size,
so all branches produce the parent's output shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..morph.depth import compose_chain
from ..morph.split import SPLIT_MODES
from ..morph.split import morph_stacked as morph_stacked_filters
from ..morph.subnet import chain_effective_size, check_layers
from ..morph.subnet import morph_subnet as morph_subnet_filters
from ..reference import pad_centered
from .activation import make_activation
from .budget import hidden_budget
from .depth import (
    build_chain,
    check_flag,
    check_method,
    new_layer_sources,
    replace_with_chain,
    weight_counts,
)
from .pipeline import Request, run
from .report import MorphReport, Outcome
from .samepad import split_same_padding
from .streamed import Region
from .support import check_new_entries, layer_entries
from .surgery import (
    LAYER_TYPES,
    ConvGeometry,
    find_layer,
    linear_equivalent,
    replace_module,
    to_numpy64,
)


def stacked_residual(g: np.ndarray, branches: Sequence[Sequence[np.ndarray]]) -> float:
    """‖Σ_i (F_i,last ⊛ … ⊛ F_i,0) − G‖ / ‖G‖, every term zero-padded centred to the largest
    effective size."""
    chains = [compose_chain(filters) for filters in branches]
    size = tuple(max(sizes) for sizes in zip(*(c.shape[2:] for c in chains)))
    diff = sum(pad_centered(c, size) for c in chains) - pad_centered(g, size)
    scale = float(np.linalg.norm(g))
    err = float(np.linalg.norm(diff))
    return err / scale if scale > 0 else err


class StackedBranches(nn.Module):
    """Parallel branches on the same input, outputs summed: y = Σ_i branch_i(x)."""

    def __init__(self, branches: Sequence[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def _check_layers(layer: nn.Module, layers: object, name: str) -> int:
    """Validate a (width, kernel) list against ``layer`` before any work; returns the weight
    entries the chain (and its effective kernel G~) will hold."""
    g = np.zeros((layer.weight.shape[0], 1, *layer.weight.shape[2:]))
    try:
        widths, kernels = check_layers(g, layers)
        kt = chain_effective_size(g.shape[2:], kernels)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: {exc}") from None
    c_out, c_in = layer.weight.shape[:2]  # c_in per group
    groups = getattr(layer, "groups", 1)
    return layer_entries(c_in * groups, widths, kernels, groups) + c_out * c_in * math.prod(kt)


def morph_subnet(
    model: nn.Module,
    at: str,
    layers: Sequence[tuple[int | None, object]],
    *,
    activation: object = "prelu",
    method: str = "general",
    batch_norm: bool = False,
    probe: object = None,
    input_shape: Sequence[int] | None = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
) -> tuple[nn.Module, MorphReport]:
    """Replace the layer ``at`` by the sequential subnet ``layers`` = [(width, kernel), ...]
    (data-flow order; the last width is the layer's output channels or None; kernels None for
    Linear; Σ K_p − P − K even and ≥ 0). Other arguments as in :func:`deepen`. A grouped conv
    keeps its ``groups`` in every layer (each width divisible by it)."""
    layer = find_layer(model, at, same_padding=True, grouped=True, replaced=True, chain=True)
    entries = _check_layers(layer, layers, "layers")
    groups = getattr(layer, "groups", 1)
    for p, (w, _) in enumerate(layers):
        if w is not None and w % groups:
            raise ValueError(f"layers[{p}]'s width ({w}) must be divisible by groups={groups}")
    check_new_entries(entries, layer.weight, f"morph_subnet at={at!r} with layers={layers!r}")
    hidden = [int(w) for w, _ in list(layers)[:-1]]
    budget = hidden_budget("morph_subnet", model, at, layer, hidden, entries)
    make_activation(activation)
    check_method(method)
    check_flag(batch_norm, "batch_norm")

    def solve(g: np.ndarray) -> tuple[Sequence[np.ndarray], float, bool, int]:
        res = morph_subnet_filters(g, layers, method=method, seed=seed, groups=groups)
        return res.filters, res.residual, res.exact, res.iterations

    def build(child: nn.Module) -> Outcome:
        return replace_with_chain(child, at, solve, activation=activation, batch_norm=batch_norm)

    return run(
        Request(
            "morph_subnet",
            model,
            (at,),
            build,
            edits=(at,),
            aliases=True,
            regions=(Region(at, at),),
            same_padding=True,
            probe=probe,
            input_shape=input_shape,
            tol=tol,
            untie=True,
            budget=budget,
        )
    )


def morph_stacked(
    model: nn.Module,
    at: str,
    branches: Sequence[Sequence[tuple[int | None, object]]],
    *,
    split: str = "random",
    activation: object = "prelu",
    method: str = "general",
    batch_norm: bool = False,
    probe: object = None,
    input_shape: Sequence[int] | None = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
) -> tuple[nn.Module, MorphReport]:
    """Replace the layer ``at`` by :class:`StackedBranches`: branch i is the sequential subnet
    ``branches[i]`` (a list of (width, kernel) as in :func:`morph_subnet`; [(None, K)] keeps
    G_i as one layer). ``split``: "random" or "equal" (G_i = G/n). The parent's bias goes to
    branch 0; the other branches get a zero bias."""
    layer = find_layer(model, at, same_padding=True, replaced=True)
    if not isinstance(branches, Sequence) or isinstance(branches, str) or not branches:
        raise TypeError(f"branches must be a non-empty list of layer lists, got {branches!r}")
    entries = sum(_check_layers(layer, ls, f"branches[{i}]") for i, ls in enumerate(branches))
    check_new_entries(entries, layer.weight, f"morph_stacked at={at!r} with branches={branches!r}")
    hidden = [int(w) for branch in branches for w, _ in list(branch)[:-1]]
    budget = hidden_budget("morph_stacked", model, at, layer, hidden, entries)
    if split not in SPLIT_MODES:
        raise ValueError(f"split must be one of {SPLIT_MODES}, got {split!r}")
    make_activation(activation)
    check_method(method)
    check_flag(batch_norm, "batch_norm")

    def build(child: nn.Module) -> Outcome:
        old = linear_equivalent(child.get_submodule(at))
        same, geo = split_same_padding(old, ConvGeometry.of(old))
        g = to_numpy64(old.weight)
        results = morph_stacked_filters(g, branches, split=split, seed=seed, method=method)
        biases: list[torch.Tensor | None] = [None] * len(results)
        if old.bias is not None:
            biases = [old.bias.detach().clone()]
            biases += [torch.zeros_like(old.bias.detach()) for _ in results[1:]]
        chains = [
            build_chain(
                geo, res.filters, b, old.weight, activation=activation, batch_norm=batch_norm
            )
            for res, b in zip(results, biases)
        ]
        stacked = StackedBranches(chains)
        replace_module(child, at, stacked if same is None else nn.Sequential(same, stacked))
        nonzero, total = weight_counts(stacked, LAYER_TYPES)
        return Outcome(
            new_nonzero=nonzero,
            new_total=total,
            residual=stacked_residual(g, [res.filters for res in results]),
            exact=all(res.exact for res in results),
            iterations=sum(res.iterations for res in results),
            sources=new_layer_sources(child, at, geo.has_bias),
            notes=[f"G split ({split!r}) into {len(results)} summed branches"],
        )

    return run(
        Request(
            "morph_stacked",
            model,
            (at,),
            build,
            edits=(at,),
            aliases=True,
            regions=(Region(at, at),),
            same_padding=True,
            probe=probe,
            input_shape=input_shape,
            tol=tol,
            untie=True,
            budget=budget,
        )
    )
