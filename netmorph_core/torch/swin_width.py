"""A wider stream for one stage of a Swin transformer (:mod:`.swin_layout`).

Stage s's stream x (width d) becomes x̃ = [x; …; x] (k copies, D' = k·d; a LayerNorm writes or
reads every stage's stream, and no LayerNorm output can carry the extra mean coordinates a
width that is not a multiple of d needs):

- writers get their rows k times: the patch convolution and its LayerNorm (stage 0) or the
  patch merging's reduction Linear (and, in v2, the LayerNorm after it) that feeds the stage,
  the attention and MLP output projections (biases too), every block norm (pre-norm v1 and
  res-post-norm v2 alike: LN of copies is copies of LN, eps unchanged);
- readers get k column blocks R_j + W/k − mean(R) summing to W (:func:`.transformer._read`):
  q, k, v (or the fused q|k|v), fc1, and after the stage either the next patch merging — whose
  concat of 2×2 neighbours [x₀; x₁; x₂; x₃] becomes [x₀^k; x₁^k; x₂^k; x₃^k]: its v1
  LayerNorm(4·d) gets γ, β of each neighbour's block k times (the mean and variance of copies
  are unchanged) and its reduction k column blocks per neighbour — or, after the last stage,
  the final LayerNorm (tiled) and the layers reading it, found on the exported graph
  (:func:`.exported_consumers.plan_norm_readers`: the classifier);
- each block's heads grow k times (head_dim = d/heads kept, which torchvision's attention
  derives from the stream width), new heads in cancelling sets with shared position biases.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from .errors import MorphError
from .exported_consumers import plan_norm_readers
from .hier_width import _split_columns, _tile_all
from .pipeline import Request, run
from .report import MorphReport, Outcome, ParamSource, state_bytes
from .swin_edit import by_attribute, position_bias
from .swin_layout import Swin, SwinStage
from .transformer import _attention_units, _cancel_sets, _Editor, _method, _read, check_bool

__all__ = ["grow_swin_width"]


def _outside(model: nn.Module, sw: Swin) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` outside every stage's block list."""
    lists = [st.blocks for st in sw.stages]
    return [
        (n, m)
        for n, m in model.named_modules()
        if not any(n == b or n.startswith(f"{b}.") for b in lists)
    ]


def _merging(model: nn.Module, sw: Swin, s: int) -> tuple[str, str, bool]:
    """(reduction Linear 4·d_{s−1} → d_s, its LayerNorm, whether the norm follows it: v2) of
    the patch merging feeding stage s ≥ 1; MorphError where there is not exactly one."""
    d_in, d_out = sw.stages[s - 1].width, sw.stages[s].width
    found = [
        n
        for n, m in _outside(model, sw)
        if isinstance(m, nn.Linear) and (m.in_features, m.out_features) == (4 * d_in, d_out)
    ]
    if len(found) != 1:
        raise MorphError(
            f"stage {s}: {len(found)} Linear layers {4 * d_in} → {d_out} outside the blocks, "
            "not one patch merging reduction; refused"
        )
    parent = found[0].rpartition(".")[0]
    owner = model.get_submodule(parent) if parent else model
    norms = [(n, m) for n, m in owner.named_children() if isinstance(m, nn.LayerNorm)]
    if len(norms) != 1 or norms[0][1].normalized_shape not in ((4 * d_in,), (d_out,)):
        raise MorphError(
            f"stage {s}: the patch merging {parent!r} holds no single LayerNorm of width "
            f"{4 * d_in} (before its reduction) or {d_out} (after it); refused"
        )
    name, norm = norms[0]
    return found[0], f"{parent}.{name}" if parent else name, norm.normalized_shape == (d_out,)


def _stream_norms(model: nn.Module, sw: Swin, s: int) -> tuple[str | None, str | None]:
    """(the patch embedding's LayerNorm: stage 0, the final LayerNorm: last stage) of width
    d_s outside the blocks and patch mergings, in registration order."""
    d = sw.stages[s].width
    merging = {_merging(model, sw, t)[1] for t in range(1, len(sw.stages)) if t in (s, s + 1)}
    norms = [
        n
        for n, m in _outside(model, sw)
        if isinstance(m, nn.LayerNorm) and m.normalized_shape == (d,) and n not in merging
    ]
    first, last = s == 0, s == len(sw.stages) - 1
    if len(norms) != first + last:
        raise MorphError(
            f"stage {s}: {len(norms)} LayerNorms of width {d} outside the blocks "
            f"({', '.join(norms) or 'none'}), not {'the patch embedding' if first else ''}"
            f"{' and ' if first and last else ''}{'the final norm' if last else ''}'s; refused"
        )
    return (norms[0] if first else None), (norms[-1] if last else None)


def _patch_conv(model: nn.Module, sw: Swin) -> str:
    d = sw.stages[0].width
    convs = [n for n, m in _outside(model, sw) if isinstance(m, nn.Conv2d) and m.out_channels == d]
    if len(convs) != 1:
        raise MorphError(
            f"stage 0: {len(convs)} Conv2d layers writing its {d} channels, not one patch "
            "embedding; refused"
        )
    return convs[0]


def _check_blocks(model: nn.Module, st: SwinStage) -> None:
    """Every parameter of the stage's blocks belongs to a norm, a projection or the per-head
    position bias; MorphError naming another."""
    fam = st.layout.family
    rels = [*fam.norms, *fam.qkv, fam.o, *fam.ffn_in, fam.ffn_out]
    owners = {r for r in (st.table, st.logit_scale) if r}
    cpb = st.cpb.rpartition(".")[0]
    for block in st.layout.blocks:
        for pname, _ in model.get_submodule(block.prefix).named_parameters():
            ok = pname in owners or (cpb and pname.startswith(f"{cpb}."))
            ok = ok or any(pname.startswith(f"{r}.") for r in rels)
            if not ok:
                raise MorphError(
                    f"'{block.prefix}.{pname}' is not a parameter of a norm, projection or "
                    "position bias of the block: the width does not follow it; refused"
                )


def _merge_norm(edit: _Editor, name: str, d: int, copies: int) -> None:
    """A LayerNorm over the concat of four neighbours of width d each: γ and β of each
    neighbour's block repeated ``copies`` times, in place."""
    module = edit.child.get_submodule(name)
    index = np.concatenate([np.tile(np.arange(i * d, (i + 1) * d), copies) for i in range(4)])
    for attr in ("weight", "bias"):
        p = getattr(module, attr, None)
        if isinstance(p, nn.Parameter):
            value = p.detach()[torch.as_tensor(index, device=p.device)]
            edit.put(f"{name}.{attr}", value, (index,))


def _merge_columns(edit: _Editor, name: str, d: int, copies: int, noise: float) -> None:
    """The reduction reads four neighbours of width d: each neighbour's column block becomes
    ``copies`` blocks summing to it."""
    w = edit.child.get_submodule(name).weight.detach()
    parts = [_read(edit, w[:, i * d : (i + 1) * d], copies, 0, noise) for i in range(4)]
    index = np.concatenate([np.tile(np.arange(i * d, (i + 1) * d), copies) for i in range(4)])
    edit.put(f"{name}.weight", torch.cat(parts, dim=1), (None, index))


def grow_swin_width(
    model: nn.Module,
    sw: Swin,
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
    n = len(sw.stages)
    s = n - 1 if stage is None else v.as_int(stage, "stage", f"a stage index in [0, {n})")
    if not 0 <= s < n:
        raise ValueError(f"stage must be a stage index in [0, {n}), got {s}")
    st = sw.stages[s]
    d = st.width
    d_model = v.positive_int(d_model, "d_model")
    if d_model <= d:
        raise ValueError(f"d_model={d_model} must exceed stage {s}'s width {d}")
    noise = v.real_number(noise, "noise", low=0.0)
    method = _method(method)
    check_bool(inplace, "inplace")
    if d_model % d:
        raise MorphError(
            f"d_model={d_model}: no exact child — {d_model} is not a multiple of stage {s}'s "
            f"width {d}: LayerNorms write and read the stream, whose extra coordinates would "
            "have to carry their outputs' mean per token; use a multiple of the width"
        )
    copies = d_model // d
    _check_blocks(model, st)
    embed_norm, final_norm = _stream_norms(model, sw, s)
    writers: list[str] = []
    norms: list[str] = [n for n in (embed_norm, final_norm) if n]
    if s == 0:
        writers.append(_patch_conv(model, sw))
    else:
        reduction, norm, after = _merging(model, sw, s)
        writers.append(reduction)
        if after:
            norms.append(norm)
    merge_out: tuple[str, str, bool] | None = _merging(model, sw, s + 1) if s < n - 1 else None
    readers: list[str] = []
    if final_norm is not None:
        src = np.concatenate([np.arange(d), -np.ones(d_model - d, int)])
        try:
            plan = plan_norm_readers(model, final_norm, src, probe)
        except MorphError as exc:
            raise MorphError(f"d_model={d_model}: the readers of {final_norm!r}: {exc}") from exc
        odd = [u.name for u in plan.uses if u.kind != "linear"] + list(plan.gates)
        if odd:
            raise MorphError(
                f"d_model={d_model}: {odd[0]!r} reads {final_norm!r} and is not a Linear "
                "layer; refused"
            )
        readers = [u.name for u in plan.uses]
    fam = st.layout.family
    blocks = st.layout.blocks
    norms += [b.name(r) for b in blocks for r in fam.norms]
    writers += [b.name(r) for b in blocks for r in (fam.o, fam.ffn_out)]
    inner = [b.name(r) for b in blocks for r in (*fam.qkv, *fam.ffn_in)]
    heads_of = {b.prefix: b.heads * copies for b in blocks}
    extra = [b.name(st.cpb) for b in blocks if st.cpb]
    outer = [merge_out[0]] if merge_out else []
    if merge_out and not merge_out[2]:
        outer.append(merge_out[1])
    edits = by_attribute(
        model, tuple(dict.fromkeys([*writers, *inner, *norms, *readers, *outer, *extra]))
    )
    new_bytes = state_bytes(model.get_submodule(st.blocks)) * copies * 2 + sum(
        state_bytes(model.get_submodule(r)) * copies for r in (*readers, *outer)
    )
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        for name in (*writers, *norms):
            _tile_all(edit, name, copies)
        for name in (*inner, *readers):
            _split_columns(edit, name, copies, noise)
        if merge_out:
            _merge_columns(edit, merge_out[0], d, copies, noise)
            if not merge_out[2]:
                _merge_norm(edit, merge_out[1], d, copies)
        lonely = 0
        stream = np.tile(np.arange(d), copies)
        for block in blocks:
            heads = heads_of[block.prefix]
            lonely += _attention_units(edit, block, st.layout, heads, heads, method)
            new = _cancel_sets(range(block.heads, heads))
            position_bias(edit, st, block, block.heads, heads, new)
            for rel in fam.qkv:  # both edits in one record: new head rows, column blocks
                name = f"{block.name(rel)}.weight"
                rows = edit.sources[name].index[0]
                edit.sources[name] = ParamSource(name, name, (rows, stream))
            name = f"{block.name(fam.o)}.weight"
            cols = edit.sources[name].index[1]
            edit.sources[name] = ParamSource(name, name, (stream, cols))
        outcome = edit.outcome([])
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
            copies=(st.blocks,),
            regions=(),
            new_bytes=new_bytes,
            replaced=edits,
        )
    )
