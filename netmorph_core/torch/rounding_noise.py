"""The parent's own float64 rounding noise on the probe, in eval and in train mode.

:func:`rounded_outputs` runs the parent with every leaf module's floating output multiplied by
(1 + u·s), u = eps/2 the unit roundoff of its dtype, s = ±1 drawn from a fixed generator (the
largest error of one rounding of each layer's output); the relative change of the model's
outputs is the parent's own rounding noise. Two checks compare a child with it, and measure it
only when they would otherwise refuse:

- eval mode (``tol="auto"`` on a float64 model, :func:`.report.check_preserved`): a model whose
  activations grow to ~1e6 (random-weight EfficientNet-V2) moves its own output by ~3e-7 under
  one rounding of each layer, so a child whose layers agree to a few ulps deviates by ~1e-8;
  the bound is ``NOISE_FACTOR`` × that noise where it exceeds 1e-8;
- train mode (:mod:`.pipeline`): normalisation divides by the batch's own spread; where that
  spread is over very few values (a batch of two at 1×1 spatial size: torchvision's
  RegNetX-400MF at 32×32 inputs, whose last stage sees ``(x₁ − x₂)/2`` per channel),
  subtracting the batch mean cancels most digits, and each such layer multiplies the relative
  rounding error it receives; fifteen in a row turn float64 rounding into an O(1) change of
  the output, and the child's train-mode deviation says nothing about a train-only branch.
  A child is refused only when its deviation also exceeds ``TRAIN_NOISE_FACTOR`` × the
  parent's train-mode noise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: A child whose train-mode deviation is within this multiple of the parent's own train-mode
#: rounding noise is indistinguishable from the parent on the probe (RegNetX-400MF, batch 2 at
#: 32×32: parent 0.35, child 0.52; batch 8: parent 3.3e-13, child 3.0e-13; the parent's noise
#: with one ulp per layer output).
TRAIN_NOISE_FACTOR = 10.0


@contextmanager
def rounding_hooks(model: nn.Module, seed: int = 0) -> Iterator[None]:
    """While active, every leaf module of ``model`` returns its floating tensor output times
    (1 + u·s), s = ±1 per element from a generator seeded ``seed``, u = eps/2 of the output's
    dtype (one rounding); the hooks are removed on exit."""
    gen = torch.Generator().manual_seed(seed)

    def hook(module: nn.Module, args: tuple, out: object) -> object:
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return None
        sign = torch.randint(0, 2, out.shape, generator=gen).to(out.device, out.dtype) * 2 - 1
        return out * (1 + torch.finfo(out.dtype).eps / 2 * sign)

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def rounded_outputs(model: nn.Module, run: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
    """``run()`` (a forward of ``model``) with :func:`rounding_hooks` on ``model``."""
    with rounding_hooks(model):
        return run()
