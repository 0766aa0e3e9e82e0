"""Where the parts of a hierarchical vision transformer live (SegFormer, PVT-v2).

A hierarchical transformer is a list of *stages*, each its own residual stream of width d_s::

    stage s:  x = LN_e(patch_conv_s(image or stage s−1's map))      (B, H_s·W_s, d_s)
              x = x + attn(n₁(x)) ;  x = x + ffn(n₂(x))              per block
              y_s = LN_s(x)  → (B, d_s, H_s, W_s) for stage s+1 and the heads

Recognised by structure, not by class names: a ``ModuleList`` of stages of one class, each
holding a strided ``Conv2d`` patch embedding, one ``ModuleList`` of pre-LN blocks and a final
``LayerNorm``. A block holds two LayerNorms (before the attention, before the feed-forward, in
registration order), an attention module with four Linear layers (query, key, value in that
order, then the output projection; keys and values may read a spatially reduced sequence: a
strided ``Conv2d`` and LayerNorm of width d_s) and a Mix-FFN: ``fc1`` (d_s → m), a depthwise
3×3 ``Conv2d`` on the token grid (m channels, m groups), an activation and ``fc2`` (m → d_s).
Anything else in a stage or block is refused, naming it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from torch import nn

from .errors import MorphError
from .kinds import type_label
from .transformer_layout import Block, Family, Layout

__all__ = ["Hierarchy", "Stage", "find_hierarchy", "hierarchy"]


@dataclass(frozen=True)
class Stage:
    """One stage: the qualified names of its ``embed`` (patch Conv2d) and ``embed_norm`` (the
    LayerNorm after it; None where there is not exactly one), its ``blocks`` (ModuleList) and
    its final ``norm``; ``roots``: the modules that hold every part of the stage; its stream
    ``width`` d_s, its ``layout`` (the :class:`~.transformer_layout.Layout` of its blocks,
    relative names in ``layout.family``) and its Mix-FFN's depthwise conv ``dwconv``
    (relative to a block)."""

    index: int
    embed: str
    embed_norm: str | None
    blocks: str
    norm: str
    roots: tuple[str, ...]
    width: int
    layout: Layout
    dwconv: str

    @property
    def depth(self) -> int:
        return len(self.layout.blocks)


@dataclass(frozen=True)
class Hierarchy:
    """A recognised hierarchical transformer: its ``stages`` (``path``: the module holding
    them) and the model ``config`` (None for a plain module)."""

    path: str
    stages: tuple[Stage, ...]
    config: object | None

    def global_blocks(self) -> list[tuple[int, int]]:
        """(stage, block within the stage) of every block, stage 0's first."""
        return [(s.index, i) for s in self.stages for i in range(s.depth)]


#: The qualified names of one stage's parts: patch conv, its LayerNorm (or None), block list,
#: final norm, and the modules holding them.
Parts = tuple[str, str | None, str, str, tuple[str, ...]]


def _children(module: nn.Module, kind: type) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_children() if isinstance(m, kind)]


def _leaves(module: nn.Module, kind: type) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, kind)]


def _embedding(module: nn.Module, prefix: str, skip: str = "") -> tuple[str, str | None] | None:
    """(patch conv, its LayerNorm or None) of a module holding one ungrouped Conv2d (outside
    ``skip``), qualified with ``prefix``; None when it holds none or several."""
    convs = [
        n
        for n, m in _leaves(module, nn.Conv2d)
        if m.groups == 1 and not (skip and n.startswith(skip))
    ]
    if len(convs) != 1:
        return None
    owner = convs[0].rpartition(".")[0]
    inside = module.get_submodule(owner) if owner else module
    norms = [
        n
        for n, _ in _children(inside, nn.LayerNorm)
        if not (skip and f"{owner}.{n}".startswith(skip))
    ]
    norm = None
    if len(norms) == 1:
        norm = f"{prefix}.{owner}.{norms[0]}" if owner else f"{prefix}.{norms[0]}"
    return f"{prefix}.{convs[0]}", norm


def _stage_parts(stage: nn.Module, prefix: str) -> Parts | None:
    """The parts of a stage module (one list of blocks, a patch convolution outside it, a
    LayerNorm child last: the final norm), or None."""
    lists = [(n, m) for n, m in stage.named_children() if isinstance(m, nn.ModuleList)]
    norms = _children(stage, nn.LayerNorm)
    if len(lists) != 1 or not norms or len(lists[0][1]) == 0:
        return None
    blocks = lists[0][0]
    found = _embedding(stage, prefix, skip=blocks + ".")
    if found is None:
        return None
    embed, embed_norm = found
    final = f"{prefix}.{norms[-1][0]}"
    if embed_norm == final:  # the patch convolution's own norm is the only one
        return None
    return embed, embed_norm, f"{prefix}.{blocks}", final, (prefix,)


def _stage_list(name: str, module: nn.Module) -> list[Parts] | None:
    """A ModuleList of stage modules of one class (SegFormer, PVT-v2)."""
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        return None
    if len({type(s) for s in module}) != 1:
        return None
    parts = [_stage_parts(s, f"{name}.{i}" if name else str(i)) for i, s in enumerate(module)]
    return None if any(p is None for p in parts) else parts  # type: ignore[return-value]


def _parallel_lists(name: str, module: nn.Module) -> list[Parts] | None:
    """Three ModuleLists of one length in one module (GLPN's encoder): patch embeddings (one
    patch conv each), lists of blocks, and final LayerNorms."""
    lists = [(n, m) for n, m in module.named_children() if isinstance(m, nn.ModuleList) and m]
    nested = [(n, m) for n, m in lists if all(isinstance(b, nn.ModuleList) and b for b in m)]
    finals = [(n, m) for n, m in lists if all(type(x) is nn.LayerNorm for x in m)]
    if len(nested) != 1 or len(finals) != 1:
        return None
    (b_name, b_list), (n_name, n_list) = nested[0], finals[0]
    prefix = f"{name}." if name else ""
    embeds = []
    for e_name, e_list in lists:
        if len(e_list) != len(b_list) or e_name in (b_name, n_name):
            continue
        found = [_embedding(e, f"{prefix}{e_name}.{i}") for i, e in enumerate(e_list)]
        if all(f is not None for f in found):
            embeds.append((e_name, found))
    if len(embeds) != 1 or len(n_list) != len(b_list):
        return None
    e_name, found = embeds[0]
    return [
        (
            conv,
            norm,
            f"{prefix}{b_name}.{i}",
            f"{prefix}{n_name}.{i}",
            (f"{prefix}{e_name}.{i}", f"{prefix}{b_name}.{i}", f"{prefix}{n_name}.{i}"),
        )
        for i, (conv, norm) in enumerate(found)  # type: ignore[misc]
    ]


def find_hierarchy(model: nn.Module) -> tuple[str, list[Parts]] | None:
    """(the module holding them, the parts of every stage) of the first list of stages in
    ``model``: a ModuleList of stage modules, each with a patch convolution, one list of
    blocks and a final LayerNorm, or three parallel ModuleLists of patch embeddings, block
    lists and final LayerNorms; None when there is none."""
    for name, module in model.named_modules():
        found = _stage_list(name, module) or _parallel_lists(name, module)
        if found:
            return name, found
    return None


def hierarchy(model: nn.Module) -> Hierarchy:
    """The :class:`Hierarchy` of ``model``; MorphError naming the part not understood."""
    found = find_hierarchy(model)
    if found is None:
        raise MorphError(
            f"{type(model).__name__} has no list of stages (patch convolution, blocks, "
            "LayerNorm); refused"
        )
    path, parts = found
    out = []
    for s, (embed, embed_norm, blocks_name, norm, roots) in enumerate(parts):
        width = model.get_submodule(embed).out_channels
        blocks = model.get_submodule(blocks_name)
        family, dwconv = _family(blocks, blocks_name, width)
        heads = tuple(
            _block_heads(family, block, f"{blocks_name}.{i}", width)
            for i, block in enumerate(blocks)
        )
        layout = Layout(
            family=family,
            owner="",
            blocks=heads,
            d_model=width,
            norm_kind="layer",
            head=None,
            tied=False,
            config=getattr(model, "config", None),
        )
        out.append(Stage(s, embed, embed_norm, blocks_name, norm, roots, width, layout, dwconv))
    for a, b in itertools.pairwise(out):
        conv = model.get_submodule(b.embed)
        if conv.in_channels != a.width:
            raise MorphError(
                f"{b.embed!r} reads {conv.in_channels} channels, not stage {a.index}'s width "
                f"{a.width}: the stages are not chained; refused"
            )
    return Hierarchy(path, tuple(out), getattr(model, "config", None))


def _family(blocks: nn.ModuleList, where: str, width: int) -> tuple[Family, str]:
    """The block layout shared by every block of ``blocks`` (relative names) and the relative
    name of its Mix-FFN's depthwise convolution; MorphError naming what is not understood."""
    first = blocks[0]
    for i, block in enumerate(blocks):
        if type(block) is not type(first):
            raise MorphError(
                f"'{where}.{i}' is {type_label(block)}, block 0's is {type_label(first)}: every "
                "block of a stage must share one layout; refused"
            )
    norms = [n for n, _ in _children(first, nn.LayerNorm)]
    if len(norms) != 2:
        raise MorphError(
            f"'{where}.0' holds {len(norms)} LayerNorms as children, not two (before the "
            "attention and before the feed-forward): not a pre-LN block; refused"
        )
    parts = [(n, m) for n, m in first.named_children() if _leaves(m, nn.Linear)]
    if len(parts) != 2:
        raise MorphError(
            f"'{where}.0' has {len(parts)} children holding Linear layers, not two (attention "
            "and feed-forward); refused"
        )
    (attn_name, attn), (ffn_name, ffn) = parts
    linears = _leaves(attn, nn.Linear)
    if len(linears) != 4:
        raise MorphError(
            f"'{where}.0.{attn_name}' holds {len(linears)} Linear layers, not four (query, key, "
            "value, output); refused"
        )
    q, k, v, o = (f"{attn_name}.{n}" for n, _ in linears)
    attention = _common_parent((q, k, v))
    mlp = _leaves(ffn, nn.Linear)
    convs = _leaves(ffn, nn.Conv2d)
    if len(mlp) != 2 or len(convs) != 1:
        raise MorphError(
            f"'{where}.0.{ffn_name}' is not a Mix-FFN (two Linear layers around one depthwise "
            f"Conv2d): it holds {len(mlp)} Linear and {len(convs)} Conv2d layers; refused"
        )
    fc1, fc2 = (f"{ffn_name}.{n}" for n, _ in mlp)
    dwconv = f"{ffn_name}.{convs[0][0]}"
    for i, block in enumerate(blocks):
        _check_block(block, f"{where}.{i}", (q, k, v, o, fc1, fc2), dwconv, width)
    family = Family(
        "hierarchical",
        blocks="",
        attention=attention,
        qkv=(q, k, v),
        o=o,
        ffn_in=(fc1,),
        ffn_out=fc2,
        norms=(norms[0], norms[1]),
        writers=(),
        final_norm=None,
        derived_head_dim=True,
    )
    return family, dwconv


def _common_parent(names: tuple[str, ...]) -> str:
    """The innermost module holding every one of ``names`` (relative dotted names)."""
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _check_block(
    block: nn.Module, where: str, linears: tuple[str, ...], dwconv: str, width: int
) -> None:
    """The block's projections have the shapes of a width-``width`` block: q, k, v read d_s
    and write the same size, o reads it and writes d_s, fc1 d_s → m, the depthwise conv m
    channels in m groups, fc2 m → d_s."""
    q, k, v, o, fc1, fc2 = (block.get_submodule(n) for n in linears)
    conv = block.get_submodule(dwconv)
    inner = q.out_features
    shapes_ok = (
        all(m.in_features == width and m.out_features == inner for m in (q, k, v))
        and (o.in_features, o.out_features) == (inner, width)
        and fc1.in_features == width
        and fc2.out_features == width
        and fc2.in_features == fc1.out_features
    )
    if not shapes_ok:
        raise MorphError(
            f"{where!r}: the attention and feed-forward projections do not have the shapes of "
            f"a block of width {width}; refused"
        )
    m = fc1.out_features
    if not (conv.in_channels == conv.out_channels == conv.groups == m):
        raise MorphError(
            f"'{where}.{dwconv}' is not a depthwise convolution of the {m} hidden channels "
            f"(in {conv.in_channels}, out {conv.out_channels}, groups {conv.groups}); refused"
        )
    for name in (*linears, dwconv):
        layer = block.get_submodule(name)
        if type(layer) not in (nn.Linear, nn.Conv2d):
            raise MorphError(f"'{where}.{name}' is {type_label(layer)}; refused")


def _block_heads(family: Family, block: nn.Module, where: str, width: int) -> Block:
    """The block's attention geometry: head_dim from the attention module's ``head_dim`` or
    ``attention_head_size``, heads = query rows / head_dim."""
    attention = block.get_submodule(family.attention)
    hd = next(
        (
            int(getattr(attention, a))
            for a in ("head_dim", "attention_head_size")
            if isinstance(getattr(attention, a, None), int)
        ),
        None,
    )
    rows = block.get_submodule(family.qkv[0]).out_features
    if hd is None or hd <= 0 or rows % hd:
        raise MorphError(
            f"'{where}.{family.attention}' ({type(attention).__name__}) records no head size "
            "(head_dim or attention_head_size) dividing its query rows; refused"
        )
    return Block(where, rows // hd, rows // hd, hd)
