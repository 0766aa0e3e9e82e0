"""Runs under one fixed random state.

A model whose forward draws random numbers (ViT-MAE's random masking) computes one function
of its inputs per random state: its layout is traced, and parent and child are compared, with
every run starting from the same seed. The caller's random state is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def model_devices(model: nn.Module, inputs: Sequence[object] = ()) -> list[torch.device]:
    """The CUDA devices of ``model``'s tensors and ``inputs`` (for forking their RNGs)."""
    tensors = (*model.parameters(), *model.buffers(), *inputs)
    return sorted({t.device for t in tensors if isinstance(t, torch.Tensor) and t.is_cuda}, key=str)


@contextmanager
def seeded(model: nn.Module, inputs: Sequence[object] = (), seed: int = 0) -> Iterator[None]:
    """While active, the random state is ``seed``'s (CPU and ``model``'s CUDA devices); the
    caller's is restored on exit."""
    with torch.random.fork_rng(devices=model_devices(model, inputs)):
        torch.manual_seed(seed)
        yield
