"""The transformer operations on hierarchical vision transformers (SegFormer, PVT-v2, GLPN);
the public operations (:mod:`.routing`) send these models here.

A hierarchical model (:mod:`.hier_layout`) has several stages, each with its own stream width
d_s and its own blocks. Blocks are addressed either by ``layers``, global block indices in
stage order (stage 0's blocks first: with depths [2, 2], block 2 is stage 1's first), or by
``stage``, a stage index or list of them (all their blocks); give at most one of the two.

- :func:`grow_ffn` — the Mix-FFN ``fc1`` (d_s → m) → depthwise 3×3 conv → φ → ``fc2``
  (m → d_s) grows to m' hidden channels: new fc1 rows random and shared inside each
  cancelling set, new depthwise channels (new groups) with one random kernel and bias per set,
  new fc2 columns C·(1, −1) or C·(1, 1, −2): the set's channels are equal, so fc2 adds zero.
- :func:`add_heads` — more query/key/value heads of the same head_dim (keys and values read the
  spatially reduced sequence, which is unchanged), output columns in cancelling sets; refused
  where the attention reshapes its context to the stream width (PVT-v2: heads·head_dim = d_s
  is fixed).
- :func:`add_block` — a new pre-LN block whose two branches add exactly zero.
- :func:`grow_width` — one stage's stream (``stage``, default the last) becomes k copies of
  itself, its heads k-fold (:mod:`.hier_width`).

The config follows where it can (``depths``, ``hidden_sizes``, ``num_attention_heads`` and
``mlp_ratios`` per stage); where it cannot describe the child (a head count its derived
head_dim does not give), :func:`.hf_config.sync_config` marks it and
:func:`~.hf_load.load_grown` rebuilds it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from .errors import MorphError
from .hier_layout import Hierarchy, Stage, find_hierarchy, hierarchy
from .hier_width import grow_stage_width
from .pipeline import run_on_model
from .report import MorphReport, Outcome, ParamSource, block_params, state_bytes
from .streamed import Region
from .transformer import (
    _attention_units,
    _cancel_sets,
    _edit_bytes,
    _Editor,
    _ffn_units,
    _gather_rows,
    _itemsize,
    _linears,
    _method,
    _std,
)
from .transformer_layout import Block, describe

__all__ = ["add_block", "add_heads", "grow_ffn", "grow_width", "probe_images", "recognise"]

#: Side of the square probe images (every stage sees a grid of at least 1×1 at strides 4·2·2·2).
PROBE_SIZE = 64


def probe_images(model: nn.Module, hier: Hierarchy) -> tuple[torch.Tensor, ...]:
    """Images (2, C, 64, 64), C the first patch convolution's input channels."""
    conv = model.get_submodule(hier.stages[0].embed)
    like = conv.weight
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, conv.in_channels, PROBE_SIZE, PROBE_SIZE, generator=gen)
    return (image.to(like.device, like.dtype),)


def recognise(model: nn.Module) -> Hierarchy | None:
    """The model's :class:`Hierarchy`; None for a model without a list of stages, or whose
    stages are not understood while :func:`.transformer_layout.describe` knows its blocks
    (the flat operations then apply); else the MorphError naming the part not understood."""
    if find_hierarchy(model) is None:
        return None
    try:
        return hierarchy(model)
    except MorphError as exc:
        try:
            describe(model)
        except MorphError:
            raise exc from None
        return None


def _chosen(hier: Hierarchy, layers: object, stage: object) -> list[tuple[int, int]]:
    """(stage, block) of the blocks named by ``layers`` (global indices) or ``stage``."""
    every = hier.global_blocks()
    if layers is not None and stage is not None:
        raise ValueError("give layers (global block indices) or stage, not both")
    if stage is not None:
        n = len(hier.stages)
        listed = v.int_sequence(stage)
        raw = [stage] if listed is None else listed
        stages = [v.as_int(s, "stage", f"a stage index in [0, {n}) or a list of them") for s in raw]
        if not stages or not all(0 <= s < n for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(f"stage must be distinct stage indices in [0, {n}), got {stages}")
        return [(s, i) for s, i in every if s in stages]
    if layers is None:
        return every
    n = len(every)
    listed = v.int_sequence(layers)
    raw = [layers] if listed is None else listed
    what = f"a global block index in [0, {n}) or a list of them"
    items = [v.as_int(i, "layers", what) for i in raw]
    if not items or not all(0 <= i < n for i in items) or len(set(items)) != len(items):
        raise ValueError(f"layers must be distinct global block indices in [0, {n}), got {items}")
    return [every[i] for i in sorted(items)]


def _block(hier: Hierarchy, s: int, i: int) -> Block:
    return hier.stages[s].layout.blocks[i]


def _full_stages(hier: Hierarchy, chosen: list[tuple[int, int]]) -> list[int]:
    """The stages every block of which is chosen."""
    return [st.index for st in hier.stages if sum(s == st.index for s, _ in chosen) == st.depth]


def _set_per_stage(config: object | None, field: str, values: dict[int, object]) -> bool:
    """``config.<field>[s] = value`` for each stage s (a list field of one entry per stage);
    False where the config has no such list."""
    old = getattr(config, field, None) if config is not None else None
    if not isinstance(old, (list, tuple)) or not values:
        return False
    new = list(old)
    for s, value in values.items():
        new[s] = value
    setattr(config, field, new)
    return True


def _run(
    operation: str,
    model: nn.Module,
    hier: Hierarchy,
    targets: tuple[str, ...],
    build: object,
    probe: object,
    tol: object,
    inplace: object,
    **request: object,
) -> tuple[nn.Module, MorphReport]:
    return run_on_model(
        operation,
        model,
        targets,
        build,
        probe,
        tol,
        inplace,
        lambda: probe_images(model, hier),
        **request,
    )


def _hierarchy(model: nn.Module) -> Hierarchy:
    """The :class:`Hierarchy` of ``model``; MorphError for a model without stages (the public
    operations send those elsewhere: :mod:`.routing`)."""
    hier = recognise(model)
    if hier is None:
        raise MorphError(
            f"{type(model).__name__} is not a hierarchical vision transformer (no list of "
            "stages of their own width)"
        )
    return hier


# ---------------------------------------------------------------------------------------------
# Feed-forward


def _dw_channels(
    edit: _Editor, name: str, src: np.ndarray, sets: list[list[int]], width: int
) -> None:
    """The depthwise conv ``name`` gets ``width`` channels (groups): parent channel src[c] or,
    for a new one, one random kernel and bias per cancelling set."""
    conv = edit.child.get_submodule(name)
    w = conv.weight.detach()
    new_w = _gather_rows(w, src)
    std = _std(w.reshape(w.shape[0], -1))
    for unit_set in sets:
        kernel = edit.noise(tuple(w.shape[1:]), std, w).to(w.dtype)
        for c in unit_set:
            new_w[c] = kernel
    edit.put(f"{name}.weight", new_w, (src, None, None, None))
    if conv.bias is not None:
        b = conv.bias.detach()
        new_b = _gather_rows(b, src)
        b_std = _std(b[None]) if b.numel() > 1 else std
        for unit_set in sets:
            value = float(edit.noise((1,), b_std, b)[0])
            for c in unit_set:
                new_b[c] = value
        edit.put(f"{name}.bias", new_b, (src,))


def _set_groups(child: nn.Module, name: str) -> None:
    """A depthwise conv's channel counts and groups from its weight (sync_shapes reads the
    weight's second axis, 1 here, as the input channels)."""
    conv = child.get_submodule(name)
    conv.in_channels = conv.out_channels = conv.groups = conv.weight.shape[0]


def _grow_mix_ffn(
    edit: _Editor, stage: Stage, block: Block, hidden: int, width: int, method: str, fresh: bool
) -> None:
    """fc1 rows, depthwise channels and fc2 columns of ``block`` grow from ``hidden`` to
    ``width`` (``fresh``: every unit new, fc2's bias zero)."""
    _ffn_units(edit, block, stage.layout, hidden, width, method, fresh=fresh)
    parent = 0 if fresh else hidden
    src = np.concatenate([np.arange(parent), -np.ones(width - parent, int)])
    _dw_channels(edit, block.name(stage.dwconv), src, _cancel_sets(range(parent, width)), width)


def _hidden(model: nn.Module, stage: Stage, block: Block) -> int:
    return model.get_submodule(block.name(stage.layout.family.ffn_out)).in_features


def grow_ffn(
    model: nn.Module,
    width: int,
    *,
    shared_width: int | None = None,
    layers: object = None,
    stage: object = None,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """The feed-forward hidden size of the chosen blocks grows to ``width``: in a hierarchical
    model the Mix-FFN of the blocks ``layers`` (global indices) or of the stages ``stage``
    (default every block; ``width`` must exceed each one's hidden size); MorphError for another
    model (:mod:`.routing` sends those elsewhere)."""
    hier = _hierarchy(model)
    if shared_width is not None:
        raise ValueError(
            f"shared_width={shared_width!r}: {type(model).__name__} has no mixture-of-experts "
            "feed-forward (no shared expert); leave it None"
        )
    method = _method(method)
    chosen = _chosen(hier, layers, stage)
    width = v.positive_int(width, "width")
    hidden = {(s, i): _hidden(model, hier.stages[s], _block(hier, s, i)) for s, i in chosen}
    if width <= max(hidden.values()):
        raise ValueError(
            f"width={width} must exceed the feed-forward hidden size {max(hidden.values())} of "
            "every chosen block"
        )
    blocks = [_block(hier, s, i) for s, i in chosen]
    fam = hier.stages[0].layout.family
    edits = tuple(
        b.name(rel) for (s, _), b in zip(chosen, blocks) for rel in (*fam.ffn_in, fam.ffn_out)
    ) + tuple(b.name(hier.stages[s].dwconv) for (s, _), b in zip(chosen, blocks))
    grown = sum((width - hidden[c]) * (2 * hier.stages[c[0]].width + 10) for c in chosen)
    new_bytes = grown * _itemsize(model) + _edit_bytes(model, edits) * width // min(hidden.values())
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        for (s, i), block in zip(chosen, blocks):
            _grow_mix_ffn(edit, hier.stages[s], block, hidden[(s, i)], width, method, False)
        notes = []
        full = _full_stages(hier, chosen)
        ratios = {s: width // hier.stages[s].width for s in full}
        ratios = {s: r for s, r in ratios.items() if r * hier.stages[s].width == width}
        _set_per_stage(getattr(child, "config", None), "mlp_ratios", ratios)
        if 1 in {width - h for h in hidden.values()} and method == "netmorph":
            notes.append("one new unit has no partner: its output column is zero")
        outcome = edit.outcome(notes)
        for (s, _), block in zip(chosen, blocks):
            _set_groups(child, block.name(hier.stages[s].dwconv))
        return outcome

    return _run(
        "grow_ffn",
        model,
        hier,
        tuple(b.name(fam.ffn_out) for b in blocks),
        build,
        probe,
        tol,
        inplace,
        edits=edits,
        regions=tuple(Region(b.prefix, b.prefix) for b in blocks),
        new_bytes=new_bytes,
        replaced=edits,
    )


# ---------------------------------------------------------------------------------------------
# Attention heads


def check_heads_fit(
    model: nn.Module, stage: Stage, block: Block, heads: int, head_dim: int | None = None
) -> None:
    """A copy of the block's attention must run on a (1, S², d_s) input on an S×S grid (S the
    largest kernel of its spatial reduction, at least 4), then also with ``heads`` zero heads of
    ``head_dim`` (default the block's); MorphError naming it where its forward fixes
    heads·head_dim (PVT-v2 reshapes its context to the stream width: heads·head_dim = d_s)."""
    fam = stage.layout.family
    name = block.name(fam.attention)
    h = block.head_dim if head_dim is None else head_dim
    asked = f"heads={heads}" if head_dim is None else f"head_dim={h}"
    attention = copy.deepcopy(model.get_submodule(name)).to(torch.float64)
    side = max([4] + [max(m.kernel_size) for m in attention.modules() if isinstance(m, nn.Conv2d)])
    x = torch.zeros(1, side * side, stage.width, dtype=torch.float64)
    try:
        with torch.no_grad():
            attention(x, side, side)
    except Exception as exc:  # any failure of the module's own forward
        raise MorphError(
            f"{asked}: {name!r} ({type(attention).__name__}) cannot be run alone on a "
            f"(1, {side * side}, {stage.width}) input on a {side}×{side} grid "
            f"({type(exc).__name__}: {exc}); refused"
        ) from exc
    rows = heads * h
    with torch.no_grad():
        for rel in fam.qkv:
            layer = attention.get_submodule(rel.removeprefix(fam.attention + "."))
            index = np.arange(rows) % layer.out_features
            layer.weight = nn.Parameter(_gather_rows(layer.weight, index))
            if layer.bias is not None:
                layer.bias = nn.Parameter(_gather_rows(layer.bias, index))
            layer.out_features = rows
        if fam.o.startswith(fam.attention + "."):  # else the block applies it afterwards
            out = attention.get_submodule(fam.o.removeprefix(fam.attention + "."))
            index = np.arange(rows) % out.in_features
            out.weight = nn.Parameter(_gather_rows(out.weight, index, 1))
            out.in_features = rows
    for attr in ("num_heads", "num_attention_heads"):
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, heads)
    for attr in ("head_dim", "attention_head_size"):
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, h)
    if isinstance(getattr(attention, "all_head_size", None), int):
        attention.all_head_size = rows
    try:
        with torch.no_grad():
            attention(x, side, side)
    except Exception as exc:  # the forward of this class fixes heads·head_dim
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        tied = "head count" if head_dim is None else "heads' width"
        raise MorphError(
            f"{asked}: {name!r} ({type(attention).__name__}) does not run with "
            f"{heads} heads of head_dim {h} ({reason}): its forward ties the {tied} "
            f"to the stream width {stage.width} (heads·head_dim = d_s); refused"
        ) from exc


def add_heads(
    model: nn.Module,
    heads: int,
    *,
    kv_heads: int | None = None,
    layers: object = None,
    stage: object = None,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """The chosen blocks get ``heads`` attention heads of their head_dim: in a hierarchical
    model the blocks ``layers`` (global indices) or of the stages ``stage`` (default every
    block; ``heads`` must exceed each one's count; multi-head attention only, so ``kv_heads``
    is None or ``heads``); MorphError for another model."""
    hier = _hierarchy(model)
    method = _method(method)
    chosen = _chosen(hier, layers, stage)
    heads = v.positive_int(heads, "heads")
    if kv_heads is not None and v.positive_int(kv_heads, "kv_heads") != heads:
        raise MorphError(
            f"kv_heads={kv_heads}: the attention of {type(model).__name__} is multi-head "
            "(one key/value head per query head); leave kv_heads None"
        )
    blocks = [_block(hier, s, i) for s, i in chosen]
    most = max(b.heads for b in blocks)
    if heads <= most:
        raise ValueError(f"heads={heads} must exceed the {most} heads of every chosen block")
    checked: set[int] = set()
    for (s, _), block in zip(chosen, blocks):
        if s not in checked:
            check_heads_fit(model, hier.stages[s], block, heads)
            checked.add(s)
    fam = hier.stages[0].layout.family
    edits = tuple(b.name(rel) for b in blocks for rel in (*fam.qkv, fam.o))
    grown = sum(
        4 * (heads - b.heads) * b.head_dim * hier.stages[s].width
        for (s, _), b in zip(chosen, blocks)
    )
    new_bytes = grown * _itemsize(model) + _edit_bytes(model, edits) * heads // min(
        b.heads for b in blocks
    )
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        lonely = sum(
            _attention_units(edit, b, hier.stages[s].layout, heads, heads, method)
            for (s, _), b in zip(chosen, blocks)
        )
        notes = []
        full = {s: heads for s in _full_stages(hier, chosen)}
        _set_per_stage(getattr(child, "config", None), "num_attention_heads", full)
        if lonely and method == "netmorph":
            notes.append(f"{lonely} new heads have no partner: zero output columns")
        return edit.outcome(notes)

    return _run(
        "add_heads",
        model,
        hier,
        tuple(b.name(fam.attention) for b in blocks),
        build,
        probe,
        tol,
        inplace,
        edits=edits,
        regions=tuple(Region(b.prefix, b.prefix) for b in blocks),
        new_bytes=new_bytes,
        replaced=edits,
    )


# ---------------------------------------------------------------------------------------------
# Depth


def _place(hier: Hierarchy, at: object, stage: object) -> tuple[int, int]:
    """(stage, position in it) of a new block: ``at`` a global index in [0, blocks] (before
    global block ``at``, in its stage; ``at`` = blocks: the end of the last stage), or with
    ``stage`` an index in [0, depth of that stage]."""
    if stage is None:
        every = hier.global_blocks()
        n = len(every)
        at = v.as_int(at, "at", f"a global block index in [0, {n}]")
        if not 0 <= at <= n:
            raise ValueError(f"at must be a global block index in [0, {n}], got {at}")
        last = hier.stages[-1]
        return every[at] if at < n else (last.index, last.depth)
    n_stages = len(hier.stages)
    s = v.as_int(stage, "stage", f"a stage index in [0, {n_stages})")
    if not 0 <= s < n_stages:
        raise ValueError(f"stage must be a stage index in [0, {n_stages}), got {s}")
    depth = hier.stages[s].depth
    at = v.as_int(at, "at", f"a block index in [0, {depth}] of stage {s}")
    if not 0 <= at <= depth:
        raise ValueError(f"at must be a block index in [0, {depth}] of stage {s}, got {at}")
    return s, at


def add_block(
    model: nn.Module,
    at: int,
    *,
    stage: int | None = None,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """A new block inserted before block ``at``: in a hierarchical model ``at`` is a global
    block index (the block goes into the stage of block ``at``; ``at`` = number of blocks: the
    end of the last stage) or, with ``stage``, an index in [0, depth] of that stage; its
    norms, spatial reduction and head count are copied from its neighbour, its attention heads
    and Mix-FFN channels come in cancelling sets (``"zero"``: zero output projections) and its
    output biases are zero, so both branches add zero. MorphError for another model."""
    hier = _hierarchy(model)
    method = _method(method)
    s, at = _place(hier, at, stage)
    st = hier.stages[s]
    n = st.depth
    template = st.layout.blocks[min(at, n - 1)]
    hidden = _hidden(model, st, template)
    fam = st.layout.family
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw
    prefix = st.blocks
    edits = _linears([template], (*fam.qkv, fam.o, *fam.ffn_in, fam.ffn_out))
    new_bytes = state_bytes(model.get_submodule(template.prefix)) + _edit_bytes(model, edits)
    if at < n:
        region = Region(f"{prefix}.{at}", f"{prefix}.{at}", identity=True)
    else:
        region = Region(f"{prefix}.{n - 1}", f"{prefix}.{n}", identity=True, after=True)

    def build(child: nn.Module) -> Outcome:
        blocks = child.get_submodule(prefix)
        blocks.insert(at, copy.deepcopy(blocks[min(at, n - 1)]))
        edit = _Editor(child, seed)
        new = Block(f"{prefix}.{at}", template.heads, template.kv_heads, template.head_dim)
        lonely = _attention_units(
            edit, new, st.layout, template.heads, template.kv_heads, method, fresh=True
        )
        _grow_mix_ffn(edit, st, new, hidden, hidden, method, True)
        sources: dict[str, ParamSource] = {}
        offset = len(prefix) + 1
        for name, _ in child.named_parameters():
            if not name.startswith(prefix + "."):
                continue
            i, _, rest = name[offset:].partition(".")
            j = int(i)
            if j == at:
                sources[name] = ParamSource(None, f"{template.prefix}.{rest}")
            elif j > at:
                sources[name] = ParamSource(f"{prefix}.{j - 1}.{rest}", f"{prefix}.{j - 1}.{rest}")
        edit.sources = sources
        config = getattr(child, "config", None)
        depths = getattr(
            config, "depths", None
        )  # a longer list: the stock model reads its first entries
        if isinstance(depths, (list, tuple)) and len(depths) >= len(hier.stages):
            _set_per_stage(config, "depths", {s: depths[s] + 1})
        notes = []
        if lonely and method == "netmorph":
            notes.append(f"{lonely} heads have no partner: zero output columns")
        outcome = edit.outcome(notes)
        _set_groups(child, new.name(st.dwconv))
        return outcome.count_new(block_params(child, f"{prefix}.{at}"))

    return _run(
        "add_block",
        model,
        hier,
        (f"{prefix}.{at}",),
        build,
        probe,
        tol,
        inplace,
        edits=edits,
        copies=(template.prefix,),
        regions=(region,),
        new_bytes=new_bytes,
    )


# ---------------------------------------------------------------------------------------------
# Width


def grow_width(
    model: nn.Module,
    d_model: int,
    *,
    stage: int | None = None,
    noise: float = 0.01,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """The residual stream grows to ``d_model``: in a hierarchical model the stream of stage
    ``stage`` (default the last, which the classifier reads) to a multiple k·d_s of its width,
    its heads k-fold (:mod:`.hier_width`; ``method`` for the new heads); MorphError for another
    model."""
    hier = _hierarchy(model)
    return grow_stage_width(
        model,
        hier,
        d_model,
        stage=stage,
        noise=noise,
        method=method,
        probe=probe_images(model, hier) if probe is None else probe,
        tol=tol,
        seed=seed,
        inplace=inplace,
    )
