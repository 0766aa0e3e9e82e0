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

A layer that computes in float32 inside a float64 model (Cohere's LayerNorm and Llama's
RMSNorm cast their input ``.to(torch.float32)``; T5's computes its mean square in float32)
carries float32 rounding: its own rounding is one float32 rounding of its output. It is found
by measurement (:func:`computes_lower`), not by name: in eval mode, the first time a leaf layer
with a float64 input and output runs, it is run again on its input x·(1 + δ·s) (s = ±1) for
δ₁ = 2⁻⁴⁰, far below a float32 ulp, and δ₂ = 2⁻¹⁶, far above one. A float64 computation
responds linearly, Δ₂ ≈ (δ₂/δ₁)·Δ₁ (up to the float64 rounding of the outputs in Δ₁ and the
second order in δ₂); a part computed in float32 does not see δ₁ at all (the input rounds to
the same float32 values), so the responses disagree by the whole of that part's share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: A child whose train-mode deviation is within this multiple of the parent's own train-mode
#: rounding noise is indistinguishable from the parent on the probe (RegNetX-400MF, batch 2 at
#: 32×32: parent 0.35, child 0.52; batch 8: parent 3.3e-13, child 3.0e-13; the parent's noise
#: with one ulp per layer output). A deepened layer computes its sums in another order, a few
#: ulps (~√K for a reduction of K terms, 32 for K ≈ 1000) where the noise model puts one:
#: timm's EfficientNet-V2-RW-T deepened at its stem, batch 2 at 32×32, parent 9.1e-6, child
#: 1.3e-4 (14×).
TRAIN_NOISE_FACTOR = 32.0


#: Relative input perturbations of :func:`computes_lower`: δ₁ far below a float32 ulp (2⁻²⁴)
#: and far above a float64 one (2⁻⁵³); δ₂ far above a float32 ulp.
_TINY, _LARGE = 2.0**-34, 2.0**-16
#: Disagreement of the two responses, relative to max|Δ₁|, past which a layer computes in
#: float32 (float64 layers: ~1e-5, the second order in δ₂, beyond the outputs' rounding).
_NONLINEAR = 3e-3
#: Float64 roundings of an output element that Δ₁ may carry, beyond which it disagrees.
_ROUNDINGS = 16


def computes_lower(module: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> bool:
    """Whether ``module`` (whose float64 output on ``args`` is ``out``) computes some of its
    output in a lower precision than float64: its responses to its first argument perturbed
    by 2⁻⁴⁰ and 2⁻¹⁶ (relative) are not proportional (module docstring)."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float64:
        return False
    if out.is_floating_point() and out.dtype != x.dtype:  # returns float32 (a router's logits)
        return True
    if out.dtype != x.dtype:
        return False
    if x.data_ptr() == out.data_ptr():  # in place (ReLU(inplace=True)): x is now the output
        return False
    gen = torch.Generator().manual_seed(1)
    sign = (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1).to(x.device, x.dtype)
    try:
        with torch.no_grad():
            tiny = module(x * (1 + _TINY * sign), *args[1:], **kwargs)
            large = module(x * (1 + _LARGE * sign), *args[1:], **kwargs)
    except Exception:  # a module that cannot run twice: its rounding stays float64's
        return False
    if not all(isinstance(t, torch.Tensor) and t.shape == out.shape for t in (tiny, large)):
        return False
    d_tiny, d_large = tiny - out, (large - out) * (_TINY / _LARGE)
    scale = float(d_large.abs().max())
    if scale == 0.0:  # the output does not depend on this input
        return False
    # Δ₁ carries float64 rounding of the outputs, up to ~eps·|y| per element (an output far
    # larger than its response: Hardsigmoid's 0.5 + x/6 at x ~ 1e-4)
    floor = _ROUNDINGS * torch.finfo(torch.float64).eps * out.abs()
    return float(((d_large - d_tiny).abs() - floor).max()) > _NONLINEAR * scale


@contextmanager
def rounding_hooks(
    model: nn.Module,
    seed: int = 0,
    lower: list[str] | None = None,
    unit: torch.dtype | None = None,
) -> Iterator[None]:
    """While active, every leaf module of ``model`` returns its floating tensor output times
    (1 + u·s), s = ±1 per element from a generator seeded ``seed``, u = eps/2 of the output's
    dtype (one rounding; each floating tensor of a tuple at its own dtype), or of float32 for
    a module that computes in float32 inside a float64 model (:func:`computes_lower`, decided
    at its first eval-mode call; their names are appended to ``lower``), or of ``unit`` where
    that is coarser (the float64 copy of a float32 model: its layers round at float32 in use);
    the hooks are removed on exit."""
    gen = torch.Generator().manual_seed(seed)
    names = {m: n for n, m in model.named_modules()}
    precision: dict[nn.Module, torch.dtype] = {}
    busy: set[nn.Module] = set()

    def rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        eps = torch.finfo(dtype).eps
        if unit is not None:
            eps = max(eps, torch.finfo(unit).eps)
        sign = torch.randint(0, 2, t.shape, generator=gen).to(t.device, t.dtype) * 2 - 1
        return t * (1 + eps / 2 * sign)

    def hook(module: nn.Module, args: tuple, kwargs: dict, out: object) -> object:
        if module in busy:
            return None
        if isinstance(out, tuple):  # each floating part rounds at its own dtype (a router's
            return tuple(  # float32 logits and weights beside its indices)
                rounded(t, t.dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                for t in out
            )
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return None
        if module not in precision and not module.training:
            busy.add(module)
            try:
                low = computes_lower(module, args, kwargs, out)
            finally:
                busy.discard(module)
            precision[module] = torch.float32 if low else out.dtype
            if low and lower is not None:
                lower.append(names[module])
        return rounded(out, precision.get(module, out.dtype))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in leaves]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def rounded_outputs(
    model: nn.Module,
    run: Callable[[], list[torch.Tensor]],
    lower: list[str] | None = None,
    unit: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """``run()`` (a forward of ``model``) with :func:`rounding_hooks` on ``model`` (rounding
    at least at ``unit``); the names of the modules found computing in float32 are appended to
    ``lower``."""
    with rounding_hooks(model, lower=lower, unit=unit):
        return run()
