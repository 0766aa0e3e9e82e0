"""A wider stream for one stage of a hierarchical vision transformer (SegFormer, PVT-v2).

Stage s's stream x (width d) becomes x̃ = [x; …; x] (k copies, D' = k·d; the patch embedding's
LayerNorm writes the stream, and no LayerNorm output can carry the extra mean coordinates a
width that is not a multiple of d needs):

- writers get their rows k times: the patch convolution, the attention and Mix-FFN output
  projections (biases too); every LayerNorm of the stream (the patch embedding's, the blocks',
  the stage's final one) gets γ and β k times: LN(x̃) = [LN(x); …] (the mean and variance of
  copies are those of x, so eps is unchanged);
- readers get k column blocks R_j + W/k − mean(R) summing to W (:func:`.transformer._read`):
  query, key, value, fc1, the spatial-reduction convolution (whose output rows, and its
  LayerNorm, are repeated too, so keys and values read a stream of copies) and every layer
  outside the stage that reads its output, found on the exported graph
  (:func:`.exported_consumers.plan_norm_readers`: the next stage's patch convolution, the
  classifier, the decode head's per-stage MLP);
- each block's heads grow k times (head_dim = d/heads is kept, which the configs derive and
  PVT-v2's attention needs: it reshapes its context to the stream width); the new heads come
  in cancelling sets (zero output columns for a lone one).

The config's ``hidden_sizes[s]`` and ``num_attention_heads[s]`` follow, and ``mlp_ratios[s]``
where the feed-forward size is an integer multiple of D'.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from .errors import MorphError
from .exported_consumers import plan_norm_readers
from .hier_layout import Hierarchy, Stage
from .pipeline import Request, run
from .report import MorphReport, Outcome, ParamSource, state_bytes
from .transformer import (
    _attention_units,
    _Editor,
    _expand_heads,
    _head_sources,
    _method,
    _read,
    check_bool,
)

__all__ = ["grow_stage_width"]


def _stream_modules(model: nn.Module, stage: Stage) -> tuple[str, list[str], list[str]]:
    """(the patch embedding's LayerNorm, the spatial-reduction convolutions and LayerNorms
    inside the blocks' attention, those convolutions); MorphError naming a part of the stage
    not understood: every parameter of a block must belong to its norms, projections,
    spatial reduction or depthwise conv."""
    if stage.embed_norm is None:
        raise MorphError(
            f"stage {stage.index}: no single LayerNorm after the patch convolution "
            f"{stage.embed!r}; refused"
        )
    fam = stage.layout.family
    reduce: list[str] = []
    for block in stage.layout.blocks:
        attention = model.get_submodule(block.name(fam.attention))
        own = {block.name(r) for r in (*fam.qkv, fam.o)}
        for n, m in attention.named_modules():
            name = f"{block.name(fam.attention)}.{n}"
            if name in own or not any(True for _ in m.parameters(recurse=False)):
                continue
            square = isinstance(m, nn.Conv2d) and m.groups == 1
            square = square and m.in_channels == m.out_channels == stage.width
            norm = isinstance(m, nn.LayerNorm) and m.normalized_shape == (stage.width,)
            if not (square or norm):
                raise MorphError(
                    f"{name!r} ({type(m).__name__}) in the attention is neither a spatial "
                    f"reduction convolution of width {stage.width} nor its LayerNorm; refused"
                )
            reduce.append(name)
        known = {*own, *reduce, block.name(stage.dwconv)}
        known |= {block.name(r) for r in (*fam.norms, *fam.ffn_in, fam.ffn_out)}
        for pname, _ in model.get_submodule(block.prefix).named_parameters():
            owner = f"{block.prefix}.{pname.rpartition('.')[0]}"
            if owner not in known:
                raise MorphError(
                    f"'{block.prefix}.{pname}' is not a parameter of a norm, projection, spatial "
                    "reduction or depthwise conv of the block: the width does not follow it; "
                    "refused"
                )
    convs = [n for n in reduce if isinstance(model.get_submodule(n), nn.Conv2d)]
    return stage.embed_norm, reduce, convs


def _tile(edit: _Editor, name: str, attr: str, copies: int, axis: int = 0) -> None:
    """Parameter ``name.attr`` repeated ``copies`` times along ``axis`` (a writer's rows, a
    norm's gain and bias)."""
    p = edit.child.get_submodule(name).get_parameter(attr).detach()
    value = torch.cat([p] * copies, dim=axis)
    index: list[np.ndarray | None] = [None] * p.dim()
    index[axis] = np.tile(np.arange(p.shape[axis]), copies)
    edit.put(f"{name}.{attr}", value, tuple(index))


def _tile_all(edit: _Editor, name: str, copies: int) -> None:
    module = edit.child.get_submodule(name)
    for attr in ("weight", "bias"):
        if isinstance(getattr(module, attr, None), nn.Parameter):
            _tile(edit, name, attr, copies)


def _split_columns(edit: _Editor, name: str, copies: int, noise: float) -> None:
    """The input channels (axis 1) of the Linear or Conv ``name`` become k blocks summing to
    its weight (every kernel tap alike)."""
    w = edit.child.get_submodule(name).weight.detach()
    d = w.shape[1]
    taps = w.movedim(1, -1).reshape(-1, d)
    new = _read(edit, taps, copies, 0, noise)
    value = new.reshape(*w.movedim(1, -1).shape[:-1], copies * d).movedim(-1, 1).contiguous()
    index: list[np.ndarray | None] = [None] * w.dim()
    index[1] = np.tile(np.arange(d), copies)
    edit.put(f"{name}.weight", value, tuple(index))


def grow_stage_width(
    model: nn.Module,
    hier: Hierarchy,
    d_model: int,
    *,
    stage: object,
    noise: float,
    method: str,
    probe: tuple[torch.Tensor, ...],
    tol: float | str | None,
    seed: int | np.random.Generator | None,
    inplace: bool,
) -> tuple[nn.Module, MorphReport]:
    """Stage ``stage`` (default: the last) of ``model`` grows its stream to ``d_model`` (a
    multiple of its width; module docstring)."""
    n = len(hier.stages)
    s = n - 1 if stage is None else v.as_int(stage, "stage", f"a stage index in [0, {n})")
    if not 0 <= s < n:
        raise ValueError(f"stage must be a stage index in [0, {n}), got {s}")
    st = hier.stages[s]
    d = st.width
    d_model = v.positive_int(d_model, "d_model")
    if d_model <= d:
        raise ValueError(f"d_model={d_model} must exceed stage {s}'s width {d}")
    noise = v.real_number(noise, "noise", low=0.0)
    method = _method(method)
    check_bool(inplace, "inplace")
    embed_norm, reduce, reduce_convs = _stream_modules(model, st)
    if d_model % d:
        raise MorphError(
            f"d_model={d_model} is not a multiple of stage {s}'s width {d}: LayerNorm "
            f"{embed_norm!r} writes the stream, whose extra coordinates would have to carry its "
            "output's mean per token (no bias does); use a multiple of the width"
        )
    copies = d_model // d
    for block in st.layout.blocks:
        if block.heads * block.head_dim != d:
            raise MorphError(
                f"d_model={d_model}: {block.prefix!r} has {block.heads} heads of head_dim "
                f"{block.head_dim}, not d/heads: its heads cannot grow with the stream; refused"
            )
    src = np.concatenate([np.arange(d), -np.ones(d_model - d, int)])
    try:
        plan = plan_norm_readers(model, st.norm, src, probe)
    except MorphError as exc:
        raise MorphError(f"d_model={d_model}: the readers of stage {s}'s output: {exc}") from exc
    if plan.gates or any(u.kind not in ("linear", "conv") for u in plan.uses):
        odd = next(iter(plan.gates), None) or next(
            u.name for u in plan.uses if u.kind not in ("linear", "conv")
        )
        raise MorphError(
            f"d_model={d_model}: {odd!r} reads stage {s}'s output and is not a Linear or "
            "ungrouped convolution; refused"
        )
    readers = [u.name for u in plan.uses]
    fam = st.layout.family
    blocks = st.layout.blocks
    norms = [embed_norm, st.norm, *(b.name(r) for b in blocks for r in fam.norms)]
    norms += [r for r in reduce if r not in reduce_convs]
    writers = [st.embed, *(b.name(r) for b in blocks for r in (fam.o, fam.ffn_out))]
    inner = [b.name(r) for b in blocks for r in (*fam.qkv, *fam.ffn_in)]
    edits = tuple(dict.fromkeys([*writers, *inner, *reduce_convs, *norms, *readers]))
    stage_bytes = sum(state_bytes(model.get_submodule(r)) for r in st.roots)
    new_bytes = stage_bytes * copies * 2 + sum(
        state_bytes(model.get_submodule(r)) * copies for r in readers
    )
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        for name in writers:
            _tile_all(edit, name, copies)
        for name in norms:
            _tile_all(edit, name, copies)
        for name in reduce_convs:
            _split_columns(edit, name, copies, noise)
            _tile_all(edit, name, copies)
        for name in (*inner, *readers):
            _split_columns(edit, name, copies, noise)
        lonely = 0
        stream = np.tile(np.arange(d), copies)
        for block in blocks:
            heads = block.heads * copies
            lonely += _attention_units(edit, block, st.layout, heads, heads, method)
            q_src = _head_sources(block.heads, block.heads, heads, heads)[0]
            rows = _expand_heads(q_src, block.head_dim)
            for rel in fam.qkv:  # both edits in one record: new head rows, column blocks
                name = f"{block.name(rel)}.weight"
                edit.sources[name] = ParamSource(name, name, (rows, stream))
            name = f"{block.name(fam.o)}.weight"
            edit.sources[name] = ParamSource(name, name, (stream, rows))
        outcome = edit.outcome([])
        for root in st.roots:
            for module in child.get_submodule(root).modules():
                if getattr(module, "hidden_size", None) == d:
                    module.hidden_size = d_model
        config = getattr(child, "config", None)
        _set_stage(config, "hidden_sizes", s, d_model)
        _set_stage(config, "num_attention_heads", s, blocks[0].heads * copies)
        hidden = {child.get_submodule(b.name(fam.ffn_out)).in_features for b in blocks}
        if len(hidden) == 1 and hidden.pop() % d_model == 0:
            size = child.get_submodule(blocks[0].name(fam.ffn_out)).in_features
            _set_stage(config, "mlp_ratios", s, size // d_model)
        if lonely and method == "netmorph":
            outcome.notes.append(f"{lonely} new heads have no partner: zero output columns")
        outcome.notes.append(
            f"stage {s}: {copies} copies of the stream; each block has {copies}× the heads"
        )
        return outcome

    return run(
        Request(
            "grow_width",
            model,
            (st.blocks,),
            build,
            probe=probe,
            tol=tol,
            layer_scope=False,
            inplace=inplace,
            edits=edits,
            copies=st.roots,
            regions=(),
            new_bytes=new_bytes,
            replaced=edits,
        )
    )


def _set_stage(config: object | None, field: str, s: int, value: object) -> None:
    """``config.<field>[s] = value`` where the config holds such a per-stage list."""
    old = getattr(config, field, None) if config is not None else None
    if isinstance(old, (list, tuple)) and s < len(old):
        new = list(old)
        new[s] = value
        setattr(config, field, new)
