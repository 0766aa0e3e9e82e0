"""The norms of a new block in a post-LayerNorm transformer (BERT, RoBERTa, ELECTRA; BART's
encoder and decoder blocks).

A post-LN block computes a = LN_a(x + attn(x)), y = LN_f(a + ffn(a)) with
LN(z) = γ⊙(z − μ(z))/√(var(z) + ε) + β (a BART decoder block has a third norm, after its
cross-attention, between them). Its input x is the output of the norm before it,
LN_p(s) = γ_p⊙n + β_p with n = (s − μ)/√(t + ε_p), t = var(s): the previous block's LN_f,
or the embeddings' LayerNorm for a block at 0. A new block whose branches add zero computes
LN_f(LN_a(x)), which is not x (LN of an LN output renormalises it and adds β again). The
construction moves LN_p's affine into the new block's last norm and scales the norms in
between:

- LN_p gets γ = c, β = 0: its output is c·n, of variance v₀ = c²·s with s = t/(t + ε_p);
- each new norm before the last (ε₁ … ε_{k−1}) gets γ = c, β = 0: the variance becomes
  v_i = c²·v_{i−1}/(v_{i−1} + ε_i);
- the new last norm (ε_k) gets γ = λ·γ_p, β = β_p, with λ = Π_i √(v_{i−1} + ε_i)/c^k taken at
  s = 1 (t → ∞).

The output is γ_p⊙n·r(t) + β_p with r(t) = Π_i √((v_{i−1}|s=1 + ε_i)/(v_{i−1}(s) + ε_i)); for
the two norms of a BERT block, r(t) − 1 ≈ (B/A)·ε_p/(2(t + ε_p)) with B = c²(c² + ε_f),
A = B + ε_a·ε_f. No choice of gains makes r ≡ 1 with the config's eps, so c sets how small the
deviation is:

- c = 1 (LN_p loses its affine to the new LN_f, λ ≈ 1: a well-conditioned child): deviation
  ≈ ε/(2t); taken when it is at most :data:`TARGET_PLAIN` (or an eighth of the dtype's eps) at
  t = :data:`T_MIN` (BERT, ELECTRA and ALBERT's ε = 1e-12: 5e-10 at t = 1e-3, 5e-13 at t = 1);
- else c is the largest power of two (at least √tiny of the dtype) whose deviation at T_MIN is
  at most :data:`TARGET_SCALED` or an eighth of the dtype's eps: c² ≪ ε, the new norms see a
  variance far below their ε and act as the linear maps z ↦ (z − μ)/√ε, carrying ε_p's effect
  through unchanged (RoBERTa's and BART's ε = 1e-5: c = 2^-25, λ ≈ 1e10 in float64; c = 2^-18,
  λ ≈ 7e5 in float32). Such gains train badly (a step of any optimiser moves c by far more
  than c): the report says so.

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
    parent and child); ``middle``: the new block's norms before its last (LN_a; a BART decoder
    block's cross-attention norm too), ``last`` (LN_f), relative to a block; ``gain`` c;
    ``scale`` λ; ``deviation``: the relative deviation r(T_MIN) − 1."""

    previous: str
    middle: tuple[str, ...]
    last: str
    gain: float
    scale: float
    deviation: float

    def apply(self, child: nn.Module, block: str) -> dict[str, ParamSource]:
        """Set LN_p of ``child`` and the norms of its new block ``block``; the sources of the
        parameters of LN_p (new values: their optimizer state starts anew)."""
        prev = child.get_submodule(self.previous)
        last = child.get_submodule(f"{block}.{self.last}")
        gamma = prev.weight.detach().to(torch.float64)
        beta = prev.bias.detach().to(torch.float64)
        with torch.no_grad():
            last.weight.copy_((gamma * self.scale).to(last.weight.dtype))
            last.bias.copy_(beta.to(last.bias.dtype))
            for norm in (prev, *(child.get_submodule(f"{block}.{m}") for m in self.middle)):
                norm.weight.fill_(self.gain)
                norm.bias.zero_()
        return {
            f"{self.previous}.{p}": ParamSource(None, f"{self.previous}.{p}")
            for p in ("weight", "bias")
        }

    def units(self, method: str) -> str:
        """The method for the new block's units: under c < 1 the stream entering each branch
        is scaled down by c² and the norms after it scale up by λ, so a branch must add an
        exact zero, which a cancelling set's output (±C·h summed in whatever order the matmul
        takes) is only up to rounding: "zero" output projections instead of "netmorph"."""
        return "zero" if self.gain < 1.0 else method

    def notes(self) -> list[str]:
        """The report's notes on the construction."""
        where = f"{self.previous!r}'s gain and bias moved into the new block's {self.last}"
        if self.gain == 1.0:
            return [
                f"post-LN: {where} (relative deviation from eps {self.deviation:.0e} where the "
                f"variance of {self.previous!r}'s input is {T_MIN:g}, less above)"
            ]
        middle = ", ".join(self.middle)
        return [
            f"post-LN: {where}, scaled by λ = {self.scale:.3g}; {self.previous!r} and the new "
            f"{middle} have gain {self.gain:.3g} (eps makes c = 1 deviate): exact, but these "
            "gains train badly; freeze them or fine-tune with care; the new block's output "
            "projections are zero (a cancelling set cancels only up to rounding, which λ "
            "would scale up)"
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


def _deviation(c: float, eps_p: float, *eps: float) -> tuple[float, float]:
    """(λ, relative deviation r(T_MIN) − 1) of gain ``c`` for new norms of eps ``eps`` (in
    order, the last one's gain λ·γ_p; module docstring). The deviation is summed from the
    variance differences Δv_i = v_i|s=1 − v_i(s), which rounding would swamp as differences
    of the products."""
    c2 = c * c
    s = T_MIN / (T_MIN + eps_p)
    v_one, v, dv = c2, c2 * s, c2 * eps_p / (T_MIN + eps_p)
    log_scale, log_ratio = 0.0, 0.0
    for e in eps:
        log_scale += 0.5 * math.log(v_one + e) - math.log(c)
        log_ratio += 0.5 * math.log1p(dv / (v + e))
        dv = c2 * e * dv / ((v_one + e) * (v + e))
        v_one, v = c2 * v_one / (v_one + e), c2 * v / (v + e)
    return math.exp(log_scale), math.expm1(log_ratio)


def _gain(eps_p: float, eps: tuple[float, ...], dtype: torch.dtype) -> float:
    """c (module docstring): 1 when its deviation is at most TARGET_PLAIN or an eighth of the
    dtype's eps, else the largest power of two, down to √tiny of the dtype, whose deviation is
    at most TARGET_SCALED or that eighth (1 where none is: the measurement decides)."""
    rounding = torch.finfo(dtype).eps / 8
    if _deviation(1.0, eps_p, *eps)[1] <= max(TARGET_PLAIN, rounding):
        return 1.0
    c, smallest, target = 1.0, math.sqrt(torch.finfo(dtype).tiny), max(TARGET_SCALED, rounding)
    while _deviation(c, eps_p, *eps)[1] > target and c / 2 >= smallest:
        c /= 2
    return c if _deviation(c, eps_p, *eps)[1] <= target else 1.0


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
    template = layout.blocks[min(at, len(layout.blocks) - 1)]
    previous = previous_norm(model, layout, at, projection)
    middle = (fam.norms[0],)
    return norms_plan(model, layout.d_model, previous, template.prefix, middle, fam.norms[-1])


def norms_plan(
    model: nn.Module, d: int, previous: str, template: str, middle: tuple[str, ...], last: str
) -> PostLnNorms:
    """The norm edits of a new post-LN block copied from block ``template`` (qualified), whose
    norms over the stream's width ``d`` are ``middle`` then ``last`` (relative), after the norm
    ``previous``; MorphError naming a norm that cannot carry them."""
    prev = model.get_submodule(previous)
    eps_p = _eps(prev, previous, d)
    eps = tuple(
        _eps(model.get_submodule(f"{template}.{rel}"), f"{template}.{rel}", d)
        for rel in (*middle, last)
    )
    c = _gain(eps_p, eps, prev.weight.dtype)
    scale, deviation = _deviation(c, eps_p, *eps)
    return PostLnNorms(previous, middle, last, c, scale, deviation)
