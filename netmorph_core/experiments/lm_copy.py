"""Baseline: copy-based growth of a :class:`LlamaStyle` model (Net2Net / HyperCloning units,
LLaMA-Pro blocks). Not a netmorph operation: the experiment's point of comparison.

Every step builds a new model from the parent's weights (the parent is left as it was) and
is function-preserving:

- :func:`copy_width` — d → k·d: the stream becomes [x; …; x] (embedding rows and residual
  writers duplicated, norm gains repeated: RMS([x; x]) = RMS(x)); every reader's columns
  become k blocks W/k + Nᵢ with ΣNᵢ = 0 (HyperCloning with cancelling noise).
- :func:`copy_heads` — h → H heads: head j ≥ h copies the q/k/v rows of head (j − h) mod h;
  the o_proj columns of a head and its c copies become C/c + Nᵢ with ΣNᵢ = 0 (Net2WiderNet).
- :func:`copy_ffn` — n → N SwiGLU units the same way (gate and up rows copied, down columns
  shared).
- :func:`copy_blocks` — L → L' blocks: a copy of block i is inserted after it for the first
  L' − L blocks, its o_proj and down_proj set to zero (LLaMA-Pro block expansion).

The noise Nᵢ (relative size ``noise`` of the shared columns' std) breaks the symmetry of the
copies, which would otherwise receive identical gradients forever; it cancels exactly in the
function because the copies compute the same activations.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from ..torch.models import LlamaStyle
from .lm_models import LMShape, build_lm, shape_of

State = dict[str, torch.Tensor]


def _sources(old: int, new: int, what: str) -> np.ndarray:
    """Unit j of the grown layer copies unit src[j]: itself below ``old``, then cyclically."""
    if isinstance(new, bool) or not isinstance(new, int) or new <= old:
        raise ValueError(f"{what}={new!r} must be an int above the current {old}")
    return np.concatenate([np.arange(old), np.arange(new - old) % old])


def _rows(w: torch.Tensor, src: np.ndarray, unit: int) -> torch.Tensor:
    """Rows of ``unit``-row units gathered by ``src``: (n·unit, c) → (len(src)·unit, c)."""
    blocks = w.reshape(-1, unit, w.shape[1])
    return blocks[torch.as_tensor(src)].reshape(-1, w.shape[1])


def _share(w: torch.Tensor, src: np.ndarray, unit: int, noise: float, gen: torch.Generator):
    """Columns of units gathered by ``src``, each unit's copies sharing its columns: copy i of a
    unit with c copies gets C/c + Nᵢ, ΣNᵢ = 0 (N ~ noise·std(C), float64)."""
    w64 = w.double()
    rows = w.shape[0]
    blocks = w64.reshape(rows, -1, unit)
    index = torch.as_tensor(src)
    counts = torch.bincount(index, minlength=blocks.shape[1]).double()
    shared = blocks[:, index, :] / counts[index][None, :, None]
    eta = torch.randn(shared.shape, generator=gen, dtype=torch.float64) * noise * float(w64.std())
    mean = torch.zeros_like(blocks).index_add_(1, index, eta) / counts[None, :, None]
    eta = eta - mean[:, index, :]
    return (shared + eta).reshape(rows, -1).to(w.dtype)


def _rebuild(model: LlamaStyle, shape: LMShape, edit: Callable[[State], State]) -> LlamaStyle:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    like = next(model.parameters())
    child = build_lm(shape).to(device=like.device, dtype=like.dtype)
    child.load_state_dict(edit(state))
    return child


def _layer_keys(state: State, suffix: str) -> list[str]:
    return sorted(k for k in state if k.startswith("layers.") and k.endswith(suffix))


def copy_width(model: LlamaStyle, dim: int, *, noise: float, seed: int) -> LlamaStyle:
    """The residual stream d → ``dim`` = k·d (see the module doc)."""
    shape = shape_of(model)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= shape.dim or dim % shape.dim:
        raise ValueError(
            f"dim={dim!r} must be a multiple of the current width {shape.dim} above it"
        )
    src = np.zeros(dim // shape.dim, dtype=np.int64)
    gen = torch.Generator().manual_seed(seed)

    def edit(s: State) -> State:
        s["embed_tokens.weight"] = _rows(s["embed_tokens.weight"].T, src, shape.dim).T
        for key in [*_layer_keys(s, "layernorm.weight"), "norm.weight"]:
            s[key] = _rows(s[key][:, None], src, shape.dim)[:, 0]
        for key in _layer_keys(s, "o_proj.weight") + _layer_keys(s, "down_proj.weight"):
            s[key] = _rows(s[key], src, shape.dim)
        readers = [_layer_keys(s, f"{p}_proj.weight") for p in ("q", "k", "v", "gate", "up")]
        for key in [k for keys in readers for k in keys] + ["lm_head.weight"]:
            s[key] = _share(s[key], src, shape.dim, noise, gen)
        return s

    return _rebuild(model, replace(shape, dim=dim), edit)


def copy_heads(model: LlamaStyle, heads: int, *, noise: float, seed: int) -> LlamaStyle:
    """Attention heads h → ``heads`` of the same head_dim (see the module doc)."""
    shape = shape_of(model)
    src = _sources(shape.heads, heads, "heads")
    gen = torch.Generator().manual_seed(seed)

    def edit(s: State) -> State:
        for p in ("q", "k", "v"):
            for key in _layer_keys(s, f"{p}_proj.weight"):
                s[key] = _rows(s[key], src, shape.head_dim)
        for key in _layer_keys(s, "o_proj.weight"):
            s[key] = _share(s[key], src, shape.head_dim, noise, gen)
        return s

    return _rebuild(model, replace(shape, heads=heads), edit)


def copy_ffn(model: LlamaStyle, hidden: int, *, noise: float, seed: int) -> LlamaStyle:
    """SwiGLU hidden units n → ``hidden`` (see the module doc)."""
    shape = shape_of(model)
    src = _sources(shape.hidden, hidden, "hidden")
    gen = torch.Generator().manual_seed(seed)

    def edit(s: State) -> State:
        for key in _layer_keys(s, "gate_proj.weight") + _layer_keys(s, "up_proj.weight"):
            s[key] = _rows(s[key], src, 1)
        for key in _layer_keys(s, "down_proj.weight"):
            s[key] = _share(s[key], src, 1, noise, gen)
        return s

    return _rebuild(model, replace(shape, hidden=hidden), edit)


def copy_blocks(model: LlamaStyle, layers: int) -> LlamaStyle:
    """Blocks L → ``layers`` (L < layers ≤ 2L): block i < layers − L is followed by its copy
    with zero o_proj and down_proj."""
    shape = shape_of(model)
    old = shape.layers
    if isinstance(layers, bool) or not isinstance(layers, int) or not old < layers <= 2 * old:
        raise ValueError(f"layers={layers!r} must be an int in ({old}, {2 * old}]")
    order = [(i, False) for i in range(old)]
    for i in reversed(range(layers - old)):
        order.insert(i + 1, (i, True))

    def edit(s: State) -> State:
        out = {k: v for k, v in s.items() if not k.startswith("layers.")}
        for j, (i, fresh) in enumerate(order):
            for key, value in s.items():
                prefix = f"layers.{i}."
                if not key.startswith(prefix):
                    continue
                rest = key[len(prefix) :]
                zero = fresh and rest.endswith(("o_proj.weight", "down_proj.weight"))
                out[f"layers.{j}.{rest}"] = torch.zeros_like(value) if zero else copy.copy(value)
        return out

    return _rebuild(model, replace(shape, layers=layers), edit)
