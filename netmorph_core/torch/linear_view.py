"""Linear layers seen as (out, in) matrices: ``nn.Linear`` and transformers' ``Conv1D``.

``Conv1D`` (GPT-2) is the linear layer y = x·W + b with W stored as (in, out).
"""

from __future__ import annotations

import torch
from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' ``Conv1D`` (y = x·W + b, W of shape (in, out))."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")


def as_matrix(module: nn.Module) -> torch.Tensor:
    """The (out, in) matrix of a Linear or Conv1D layer (a view, not a copy); a conv's weight
    as it is."""
    w = module.weight
    return w.t() if is_conv1d(module) else w
