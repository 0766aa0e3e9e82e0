"""The transformer operations on ConvNeXt models (:mod:`.convnext_layout`: Hugging Face
ConvNeXt and ConvNeXt V2, torchvision and timm ConvNeXts); the public operations
(:mod:`.routing`) send these models here.

Blocks are addressed as in :mod:`.hierarchical`: by ``layers`` (global block indices, stage 0's
first) or by ``stage`` (a stage index or a list of them); at most one of the two. A block is
x + γ ⊙ pw2(φ(pw1(LN(dwconv(x))))) with hidden size m:

- :func:`grow_ffn` — m grows to m': new pw1 rows random and shared inside each cancelling
  set, new pw2 columns C·(1, −1) or C·(1, 1, −2) (zero with ``method="zero"``), so the new
  units add exactly zero. A block with a global response norm (ConvNeXt V2: N = G/(mean_c G +
  ε) averages over the hidden channels, so new units change it) grows to a multiple k·m only:
  its hidden units k copies (pw1 rows, biases and GRN parameters repeated; mean_c G unchanged),
  pw2's columns k blocks W/k + R_j − mean(R) summing to W.
- :func:`add_block` — a new block copied from its neighbour (depthwise conv, norm, γ), its
  hidden units all new in cancelling sets (GRN parameters shared inside a set, so a set's
  units stay equal), pw2's bias zero: the branch adds exactly zero; ``"zero"``: pw2 zero.
- :func:`grow_width` — one stage's stream becomes k copies of itself (:mod:`.convnext_width`).
- :func:`add_heads` — refused by name: a ConvNeXt has no attention.

Hugging Face configs follow where they can (``depths``, ``hidden_sizes``); ConvNeXt's config
fixes the MLP at 4·d, so a grown hidden size marks the config (:func:`.hf_config.sync_config`)
and :func:`~.hf_load.load_grown` rebuilds the child.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from .convnext_edit import gather_channels, pointwise, put_pointwise
from .convnext_layout import ConvBlock, ConvNet, convnet, find_stages
from .convnext_width import grow_stage_width
from .errors import MorphError
from .hierarchical import _chosen, _place
from .pipeline import run_on_model
from .report import MorphReport, Outcome, ParamSource, block_params, state_bytes
from .streamed import Region
from .transformer import _cancel_sets, _edit_bytes, _Editor, _itemsize, _method, _read, _std
from .transformer_layout import describe

__all__ = ["add_block", "add_heads", "grow_ffn", "grow_width", "probe_images", "recognise"]

#: Side of the square probe images (the last of four stages at strides 4·2·2·2 sees 2×2).
PROBE_SIZE = 64
#: Scale of the random parts R_j of the column blocks a GRN block's pw2 is split into,
#: relative to the weights' standard deviation.
SPLIT_NOISE = 0.01


def recognise(model: nn.Module) -> ConvNet | None:
    """The model's :class:`~.convnext_layout.ConvNet`; None for a model without a list of
    ConvNeXt blocks, or whose blocks are not understood while
    :func:`.transformer_layout.describe` knows it (the transformer operations then apply);
    else the MorphError naming the part not understood."""
    if not find_stages(model):
        return None
    try:
        return convnet(model)
    except MorphError as exc:
        try:
            describe(model)
        except MorphError:
            raise exc from None
        return None


def probe_images(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """Images (2, C, 64, 64): C the config's ``num_channels``, else the first Conv2d's input
    channels."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    channels = int(getattr(getattr(model, "config", None), "num_channels", conv.in_channels))
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, channels, PROBE_SIZE, PROBE_SIZE, generator=gen)
    return (image.to(conv.weight.device, conv.weight.dtype),)


def _convnet(model: nn.Module) -> ConvNet:
    net = recognise(model) if isinstance(model, nn.Module) else None
    if net is None:
        raise MorphError(f"{type(model).__name__} is not a ConvNeXt (no list of ConvNeXt blocks)")
    return net


def _run(
    operation: str,
    model: nn.Module,
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
        lambda: probe_images(model),
        **request,
    )


# ---------------------------------------------------------------------------------------------
# Feed-forward


def _cancelling_units(
    edit: _Editor, block: ConvBlock, hidden: int, width: int, method: str, fresh: bool
) -> None:
    """pw1 rows and pw2 columns of ``block`` grow from ``hidden`` to ``width`` units, the new
    ones in cancelling sets (``fresh``: every unit new, pw2's bias zero; GRN parameters shared
    inside each set)."""
    parent = 0 if fresh else hidden
    src = np.concatenate([np.arange(parent), -np.ones(width - parent, int)])
    sets = _cancel_sets(range(parent, width))
    w, b = pointwise(edit, block.name(block.pw1))
    new_w = w.new_zeros((width, w.shape[1]))
    new_w[:parent] = w[:parent]
    edit.set_rows(new_w, sets, _std(w))
    new_b = None
    if b is not None:
        new_b = b.new_zeros(width)
        new_b[:parent] = b[:parent]
    put_pointwise(edit, block.name(block.pw1), new_w, new_b, src, None)
    if block.grn is not None:
        shared = np.concatenate([np.arange(parent), [u[0] for u in sets for _ in u]])
        grn = edit.child.get_submodule(block.name(block.grn))
        for pname, _ in list(grn.named_parameters(recurse=False)):
            gather_channels(edit, f"{block.name(block.grn)}.{pname}", shared, hidden)
    w, b = pointwise(edit, block.name(block.pw2))
    new_w = w.new_zeros((w.shape[0], width))
    new_w[:, :parent] = w[:, :parent]
    edit.set_columns(new_w, sets, _std(w), method)
    new_b = torch.zeros_like(b) if fresh and b is not None else None
    put_pointwise(edit, block.name(block.pw2), new_w, new_b, None, src)


def _copied_units(edit: _Editor, block: ConvBlock, copies: int, noise: float) -> None:
    """The hidden units of ``block`` become ``copies`` copies: pw1 rows, biases and GRN
    parameters repeated, pw2's columns k blocks summing to its weight."""
    m = block.hidden
    index = np.tile(np.arange(m), copies)
    w, b = pointwise(edit, block.name(block.pw1))
    put_pointwise(
        edit,
        block.name(block.pw1),
        w.repeat(copies, 1),
        None if b is None else b.repeat(copies),
        index,
        None,
    )
    if block.grn is not None:
        grn = edit.child.get_submodule(block.name(block.grn))
        for pname, _ in list(grn.named_parameters(recurse=False)):
            gather_channels(edit, f"{block.name(block.grn)}.{pname}", index, m)
    w, _ = pointwise(edit, block.name(block.pw2))
    put_pointwise(edit, block.name(block.pw2), _read(edit, w, copies, 0, noise), None, None, index)


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
    """The MLP hidden size of the chosen ConvNeXt blocks grows to ``width``: the blocks
    ``layers`` (global indices) or of the stages ``stage`` (default every block; ``width``
    must exceed each one's hidden size, and be a multiple of it in a block with a global
    response norm); module docstring."""
    net = _convnet(model)
    if shared_width is not None:
        raise ValueError(
            f"shared_width={shared_width!r}: {type(model).__name__} has no mixture-of-experts "
            "feed-forward (no shared expert); leave it None"
        )
    method = _method(method)
    chosen = _chosen(net, layers, stage)
    width = v.positive_int(width, "width")
    blocks = [net.stages[s].members[i] for s, i in chosen]
    most = max(b.hidden for b in blocks)
    if width <= most:
        raise ValueError(
            f"width={width} must exceed the MLP hidden size {most} of every chosen block"
        )
    for b in blocks:
        if b.grn is not None and width % b.hidden:
            raise MorphError(
                f"width={width} is not a multiple of the hidden size {b.hidden} of "
                f"{b.prefix!r}: its global response norm {b.name(b.grn)!r} divides by the mean "
                "over the hidden channels, which new units would change (copies keep it); use "
                "a multiple"
            )
    edits = tuple(b.name(r) for b in blocks for r in (b.pw1, b.pw2))
    edits += tuple(b.name(b.grn) for b in blocks if b.grn is not None)
    grown = sum((width - b.hidden) * (2 * b.width + 3) for b in blocks)
    new_bytes = grown * _itemsize(model) + _edit_bytes(model, edits) * width // most
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        notes = []
        for b in blocks:
            if b.grn is None:
                _cancelling_units(edit, b, b.hidden, width, method, False)
            else:
                noise = SPLIT_NOISE if method == "netmorph" else 0.0
                _copied_units(edit, b, width // b.hidden, noise)
        if any(b.grn is not None for b in blocks):
            notes.append("blocks with a global response norm: hidden units copied")
        if 1 in {width - b.hidden for b in blocks if b.grn is None} and method == "netmorph":
            notes.append("one new unit has no partner: its output column is zero")
        return edit.outcome(notes)

    return _run(
        "grow_ffn",
        model,
        tuple(b.name(b.pw2) for b in blocks),
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


def add_heads(model: nn.Module, heads: int, **_: object) -> tuple[nn.Module, MorphReport]:
    """Refused: a ConvNeXt has no attention heads (MorphError naming its blocks)."""
    net = _convnet(model)
    block = net.stages[0].members[0]
    raise MorphError(
        f"heads={heads!r}: {type(model).__name__} is a ConvNeXt: its blocks ({block.prefix!r}, "
        "depthwise conv and pointwise MLP) have no attention heads; grow its MLP (grow_ffn), "
        "stream (grow_width) or depth (add_block) instead"
    )


# ---------------------------------------------------------------------------------------------
# Depth


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
    """A new ConvNeXt block inserted before block ``at`` (a global block index, or with
    ``stage`` an index in [0, depth] of that stage; module docstring): its depthwise conv,
    norm and layer scale copied from its neighbour, its hidden units new in cancelling sets,
    so it adds exactly zero."""
    net = _convnet(model)
    method = _method(method)
    s, at = _place(net, at, stage)
    st = net.stages[s]
    n = st.depth
    template = st.members[min(at, n - 1)]
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw
    prefix = st.blocks
    edits = (template.name(template.pw1), template.name(template.pw2))
    new_bytes = state_bytes(model.get_submodule(template.prefix)) + _edit_bytes(model, edits)
    if at < n:
        region = Region(f"{prefix}.{at}", f"{prefix}.{at}", identity=True)
    else:
        region = Region(f"{prefix}.{n - 1}", f"{prefix}.{n}", identity=True, after=True)

    def build(child: nn.Module) -> Outcome:
        blocks = child.get_submodule(prefix)
        blocks.insert(at, copy.deepcopy(blocks[min(at, n - 1)]))
        edit = _Editor(child, seed)
        new = ConvBlock(
            f"{prefix}.{at}",
            template.dwconv,
            template.norm,
            template.pw1,
            template.pw2,
            template.grn,
            template.scale,
            template.width,
            template.hidden,
        )
        _cancelling_units(edit, new, template.hidden, template.hidden, method, True)
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
        depths = getattr(config, "depths", None)
        if isinstance(depths, (list, tuple)) and len(depths) == len(net.stages):
            config.depths = [d + (k == s) for k, d in enumerate(depths)]
        notes = []
        if method == "netmorph" and template.hidden == 1:
            notes.append("the one hidden unit has no partner: its output column is zero")
        outcome = edit.outcome(notes)
        return outcome.count_new(block_params(child, f"{prefix}.{at}"))

    return _run(
        "add_block",
        model,
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
    """The stream of ConvNeXt stage ``stage`` (default the last, which the head reads) grows
    to ``d_model``, a multiple k·d_s of its width (:mod:`.convnext_width`)."""
    net = _convnet(model)
    _method(method)
    return grow_stage_width(
        model,
        net,
        d_model,
        stage=stage,
        noise=noise,
        probe=probe_images(model) if probe is None else probe,
        tol=tol,
        seed=seed,
        inplace=inplace,
    )
