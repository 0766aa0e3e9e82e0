"""WavLM's attention: torch's ``F.multi_head_attention_forward`` on the q/k/v/out layers'
weights, with a gated relative position bias.

``WavLMAttention`` never calls its ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` layers: it
hands their weights to ``F.multi_head_attention_forward`` (``use_separate_proj_weight``), with
the additive mask g_h(x)·B_h, B the bucketed relative position bias (``rel_attn_embed``:
buckets × heads, held by block 0 alone and passed on to the later blocks) and the gate

    g_h(x) = σ(a(x_h))·(σ(b(x_h))·c_h − 1) + 2,

x_h = x[…, h·hd:(h+1)·hd] the h-th slice of the attention's input (``hidden_states.view(…,
heads, −1)``), a, b the two halves of ``gru_rel_pos_linear`` (hd → 8, shared by every head,
each half summed over 4 outputs) and c_h = ``gru_rel_pos_const``.

The structural trace (:mod:`.transformer_trace`) finds an attention by its layers' calls:
while it runs, :func:`called_projections` replaces each such module's
``torch_multi_head_self_attention`` by the same computation through calls of its layers
(softmax(q·kᵀ/√hd + g·B)·v per head, then ``out_proj``); :func:`side_layers` names the gate
layers the trace leaves out of the block's linear layers. The operations run the model's own
code, editing the q/k/v/out layers in place (:func:`split_edits`). ``add_block`` at 0 gives
the new block 0 a copy of the table and drops the old one's, never read after it
(:func:`drop_passed_tables`).

What the operations can and cannot keep (:func:`check_heads`, :func:`stream_order`):
``F.multi_head_attention_forward`` takes q/k/v weights of embed_dim × embed_dim, embed_dim the
width of its input, and head_dim = embed_dim / heads. More heads at the stream's width shrink
every head (no exact child: a head of hd' < hd dimensions has a score q·kᵀ of rank ≤ hd', the
parent's has rank up to hd, and its gate would read hd' coordinates).

``grow_width`` to k·d keeps the heads H, each of k·hd dimensions; child head h's gate reads the
coordinates [h·k·hd, (h+1)·k·hd) of the stream, one layer for every head, so it must read (its
first hd of them) a copy of a parent head's slice, a different one for each head; child head h
then plays that parent head. The child's stream holds x in blocks of b coordinates, each
repeated k times ([B₀; …; B₀; B₁; …; B₁; …]), b a multiple of hd and of the position
convolution's group size dividing d (the convolution's k·G groups stay copies of the
parent's). The heads' first slices are then the parent's heads j·k mod (b/hd) of each block:
distinct for k coprime to b/hd. :func:`stream_order` takes the largest such b (b = d: the
plain copies [x; …; x], for k coprime to H), else refuses; :func:`permute_stream` reorders the
copies that ``grow_width`` writes; :func:`widen_attention` places the heads.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .errors import MorphError

#: The method of WavLM's attention that calls ``F.multi_head_attention_forward``.
MHA_METHOD = "torch_multi_head_self_attention"
#: The gate layer of a gated relative position bias (read per head slice of the input).
GATE = "gru_rel_pos_linear"
_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj")


def is_weight_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an attention of this kind: a ``torch_multi_head_self_attention``
    method, ``num_heads``, ``embed_dim`` and Linear ``q_proj``/``k_proj``/``v_proj``/
    ``out_proj`` layers."""
    return (
        callable(getattr(module, MHA_METHOD, None))
        and isinstance(getattr(module, "num_heads", None), int)
        and isinstance(getattr(module, "embed_dim", None), int)
        and all(isinstance(getattr(module, n, None), nn.Linear) for n in _LAYERS)
    )


def weight_attentions(model: nn.Module) -> list[str]:
    """The names of the attention modules of ``model`` of this kind."""
    return [n for n, m in model.named_modules() if is_weight_attention(m)]


def split_edits(model: nn.Module, edits: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """(the layers of ``edits`` not of an attention of this kind, those that are): the
    transformer operations edit the latter in place (new parameters on the same module,
    which the attention reads when it runs), so their being read by weight does not matter;
    they are checked as copied subtrees (no hooks, no wrappers) instead."""
    owners = set(weight_attentions(model))
    read = tuple(e for e in edits if e.rpartition(".")[0] in owners)
    return tuple(e for e in edits if e not in read), read


def side_layers(block: nn.Module) -> set[str]:
    """The gate layers (names relative to ``block``) of its attentions of this kind."""
    return {
        f"{n}.{GATE}" if n else GATE
        for n, m in block.named_modules()
        if is_weight_attention(m) and isinstance(getattr(m, GATE, None), nn.Linear)
    }


def _called(
    self: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    gated_position_bias: torch.Tensor,
) -> tuple[torch.Tensor, None]:
    """softmax(q·kᵀ/√hd + bias)·v per head through calls of q/k/v/out_proj: what
    ``F.multi_head_attention_forward`` computes from their weights (eval mode, no dropout).
    ``hidden_states`` (b, t, d), ``gated_position_bias`` (b·heads, t, t)."""
    b, t, d = hidden_states.shape
    heads = self.num_heads
    hd = d // heads

    def split(x: torch.Tensor) -> torch.Tensor:  # (b, t, d) → (b, heads, t, hd)
        return x.reshape(b, t, heads, hd).transpose(1, 2)

    q, k, v = (split(getattr(self, n)(hidden_states)) for n in _LAYERS[:3])
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + gated_position_bias.view(b, heads, t, t)
    if attention_mask is not None:
        scores = scores.masked_fill(attention_mask.ne(1)[:, None, None, :], float("-inf"))
    context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
    return self.out_proj(context), None


@contextlib.contextmanager
def called_projections(model: nn.Module) -> Iterator[None]:
    """While open, every attention of this kind in ``model`` computes its attention through
    calls of its layers (:func:`_called`); the model is restored on exit."""
    found = [model.get_submodule(n) for n in weight_attentions(model)]
    for module in found:
        module.__dict__[MHA_METHOD] = types.MethodType(_called, module)
    try:
        yield
    finally:
        for module in found:
            module.__dict__.pop(MHA_METHOD, None)


def passed_tables(blocks: nn.Module) -> bool:
    """Whether, of the blocks ``blocks`` (a ModuleList), only block 0's attention of this kind
    holds the relative position table ``rel_attn_embed`` (WavLM: block 0 computes the bias,
    and passes it on to the others, whose own tables would never be read)."""
    held = [
        any(is_weight_attention(m) and hasattr(m, "rel_attn_embed") for m in b.modules())
        for b in blocks
    ]
    return bool(held) and held[0] and not any(held[1:])


def drop_passed_tables(blocks: nn.Module, passed: bool) -> None:
    """Where ``passed`` (:func:`passed_tables` of the parent's blocks), remove the table of
    every block but block 0 of ``blocks`` after a block was inserted (the new block 0 holds a
    copy of the old block 0's; a copy of block 0 further down reads the bias passed on), so
    the child's blocks hold tables where its config builds them."""
    if not passed:
        return
    for block in list(blocks)[1:]:
        for module in block.modules():
            if is_weight_attention(module) and hasattr(module, "rel_attn_embed"):
                del module.rel_attn_embed


def _first(model: nn.Module, prefix: str) -> tuple[str, nn.Module] | None:
    """The first attention of this kind under ``prefix`` (qualified name, module)."""
    for name, module in model.get_submodule(prefix).named_modules():
        if is_weight_attention(module):
            return (f"{prefix}.{name}" if name else prefix), module
    return None


def check_heads(model: nn.Module, prefix: str, heads: int) -> None:
    """MorphError for ``heads`` query heads where the blocks under ``prefix`` compute their
    attention by ``F.multi_head_attention_forward`` (module docstring)."""
    found = _first(model, prefix)
    if found is None:
        return
    name, att = found
    d, old = att.embed_dim, att.num_heads
    raise MorphError(
        f"heads={heads}: {name!r} ({type(att).__name__}) computes its attention with "
        f"F.multi_head_attention_forward, whose q/k/v weights are embed_dim × embed_dim "
        f"({d} × {d}) and head_dim = embed_dim / heads: {heads} heads at width {d} would each "
        f"have {d // heads if d % heads == 0 else d / heads} dimensions, not {d // old}; a "
        "head's q·kᵀ of fewer dimensions cannot carry the parent's (and its gated position "
        "bias would read a narrower slice); no exact child; refused"
    )


def stream_order(
    model: nn.Module, prefix: str, d_model: int, convs: Sequence[str]
) -> np.ndarray | None:
    """None where the blocks under ``prefix`` hold no attention of this kind; else the order
    of the child's stream of ``d_model`` = k·d: position p holds position order[p] of the
    copies [x; …; x] (module docstring). MorphError where no such order is exact."""
    found = _first(model, prefix)
    if found is None:
        return None
    name, att = found
    d, heads = att.embed_dim, att.num_heads
    if not isinstance(getattr(att, GATE, None), nn.Linear) or d_model % d:
        raise MorphError(
            f"d_model={d_model}: {name!r} ({type(att).__name__}) computes its attention with "
            f"F.multi_head_attention_forward; grow_width follows it with a {GATE} and whole "
            f"copies of the stream (a multiple of {d}) only; refused"
        )
    hd, copies = d // heads, d_model // d
    group = max((d // model.get_submodule(c).groups for c in convs), default=1)
    size = math.lcm(hd, group)
    fits = [s for s in range(d, size - 1, -size) if d % s == 0 and math.gcd(copies, s // hd) == 1]
    if fits:
        block = fits[0]  # d itself where k is coprime to the heads: the copies unpermuted
        return np.arange(d_model).reshape(copies, d // block, block).transpose(1, 0, 2).ravel()
    raise MorphError(
        f"d_model={d_model}: {name!r} ({type(att).__name__}) gates its position bias per head "
        f"with '{name}.{GATE}' (shared by its {heads} heads) on hidden_states.view(…, {heads}, "
        f"−1): child head h reads the {copies}·{hd} coordinates [h·{copies * hd}, "
        f"(h+1)·{copies * hd}) of the stream, and its gate must read a slice of {hd} that "
        "copies a parent head's, a different head for each. The stream is laid out as blocks "
        f"of b coordinates each repeated k = {copies} times, b a multiple of {size} (head_dim "
        f"{hd} and the position convolution's groups of {group} channels) dividing {d}: the "
        f"heads' first slices are distinct only for k coprime to b / {hd}, and none is; "
        "refused"
    )


def permute_stream(
    child: nn.Module, sources: dict, copies: np.ndarray, order: np.ndarray, source: type
) -> None:
    """Reorder the stream axis of every parameter of ``child`` that ``sources`` (name →
    ``source`` record, ``index``: child → parent position per axis) maps by ``copies`` (the
    stream of whole copies) to ``order`` (:func:`stream_order`): new positions p take the
    entries at order[p]; a position-wise map of the stream commutes with the per-channel norms
    and the grouped convolution whose groups ``order`` keeps whole."""
    if np.array_equal(order, np.arange(order.size)):
        return
    picks = torch.as_tensor(order)
    for name, record in list(sources.items()):
        index = record.index
        axes = [a for a, i in enumerate(index or ()) if i is not None and np.array_equal(i, copies)]
        if not axes:
            continue
        module_name, _, attr = name.rpartition(".")
        module = child.get_submodule(module_name)
        old = getattr(module, attr)
        value = old.detach()
        for a in axes:
            value = value.index_select(a, picks.to(value.device))
        setattr(module, attr, nn.Parameter(value, requires_grad=old.requires_grad))
        moved = tuple(copies[order] if a in axes else i for a, i in enumerate(index))
        sources[name] = source(record.parent, record.group_of, moved)


Put = Callable[[str, torch.Tensor, tuple], None]
Rows = Callable[[torch.Tensor], torch.Tensor]


def widen_attention(
    child: nn.Module,
    name: str,
    stream: np.ndarray,
    put: Put,
    read: Rows,
    write: Rows,
    fresh: Callable[[torch.Tensor, int], torch.Tensor],
) -> None:
    """Widen the attention ``name`` of ``child`` in place for a stream of k copies laid out as
    ``stream`` says (the parent's coordinate at each position; :func:`stream_order`).

    Child head h (k·hd dimensions) plays the parent's head σ(h) whose slice its gate reads
    first (stream[h·k·hd] / hd): its first hd rows of q (times √k, for the score's
    1/√(k·hd)), k and v are that head's rows of the parent's, read from the copies (``read``:
    k column blocks summing to W); the other rows are zero in q and random in k and v
    (``fresh(w, n)``: n rows like w's), whose output columns are zero. ``out_proj`` writes
    its rows as copies (``write``); the gate layer reads its slice's first hd coordinates
    (zero columns after); ``gru_rel_pos_const`` and block 0's ``rel_attn_embed`` (buckets ×
    H) take the columns of σ(h). ``put(parameter, value, index)`` stores each new parameter."""
    att = child.get_submodule(name)
    heads, d = att.num_heads, att.embed_dim
    hd, wide = d // heads, stream.size
    copies = wide // d
    order = stream[:: wide // heads] // hd
    rows = np.full(wide, -1)
    for h, p in enumerate(order):
        rows[h * copies * hd : h * copies * hd + hd] = np.arange(p * hd, (p + 1) * hd)
    kept, cols = rows >= 0, np.tile(np.arange(d), copies)  # permute_stream reorders them
    for proj, scale in (("q_proj", math.sqrt(copies)), ("k_proj", 1.0), ("v_proj", 1.0)):
        layer = att.get_submodule(proj)
        w = read(layer.weight.detach())
        new = w.new_zeros(wide, wide) if proj == "q_proj" else fresh(w, wide)
        new[kept] = (w[rows[kept]].double() * scale).to(w.dtype)
        put(f"{name}.{proj}.weight", new, (rows, cols))
        if layer.bias is not None:
            b = layer.bias.detach()
            bias = b.new_zeros(wide)
            bias[kept] = (b[rows[kept]].double() * scale).to(b.dtype)
            put(f"{name}.{proj}.bias", bias, (rows,))
    w = write(att.out_proj.weight.detach())
    new = w.new_zeros(wide, wide)
    new[:, kept] = w[:, rows[kept]]
    put(f"{name}.out_proj.weight", new, (cols, rows))
    if att.out_proj.bias is not None:
        put(f"{name}.out_proj.bias", write(att.out_proj.bias.detach()), (cols,))
    gate = getattr(att, GATE).weight.detach()
    zeros = gate.new_zeros(gate.shape[0], wide // heads - hd)
    first = np.concatenate([np.arange(hd), -np.ones(wide // heads - hd, int)])
    put(f"{name}.{GATE}.weight", torch.cat([gate, zeros], 1), (None, first))
    const = getattr(att, "gru_rel_pos_const", None)
    if isinstance(const, nn.Parameter) and const.dim() == 4:
        put(f"{name}.gru_rel_pos_const", const.detach()[:, order], (None, order, None, None))
    table = getattr(att, "rel_attn_embed", None)
    if isinstance(table, nn.Embedding):
        put(f"{name}.rel_attn_embed.weight", table.weight.detach()[:, order], (None, order))
    att.embed_dim, att.head_dim = wide, wide // heads
    if isinstance(getattr(att, "scaling", None), float):
        att.scaling = att.head_dim**-0.5
