"""``widen`` of one attention projection (query, key or value, or a fused q/k/v layer): every
head of its attention grows from head_dim h to h' = h + δ, the width asked for being heads·h'
((heads + 2·kv_heads)·h' for a fused layer).

Per head, the new query coordinates are random and the new key coordinates zero, so every
score q·k keeps its value; the new value coordinates are random and the output projection's
new columns zero, so the attention's output keeps its value. The scores keep their scale
(:func:`score_scales`): an attribute the forward reads (``scaling``, ``scale``; T5's 1), or no
scale at all (GPT-Neo), is kept; a scale 1/√head_dim derived from head_dim (MPNet, DeBERTa,
``scaled_dot_product_attention`` without ``scale=``) becomes 1/√h' and the queries are
multiplied by √(h'/h), so that (√(h'/h)·q)·k/√h' = q·k/√h whichever path computes it (one
rounding of the query weights). The module's source suggests which holds; where the
measurement refuses that child, the other is built and measured. The family's other per-head
rows (DeBERTa's position projections and ``q_bias``/``v_bias``) grow by zero rows, those read
against the keys scaled like the queries. Under rotary position embeddings the new
coordinates join each head's pass-through part, the rotated part and its table kept; an
attention that rotates every coordinate with the table its model shares, or normalises the
heads' coordinates, has no exact child and is refused as such (:mod:`.head_dim_rotary`).

The attentions found (:mod:`.head_dim_find`): the blocks of a recognised transformer (three
projections, or DeBERTa's fused ``in_proj`` of rows [q_h; k_h; v_h] per head), the self- and
cross-attention of both stacks of an encoder–decoder (T5, MT5, UMT5, BART, Marian, MBart,
Pegasus: the cross-attention's keys and values read the encoder's output, whose width does not
change; T5's relative attention bias is one value per head and position pair, whatever
head_dim), the spatial-reduction attention of a hierarchical vision transformer (SegFormer,
GLPN: keys and values read a strided conv and LayerNorm of the stream; PVT-v2, whose forward
reshapes its context to the stream width, is refused as having no exact child), and timm's
fused-q/k/v ``Attention`` (ViT, DeiT), and GPT-2's and GPT-1's fused ``Conv1D`` ``c_attn`` (their
``split_size`` follows). The attention module records its own head_dim; a Hugging
Face config (one value for every block) is marked, and :func:`~.hf_load.load_grown` rebuilds
the child.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from .errors import MorphError
from .head_dim_find import Attention, attention_projection
from .head_dim_rotary import FAILS, Rotary, find_rotary, no_exact_child, refuse_head_norms
from .layer_reads import _forward_source
from .pipeline import Request, run
from .report import MorphReport, Outcome
from .transformer import _Editor, _gather_rows, _resolve, _std
from .transformer_trace import qkv_rows

#: Attention attributes that record the head_dim (BERT's, GPT-NeoX's, the others').
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "d_kv", "key_value_proj_dim")
#: Attention attributes that record heads·head_dim (BERT's, T5's, timm's, GPTBigCode's query
#: width at which it splits its fused q|k|v output).
ALL_HEADS_ATTRS = ("all_head_size", "inner_dim", "attn_dim", "embed_dim", "split_size")
#: Attention attributes that record kv_heads·head_dim (GPTBigCode's key and value widths).
KV_WIDTH_ATTRS = ("kv_dim",)
#: Attention attributes that hold the scores' scale (Hugging Face's, timm's, BLOOM's).
SCALE_ATTRS = ("scaling", "scale", "softmax_scale", "inv_norm_factor")
#: Source fragments of an attention that derives its scale from head_dim.
DERIVED_SCALE = ("sqrt", "**-0.5", "** -0.5", "scaled_dot_product_attention(")
#: The query rows' factor and the scale attributes set (:func:`score_scales`).
Scale = tuple[float, dict[str, float]]
#: The adapter's deviation check, whose refusal sends the next way of keeping the scale.
GUARD = "deviates from the parent"


def _query_side(rel: str) -> bool:
    """Whether the per-head layer or bias ``rel`` (a family's ``head_rows``) is read like the
    queries, against the keys (DeBERTa's ``pos_q_proj``, ``pos_query_proj``, ``q_bias``)."""
    return bool({"q", "query"} & set(rel.rpartition(".")[2].split("_")))


def score_scales(attention: nn.Module, h: int, new_h: int) -> list[Scale]:
    """The ways to keep the scores of ``attention`` when its heads grow from head_dim ``h`` to
    ``new_h``, the likelier first (the measurement settles which holds): each (the factor on
    the query rows, the scale attributes set).

    Kept as it is, the queries unchanged: a scale attribute (:data:`SCALE_ATTRS`) that the
    forward reads with no fused kernel beside it (BERT's and BART's ``scaling``, T5's
    unscaled 1, BLOOM's ``inv_norm_factor``), or no scale at all (GPT-Neo). Folded: a scale
    1/√h derived from head_dim (MPNet's ``1/√attention_head_size``, DeBERTa's
    ``1/√(size(-1)·f)``, ``scaled_dot_product_attention`` without ``scale=``, timm's fused
    path beside its ``scale``): the attributes become 1/√h' and the queries are multiplied by
    the ratio of the two divisors, so that every path scores (√(h'/h)·q)·k/√h' = q·k/√h. An
    attribute of another value than 1/√h is only kept."""
    held = {
        a: float(getattr(attention, a))
        for a in SCALE_ATTRS
        if isinstance(getattr(attention, a, None), (int, float))
        and not isinstance(getattr(attention, a), bool)
    }
    keep: Scale = (1.0, {})
    fold: Scale = (_root(attention, new_h) / _root(attention, h), {a: new_h**-0.5 for a in held})
    if held and not all(math.isclose(x, h**-0.5, rel_tol=1e-6) for x in held.values()):
        return [keep]
    forward = _forward_source(type(attention)) or ""
    if held:
        read = any(f"self.{a}" in forward for a in held)
        fused = "scaled_dot_product_attention(" in forward
        return [keep, fold] if read and not fused else [fold, keep]
    try:
        source = inspect.getsource(type(attention))
    except (OSError, TypeError):
        source = forward
    return [fold, keep] if any(m in source for m in DERIVED_SCALE) else [keep, fold]


def _root(attention: nn.Module, h: int) -> float:
    """The divisor of the scores of ``attention`` at head_dim ``h`` as it computes it:
    DeBERTa's disentangled attention (``pos_att_type``) √(h·(1 + len(pos_att_type))) in
    float32, every other √h."""
    kinds = getattr(attention, "pos_att_type", None)
    if isinstance(kinds, (list, tuple)):
        size = torch.tensor(h, dtype=torch.float32) * (1 + len(kinds))
        return float(torch.sqrt(size))
    return math.sqrt(h)


def widen_head_dim(
    model: nn.Module,
    at: str,
    width: int,
    *,
    seed: int | np.random.Generator | None = None,
    probe: object = None,
    input_shape: Sequence[int] | None = None,
    tol: float | str | None = "auto",
) -> tuple[nn.Module, MorphReport]:
    """The projection ``at`` (query, key or value of an attention, or its fused q/k/v layer)
    widens to ``width`` = heads·h' rows (fused: (heads + 2·kv_heads)·h') by growing every head
    of its attention to head_dim h' (module docstring)."""
    att = attention_projection(model, at)
    if att is None:
        raise MorphError(f"at={at!r} is not an attention projection of a recognised transformer")
    width = v.positive_int(width, "width")
    h = att.head_dim
    if len(att.qkv) == 3:
        units = dict(zip(att.qkv, (att.heads, att.kv_heads, att.kv_heads)))[at]
        what = f"{units} heads"
    else:
        units = att.heads + 2 * att.kv_heads
        what = f"{units} row blocks (q, k and v heads)"
    if width <= units * h or width % units:
        raise ValueError(
            f"width={width}: {at!r} holds {what} of head_dim {h}; widen it to a larger "
            f"multiple of {units} (each head grows to width / {units})"
        )
    new_h = width // units
    if att.check is not None:
        try:
            att.check(new_h)
        except MorphError as refusal:
            raise MorphError(f"widening {at!r}: no exact child — {refusal}") from refusal
    refuse_head_norms(model, att.name, at)
    rotary = find_rotary(model, att.name, h)
    scales = score_scales(model.get_submodule(att.name), h, new_h)
    layers = (
        *att.qkv,
        att.o,
        *(r for r in att.head_rows if isinstance(_resolve(model, r), nn.Module)),
    )
    grown = sum(model.get_submodule(n).weight.numel() for n in layers) * (new_h - h) // h
    new_bytes = grown * next(model.parameters()).element_size()
    seed = v.torch_seed(seed)

    def attempt(scale: Scale) -> tuple[nn.Module, MorphReport]:
        factor, attrs = scale
        build = partial(
            _build, att=att, h=h, new_h=new_h, seed=seed, factor=factor, attrs=attrs, rotary=rotary
        )
        return run(
            Request(
                "widen",
                model,
                att.qkv,
                build,
                edits=layers,
                replaced=layers,
                new_bytes=new_bytes,
                probe=att.probe() if probe is None and att.probe is not None else probe,
                input_shape=input_shape,
                tol=tol,
                layer_scope=False,
            )
        )

    try:
        for scale in scales[:-1]:
            try:
                return attempt(scale)
            except MorphError as refusal:  # the measurement refused this way: try the next
                if GUARD not in str(refusal):
                    raise
        return attempt(scales[-1])
    except MorphError as refusal:
        if rotary is None or FAILS not in str(refusal):
            raise
        raise no_exact_child(at, rotary, h, new_h, refusal) from refusal


def _build(
    child: nn.Module,
    *,
    att: Attention,
    h: int,
    new_h: int,
    seed: int,
    factor: float,
    attrs: dict[str, float],
    rotary: Rotary | None,
) -> Outcome:
    """Grow every head of ``att`` in ``child`` from head_dim ``h`` to ``new_h``, the queries
    ×``factor`` and the scale attributes ``attrs`` set (module docstring); ``rotary``, the
    rotary embedding whose table and rotated part stay as they are."""
    edit = _Editor(child, seed)
    heads = (att.heads, att.kv_heads, att.kv_heads)
    parts = [
        _grow(edit, w, b, n, h, new_h, role, factor)
        for (w, b), n, role in zip(_read(edit, att), heads, "qkv")
    ]
    _write(edit, att, parts, new_h)
    for name in att.head_rows:
        _grow_head_rows(edit, name, att.heads, h, new_h, _query_side(name), factor)
    _grow_input(edit, att.o, att.heads, h, new_h)
    module = child.get_submodule(att.name)
    for attr in HEAD_DIM_ATTRS:
        if getattr(module, attr, None) == h:
            setattr(module, attr, new_h)
    for attr in ALL_HEADS_ATTRS:
        if getattr(module, attr, None) == att.heads * h:
            setattr(module, attr, att.heads * new_h)
    for attr in KV_WIDTH_ATTRS:
        if getattr(module, attr, None) == att.kv_heads * h:
            setattr(module, attr, att.kv_heads * new_h)
    for attr, value in attrs.items():
        setattr(module, attr, value)
    scaled = f"; the queries ×√({new_h}/{h}) against the scale 1/√{new_h}" if factor != 1 else ""
    notes = [
        f"every head of {att.name!r} grows from head_dim {h} to {new_h}: new key "
        f"coordinates zero (the scores keep their values and their scale{scaled}), "
        "new value coordinates read by zero output columns"
    ]
    if rotary is not None:
        notes.append(
            f"{rotary.table!r} keeps its table: the rotated first {rotary.width} coordinates "
            f"of each head stay as they were, the new ones pass through unrotated"
        )
    return edit.outcome(notes)


def _head_rows(heads: int, h: int, new_h: int) -> np.ndarray:
    """Child row → parent row of a projection of ``heads`` heads grown from ``h`` to ``new_h``
    rows each (−1 for a new row)."""
    slot = np.arange(new_h)
    per_head = [np.where(slot < h, head * h + slot, -1) for head in range(heads)]
    return np.concatenate(per_head)


Part = tuple[torch.Tensor, torch.Tensor | None, np.ndarray]


def _grow(
    edit: _Editor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    heads: int,
    h: int,
    new_h: int,
    role: str,
    factor: float,
) -> Part:
    """(weight, bias, child row → parent row) of q, k or v (``role``) with ``heads`` heads
    grown from ``h`` to ``new_h`` rows: the parent's rows (queries ×``factor``), then new ones
    (keys zero, queries and values random of the weight's scale; zero bias)."""
    index = _head_rows(heads, h, new_h)
    fresh = torch.as_tensor(np.flatnonzero(index < 0))
    keep = torch.as_tensor(np.maximum(index, 0))
    scale = factor if role == "q" else 1.0
    new_w = w.to(torch.float64).index_select(0, keep) * scale
    new_w[fresh] = 0.0 if role == "k" else edit.noise((len(fresh), w.shape[1]), _std(w), new_w)
    new_b = None
    if b is not None:
        new_b = b.to(torch.float64).index_select(0, keep) * scale
        new_b[fresh] = 0.0
    return new_w, new_b, index


def _rows(att: Attention, h: int) -> list[np.ndarray]:
    """Rows of q, k and v in the fused layer of ``att`` at head_dim ``h``."""
    found = qkv_rows(att.layout, att.heads, att.kv_heads, h)
    return [r.reshape(-1).numpy() for r in found]


def _read(edit: _Editor, att: Attention) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of q, k and v as (out, in) matrices (a fused layer split), not copied."""
    if len(att.qkv) == 3:
        return [edit.linear(name) for name in att.qkv]
    w, b = edit.linear(att.qkv[0])
    return [(w[r], None if b is None else b[r]) for r in _rows(att, att.head_dim)]


def _write(edit: _Editor, att: Attention, parts: list[Part], new_h: int) -> None:
    """Put q, k and v back: three layers, or one fused layer in its row layout."""
    if len(att.qkv) == 3:
        for name, (w, b, index) in zip(att.qkv, parts):
            edit.put_linear(name, w, b, index, None)
        return
    old, places = _rows(att, att.head_dim), _rows(att, new_h)
    total = sum(len(p) for p in places)
    weight = parts[0][0].new_empty((total, parts[0][0].shape[1]))
    bias = None if parts[0][1] is None else parts[0][1].new_empty(total)
    index = np.full(total, -1)
    for (w, b, idx), place, parent in zip(parts, places, old):
        weight[place] = w
        if bias is not None:
            bias[place] = b
        index[place] = np.where(idx >= 0, parent[np.maximum(idx, 0)], -1)
    edit.put_linear(att.qkv[0], weight, bias, index, None)


def _grow_head_rows(
    edit: _Editor, name: str, heads: int, h: int, new_h: int, query: bool, factor: float
) -> None:
    """A per-head layer or bias ``name`` besides q/k/v (DeBERTa's position projections,
    ``q_bias``/``v_bias``): the parent's rows (×``factor`` on the query side), new rows zero,
    so that the new coordinates add nothing to any score or value."""
    index = _head_rows(heads, h, new_h)
    scale = factor if query else 1.0
    if isinstance(_resolve(edit.child, name), nn.Parameter):  # a bias (heads·h,)
        edit.put(name, _gather_rows(edit.get(name), index) * scale, (index,))
        return
    w, b = edit.linear(name)
    new_w = _gather_rows(w.to(torch.float64), index) * scale
    new_b = None if b is None else _gather_rows(b.to(torch.float64), index) * scale
    edit.put_linear(name, new_w, new_b, index, None)


def _grow_input(edit: _Editor, name: str, heads: int, h: int, new_h: int) -> None:
    """Columns of the output projection ``name`` per head: the parent's, then zeros."""
    w, b = edit.linear(name)
    index = _head_rows(heads, h, new_h)
    fresh = torch.as_tensor(np.flatnonzero(index < 0))
    new_w = w.to(torch.float64).index_select(1, torch.as_tensor(np.maximum(index, 0)))
    new_w[:, fresh] = 0.0
    edit.put_linear(name, new_w, None if b is None else b.to(torch.float64), None, index)
