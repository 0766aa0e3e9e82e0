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
    """One stage: the qualified names of its ``embed`` (patch Conv2d), its ``blocks``
    (ModuleList) and its final ``norm``; its stream ``width`` d_s and its ``layout`` (the
    :class:`~.transformer_layout.Layout` of its blocks, relative names in ``layout.family``)."""

    index: int
    embed: str
    blocks: str
    norm: str
    width: int
    layout: Layout
    dwconv: str

    @property
    def depth(self) -> int:
        return len(self.layout.blocks)


@dataclass(frozen=True)
class Hierarchy:
    """A recognised hierarchical transformer: its ``stages`` (qualified name ``path`` of their
    ModuleList) and the model ``config`` (None for a plain module)."""

    path: str
    stages: tuple[Stage, ...]
    config: object | None

    def global_blocks(self) -> list[tuple[int, int]]:
        """(stage, block within the stage) of every block, stage 0's first."""
        return [(s.index, i) for s in self.stages for i in range(s.depth)]


def _children(module: nn.Module, kind: type) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_children() if isinstance(m, kind)]


def _leaves(module: nn.Module, kind: type) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, kind)]


def _stage_parts(stage: nn.Module) -> tuple[str, str, str] | None:
    """(patch conv, block list, final norm) relative names of a stage, or None."""
    lists = [(n, m) for n, m in stage.named_children() if isinstance(m, nn.ModuleList)]
    norms = _children(stage, nn.LayerNorm)
    if len(lists) != 1 or not norms or len(lists[0][1]) == 0:
        return None
    blocks_name = lists[0][0]
    convs = [
        (n, m)
        for n, m in _leaves(stage, nn.Conv2d)
        if not n.startswith(blocks_name + ".") and m.groups == 1
    ]
    if len(convs) != 1:
        return None
    return convs[0][0], blocks_name, norms[-1][0]


def find_hierarchy(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(name, ModuleList) of the first list of stages of one class in ``model``, each with a
    patch convolution, one list of blocks and a final LayerNorm; None when there is none."""
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(s) for s in module}) != 1:
            continue
        if all(_stage_parts(s) is not None for s in module):
            return name, module
    return None


def hierarchy(model: nn.Module) -> Hierarchy:
    """The :class:`Hierarchy` of ``model``; MorphError naming the part not understood."""
    found = find_hierarchy(model)
    if found is None:
        raise MorphError(
            f"{type(model).__name__} has no list of stages (patch convolution, blocks, "
            "LayerNorm); refused"
        )
    path, stages = found
    out = []
    for s, stage in enumerate(stages):
        embed, blocks_rel, norm = _stage_parts(stage)  # type: ignore[misc]
        prefix = f"{path}.{s}"
        conv = stage.get_submodule(embed)
        width = conv.out_channels
        blocks = stage.get_submodule(blocks_rel)
        family, dwconv = _family(blocks, f"{prefix}.{blocks_rel}", width)
        heads = []
        for i, block in enumerate(blocks):
            where = f"{prefix}.{blocks_rel}.{i}"
            heads.append(_block_heads(family, block, where, width))
        layout = Layout(
            family=family,
            owner="",
            blocks=tuple(heads),
            d_model=width,
            norm_kind="layer",
            head=None,
            tied=False,
            config=getattr(model, "config", None),
        )
        out.append(
            Stage(
                s,
                f"{prefix}.{embed}",
                f"{prefix}.{blocks_rel}",
                f"{prefix}.{norm}",
                width,
                layout,
                dwconv,
            )
        )
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
        attention=attn_name,
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
