"""Inputs and the deviation measure shared by the torch adapter's exactness tests.

Import after ``pytest.importorskip("torch")``: this module imports torch.
"""

from __future__ import annotations

import torch
from torch import nn


def border_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Gaussian input whose outermost ring is 100× larger: border errors cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    scale = torch.full_like(x, 100.0)
    scale[(slice(None), slice(None), *(slice(1, -1) for _ in shape[2:]))] = 1.0
    return x * scale


def rel_dev(parent: nn.Module, child: nn.Module, x: torch.Tensor) -> float:
    """max|parent(x) − child(x)| / max|parent(x)|, both in eval mode; the shapes must agree."""
    parent.eval()
    child.eval()
    with torch.no_grad():
        y, z = parent(x), child(x)
    assert y.shape == z.shape
    return float((y - z).abs().max() / y.abs().max())


def lifted_stream(y: torch.Tensor, width: int) -> torch.Tensor:
    """A parent's stream output y (…, d) as a child of ``grow_width`` to D' = k·d + r returns
    it: [y; …; y; 0] (k copies, r zeros); y itself where the width did not grow."""
    if y.shape[-1] == width:
        return y
    copies, extra = divmod(width, y.shape[-1])
    return torch.cat([y] * copies + [y.new_zeros((*y.shape[:-1], extra))], dim=-1)
