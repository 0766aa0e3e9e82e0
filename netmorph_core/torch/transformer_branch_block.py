"""A new block whose branches are normalised before the residual sum adds exactly zero.

OLMo-2 and Gemma-2's sandwich blocks compute x + N(f(·)) with N(u) = (o + w)⊙u/√(ms(u) + ε)
(+ β under LayerNorm). A gain o + w = 0 and β = 0 give N(u) = 0 for every finite u, in any
dtype, so the new block's branches need not cancel: with ``method="netmorph"`` its output
projections are dense and random and the branch norms carry the zero (the gains then get the
gradient N(f)⊙g and the block starts learning, as with a zero layer scale). Cancelling sets
would leave f ≈ 0 up to rounding, which N amplifies by 1/√ε: the zero gain avoids both.
With ``method="zero"`` the output projections are zero, N(0) = β: the branch norms keep their
gains and get β = 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn


def silence_branches(
    block: nn.Module,
    norms: Mapping[str, float],
    outputs: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    method: str,
) -> None:
    """In place on the new ``block``: the branch norms ``norms`` (relative name → gain offset
    o, the norm computing (o + w)·n) get β = 0 and, with ``method="netmorph"``, w = −o; the
    output projections ``outputs`` (relative name → a function giving a random matrix shaped
    like its argument) get new dense weights and zero biases under "netmorph"."""
    with torch.no_grad():
        for rel, offset in norms.items():
            norm = block.get_submodule(rel)
            bias = getattr(norm, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.zero_()
            if method == "netmorph":
                norm.weight.fill_(-offset)
        if method != "netmorph":
            return
        for rel, draw in outputs.items():
            layer = block.get_submodule(rel)
            layer.weight.copy_(draw(layer.weight))
            if getattr(layer, "bias", None) is not None:
                layer.bias.zero_()
