"""The norms of a new block in a post-LayerNorm transformer (BERT, RoBERTa, ELECTRA).

A post-LN block computes a = LN_a(x + attn(x)), y = LN_f(a + ffn(a)) with
LN(z) = γ⊙(z − μ(z))/√(var(z) + ε) + β. Its input x is the output of the norm before it,
LN_p(s) = γ_p⊙n + β_p with n = (s − μ)/√(t + ε_p), t = var(s): the previous block's LN_f,
or the embeddings' LayerNorm for a block at 0. A new block whose branches add zero computes
LN_f(LN_a(x)), which is not x (LN of an LN output renormalises it and adds β again). The
construction moves LN_p's affine into the new block and scales the norms in between:

- LN_p gets γ = c, β = 0: its output is c·n, of variance v₀ = c²·t/(t + ε_p);
- the new LN_a gets γ = c, β = 0: c·(c·n)/√(v₀ + ε_a), of variance v₁ = c²·v₀/(v₀ + ε_a);
- the new LN_f gets γ = λ·γ_p, β = β_p, with λ = √A/c², A = c²(c² + ε_f) + ε_a·ε_f.

The output is γ_p⊙n·r(t) + β_p with r(t) = √A/√((v₀ + ε_a)(v₁ + ε_f)) =
1/√(1 − (B/A)·ε_p/(t + ε_p)), B = c²(c² + ε_f): exact up to a relative
(B/A)·ε_p/(2(t + ε_p)). No choice of gains makes r ≡ 1 with the config's eps (that would need
c²(c² + ε_f) = 0), so c sets how small the deviation is:

- c = 1 (LN_p loses its affine to the new LN_f, λ ≈ 1: a well-conditioned child): B/A ≈ 1,
  deviation ε/(2t); taken when it is at most :data:`TARGET_PLAIN` (or an eighth of the dtype's
  eps) at t = :data:`T_MIN` (BERT, ELECTRA and ALBERT's ε = 1e-12: 5e-10 at t = 1e-3, 5e-13 at
  t = 1);
- else c is the largest power of two (at least √tiny of the dtype) whose deviation at T_MIN is
  at most :data:`TARGET_SCALED` or an eighth of the dtype's eps: c² ≪ ε, both new norms see a
  variance far below their ε and act as the linear maps z ↦ (z − μ)/√ε, carrying ε_p's effect
  through unchanged (RoBERTa's ε = 1e-5: c = 2^-25, λ ≈ 1e10 in float64; c = 2^-18, λ ≈ 7e5 in
  float32). Such gains train badly (a step of any optimiser moves c by far more than c): the
  report says so.

The pipeline measures the child; above ``tol`` it is refused like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .errors import MorphError
from .report import ParamSource
from .transformer_layout import Layout
from .transformer_trace import EPS_ATTRS

#: The smallest pre-norm variance t the choice of c is made for (embeddings of std 0.02).
T_MIN = 1e-3
#: The largest relative deviation at T_MIN for which c = 1 is taken.
TARGET_PLAIN = 1e-9
#: The relative deviation at T_MIN that a smaller c is chosen for.
TARGET_SCALED = 1e-12


@dataclass(frozen=True)
class PostLnNorms:
    """The norm edits of a new post-LN block: ``previous``, LN_p's qualified name (the same in
    parent and child); ``first``/``last``: LN_a and LN_f relative to a block; ``gain`` c;
    ``scale`` λ; ``deviation``: the relative deviation (B/A)·ε_p/(2(T_MIN + ε_p))."""

    previous: str
    first: str
    last: str
    gain: float
    scale: float
    deviation: float

    def apply(self, child: nn.Module, block: str) -> dict[str, ParamSource]:
        """Set LN_p of ``child`` and the norms of its new block ``block``; the sources of the
        parameters of LN_p (new values: their optimizer state starts anew)."""
        prev = child.get_submodule(self.previous)
        first = child.get_submodule(f"{block}.{self.first}")
        last = child.get_submodule(f"{block}.{self.last}")
        gamma = prev.weight.detach().to(torch.float64)
        beta = prev.bias.detach().to(torch.float64)
        with torch.no_grad():
            last.weight.copy_((gamma * self.scale).to(last.weight.dtype))
            last.bias.copy_(beta.to(last.bias.dtype))
            for norm in (prev, first):
                norm.weight.fill_(self.gain)
                norm.bias.zero_()
        return {
            f"{self.previous}.{p}": ParamSource(None, f"{self.previous}.{p}")
            for p in ("weight", "bias")
        }

    def notes(self) -> list[str]:
        """The report's notes on the construction."""
        where = f"{self.previous!r}'s gain and bias moved into the new block's {self.last}"
        if self.gain == 1.0:
            return [
                f"post-LN: {where} (relative deviation from eps {self.deviation:.0e} where the "
                f"variance of {self.previous!r}'s input is {T_MIN:g}, less above)"
            ]
        return [
            f"post-LN: {where}, scaled by λ = {self.scale:.3g}; {self.previous!r} and the new "
            f"{self.first} have gain {self.gain:.3g} (eps makes c = 1 deviate): exact, but these "
            "gains train badly; freeze them or fine-tune with care"
        ]


def _eps(norm: nn.Module, name: str, d: int) -> float:
    """The eps of the LayerNorm ``name`` with gain and bias of width ``d`` (``eps``, or
    DeBERTa's ``variance_epsilon``: :data:`.transformer_trace.EPS_ATTRS`); MorphError else."""
    eps = next((getattr(norm, a) for a in EPS_ATTRS if hasattr(norm, a)), None)
    for attr in ("weight", "bias"):
        p = getattr(norm, attr, None)
        if not isinstance(p, torch.Tensor) or tuple(p.shape) != (d,):
            raise MorphError(
                f"{name!r} ({type(norm).__name__}) has no {attr} of width {d}: a new post-LN "
                "block needs the norm before it to carry a gain and a bias it can move"
            )
    if not isinstance(eps, float) or not eps > 0:
        raise MorphError(f"{name!r} ({type(norm).__name__}) has no positive float eps; refused")
    return eps


def _deviation(c: float, eps_p: float, eps_a: float, eps_f: float) -> tuple[float, float]:
    """(λ, relative deviation at T_MIN) of gain ``c`` (module docstring)."""
    c2 = c * c
    b = c2 * (c2 + eps_f)
    a = b + eps_a * eps_f
    return math.sqrt(a) / c2, b / a * eps_p / (2 * (T_MIN + eps_p))


def _gain(eps_p: float, eps_a: float, eps_f: float, dtype: torch.dtype) -> float:
    """c (module docstring): 1 when its deviation is at most TARGET_PLAIN or an eighth of the
    dtype's eps, else the largest power of two, down to √tiny of the dtype, whose deviation is
    at most TARGET_SCALED or that eighth (1 where none is: the measurement decides)."""
    rounding = torch.finfo(dtype).eps / 8
    if _deviation(1.0, eps_p, eps_a, eps_f)[1] <= max(TARGET_PLAIN, rounding):
        return 1.0
    c, smallest, target = 1.0, math.sqrt(torch.finfo(dtype).tiny), max(TARGET_SCALED, rounding)
    while _deviation(c, eps_p, eps_a, eps_f)[1] > target and c / 2 >= smallest:
        c /= 2
    return c if _deviation(c, eps_p, eps_a, eps_f)[1] <= target else 1.0


def previous_norm(model: nn.Module, layout: Layout, at: int, projection: str | None) -> str:
    """LN_p: the last norm of block ``at`` − 1, or the stream's norm for ``at`` = 0; MorphError
    where a layer between that norm and the stream (an embedding ``projection``) or no norm
    writes the stream at 0, and at 0 of a shared group (ALBERT: block 0 reads the embedding
    projection at depth 0, the group's last norm at the others)."""
    fam = layout.family
    if at > 0:
        return layout.blocks[at - 1].name(fam.norms[-1])
    if fam.shared:
        raise MorphError(
            f"at=0: the shared group's first layer reads {layout.name(fam.writers[0])!r} (a "
            "linear map of the embeddings' LayerNorm) at depth 0 and the group's last "
            "LayerNorm at every other depth; a new post-LN layer before it would have to "
            "reproduce both; insert at 1 or later"
        )
    if projection is not None:
        raise MorphError(
            f"at=0: the embeddings reach the stream through {projection!r} after their "
            "LayerNorm; a new post-LN block before block 0 would have to compute that linear "
            "map, which a LayerNorm output cannot; insert at 1 or later"
        )
    if not fam.stream_norms:
        raise MorphError(
            f"at=0: no LayerNorm writes the stream before block 0 of {fam.name}; a new post-LN "
            "block cannot reproduce the embeddings; insert at 1 or later"
        )
    return layout.name(fam.stream_norms[0])


def plan(model: nn.Module, layout: Layout, at: int, projection: str | None) -> PostLnNorms:
    """The norm edits of a new post-LN block at ``at`` (module docstring); MorphError naming
    the norm that cannot carry them."""
    fam = layout.family
    d = layout.d_model
    previous = previous_norm(model, layout, at, projection)
    template = layout.blocks[min(at, len(layout.blocks) - 1)]
    first, last = fam.norms[0], fam.norms[-1]
    eps_p = _eps(model.get_submodule(previous), previous, d)
    eps_a = _eps(model.get_submodule(template.name(first)), template.name(first), d)
    eps_f = _eps(model.get_submodule(template.name(last)), template.name(last), d)
    c = _gain(eps_p, eps_a, eps_f, model.get_submodule(previous).weight.dtype)
    scale, deviation = _deviation(c, eps_p, eps_a, eps_f)
    return PostLnNorms(previous, first, last, c, scale, deviation)
