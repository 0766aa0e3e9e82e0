"""The residual sums of a traced transformer block, checked numerically on recorded tensors.

A block of input x, attention output o and feed-forward output f (the output projections'
outputs) computes one of

- pre-LN, sequential: m = x + λ₁⊙o, y = m + λ₂⊙f (the norms read x and m);
- pre-LN, parallel: y = x + λ₁⊙o + λ₂⊙f (both norms read x);
- post-LN: m = LN₁(x + o), y = LN₂(m + f) (the attention reads x, the feed-forward m).

λ₁, λ₂ are per-channel layer scales: 1-D parameters of width d of the block held outside its
norms and linear layers (BEiT's ``lambda_1``, DINOv2's ``layer_scale1.lambda1``, timm's
``ls1.gamma``), or absent. Which candidate scales which branch is decided by a second run in
which candidate i is multiplied by 2^(i+1) (exact in floating point): only the parameter that
scales a branch keeps its sum right in both runs, even where every scale is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import MorphError


@dataclass(frozen=True)
class Branches:
    """Recorded tensors of one run (float64): block input ``x``, attention output ``o``,
    feed-forward output ``f``, the feed-forward norm's input ``mid`` (None in a parallel
    block) and the block's output ``y``."""

    x: torch.Tensor
    o: torch.Tensor
    f: torch.Tensor
    mid: torch.Tensor | None
    y: torch.Tensor


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """|a − b| ≤ 64·eps·max(|b|, 1), eps of ``dtype`` (default: b's)."""
    scale = float(b.abs().max()) if b.numel() else 0.0
    eps = torch.finfo(dtype or b.dtype).eps
    return bool(torch.isfinite(a).all()) and float((a - b).abs().max()) <= 64 * eps * max(scale, 1)


def scale_candidates(block: nn.Module, d: int, layers: set[str]) -> tuple[str, ...]:
    """Names (relative to ``block``) of 1-D parameters of width d held by no module of
    ``layers`` (the block's linear layers and norms)."""
    found = []
    for name, p in block.named_parameters():
        holder = name.rpartition(".")[0]
        if p.dim() == 1 and p.shape[0] == d and holder not in layers:
            found.append(name)
    return tuple(found)


def factor(i: int) -> float:
    """The multiplier of candidate i in the second run: 2^(i+1)."""
    return 2.0 ** (i + 1)


def _scaled(
    branch: torch.Tensor, scale: torch.Tensor | None, i: int | None, doubled: bool
) -> torch.Tensor:
    if scale is None:
        return branch
    return branch * scale * (factor(i) if doubled else 1.0)


def pre_ln_scales(
    runs: tuple[Branches, Branches | None],
    candidates: tuple[str, ...],
    values: dict[str, torch.Tensor],
    parallel: bool,
    dtype: torch.dtype,
    where: str,
) -> tuple[str, ...]:
    """The layer scales (λ₁, λ₂) of a pre-LN block, () when it has none; MorphError when its
    output is not one of the pre-LN sums of the module docstring. ``runs``: the plain run and
    the run with candidate i multiplied by :func:`factor` (None without candidates)."""
    options: list[int | None] = [None, *range(len(candidates))]

    def holds(run: Branches, doubled: bool, s1: int | None, s2: int | None) -> bool:
        lam1 = None if s1 is None else values[candidates[s1]].double()
        lam2 = None if s2 is None else values[candidates[s2]].double()
        o = _scaled(run.o, lam1, s1, doubled)
        f = _scaled(run.f, lam2, s2, doubled)
        if parallel:
            return close(run.x + o + f, run.y, dtype)
        assert run.mid is not None
        return close(run.x + o, run.mid, dtype) and close(run.mid + f, run.y, dtype)

    plain, twice = runs
    found = [
        (s1, s2)
        for s1 in options
        for s2 in options
        if (s1 is None or s1 != s2)
        and holds(plain, False, s1, s2)
        and (twice is None or holds(twice, True, s1, s2))
    ]
    if not found and constant_scales(plain, parallel, dtype) is not None:
        return ()  # y = x + c₁·o + c₂·f with constants (MiniCPM's scale_depth / √layers)
    if len(found) != 1:
        raise MorphError(
            f"{where!r}: the block's output is not its input plus the attention and feed-forward "
            "outputs, each scaled by at most one per-channel layer scale (a residual sum that "
            "is not understood); refused"
        )
    s1, s2 = found[0]
    if (s1 is None) != (s2 is None):
        which = candidates[s1 if s1 is not None else s2]  # type: ignore[index]
        raise MorphError(
            f"'{where}.{which}' scales one branch of the block and none scales the other: a "
            "layer scale on one branch only is not understood; refused"
        )
    return () if s1 is None else (candidates[s1], candidates[s2])  # type: ignore[index]


def _fit(target: torch.Tensor, branch: torch.Tensor) -> float | None:
    """c with target = c·branch (least squares), None where the branch is zero."""
    norm = float((branch * branch).sum())
    return float((target * branch).sum()) / norm if norm > 0 else None


def constant_scales(run: Branches, parallel: bool, dtype: torch.dtype) -> tuple[float, ...] | None:
    """(c₁, c₂) where the block computes m = x + c₁·o, y = m + c₂·f (sequential) or
    y = x + c₁·o + c₂·f (parallel) with constant scalars c ≠ 0 (one for every channel and
    token: Granite's ``residual_multiplier``, MiniCPM's ``scale_depth / √layers``); None
    otherwise."""
    if parallel:
        both = torch.stack([run.o.reshape(-1), run.f.reshape(-1)], 1)
        fitted = torch.linalg.lstsq(both, (run.y - run.x).reshape(-1, 1), driver="gelsd")
        c1, c2 = (float(v) for v in fitted.solution.reshape(-1))
        holds = close(run.x + c1 * run.o + c2 * run.f, run.y, dtype)
    else:
        assert run.mid is not None
        fit1, fit2 = _fit(run.mid - run.x, run.o), _fit(run.y - run.mid, run.f)
        if fit1 is None or fit2 is None:
            return None
        c1, c2 = fit1, fit2
        holds = close(run.x + c1 * run.o, run.mid, dtype) and close(
            run.mid + c2 * run.f, run.y, dtype
        )
    return (c1, c2) if holds and c1 != 0 and c2 != 0 else None


def post_ln_holds(
    x: torch.Tensor,
    o: torch.Tensor,
    n1_in: torch.Tensor,
    n1_out: torch.Tensor,
    f: torch.Tensor,
    n2_in: torch.Tensor,
    n2_out: torch.Tensor,
    y: torch.Tensor,
    dtype: torch.dtype,
) -> bool:
    """Whether n1_in = x + o, n2_in = n1_out + f and the block's output y is n2_out."""
    return (
        close(x + o, n1_in, dtype) and close(n1_out + f, n2_in, dtype) and close(n2_out, y, dtype)
    )
