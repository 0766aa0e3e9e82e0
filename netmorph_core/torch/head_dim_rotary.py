"""Rotary position embeddings under a wider head (:mod:`.head_dim`): which child is exact.

A rotary attention rotates, per head, its first r coordinates (r = ``rotary_ndims``,
``rotary_dim``, or the width of the cos/sin table: twice the length of ``inv_freq``, GPT-J's
``embed_positions``, RoFormer's sinusoidal table of the heads' width) pair by pair, with a
frequency per pair, and passes the other h − r coordinates through unchanged. The table is
built once from the config and shared by every block. :mod:`.head_dim` appends each head's new
coordinates after its h old ones, so that the rotated part (its pairs, rotate_half or
interleaved, and its frequencies) stays as it was and the new coordinates join the pass-through
part: new query coordinates random, new key coordinates zero, so every score q·k keeps its
value at every position.

That child is exact wherever the attention splits the rotated part by a width that does not
change: its own ``rotary_ndims``/``rotary_dim`` (Phi, StableLM, GPT-NeoX, GPT-J, Persimmon), or
the table's width (GPT-NeoX, Phi-3 and GLM's ``apply_rotary_pos_emb`` reads ``cos.shape[-1]``,
so a fully rotary head of Phi-3 gains pass-through coordinates). Where the attention rotates
all coordinates of the head with the table (Llama, Mistral, Qwen, Gemma, Cohere, RoFormer, …),
the wider head would need a table of its own, which a block of a model whose blocks share one
table cannot have: no exact child. Which of the two holds is measured (the child run on the
probe), never assumed. A norm over each head's coordinates (``q_norm``, ``k_layernorm``) or
over the whole query (OLMo-2) would normalise the new coordinates with the old ones: no exact
child either, refused before any work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import MorphError

#: Attention attributes that hold the width of the rotated part of each head.
ROTARY_ATTRS = ("rotary_ndims", "rotary_dim", "rotary_emb_dim")
#: Buffers of a rotary module that give the width of its table: (name, width from its shape).
TABLES = {
    "inv_freq": lambda s: 2 * s[-1],
    "embed_positions": lambda s: s[-1],
    "weight": lambda s: s[-1],
}
#: Name parts of a norm of the queries or keys (``q_norm``, ``k_layernorm``, ``qk_norm``); a
#: norm of the stream inside the attention module (ALBERT's ``LayerNorm``) is none of these.
HEAD_SIDES = {"q", "k", "qk", "query", "key"}
#: The measurement's refusal of a child that does not run (a table narrower than the head).
FAILS = "fails on the probe"


@dataclass(frozen=True)
class Rotary:
    """The rotary embedding of one attention: ``table``, the module holding its cos/sin table
    (or the attention itself); ``width``, the rotated coordinates of each head (r)."""

    table: str
    width: int


def find_rotary(model: nn.Module, attention: str, head_dim: int) -> Rotary | None:
    """The :class:`Rotary` embedding that ``attention`` (a module name of ``model``) applies;
    None when the model has no rotary module and the attention no rotary attribute."""
    module = model.get_submodule(attention)
    own = next(
        (getattr(module, a) for a in ROTARY_ATTRS if type(getattr(module, a, None)) is int),
        None,
    )
    tables = [(name, m) for name, m in model.named_modules() if _is_table(name, m, head_dim)]
    if own is None and not tables:
        return None
    local = [t for t in tables if t[0].startswith(attention + ".")]
    name, table = (local or tables or [(attention, module)])[0]
    width = own if own is not None else _table_width(table, head_dim)
    return Rotary(name, width)


def _is_table(name: str, module: nn.Module, head_dim: int) -> bool:
    """Whether ``module`` (called ``name``) holds a rotary cos/sin table: its name or class
    says rotary, or it is a sinusoidal table of the heads' width (RoFormer's
    ``embed_positions``; an additive sinusoidal table has the stream's width)."""
    kind = type(module).__name__.lower()
    if "rotary" in kind or "rotary" in name.rpartition(".")[2]:
        return True
    weight = getattr(module, "weight", None)
    return (
        "sinusoidal" in kind
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and weight.shape[-1] == head_dim
    )


def _table_width(module: nn.Module, head_dim: int) -> int:
    """The width of the cos/sin table of the rotary ``module`` (``head_dim`` where no buffer
    tells: a table built for the whole head)."""
    for buffer, width in TABLES.items():
        found = getattr(module, buffer, None)
        if isinstance(found, torch.Tensor) and found.dim() >= 1:
            return width(found.shape)
    return head_dim


def refuse_head_norms(model: nn.Module, attention: str, at: str) -> None:
    """MorphError naming the first norm of the queries or keys inside ``attention`` (of each
    head's coordinates or of the whole query or key, :data:`HEAD_SIDES`): the new coordinates
    would enter its mean and variance, so no child keeps the scores."""
    module = model.get_submodule(attention)
    for rel, child in module.named_modules():
        if isinstance(child, (nn.Identity, nn.Dropout)):  # timm's q_norm without qk_norm
            continue
        last = rel.rpartition(".")[2].lower()
        is_norm = "norm" in last + type(child).__name__.lower()
        if is_norm and set(last.split("_")) & HEAD_SIDES:
            raise MorphError(
                f"widening {at!r}: no exact child: {attention}.{rel} normalises the heads' "
                "coordinates, and new coordinates would change its mean and scale; add heads "
                "instead (add_heads), which keeps head_dim"
            )


def no_exact_child(at: str, rotary: Rotary, h: int, new_h: int, why: MorphError) -> MorphError:
    """The refusal of a wider head whose child does not run (``why``): ``rotary`` rotates the
    head's coordinates with its one table, shared by every block."""
    rotated = f"all {h}" if rotary.width >= h else f"the first {rotary.width} of the {h}"
    return MorphError(
        f"widening {at!r}: no exact child: {rotary.table!r} rotates {rotated} coordinates of "
        f"each head with one cos/sin table of width {rotary.width} that every block shares, and "
        f"the attention does not pass a head of {new_h} coordinates through it, so that head "
        f"would need a table of its own; add heads instead (add_heads), which keeps head_dim "
        f"({why})"
    )
