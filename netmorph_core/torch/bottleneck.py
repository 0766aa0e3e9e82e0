"""The transformer operations on bottleneck blocks (MobileBERT, :mod:`.bottleneck_layout`);
the public operations (:mod:`.routing`) send these models here.

- :func:`grow_ffn` — every feed-forward of the blocks ``layers`` (MobileBERT has
  ``num_feedforward_networks`` of them per block, all of the inner width B) grows its hidden
  size to ``width``: new input rows random and shared inside each cancelling set, new output
  columns C·(1, −1) or C·(1, 1, −2) (zero with ``method="zero"``), so the new units add
  exactly zero before the residual sum and its norm.
- :func:`add_heads` — the attention of the blocks ``layers`` gets ``heads`` heads of the same
  size; the heads of a cancelling set share their query, key and value rows (the same
  attention output) and get output columns C·coefficient. MobileBERT derives the head size
  as B / heads, so its config keeps the parent's count and ``load_grown`` rebuilds the child.
- :func:`add_block` — a copy of a neighbour block inserted before block ``at``, whose
  projection back to the stream is zero and whose norm after that residual sum is the
  identity: h' = 1·(0·a + 0 + h) + 0 = h. Only an elementwise-affine norm (NoNorm) is made
  the identity so; a LayerNorm there (``normalization_type="layer_norm"``) is refused.
- :func:`grow_width` — refused by name: the stream and the inner width are read and written
  through the bottleneck projections, the embedding transformation and the head, which these
  operations do not grow.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from .bottleneck_layout import (
    ATTENTION,
    KEY,
    OUT_NORM,
    OUTPUT,
    QUERY,
    VALUE,
    WRITER,
    Bottlenecked,
    recognise,
)
from .errors import MorphError
from .pipeline import run_on_model
from .report import MorphReport, Outcome, ParamSource, state_bytes
from .streamed import Region
from .tracing import default_inputs
from .transformer import (
    _cancel_sets,
    _coefficients,
    _edit_bytes,
    _Editor,
    _expand_heads,
    _gather_rows,
    _itemsize,
    _method,
    _std,
)

__all__ = ["add_block", "add_heads", "grow_ffn", "grow_width", "recognise"]


def _net(model: nn.Module) -> Bottlenecked:
    net = recognise(model) if isinstance(model, nn.Module) else None
    if net is None:
        raise MorphError(f"{type(model).__name__} has no bottleneck blocks")
    return net


def _probe(model: nn.Module) -> tuple[torch.Tensor, ...]:
    found = default_inputs(model)
    if found is None:
        raise MorphError(
            f"{type(model).__name__}: no default inputs (not a Hugging Face model); pass probe="
        )
    return found


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
        operation, model, targets, build, probe, tol, inplace, lambda: _probe(model), **request
    )


def _chosen(net: Bottlenecked, layers: object) -> tuple[int, ...]:
    """Block indices ``layers`` (None: all; an int or a sequence of ints in [0, depth))."""
    if layers is None:
        return tuple(range(net.depth))
    items = [layers] if isinstance(layers, (int, np.integer)) else layers
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        raise TypeError(f"layers must be None, an int or a sequence of ints, got {layers!r}")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise TypeError(f"layers must hold ints, got {item!r}")
        if not 0 <= int(item) < net.depth:
            raise ValueError(f"layers: block {item} is not in [0, {net.depth})")
        out.append(int(item))
    if not out or len(set(out)) != len(out):
        raise ValueError(f"layers={layers!r}: give distinct blocks, at least one")
    return tuple(sorted(out))


# ---------------------------------------------------------------------------------------------
# Feed-forward


def _units(edit: _Editor, up: str, down: str, hidden: int, width: int, method: str) -> None:
    """The feed-forward ``up`` → ``down`` grows from ``hidden`` to ``width`` units in
    cancelling sets (module docstring)."""
    src = np.concatenate([np.arange(hidden), -np.ones(width - hidden, int)])
    sets = _cancel_sets(range(hidden, width))
    w, b = edit.linear(up)
    new_w = _gather_rows(w, src)
    edit.set_rows(new_w, sets, _std(w))
    edit.put_linear(up, new_w, None if b is None else _gather_rows(b, src), src, None)
    w, _ = edit.linear(down)
    new_w = _gather_rows(w, src, axis=1)
    edit.set_columns(new_w, sets, _std(w), method)
    edit.put_linear(down, new_w, None, None, src)


def grow_ffn(
    model: nn.Module,
    width: int,
    *,
    layers: object = None,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """Every feed-forward of the blocks ``layers`` (default all) grows its hidden size to
    ``width`` (module docstring)."""
    net = _net(model)
    method = _method(method)
    chosen = _chosen(net, layers)
    width = v.positive_int(width, "width")
    names = [(net.name(i, up), net.name(i, down)) for i in chosen for up, down in net.ffns]
    hidden = {down: model.get_submodule(down).in_features for _, down in names}
    if width <= max(hidden.values()):
        raise ValueError(
            f"width={width} must exceed the feed-forward hidden size {max(hidden.values())}"
        )
    edits = tuple(n for pair in names for n in pair)
    grown = sum(width - h for h in hidden.values()) * 2 * net.inner
    new_bytes = grown * _itemsize(model) + _edit_bytes(model, edits) * width // min(hidden.values())
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        for up, down in names:
            _units(edit, up, down, hidden[down], width, method)
        notes = []
        config = getattr(child, "config", None)
        if len(chosen) == net.depth and hasattr(config, "intermediate_size"):
            config.intermediate_size = width
        elif config is not None:
            notes.append("blocks differ in feed-forward size: the config describes the others")
        if 1 in {width - h for h in hidden.values()} and method == "netmorph":
            notes.append("one new unit has no partner: its output column is zero")
        return edit.outcome(notes)

    return _run(
        "grow_ffn",
        model,
        tuple(down for _, down in names),
        build,
        probe,
        tol,
        inplace,
        edits=edits,
        regions=tuple(Region(f"{net.blocks}.{i}", f"{net.blocks}.{i}") for i in chosen),
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
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """The attention of the blocks ``layers`` gets ``heads`` heads of the same size (module
    docstring); its attention is multi-head, so ``kv_heads`` is None or ``heads``."""
    net = _net(model)
    method = _method(method)
    chosen = _chosen(net, layers)
    heads = v.positive_int(heads, "heads")
    if heads <= net.heads:
        raise ValueError(f"heads={heads} must exceed the current {net.heads} heads")
    if kv_heads is not None and kv_heads != heads:
        raise MorphError(
            f"kv_heads={kv_heads}: {type(model).__name__}'s attention is multi-head (one key "
            "and value head per query head); leave kv_heads None"
        )
    hd = net.head_dim
    rows = _expand_heads(np.where(np.arange(heads) < net.heads, np.arange(heads), -1), hd)
    sets = _cancel_sets(range(net.heads, heads))
    edits = tuple(net.name(i, r) for i in chosen for r in (QUERY, KEY, VALUE, OUTPUT))
    new_bytes = _edit_bytes(model, edits) * heads // net.heads
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        for i in chosen:
            for rel in (QUERY, KEY, VALUE):
                w, b = edit.linear(net.name(i, rel))
                new_w = _gather_rows(w, rows)
                for head_set in sets:  # one set: the same scores and values
                    shared = edit.noise((hd, w.shape[1]), _std(w), w)
                    for h in head_set:
                        new_w[h * hd : (h + 1) * hd] = shared.to(new_w.dtype)
                new_b = None if b is None else _gather_rows(b, rows)
                edit.put_linear(net.name(i, rel), new_w, new_b, rows, None)
            w, _ = edit.linear(net.name(i, OUTPUT))
            new_w = _gather_rows(w, rows, axis=1)
            for head_set in sets:
                cols = edit.noise((w.shape[0], hd), _std(w), w)
                for h, c in zip(head_set, _coefficients(len(head_set), method)):
                    new_w[:, h * hd : (h + 1) * hd] = (c * cols).to(new_w.dtype)
            edit.put_linear(net.name(i, OUTPUT), new_w, None, None, rows)
            attention = child.get_submodule(net.name(i, ATTENTION))
            attention.num_attention_heads = heads
            attention.all_head_size = heads * hd
        notes = [
            f"{heads} heads of size {hd}: {type(model).__name__} derives the head size as the "
            f"inner width {net.inner} / heads, so its config keeps {net.heads} heads and each "
            "attention module records its own"
        ]
        if method == "netmorph" and any(len(s) == 1 for s in sets):
            notes.append("one new head has no partner: its output columns are zero")
        return edit.outcome(notes)

    return _run(
        "add_heads",
        model,
        tuple(net.name(i, ATTENTION) for i in chosen),
        build,
        probe,
        tol,
        inplace,
        edits=edits,
        regions=tuple(Region(f"{net.blocks}.{i}", f"{net.blocks}.{i}") for i in chosen),
        new_bytes=new_bytes,
        replaced=edits,
    )


# ---------------------------------------------------------------------------------------------
# Depth


def add_block(
    model: nn.Module,
    at: int,
    *,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """A copy of block ``at`` (of the last block for ``at`` = depth) inserted before block
    ``at``, its projection back to the stream zero and its stream norm the identity (module
    docstring); ``method`` and ``seed`` are accepted for the common signature (nothing new is
    random)."""
    net = _net(model)
    _method(method)
    v.torch_seed(seed)
    if isinstance(at, bool) or not isinstance(at, (int, np.integer)):
        raise TypeError(f"at must be an int, got {at!r}")
    n = net.depth
    if not 0 <= int(at) <= n:
        raise ValueError(f"at={at} must be in [0, {n}] (the number of blocks)")
    at = int(at)
    if not net.affine_out:
        raise MorphError(
            f"at={at}: the blocks of {type(model).__name__} end in '{OUT_NORM}' (LayerNorm) "
            "after the residual sum, h' = LN(W·a + h), which a zero branch does not make the "
            "identity (LN(h) ≠ h); refused — grow its feed-forwards (grow_ffn) or heads "
            "(add_heads)"
        )
    template = f"{net.blocks}.{min(at, n - 1)}"
    new_bytes = state_bytes(model.get_submodule(template))
    if at < n:
        region = Region(f"{net.blocks}.{at}", f"{net.blocks}.{at}", identity=True)
    else:
        region = Region(f"{net.blocks}.{n - 1}", f"{net.blocks}.{n}", identity=True, after=True)

    def build(child: nn.Module) -> Outcome:
        blocks = child.get_submodule(net.blocks)
        new = copy.deepcopy(blocks[min(at, n - 1)])
        with torch.no_grad():
            writer, norm = new.get_submodule(WRITER), new.get_submodule(OUT_NORM)
            writer.weight.zero_()
            if writer.bias is not None:
                writer.bias.zero_()
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        blocks.insert(at, new)
        sources: dict[str, ParamSource] = {}
        offset = len(net.blocks) + 1
        for name, _ in child.named_parameters():
            if not name.startswith(net.blocks + "."):
                continue
            i, _, rest = name[offset:].partition(".")
            j = int(i)
            if j == at:
                sources[name] = ParamSource(None, f"{template}.{rest}")
            elif j > at:
                here = f"{net.blocks}.{j - 1}.{rest}"
                sources[name] = ParamSource(here, here)
        config = getattr(child, "config", None)
        if isinstance(getattr(config, "num_hidden_layers", None), int):
            config.num_hidden_layers = n + 1
        fresh = list(new.parameters())
        outcome = Outcome(
            sum(int(torch.count_nonzero(p)) for p in fresh),
            sum(p.numel() for p in fresh),
            sources=sources,
            notes=[
                f"the new block is a copy of {template!r} whose '{WRITER}' is zero and whose "
                f"'{OUT_NORM}' (elementwise affine) is the identity: it returns its input"
            ],
        )
        return outcome

    return _run(
        "add_block",
        model,
        (f"{net.blocks}.{at}",),
        build,
        probe,
        tol,
        inplace,
        copies=(template,),
        regions=(region,),
        new_bytes=new_bytes,
    )


# ---------------------------------------------------------------------------------------------
# Width


def grow_width(model: nn.Module, d_model: int, **_: object) -> tuple[nn.Module, MorphReport]:
    """Refused: the stream and the inner width of bottleneck blocks (module docstring)."""
    net = _net(model)
    raise MorphError(
        f"d_model={d_model!r}: {type(model).__name__}'s blocks ({net.blocks!r}) read the "
        f"{net.d_model}-wide stream through bottleneck projections to an inner width of "
        f"{net.inner} and write it back through '{WRITER}'; grow_width does not grow the "
        "stream or the inner width of bottleneck blocks; refused — grow its feed-forwards "
        "(grow_ffn), heads (add_heads) or depth (add_block)"
    )
