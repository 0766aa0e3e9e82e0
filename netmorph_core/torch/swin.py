"""The transformer operations on Swin transformers (Hugging Face Swin/Swin-v2, torchvision,
timm; layout: :mod:`.swin_layout`); the public operations (:mod:`.routing`) send these models
here.

Blocks are addressed by ``layers``, global block indices in stage order (stage 0's first), or
by ``stage``, a stage index or list of them; give at most one of the two.

- :func:`grow_ffn` — fc1 (d_s → m) → φ → fc2 (m → d_s) grows to m' hidden units: new fc1 rows
  random and shared inside each cancelling set, new fc2 columns C·(1, −1) or C·(1, 1, −2).
  Default blocks: those whose hidden size is below ``width`` (stages have their own sizes).
- :func:`add_heads` — more heads of the same head_dim; the heads of a cancelling set share
  their q, k, v rows and their position bias (v1: one new column of the relative position bias
  table per set; v2: one new row of the bias MLP's last layer and one logit scale τ per set),
  so their outputs are equal and their output columns cancel.
- :func:`add_block` — a new block inserted at a position of a stage, with the window shift
  that position implies (copied from a block of the same parity); v1 (pre-norm): new heads and
  MLP units in cancelling sets, zero output biases; v2 (res-post-norm): a copy of its neighbour
  whose branch norms have zero gain and bias, so n(·) = 0. The blocks after it keep their own
  shifts; a config (``depths``) that cannot describe that is marked by
  :func:`.hf_config.sync_config` and :func:`~.hf_load.load_grown` rebuilds the child.
- :func:`grow_width` — one stage's stream (``stage``, default the last) becomes k copies of
  itself, its heads k-fold (:mod:`.swin_width`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from .errors import MorphError
from .hierarchical import _chosen, _full_stages, _place
from .pipeline import run_on_model
from .report import MorphReport, Outcome, ParamSource, block_params, state_bytes
from .streamed import Region
from .swin_edit import by_attribute, position_bias
from .swin_layout import Swin, SwinStage, find_swin, swin_layout
from .swin_width import grow_swin_width
from .transformer import (
    _attention_units,
    _cancel_sets,
    _edit_bytes,
    _Editor,
    _ffn_units,
    _itemsize,
    _method,
)
from .transformer_layout import Block

__all__ = ["add_block", "add_heads", "grow_ffn", "grow_width", "probe_images", "recognise"]

#: Side of the square probe images where neither the config nor the patch embedding says.
PROBE_SIZE = 64


def recognise(model: nn.Module) -> Swin | None:
    """The model's :class:`~.swin_layout.Swin`; None for a model without window-attention
    blocks; MorphError naming the part of one that is not understood."""
    if not isinstance(model, nn.Module) or not find_swin(model):
        return None
    return swin_layout(model)


def _swin(model: nn.Module) -> Swin:
    found = recognise(model)
    if found is None:
        raise MorphError(f"{type(model).__name__} is not a Swin transformer (no window attention)")
    return found


def probe_images(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """Images (2, C, S, S): C the first Conv2d's input channels, S the config's
    ``image_size`` or the patch embedding's ``img_size`` (else 64)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise MorphError(
            f"{type(model).__name__} has no Conv2d patch embedding to size default images by; "
            "pass probe=(images,)"
        )
    side = getattr(getattr(model, "config", None), "image_size", None)
    if side is None:
        side = next(
            (m.img_size for m in model.modules() if isinstance(getattr(m, "img_size", 0), tuple)),
            PROBE_SIZE,
        )
    h, w = (side, side) if isinstance(side, int) else tuple(side)
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, conv.in_channels, h, w, generator=gen)
    return (image.to(conv.weight.device, conv.weight.dtype),)


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


def _check_head_size(model: nn.Module, stage: SwinStage, block: Block) -> None:
    """An attention that passes its projections' weights to a functional (torchvision's)
    must record its head size (``head_dim`` or ``attention_head_size``): torchvision's derives
    it as d_s / heads, so more heads would change it."""
    fam = stage.layout.family
    name = block.name(fam.attention)
    attention = model.get_submodule(name)
    recorded = any(
        isinstance(getattr(attention, a, None), int) for a in ("head_dim", "attention_head_size")
    )
    if not recorded and not by_attribute(model, (block.name(fam.qkv[0]),)):
        raise MorphError(
            f"add_heads: no exact child — {name!r} ({type(attention).__name__}) records no head "
            "size and passes its projections' weights to a functional, which derives head_dim "
            f"from the stream width (torchvision's: {stage.width} / {block.heads}) or adds "
            "biases of its own: heads of the same head_dim do not fit it; ask for grow_ffn or "
            "add_block instead"
        )


def _block(sw: Swin, s: int, i: int) -> Block:
    return sw.stages[s].layout.blocks[i]


def _hidden(model: nn.Module, stage: SwinStage, block: Block) -> int:
    return model.get_submodule(block.name(stage.layout.family.ffn_out)).in_features


# ---------------------------------------------------------------------------------------------
# Feed-forward


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
    """The MLP hidden size of the blocks ``layers`` (global indices) or of the stages
    ``stage`` grows to ``width`` (which must exceed each one's); by default of every block
    whose hidden size is below ``width``. A config's single ``mlp_ratio`` cannot describe
    stages of other widths: it is marked (:func:`.hf_config.sync_config`)."""
    sw = _swin(model)
    if shared_width is not None:
        raise ValueError(
            f"shared_width={shared_width!r}: {type(model).__name__} has no mixture-of-experts "
            "feed-forward (no shared expert); leave it None"
        )
    method = _method(method)
    width = v.positive_int(width, "width")
    chosen = _chosen(sw, layers, stage)  # type: ignore[arg-type]
    hidden = {(s, i): _hidden(model, sw.stages[s], _block(sw, s, i)) for s, i in chosen}
    if layers is None and stage is None:
        chosen = [c for c in chosen if hidden[c] < width]
        if not chosen:
            raise ValueError(
                f"width={width} must exceed the MLP hidden size of some block (the smallest is "
                f"{min(hidden.values())})"
            )
    elif width <= max(hidden[c] for c in chosen):
        raise ValueError(
            f"width={width} must exceed the MLP hidden size {max(hidden[c] for c in chosen)} of "
            "every chosen block"
        )
    blocks = [_block(sw, s, i) for s, i in chosen]
    fam = sw.stages[0].layout.family
    edits = by_attribute(
        model, tuple(b.name(rel) for b in blocks for rel in (*fam.ffn_in, fam.ffn_out))
    )
    grown = sum((width - hidden[c]) * (2 * sw.stages[c[0]].width + 1) for c in chosen)
    smallest = min(hidden[c] for c in chosen)
    new_bytes = grown * _itemsize(model) + _edit_bytes(model, edits) * width // smallest
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        for c, block in zip(chosen, blocks):
            _ffn_units(edit, block, sw.stages[c[0]].layout, hidden[c], width, method)
        notes = []
        left = len(sw.global_blocks()) - len(chosen)
        if left:
            notes.append(f"{left} blocks keep their MLP hidden size (not chosen or ≥ {width})")
        if 1 in {width - hidden[c] for c in chosen} and method == "netmorph":
            notes.append("one new unit has no partner: its output column is zero")
        return edit.outcome(notes)

    return _run(
        "grow_ffn",
        model,
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
    """The blocks ``layers`` (global indices) or of the stages ``stage`` (default every block)
    get ``heads`` heads of their head_dim (``heads`` must exceed each one's count; multi-head
    attention only, so ``kv_heads`` is None or ``heads``). An attention that passes its
    weights to a functional and records no head size (torchvision's) is refused by name."""
    sw = _swin(model)
    method = _method(method)
    chosen = _chosen(sw, layers, stage)  # type: ignore[arg-type]
    heads = v.positive_int(heads, "heads")
    if kv_heads is not None and v.positive_int(kv_heads, "kv_heads") != heads:
        raise MorphError(
            f"kv_heads={kv_heads}: the attention of {type(model).__name__} is multi-head (one "
            "key/value head per query head); leave kv_heads None"
        )
    blocks = [_block(sw, s, i) for s, i in chosen]
    for (s, _), b in zip(chosen, blocks):
        _check_head_size(model, sw.stages[s], b)
    most = max(b.heads for b in blocks)
    if heads <= most:
        raise ValueError(f"heads={heads} must exceed the {most} heads of every chosen block")
    fam = sw.stages[0].layout.family
    edits = tuple(b.name(rel) for b in blocks for rel in (*fam.qkv, fam.o))
    edits += tuple(
        b.name(sw.stages[s].cpb) for (s, _), b in zip(chosen, blocks) if sw.stages[s].cpb
    )
    grown = sum(
        4 * (heads - b.heads) * b.head_dim * sw.stages[s].width for (s, _), b in zip(chosen, blocks)
    )
    new_bytes = grown * _itemsize(model) + _edit_bytes(model, edits) * heads // min(
        b.heads for b in blocks
    )
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        lonely = 0
        for (s, _), b in zip(chosen, blocks):
            st = sw.stages[s]
            lonely += _attention_units(edit, b, st.layout, heads, heads, method)
            position_bias(edit, st, b, b.heads, heads, _cancel_sets(range(b.heads, heads)))
        notes = []
        if lonely and method == "netmorph":
            notes.append(f"{lonely} new heads have no partner: zero output columns")
        full = _full_stages(sw, chosen)  # type: ignore[arg-type]
        if full and getattr(child, "config", None) is not None:
            notes.append(
                f"the config keeps its head counts: the heads of stage(s) {full} are recorded "
                "on their attention modules"
            )
        return edit.outcome(notes)

    return _run(
        "add_heads",
        model,
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


def _template(st: SwinStage, at: int) -> int:
    """The block the new block at ``at`` copies: the nearest one of the same parity (so the
    same window shift); in a one-block stage, block 0 (:func:`_shift_half` then shifts the copy
    at position 1)."""
    same = [j for j in range(st.depth) if j % 2 == at % 2] or [0]
    return min(same, key=lambda j: (abs(j - at), j))


def _shift_half(block: nn.Module, where: str) -> None:
    """The copy of an unshifted block at an odd position gets shifted windows: half its window
    on the module holding ``shift_size`` and ``window_size`` (the block's forward derives its
    mask, and no shift where the grid is not larger than the window); MorphError where the
    block keeps a precomputed mask buffer (timm's ``attn_mask``)."""
    masks = [n for m in block.modules() for n in m._buffers if "mask" in n]  # None ones too
    holder = next((m for m in block.modules() if hasattr(m, "shift_size")), None)
    window = getattr(holder, "window_size", None)
    if masks or holder is None or not isinstance(window, (int, list, tuple)):
        raise MorphError(
            f"{where!r} belongs at an odd position, which the window alternation shifts, and its "
            f"stage has no shifted block to copy (its mask is precomputed: "
            f"{', '.join(masks) or 'no shift_size and window_size'}); add it at an even position"
        )
    half = [w // 2 for w in window] if isinstance(window, (list, tuple)) else window // 2
    holder.shift_size = type(holder.shift_size)(half) if isinstance(half, list) else half


def _drop_paths(child: nn.Module, sw: Swin, depths: list[int]) -> None:
    """Where the Hugging Face encoder builds a stochastic depth module for a block position of
    the new ``depths`` (rate > 0 in linspace(0, drop_path_rate, Σ depths)) and the block there
    has an Identity (the first block, moved), that module at rate 0 instead: the stock model
    of the config then has the same module types, and the block's function is unchanged in
    both modes. The other blocks keep their own rates (recorded as attributes)."""
    config = getattr(child, "config", None)
    rate = getattr(config, "drop_path_rate", None)
    blocks = [b for st in sw.stages for b in child.get_submodule(st.blocks)]
    kinds = {
        type(m)
        for b in blocks
        if isinstance(m := getattr(b, "drop_path", None), nn.Module)
        and not isinstance(m, nn.Identity)
    }
    if not isinstance(rate, float) or len(kinds) != 1:
        return
    kind = kinds.pop()
    rates = [x.item() for x in torch.linspace(0, rate, sum(depths), device="cpu")]
    for block, p in zip(blocks, rates):
        if p > 0.0 and isinstance(getattr(block, "drop_path", None), nn.Identity):
            block.drop_path = kind(0.0).train(block.training)


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
    """A new block inserted before block ``at``: a global block index (the block goes into the
    stage of block ``at``; ``at`` = number of blocks: the end of the last stage) or, with
    ``stage``, an index in [0, depth] of that stage. Its window shift is that of its position
    (copied from the nearest block of the same parity); both of its branches add exactly zero
    (module docstring). MorphError for another model."""
    sw = _swin(model)
    method = _method(method)
    s, at = _place(sw, at, stage)  # type: ignore[arg-type]
    st = sw.stages[s]
    n = st.depth
    j = _template(st, at)
    template = st.layout.blocks[j]
    fam = st.layout.family
    prefix = st.blocks
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw
    holder = model.get_submodule(prefix)
    if not isinstance(holder, nn.ModuleList) and type(holder) is not nn.Sequential:
        raise MorphError(
            f"{prefix!r} is {type(holder).__name__}, a Sequential with its own forward: a block "
            "cannot be inserted into it; refused"
        )
    rels = (*fam.qkv, fam.o, *fam.ffn_in, fam.ffn_out)
    edits = by_attribute(model, tuple(template.name(r) for r in rels))
    new_bytes = state_bytes(model.get_submodule(template.prefix)) + _edit_bytes(model, edits)
    if at < n:
        region = Region(f"{prefix}.{at}", f"{prefix}.{at}", identity=True)
    else:
        region = Region(f"{prefix}.{n - 1}", f"{prefix}.{n}", identity=True, after=True)

    def build(child: nn.Module) -> Outcome:
        blocks = child.get_submodule(prefix)
        new_module = copy.deepcopy(blocks[j])
        if at % 2 and j % 2 == 0:
            _shift_half(new_module, f"{prefix}.{at}")
        if isinstance(blocks, nn.ModuleList):
            blocks.insert(at, new_module)
        else:  # a plain Sequential (checked below): rebuilt in the new order
            members = list(blocks)
            members.insert(at, new_module)
            child.set_submodule(prefix, nn.Sequential(*members))
        edit = _Editor(child, seed)
        new = Block(f"{prefix}.{at}", template.heads, template.kv_heads, template.head_dim)
        lonely = 0
        if st.post_norm:
            for rel in fam.norms:
                norm = child.get_submodule(new.name(rel))
                for p in ("weight", "bias"):
                    if getattr(norm, p, None) is not None:
                        name = new.name(f"{rel}.{p}")
                        edit.put(name, torch.zeros_like(edit.get(name)), (None,))
        else:
            lonely = _attention_units(
                edit, new, st.layout, template.heads, template.kv_heads, method, fresh=True
            )
            sets = _cancel_sets(range(template.heads))
            position_bias(edit, st, new, 0, template.heads, sets)
            hidden = _hidden(child, st, new)
            _ffn_units(edit, new, st.layout, hidden, hidden, method, fresh=True)
        sources: dict[str, ParamSource] = {}
        offset = len(prefix) + 1
        for name, _ in child.named_parameters():
            if not name.startswith(prefix + "."):
                continue
            i, _, rest = name[offset:].partition(".")
            k = int(i)
            if k == at:
                sources[name] = ParamSource(None, f"{template.prefix}.{rest}")
            elif k > at:
                sources[name] = ParamSource(f"{prefix}.{k - 1}.{rest}", f"{prefix}.{k - 1}.{rest}")
        edit.sources = sources
        config = getattr(child, "config", None)
        depths = getattr(config, "depths", None)
        if isinstance(depths, (list, tuple)) and len(depths) == len(sw.stages):
            new_depths = [d + (i == s) for i, d in enumerate(depths)]
            config.depths = new_depths
            _drop_paths(child, sw, new_depths)
        how = "shifted" if st.shifted[j] or at % 2 != j % 2 else "unshifted"
        notes = [
            f"the new block {prefix}.{at} has {how} windows (a copy of block {j}); the blocks "
            "after it keep their own shifts"
        ]
        if lonely and method == "netmorph":
            notes.append(f"{lonely} heads have no partner: zero output columns")
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
    """The stream of stage ``stage`` (default the last, which the classifier reads) grows to a
    multiple k·d_s of its width, its heads k-fold (:mod:`.swin_width`; ``method`` for the new
    heads); MorphError for another model."""
    sw = _swin(model)
    return grow_swin_width(
        model,
        sw,
        d_model,
        stage=stage,
        noise=noise,
        method=method,
        probe=probe_images(model) if probe is None else probe,
        tol=tol,
        seed=seed,
        inplace=inplace,
    )
