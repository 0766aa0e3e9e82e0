"""Random-weight models made to look trained, so that a wrong channel map shows in a
forward pass (constant parameters such as BatchNorm's γ = 1, β = 0 hide permutations)."""

from __future__ import annotations

import torch
from torch import nn


def trained_like(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """``model`` in float64 with every constant parameter (norm affine, layer scale, zero
    biases) redrawn at random (zeros ~ N(0, 0.1²), other constants ~ U(0.5, 1.5)), BatchNorm
    affine parameters redrawn and its running statistics set from the one batch
    ``calibration`` (cumulative average); returned in eval mode. Modifies ``model`` in place
    (seeded: ``torch.manual_seed(0)``)."""
    torch.manual_seed(0)
    model = model.double()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and bool((p == p.flatten()[0]).all()):
                if float(p.flatten()[0]) == 0.0:
                    p.normal_(0.0, 0.1)
                else:
                    p.uniform_(0.5, 1.5)
        for m in bns:
            if m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics
        model.train()
        model(calibration)
    return model.eval()
