"""A wider stream for one stage of a ConvNeXt.

Stage s's stream x (width d, NCHW) becomes x̃ = [x; …; x] (k copies, D' = k·d; a LayerNorm
writes or reads the stream at every stage boundary, and no width that is not a multiple of d
keeps its mean and variance):

- the writer of the stream gets its output channels k times: the stem's patch convolution
  and its LayerNorm (stage 0), else the downsampling convolution into the stage;
- each block: the depthwise convolution's channels (kernels, biases; k·d groups), the
  LayerNorm's gain and bias (LN of copies is the copies of LN: mean and variance unchanged, eps
  too) and the layer scale γ k times; the hidden units become k copies (the MLP ratio is
  kept): pw1's row block a holds k column blocks P_aj = W₁/k + R_aj − mean_j(R_aj) summing to
  W₁ (so every copy of the hidden units computes W₁·LN(x) + b₁) and its bias k times, a GRN's
  parameters k times (the mean over the hidden channels of copies is unchanged), pw2's row
  block c holds k column blocks summing to W₂ and its bias k times;
- the readers of the stage's output: the LayerNorm after it (the next stage's downsampling
  norm, or the head's norm after pooling) gets its gain and bias k times, and the layer after
  that (the downsampling convolution, or the classifier) reads k column blocks summing to its
  weight (:func:`.hier_width._split_columns`).

The writer and readers are found in registration order around the stage's list of blocks:
before stage 0 […, conv] or […, conv, LayerNorm] (the stem's last layers; what comes before
them only feeds the conv), between two stages [LayerNorm, conv],
after the last [LayerNorm, Linear or conv, …]; anything else is refused by name (a model whose
output is the stream itself, such as a bare backbone, has no reader after the last stage's
norm). The config's ``hidden_sizes[s]`` follows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from .convnext_edit import pointwise, put_pointwise, tile_channels
from .convnext_layout import ConvBlock, ConvNet, ConvStage
from .errors import MorphError
from .hier_width import _split_columns, _tile_all
from .kinds import type_label
from .pipeline import Request, run
from .report import MorphReport, Outcome, state_bytes
from .transformer import _Editor, _read, check_bool

__all__ = ["grow_stage_width"]


def _outside(model: nn.Module, net: ConvNet) -> list[tuple[str, int | str]]:
    """In registration order: ("stage", s) for the list of blocks of each stage, ("layer",
    name) for every other module holding parameters of its own."""
    lists = {st.blocks: st.index for st in net.stages}
    events: list[tuple[str, int | str]] = []
    inside: str | None = None
    for name, module in model.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        if name in lists:
            events.append(("stage", lists[name]))
            inside = name + "."
        elif any(True for _ in module.parameters(recurse=False)):
            events.append(("layer", name))
    return events


def _around(model: nn.Module, net: ConvNet, s: int) -> tuple[list[str], list[str]]:
    """The modules holding parameters registered (before, after) stage ``s``'s blocks, up to
    the neighbouring stages' blocks."""
    events = _outside(model, net)
    at = events.index(("stage", s))
    before: list[str] = []
    for kind, item in reversed(events[:at]):
        if kind == "stage":
            break
        before.insert(0, str(item))
    after: list[str] = []
    for kind, item in events[at + 1 :]:
        if kind == "stage":
            break
        after.append(str(item))
    return before, after


def _is_norm(module: nn.Module, d: int) -> bool:
    return isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (d,)


def _is_conv(module: nn.Module) -> bool:
    return type(module) is nn.Conv2d and module.groups == 1


def _boundary(model: nn.Module, net: ConvNet, st: ConvStage) -> tuple[list[str], str, str]:
    """(the stream's writers, the norm reading the stage's output, the layer reading that
    norm) of stage ``st``; MorphError naming what is not understood (module docstring)."""
    d = st.width
    before, after = _around(model, net, st.index)
    mods = [model.get_submodule(n) for n in before]
    if st.index == 0:
        if len(mods) >= 2 and _is_conv(mods[-2]) and _is_norm(mods[-1], d):
            writers = before[-2:]
        elif mods and _is_conv(mods[-1]):
            writers = before[-1:]
        else:
            raise MorphError(
                f"stage 0: the layers before {st.blocks!r} ({before}) do not end in a "
                f"convolution to {d} channels, optionally followed by a LayerNorm; refused"
            )
        if model.get_submodule(writers[0]).out_channels != d:
            raise MorphError(f"{writers[0]!r} does not write the {d} channels of stage 0; refused")
    else:
        if not (mods and _is_conv(mods[-1]) and mods[-1].out_channels == d):
            raise MorphError(
                f"stage {st.index}: the layer before {st.blocks!r} is not a convolution to its "
                f"{d} channels ({before}); refused"
            )
        writers = [before[-1]]
    last = st.index == len(net.stages) - 1
    if not after or not _is_norm(model.get_submodule(after[0]), d):
        raise MorphError(
            f"stage {st.index}: no LayerNorm over its {d} channels follows {st.blocks!r} "
            f"({after[:2]}): what reads its stream is not understood; refused"
        )
    if len(after) < 2:
        raise MorphError(
            f"stage {st.index}: nothing but {after[0]!r} reads its stream: the model's output "
            "carries it (a backbone's feature map would change shape); refused"
        )
    reader = model.get_submodule(after[1])
    in_size = reader.in_features if type(reader) is nn.Linear else getattr(reader, "in_channels", 0)
    known = type(reader) is nn.Linear or _is_conv(reader)
    if not known or in_size != d or (not last and len(after) != 2):
        raise MorphError(
            f"stage {st.index}: {after[1]!r} ({type_label(reader)}) after the norm {after[0]!r} "
            f"is not a Linear or ungrouped convolution reading its {d} channels; refused"
        )
    return writers, after[0], after[1]


def _block_width(edit: _Editor, b: ConvBlock, copies: int, noise: float) -> None:
    """Block ``b`` reads and writes k copies of its stream (module docstring)."""
    d, m = b.width, b.hidden
    _tile_all(edit, b.name(b.dwconv), copies)
    edit.child.get_submodule(b.name(b.dwconv)).groups = copies * d
    _tile_all(edit, b.name(b.norm), copies)
    hid, chan = np.tile(np.arange(m), copies), np.tile(np.arange(d), copies)
    w, bias = pointwise(edit, b.name(b.pw1))
    w1 = torch.cat([_read(edit, w, copies, 0, noise) for _ in range(copies)])
    put_pointwise(edit, b.name(b.pw1), w1, None if bias is None else bias.repeat(copies), hid, chan)
    if b.grn is not None:
        for pname, _ in list(edit.child.get_submodule(b.name(b.grn)).named_parameters()):
            tile_channels(edit, f"{b.name(b.grn)}.{pname}", m, copies)
    w, bias = pointwise(edit, b.name(b.pw2))
    w2 = torch.cat([_read(edit, w, copies, 0, noise) for _ in range(copies)])
    put_pointwise(edit, b.name(b.pw2), w2, None if bias is None else bias.repeat(copies), chan, hid)
    if b.scale is not None:
        tile_channels(edit, b.name(b.scale), d, copies)


def grow_stage_width(
    model: nn.Module,
    net: ConvNet,
    d_model: int,
    *,
    stage: object,
    noise: float,
    probe: tuple[torch.Tensor, ...],
    tol: float | str | None,
    seed: int | np.random.Generator | None,
    inplace: bool,
) -> tuple[nn.Module, MorphReport]:
    """Stage ``stage`` (default: the last) of the ConvNeXt ``model`` grows its stream to
    ``d_model``, a multiple of its width (module docstring)."""
    n = len(net.stages)
    s = n - 1 if stage is None else v.as_int(stage, "stage", f"a stage index in [0, {n})")
    if not 0 <= s < n:
        raise ValueError(f"stage must be a stage index in [0, {n}), got {s}")
    st = net.stages[s]
    d = st.width
    d_model = v.positive_int(d_model, "d_model")
    if d_model <= d:
        raise ValueError(f"d_model={d_model} must exceed stage {s}'s width {d}")
    noise = v.real_number(noise, "noise", low=0.0)
    check_bool(inplace, "inplace")
    writers, exit_norm, reader = _boundary(model, net, st)
    if d_model % d:
        raise MorphError(
            f"d_model={d_model} is not a multiple of stage {s}'s width {d}: the LayerNorm "
            f"{exit_norm!r} reads the stream, whose mean and variance only copies keep; use a "
            "multiple of the width"
        )
    copies = d_model // d
    blocks = st.members
    parts = [b.name(r) for b in blocks for r in (b.dwconv, b.norm, b.pw1, b.pw2)]
    parts += [b.name(b.grn) for b in blocks if b.grn is not None]
    edits = tuple(dict.fromkeys([*writers, *parts, exit_norm, reader]))
    roots = (st.blocks, *writers, exit_norm, reader)
    new_bytes = sum(state_bytes(model.get_submodule(r)) for r in roots) * (copies * copies + 1)
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        for name in (*writers, exit_norm):
            _tile_all(edit, name, copies)
        _split_columns(edit, reader, copies, noise)
        for b in blocks:
            _block_width(edit, b, copies, noise)
        outcome = edit.outcome(
            [f"stage {s}: {copies} copies of the stream; each block's hidden units {copies}×"]
        )
        config = getattr(child, "config", None)
        sizes = getattr(config, "hidden_sizes", None)
        if isinstance(sizes, (list, tuple)) and len(sizes) == n:
            config.hidden_sizes = [d_model if k == s else w for k, w in enumerate(sizes)]
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
            copies=roots,
            regions=(),
            new_bytes=new_bytes,
            replaced=edits,
        )
    )
