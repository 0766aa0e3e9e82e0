"""Multi-head latent attention (DeepSeek-V2/V3, MiniCPM3) found by structure.

Such an attention reads the normalised stream x with two layers: the query side
(q = W_q·x, or a down-projection c_q = W_qa·x whose normalised output an up-projection
W_qb turns into q) and the key/value side [c_kv; k_rope] = W_kva·x, whose normalised
latent c_kv an up-projection W_kvb turns into per-head keys and values. Per head h:

    q_h = [q_nope_h; q_rope_h]   (n + r rows of the query layer)
    [k_nope_h; v_h]              (n + v rows of W_kvb)
    k_h = [k_nope_h; rope(k_rope)]        (the rotary key is shared by every head)
    o = W_o·[softmax(q_h·k_hᵀ)·v_h]_h

:func:`latent_phases` reads this from the order the layers run; :func:`latent_geometry` takes
n, r and v from the attention module (``qk_nope_head_dim``, ``qk_rope_head_dim``,
``v_head_dim``) and checks them against the layers' rows; :func:`heads_carry_bias` proves the
per-head layout by two transformations that keep the output unchanged exactly when it is
right: q_nope_h·2^a_h with k_nope_h·2^−a_h and v_h·2^b_h with W_o's columns of head h·2^−b_h
(powers of two: exact), then a rotation of the heads (q, W_kvb's rows and W_o's columns
together), which changes the output only when each head carries its own bias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from .errors import MorphError
from .linear_view import as_matrix

#: Attention-module attributes giving n, r and v.
LATENT_ATTRS = ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
HEADS_ATTRS = ("num_heads", "num_attention_heads")

Transform = dict[str, Callable[[torch.Tensor], torch.Tensor]]


class _Recorded(Protocol):
    name: str
    inp: torch.Tensor | None


@dataclass(frozen=True)
class LatentGeometry:
    """Heads and per-head sizes of a latent attention; ``q``/``kv``: the layers (relative to
    the block) whose rows are per head: the query layer and the key/value up-projection."""

    heads: int
    nope: int
    rope: int
    value: int
    q: str
    kv: str


def latent_phases(phases: list[list[_Recorded]]) -> tuple[list[list[_Recorded]], tuple]:
    """``phases`` as [stream readers], [o], [feed-forward in], [out] and the latent
    up-projections, when the layers before the output projection are two readers of one
    tensor (the normalised stream) and one or two layers reading other tensors; else
    ``phases`` unchanged and no up-projection."""
    if len(phases) <= 4 or len(phases[-3]) != 1 or len(phases[-1]) != 1:
        return phases, ()
    attention = [c for p in phases[:-3] for c in p]
    x = attention[0].inp
    readers = [c for c in attention if c.inp is x]
    ups = [c for c in attention if c.inp is not x]
    if len(readers) != 2 or not 1 <= len(ups) <= 2:
        return phases, ()
    return [readers, *phases[-3:]], tuple(ups)


def _attr(module: nn.Module, names: Sequence[str]) -> int | None:
    value = next(
        (getattr(module, a) for a in names if isinstance(getattr(module, a, None), int)), None
    )
    return None if value is None else int(value)


def latent_geometry(
    attention: nn.Module, block: nn.Module, layers: Sequence[str], o: str, where: str
) -> LatentGeometry:
    """The :class:`LatentGeometry` of ``attention`` (``layers``: its linear layers in the
    order they run, relative to ``block``; ``o``: the output projection); MorphError when
    the module records no n, r, v or head count, or the layers' rows do not hold them."""
    sizes = [_attr(attention, (a,)) for a in LATENT_ATTRS]
    heads = _attr(attention, HEADS_ATTRS)
    if heads is None or any(s is None for s in sizes):
        raise MorphError(
            f"{where!r} reads the stream with two layers and up-projects their latents (a "
            f"latent attention) but records no {'/'.join(LATENT_ATTRS)} or head count; refused"
        )
    nope, rope, value = (int(s) for s in sizes if s is not None)
    rows = {n: as_matrix(block.get_submodule(n)).shape[0] for n in layers}
    q = next((n for n in layers if rows[n] == heads * (nope + rope)), None)
    kv = next((n for n in reversed(layers) if rows[n] == heads * (nope + value)), None)
    o_cols = as_matrix(block.get_submodule(o)).shape[1]
    if q is None or kv is None or q == kv or o_cols != heads * value:
        raise MorphError(
            f"{where!r}: no query layer of {heads}×({nope}+{rope}) rows and key/value "
            f"up-projection of {heads}×({nope}+{value}) rows among {rows}, or an output "
            f"projection of {o_cols} ≠ {heads}×{value} columns; this latent attention is not "
            "understood; refused"
        )
    return LatentGeometry(heads, nope, rope, value, q, kv)


def _rows(geo: LatentGeometry, heads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of the query layer and of W_kvb for ``heads`` in order."""
    q_unit, kv_unit = geo.nope + geo.rope, geo.nope + geo.value
    q = (heads[:, None] * q_unit + torch.arange(q_unit)).reshape(-1)
    kv = (heads[:, None] * kv_unit + torch.arange(kv_unit)).reshape(-1)
    return q, kv


def head_rows(geo: LatentGeometry, heads: Sequence[int]) -> dict[str, torch.Tensor]:
    """Rows of the query layer and W_kvb, columns of W_o, for ``heads`` in order."""
    h = torch.as_tensor(list(heads), dtype=torch.long)
    q, kv = _rows(geo, h)
    o = (h[:, None] * geo.value + torch.arange(geo.value)).reshape(-1)
    return {"q": q, "kv": kv, "o": o}


def _scaled(geo: LatentGeometry, prefix: str, o: str) -> Transform:
    h = torch.arange(geo.heads, dtype=torch.float64)
    a, b = 2.0 ** (1 + h % 3), 2.0 ** -(1 + (h + 1) % 3)
    one_q = torch.ones(geo.heads, geo.nope + geo.rope, dtype=torch.float64)
    one_q[:, : geo.nope] = a[:, None]
    kv = torch.empty(geo.heads, geo.nope + geo.value, dtype=torch.float64)
    kv[:, : geo.nope] = (1 / a)[:, None]
    kv[:, geo.nope :] = b[:, None]
    o_cols = (1 / b)[:, None].expand(geo.heads, geo.value).reshape(-1)

    def by(f: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda y: y * f.to(y.device, y.dtype)

    return {
        f"{prefix}{geo.q}": by(one_q.reshape(-1)),
        f"{prefix}{geo.kv}": by(kv.reshape(-1)),
        f"{o}:in": by(o_cols),
    }


def _rotated(geo: LatentGeometry, prefix: str, o: str) -> Transform:
    h = torch.arange(geo.heads)
    turn = (h + 1) % geo.heads
    q, kv = _rows(geo, turn)
    o_perm = head_rows(geo, torch.argsort(turn).tolist())["o"]
    return {
        f"{prefix}{geo.q}": lambda y: y[..., q.to(y.device)],
        f"{prefix}{geo.kv}": lambda y: y[..., kv.to(y.device)],
        f"{o}:in": lambda x: x[..., o_perm.to(x.device)],
    }


def heads_carry_bias(
    unchanged: Callable[[Transform], bool], geo: LatentGeometry, prefix: str, o: str, where: str
) -> bool:
    """Whether each head carries its own position bias (module docstring); MorphError when
    the per-head scaling changes the output (the rows are not laid out as found).
    ``unchanged``: whether a run with a transform gives the parent's output; ``prefix``: the
    recorded names' prefix of the block's layers; ``o``: the output projection's recorded
    name."""
    if not unchanged(_scaled(geo, prefix, o)):
        raise MorphError(
            f"{where!r} does not compute softmax(q_h·k_hᵀ)·v_h per head from {geo.q!r} rows "
            f"[q_nope; q_rope] and {geo.kv!r} rows [k_nope; v] of {geo.nope}, {geo.rope} and "
            f"{geo.value}; this latent attention is not understood; refused"
        )
    return geo.heads > 1 and not unchanged(_rotated(geo, prefix, o))
