"""Function-preserving growth of transformers (DESIGN.md §8).

Every operation returns ``(child, report)`` like the rest of the adapter and goes through
:mod:`.pipeline` (support checks, ``tol="auto"``, measurement); the parent is never modified,
except with ``inplace=True`` (not ``conv1d_to_linear``): the child is then built in the parent
object itself, which is consumed (extra memory ≈ the new parameters; measured one module at a
time; a refusal after the edit leaves it edited). The model's architecture is recognised from
its submodule names (:mod:`.transformer_layout`: Hugging Face Llama/Mistral/Qwen2, GPT-2,
BERT, ViT, and :class:`~netmorph_core.torch.models.LlamaStyle`) or from a traced forward
(:mod:`.transformer_trace`: fused q/k/v in [Q; K; V] or per-group rows, fused [gate; up],
parallel blocks, ALiBi). New units come in
*cancelling sets*: two (or three) units with identical input weights whose output columns are
C and −C (or C, C, −2C), so every new weight is dense and non-zero while their sum adds
exactly zero; a unit without a partner gets zero output columns.

- :func:`grow_ffn` — more feed-forward hidden units (gated SwiGLU pairs included).
- :func:`add_heads` — more attention heads of the same head_dim; grouped-query layouts keep
  every query head with its key/value group.
- :func:`grow_width` — a wider residual stream d_model → D' for any D' > d_model (D' = k·d + r):
  the stream becomes x̃ = [x; …; x; a] (k copies, r extra coordinates a = mean(x) under
  LayerNorm, 0 under RMSNorm), norms get γ·√(kd/D') and eps·kd/D', readers split their
  columns into k random blocks that sum to W, a tied head's final norm is divided by k.
- :func:`add_block` — a new block whose branches add exactly zero ("netmorph": dense inner
  layers in cancelling sets; "zero": zero output projections).
- :func:`deepen_projection` — a projection W becomes two dense linear layers B·A = W.
- :func:`conv1d_to_linear` — GPT-2's ``Conv1D`` layers become ``nn.Linear``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from .attention_pool import attention_pools, pooled_readers, widen_pool
from .backbone_stages import shift_stages
from .errors import MorphError
from .hf_embeddings import input_embedding
from .moe_stream import READ, ROUTE, WRITE, fresh_ffn, sparse_layers, stream_bytes, widen_ffn
from .pipeline import WHOLE_COPY_LIMIT, Request, run, run_on_model
from .position_tables import check_no_tables
from .report import MorphReport, Outcome, ParamSource, block_params, state_bytes
from .side_writers import side_writers
from .speech_wavlm import (
    check_heads,
    drop_passed_tables,
    passed_tables,
    permute_stream,
    split_edits,
    stream_order,
    widen_attention,
)
from .speech_width import check_outside, check_stream_convs, widen_stream_convs
from .stream_output import restored, stream_view
from .streamed import Region
from .surgery import count_parameters, find_layer, gather, replace_module
from .tracing import default_inputs
from .transformer_branch_block import silence_branches
from .transformer_latent import latent_geometry
from .transformer_layout import Block, Layout, as_matrix, describe, is_conv1d, sync_shapes
from .transformer_postln import plan as post_ln_plan
from .transformer_projection import (
    embedding_projection,
    follow_embedding_size,
    stream_norms,
    stream_writers,
)
from .transformer_stream import image_size
from .transformer_trace import KV_ATTRS, POSITION_BIASES, is_norm, qkv_rows

METHODS = ("netmorph", "zero")
#: Config fields that list one entry per block, in order.
PER_BLOCK = (
    "layer_types",
    "no_rope_layers",
    "mlp_layer_types",
    "layers_block_type",
    "layer_rope_theta",  # Granite-SWA: each block's rotary base (0: no rotary)
)
SEQ_LEN = 8
#: Edits that compute new values (grow_width's readers and means) cast this many entries of a
#: weight to float64 at a time (an embedding of 65M entries would be 0.5 GB in float64).
EDIT_CHUNK = 1 << 22
#: The scale of new random entries is the standard deviation of this many entries at most.
STD_SAMPLE = 1 << 16


# ---------------------------------------------------------------------------------------------
# Editing parameters of the child


class _Editor:
    """Replaces parameters of ``child`` by new values cast to their dtype (computed in float64
    where they are not copies of parent entries, :data:`EDIT_CHUNK` entries of a weight at a
    time), and records the :class:`ParamSource` of each (``index``: per axis, child position →
    parent position, −1 for a new entry) and how many new entries are non-zero."""

    def __init__(self, child: nn.Module, seed: int) -> None:
        self.child = child
        self.sources: dict[str, ParamSource] = {}
        self.new_nonzero = 0
        self.new_total = 0
        self.gen = torch.Generator().manual_seed(seed)

    def get(self, name: str) -> torch.Tensor:
        return self.child.get_parameter(name).detach().to(torch.float64)

    def noise(self, shape: tuple[int, ...], std: float, like: torch.Tensor) -> torch.Tensor:
        x = torch.randn(shape, generator=self.gen, dtype=torch.float64)
        return (x * std).to(like.device)

    def put(self, name: str, value: torch.Tensor, index: tuple[np.ndarray | None, ...]) -> None:
        """Parameter ``name`` becomes ``value``; ``index`` maps it to the parent's ``name``."""
        module_name, _, attr = name.rpartition(".")
        module = self.child.get_submodule(module_name)
        old = getattr(module, attr)
        setattr(module, attr, nn.Parameter(value.to(old.dtype), requires_grad=old.requires_grad))
        self.sources[name] = ParamSource(name, name, index)
        axes = [axis for axis, idx in enumerate(index) if idx is not None]
        if len(axes) == 1:  # the new entries: the new positions of the one indexed axis
            fresh = np.flatnonzero(index[axes[0]] < 0)
            new = value.index_select(axes[0], torch.as_tensor(fresh, device=value.device))
            self.new_total += new.numel()
            self.new_nonzero += int(torch.count_nonzero(new))
            return
        old = value  # the entries every indexed axis maps to the parent
        for axis in axes:
            keep = torch.as_tensor(np.flatnonzero(index[axis] >= 0), device=value.device)
            old = old.index_select(axis, keep)
        self.new_total += value.numel() - old.numel()
        self.new_nonzero += int(torch.count_nonzero(value)) - int(torch.count_nonzero(old))

    def put_linear(
        self,
        name: str,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        rows: np.ndarray | None,
        cols: np.ndarray | None,
    ) -> None:
        """Set the (out, in) ``weight`` (and ``bias``) of the Linear or Conv1D layer ``name``."""
        module = self.child.get_submodule(name)
        if is_conv1d(module):
            self.put(f"{name}.weight", weight.t().contiguous(), (cols, rows))
        else:
            self.put(f"{name}.weight", weight, (rows, cols))
        if bias is not None and module.bias is not None:
            self.put(f"{name}.bias", bias, (rows,))

    def linear(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (out, in) weight and bias of the Linear or Conv1D layer ``name`` in their own
        dtype, not copied (read them only): edits that copy entries and insert new ones
        cast once are exact in any dtype, and need no float64 copy of the matrix; arithmetic
        on them casts chunks to float64 (:func:`_read`, :func:`_mean64`)."""
        module = self.child.get_submodule(name)
        b = module.bias.detach() if module.bias is not None else None
        return as_matrix(module).detach(), b

    def set_rows(self, new_w: torch.Tensor, sets: list[list[int]], std: float) -> None:
        """Rows ``sets`` of ``new_w``: one random row per cancelling set, shared by its units
        (the inputs of new hidden units or heads)."""
        units = [u for unit_set in sets for u in unit_set]
        of_set = [i for i, unit_set in enumerate(sets) for _ in unit_set]
        rows = self.noise((len(sets), new_w.shape[1]), std, new_w)
        new_w[units] = rows[of_set].to(new_w.dtype)

    def set_columns(
        self, new_w: torch.Tensor, sets: list[list[int]], std: float, method: str
    ) -> None:
        """Columns ``sets`` of ``new_w``: one random column C per cancelling set, times its
        units' coefficients (C, −C; C, C, −2C; zero with ``method="zero"`` or alone), so the
        set's outputs cancel. Exact in any dtype: the coefficients are powers of two."""
        units = [u for unit_set in sets for u in unit_set]
        of_set = [i for i, unit_set in enumerate(sets) for _ in unit_set]
        coefficients = [c for unit_set in sets for c in _coefficients(len(unit_set), method)]
        cols = self.noise((len(sets), new_w.shape[0]), std, new_w)
        scale = torch.tensor(coefficients, dtype=cols.dtype, device=cols.device)[:, None]
        new_w[:, units] = (cols[of_set] * scale).t().to(new_w.dtype)

    def outcome(self, notes: list[str]) -> Outcome:
        sync_shapes(self.child)
        return Outcome(self.new_nonzero, self.new_total, sources=self.sources, notes=notes)


def _std(t: torch.Tensor) -> float:
    """The scale of new random entries next to ``t``: the standard deviation of an even sample
    of at most :data:`STD_SAMPLE` of its entries, in float64 (1/√fan-in when it is 0)."""
    flat = (t.t() if t.dim() == 2 and not t.is_contiguous() else t).reshape(-1)
    sample = flat[:: max(1, flat.numel() // STD_SAMPLE)]
    s = float(sample.to(torch.float64).std()) if sample.numel() > 1 else 0.0
    return s if s > 0 else 1.0 / math.sqrt(max(t.shape[-1], 1))


def _gather_rows(t: torch.Tensor, index: np.ndarray, axis: int = 0) -> torch.Tensor:
    """Entries of ``t`` along ``axis`` at ``index`` (zeros where index is −1)."""
    return gather(t, index, axis, 0.0)


def _cancel_sets(items: Sequence[int]) -> list[list[int]]:
    """``items`` split into pairs (the last set a triple when the count is odd); a single
    item stays alone."""
    items = list(items)
    if len(items) < 2:
        return [[i] for i in items]
    sets = [items[i : i + 2] for i in range(0, len(items) - len(items) % 2, 2)]
    if len(items) % 2:
        sets[-1].append(items[-1])
    return sets


def _sets_of(units: int) -> list[list[int]]:
    """The cancelling sets of ``units`` new units 0 … units − 1."""
    return _cancel_sets(range(units))


def _coefficients(size: int, method: str) -> list[float]:
    """Output-column multipliers of a cancelling set: [1, −1], [1, 1, −2]; [0] alone."""
    if method == "zero" or size == 1:
        return [0.0] * size
    return [1.0, -1.0] if size == 2 else [1.0, 1.0, -2.0]


def _method(method: object) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return str(method)


def _layers(layout: Layout, layers: object) -> tuple[int, ...]:
    n = len(layout.blocks)
    if layers is None:
        return tuple(range(n))
    listed = v.int_sequence(layers)
    what = f"a block index in [0, {n}) or a list of them"
    raw = [layers] if listed is None else listed
    items = [v.as_int(i, "layers", what) for i in raw]
    if not items or not all(0 <= i < n for i in items):
        raise ValueError(f"layers must be block indices in [0, {n}), got {items}")
    if len(set(items)) != len(items):
        raise ValueError(f"layers names a block more than once: {list(items)}")
    return tuple(sorted(items))


def _set_config(config: object | None, **values: int) -> None:
    if config is None:
        return
    for key, value in values.items():
        if hasattr(config, key):
            setattr(config, key, value)


def _default_probe(model: nn.Module, layout: Layout) -> tuple[torch.Tensor, ...]:
    """The inputs a Hugging Face model names in its config (:func:`.tracing.default_inputs`:
    token ids (B, 8), images, mel features), else token ids (B, 8) for a token embedding or
    images (B, C, S, S): B = 2, or 1 for a model of more than ``WHOLE_COPY_LIMIT`` parameters
    (each forward pass then costs seconds, about its parameter count, and eight tokens already
    run through every block)."""
    batch = 1 if count_parameters(model) > WHOLE_COPY_LIMIT else 2
    found = default_inputs(model)
    if found is not None:
        return tuple(t[:batch] for t in found)
    gen = torch.Generator().manual_seed(0)
    first = model.get_submodule(layout.name(layout.family.writers[0]))
    if not isinstance(first, nn.Embedding) and isinstance(input_embedding(model), nn.Embedding):
        first = input_embedding(model)  # ALBERT: the stream's writer is a projection
    like = next(model.parameters())
    if isinstance(first, nn.Embedding):
        ids = torch.randint(0, first.num_embeddings, (batch, SEQ_LEN), generator=gen)
        return (ids.to(like.device),)
    config = layout.config
    sizes = image_size(model) or (8, 8)  # timm: patch_embed.img_size
    channels = int(getattr(config, "num_channels", first.in_channels))
    image = torch.randn(batch, channels, *sizes, generator=gen)
    return (image.to(like.device, like.dtype),)


def check_bool(value: object, name: str) -> bool:
    """``value`` must be a bool (TypeError naming ``name`` otherwise)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _itemsize(model: nn.Module) -> int:
    return next((p.element_size() for p in model.parameters() if p.is_floating_point()), 4)


def _edit_bytes(model: nn.Module, names: Sequence[str]) -> int:
    """Working tensors of the editor: a copy of the largest weight it edits in its dtype (the
    parent entries it keeps, counted) and four float64 chunks of :data:`EDIT_CHUNK` entries."""
    largest = max((model.get_submodule(n).weight.numel() for n in names), default=0)
    return largest * _itemsize(model) + 4 * 8 * min(largest, EDIT_CHUNK)


def _linears(blocks: Sequence[Block], rels: Sequence[str]) -> tuple[str, ...]:
    return tuple(b.name(rel) for b in blocks for rel in rels)


def _ffn_linears(layout: Layout) -> tuple[str, ...]:
    """The feed-forward's Linear layers (none where it is a mixture of experts)."""
    fam = layout.family
    return () if fam.moe else (*fam.ffn_in, fam.ffn_out)


def _run(
    operation: str,
    model: nn.Module,
    targets: tuple[str, ...],
    build: object,
    probe: object,
    tol: float | str | None,
    layout: Layout,
    inplace: object,
    **request: object,
) -> tuple[nn.Module, MorphReport]:
    """The pipeline on ``build`` with the family's default probe (token ids or images).
    Layers of an attention that reads their weights (WavLM) are edited in place: checked as
    copies, not as editable layers (:func:`.speech_wavlm.split_edits`)."""
    edits, copies = request.get("edits", ()), request.get("copies", ())
    if isinstance(edits, tuple) and isinstance(copies, tuple):
        kept, read = split_edits(model, edits)
        request |= {"edits": kept, "copies": (*copies, *read)} if read else {}
    return run_on_model(
        operation,
        model,
        targets,
        build,
        probe,
        tol,
        inplace,
        lambda: _default_probe(model, layout),
        **request,
    )


# ---------------------------------------------------------------------------------------------
# Feed-forward hidden units


def _ffn_units(
    edit: _Editor,
    block: Block,
    layout: Layout,
    hidden: int,
    new_hidden: int,
    method: str,
    fresh: bool = False,
) -> None:
    """Grow the block's feed-forward hidden size to ``new_hidden``: new input rows random and
    shared inside each cancelling set, new output columns C·coefficient."""
    fam = layout.family
    parent_hidden = 0 if fresh else hidden
    src = np.concatenate([np.arange(parent_hidden), -np.ones(new_hidden - parent_hidden, int)])
    sets = _cancel_sets(range(parent_hidden, new_hidden))
    halves = 2 if fam.gate_up else 1  # one layer of rows [gate; up]
    index = np.concatenate([np.where(src >= 0, src + j * parent_hidden, -1) for j in range(halves)])
    for rel in fam.ffn_in:
        w_all, b_all = edit.linear(block.name(rel))
        parts_w, parts_b = [], []
        for j in range(halves):
            w = w_all[j * hidden : (j + 1) * hidden] if fam.gate_up else w_all
            b = (
                None
                if b_all is None
                else (b_all[j * hidden : (j + 1) * hidden] if fam.gate_up else b_all)
            )
            new_w = _gather_rows(w, src)
            edit.set_rows(new_w, sets, _std(w))
            parts_w.append(new_w)
            parts_b.append(_gather_rows(b, src) if b is not None else None)
        new_b = None if b_all is None else torch.cat(parts_b)
        edit.put_linear(block.name(rel), torch.cat(parts_w), new_b, index, None)
    w, b = edit.linear(block.name(fam.ffn_out))
    new_w = _gather_rows(w, src, axis=1)
    edit.set_columns(new_w, sets, _std(w), method)
    new_b = torch.zeros_like(b) if (fresh and b is not None) else None
    edit.put_linear(block.name(fam.ffn_out), new_w, new_b, None, src)


def _check_hidden_norms(model: nn.Module, layout: Layout, block: Block, hidden: int) -> None:
    """MorphError naming a norm of ``block``'s feed-forward over its ``hidden`` units (BitNet's
    ``ffn_sub_norm`` between the gated product and the output projection), which new units
    would change; a hidden size equal to the stream's width is not told apart from it."""
    if hidden == layout.d_model:
        return
    mlp = layout.family.ffn_out.rpartition(".")[0]
    where = block.name(mlp) if mlp else block.prefix
    for rel, module in model.get_submodule(where).named_modules():
        weight = getattr(module, "weight", None)
        if is_norm(module) and isinstance(weight, torch.Tensor) and weight.shape == (hidden,):
            raise MorphError(
                f"{f'{where}.{rel}' if rel else where!r} ({type(module).__name__}) normalises the "
                f"feed-forward's {hidden} hidden units: new units would change its statistics; "
                "grow_ffn does not grow it; refused"
            )


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
    """The feed-forward hidden size of the blocks ``layers`` (default all) grows to ``width``.

    New hidden units h_new = φ(W_in,new·x) (for SwiGLU: SiLU(gate_new·x)·(up_new·x)) come in
    cancelling sets sharing their input rows, and the output projection's new columns are
    C, −C (C, C, −2C) so that W_out,new·h_new = 0; ``method="zero"`` gives zero columns.
    """
    layout = describe(model)
    if layout.family.moe:
        raise MorphError(
            f"{type(model).__name__}'s feed-forwards are mixtures of experts: grow them with "
            "netmorph_core.torch.grow_ffn (every expert); refused"
        )
    method = _method(method)
    chosen = _layers(layout, layers)
    width = v.positive_int(width, "width")
    hidden = {
        i: as_matrix(model.get_submodule(layout.blocks[i].name(layout.family.ffn_out))).shape[1]
        for i in chosen
    }
    if width <= max(hidden.values()):
        raise ValueError(
            f"width={width} must exceed the feed-forward hidden size {max(hidden.values())}"
        )
    blocks = [layout.blocks[i] for i in chosen]
    for i in chosen:
        _check_hidden_norms(model, layout, layout.blocks[i], hidden[i])
    edits = _linears(blocks, (*layout.family.ffn_in, layout.family.ffn_out))
    d = layout.d_model
    grown = sum(width - hidden[i] for i in chosen) * d * (len(layout.family.ffn_in) + 1)
    new_bytes = grown * _itemsize(model) + _edit_bytes(model, edits) * width // min(hidden.values())
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        for i in chosen:
            _ffn_units(edit, layout.blocks[i], layout, hidden[i], width, method)
            mlp = child.get_submodule(
                layout.blocks[i].name(layout.family.ffn_out).rpartition(".")[0]
            )
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = width
            block = child.get_submodule(layout.blocks[i].prefix)
            if getattr(block, "inner_dim", None) == hidden[i]:  # GPTBigCode's record of it
                block.inner_dim = width
        notes = []
        if len(chosen) == len(layout.blocks):
            _set_config(
                getattr(child, "config", None),
                intermediate_size=width,
                n_inner=width,
                ffn_hidden_size=width,
            )
        elif layout.config is not None:
            notes.append("blocks differ in feed-forward size: the config describes the others")
        if 1 in {width - h for h in hidden.values()} and method == "netmorph":
            notes.append("one new unit has no partner: its output column is zero")
        return edit.outcome(notes)

    targets = tuple(layout.blocks[i].name(layout.family.ffn_out) for i in chosen)
    return _run(
        "grow_ffn",
        model,
        targets,
        build,
        probe,
        tol,
        layout,
        inplace,
        edits=edits,
        regions=tuple(Region(b.prefix, b.prefix) for b in blocks),
        new_bytes=new_bytes,
        replaced=edits,
    )


# ---------------------------------------------------------------------------------------------
# Attention heads


def _head_sources(heads: int, kv: int, new_heads: int, new_kv: int) -> tuple[np.ndarray, ...]:
    """Child query head → parent query head, child kv head → parent kv head (−1: new).

    Query head c reads kv head c // (new_heads / new_kv): the parent's heads keep their group
    (and their order inside it), new ones fill each group's new slots and the new groups."""
    rep = heads // kv if kv else 0
    new_rep = new_heads // new_kv
    c = np.arange(new_heads)
    group, slot = c // new_rep, c % new_rep
    q_src = np.where((group < kv) & (slot < rep), group * rep + slot, -1)
    kv_src = np.where(np.arange(new_kv) < kv, np.arange(new_kv), -1)
    return q_src, kv_src


def _expand_heads(index: np.ndarray, head_dim: int) -> np.ndarray:
    rows = index[:, None] * head_dim + np.arange(head_dim)
    return np.where(index[:, None] >= 0, rows, -1).reshape(-1)


Rows = list  # [weight (rows, d_in), bias (rows,) or None] of one of q, k, v


def _fused_layout(layout: Layout) -> str:
    """The row layout of a fused q/k/v layer ("concat" for GPT-2's c_attn)."""
    return "concat" if layout.family.qkv_layout == "separate" else layout.family.qkv_layout


def _fused_rows(layout: Layout, heads: int, kv: int, hd: int) -> list[np.ndarray]:
    return [r.reshape(-1).numpy() for r in qkv_rows(_fused_layout(layout), heads, kv, hd)]


def _read_qkv(edit: _Editor, block: Block, layout: Layout) -> list[tuple]:
    """(weight, bias) of q, k and v as (out, in) matrices (a fused q/k/v split), not copied."""
    fam = layout.family
    if len(fam.qkv) == 3:
        return [edit.linear(block.name(rel)) for rel in fam.qkv]
    w, b = edit.linear(block.name(fam.qkv[0]))
    rows = _fused_rows(layout, block.heads, block.kv_heads, block.head_dim)
    return [(w[r], None if b is None else b[r]) for r in rows]


def _write_qkv(
    edit: _Editor,
    block: Block,
    layout: Layout,
    qkv: list[Rows],
    rows: list[np.ndarray],
    new: tuple[int, int],
) -> None:
    """Put q, k, v back (fused into one layer of ``new`` = (heads, kv_heads) in the family's
    row layout where it has one)."""
    fam = layout.family
    if len(fam.qkv) == 3:
        for rel, (w, b), idx in zip(fam.qkv, qkv, rows):
            edit.put_linear(block.name(rel), w, b, idx, None)
        return
    hd = block.head_dim
    old = _fused_rows(layout, block.heads, block.kv_heads, hd)
    places = _fused_rows(layout, *new, hd)
    total = (new[0] + 2 * new[1]) * hd
    weight = qkv[0][0].new_empty((total, qkv[0][0].shape[1]))
    bias = None if qkv[0][1] is None else qkv[0][1].new_empty(total)
    index = np.full(total, -1)
    for (w, b), idx, at, parent in zip(qkv, rows, places, old):
        weight[at] = w
        if bias is not None:
            bias[at] = b
        index[at] = np.where(idx >= 0, parent[np.maximum(idx, 0)], -1)
    edit.put_linear(block.name(fam.qkv[0]), weight, bias, index, None)


def _head_sets(q_src: np.ndarray, new_kv: int, new_rep: int) -> list[list[int]]:
    """Cancelling sets of the new query heads: inside each key/value group, or across the new
    groups when every group has one query head (multi-head attention)."""
    new = np.flatnonzero(q_src < 0)
    if new_rep == 1:
        return _cancel_sets(new.tolist())
    return [s for g in range(new_kv) for s in _cancel_sets(new[new // new_rep == g].tolist())]


def _attention_units(
    edit: _Editor,
    block: Block,
    layout: Layout,
    new_heads: int,
    new_kv: int,
    method: str,
    fresh: bool = False,
    placed: np.ndarray | None = None,
    alone: bool = False,
) -> int:
    """Give ``block`` ``new_heads`` query and ``new_kv`` key/value heads (``fresh``: all of
    them new, output bias zero); returns how many new heads got zero output columns for want
    of a partner. New key/value heads are random; the heads of a cancelling set share their q
    rows (and, across groups, their k and v rows) and get output columns C·coefficient.
    ``placed``: child head → parent head of multi-head attention with a per-head position bias
    (ALiBi), whose new heads each have their own bias and get zero output columns; ``alone``:
    every head reads its own position bias (ALiBi, or a relative bias shared by every block):
    no cancelling sets, zero output columns."""
    fam = layout.family
    if fam.latent:
        return _latent_units(edit, block, layout, new_heads, method, fresh, fam.alibi or alone)
    hd = block.head_dim
    heads, kv = (0, 0) if fresh else (block.heads, block.kv_heads)
    if placed is None:
        q_src, kv_src = _head_sources(heads, kv, new_heads, new_kv)
    else:
        q_src, kv_src = placed, placed
    new_rep = new_heads // new_kv
    parts = _read_qkv(edit, block, layout)
    rows = [_expand_heads(q_src, hd), *(_expand_heads(kv_src, hd),) * 2]
    qkv = [
        [_gather_rows(w, idx), None if b is None else _gather_rows(b, idx)]
        for (w, b), idx in zip(parts, rows)
    ]
    d_in = parts[0][0].shape[1]

    def span(j: int) -> slice:
        return slice(j * hd, (j + 1) * hd)

    for g in np.flatnonzero(kv_src < 0):
        for target, (w, _) in zip(qkv[1:], parts[1:]):
            target[0][span(g)] = edit.noise((hd, d_in), _std(w), w)
    sets = _head_sets(q_src, new_kv, new_rep)
    if fam.alibi or alone:  # heads of one set would see different position biases
        sets = [[h] for head_set in sets for h in head_set]
    for head_set in sets:
        row = edit.noise((hd, d_in), _std(parts[0][0]), parts[0][0])
        for h in head_set:
            qkv[0][0][span(h)] = row
            if new_rep == 1:  # one query head per group: the set shares k and v rows too
                for target in qkv[1:]:
                    target[0][span(h)] = target[0][span(head_set[0])]
    _write_qkv(edit, block, layout, qkv, rows, (new_heads, new_kv))
    _head_rows(edit, block, layout, rows[0], sets)
    _head_scalars(edit, block, layout, q_src)
    w, b = edit.linear(block.name(fam.o))
    new_w = _gather_rows(w, rows[0], axis=1)
    for head_set in sets:
        cols = edit.noise((w.shape[0], hd), _std(w), w)
        for h, c in zip(head_set, _coefficients(len(head_set), method)):
            new_w[:, span(h)] = c * cols
    new_b = torch.zeros_like(b) if (fresh and b is not None) else None
    edit.put_linear(block.name(fam.o), new_w, new_b, None, rows[0])
    attention = edit.child.get_submodule(block.name(fam.attention))
    for attr, value in (
        ("num_heads", new_heads),
        ("num_attention_heads", new_heads),
        ("n_heads", new_heads),
        ("n_head", new_heads),
        ("num_kv_heads", new_kv),
        ("num_key_value_heads", new_kv),
        ("num_key_value_groups", new_rep),
        ("all_head_size", new_heads * hd),
        ("split_size", new_heads * hd),
    ):
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, value)
    for attr, old, value in (  # width records the forward splits at (GPTBigCode, timm)
        ("embed_dim", block.heads * hd, new_heads * hd),
        ("attn_dim", block.heads * hd, new_heads * hd),
        ("kv_dim", block.kv_heads * hd, new_kv * hd),
        ("kv_heads", block.kv_heads, new_kv),
    ):
        if getattr(attention, attr, None) == old:
            setattr(attention, attr, value)
    return sum(len(head_set) == 1 for head_set in sets)


def _latent_units(
    edit: _Editor,
    block: Block,
    layout: Layout,
    new_heads: int,
    method: str,
    fresh: bool,
    alone: bool,
) -> int:
    """Give ``block``'s latent attention (:mod:`.transformer_latent`) ``new_heads`` heads
    (``fresh``: all of them new, output bias zero); returns how many new heads got zero output
    columns for want of a partner. The heads of a cancelling set share random rows of the
    query layer and of W_kvb (their keys' rotary part is every head's), so they compute one
    output, and get W_o's columns C·coefficient; the latents are unchanged. ``alone``: each
    head carries its own bias: no sets, zero output columns."""
    fam = layout.family
    child = edit.child
    attention = child.get_submodule(block.name(fam.attention))
    geo = latent_geometry(
        attention, child.get_submodule(block.prefix), fam.latent, fam.o, block.prefix
    )
    old = 0 if fresh else geo.heads
    src = np.concatenate([np.arange(old), np.full(new_heads - old, -1)]).astype(np.int64)
    new = list(range(old, new_heads))
    sets = [[h] for h in new] if alone else _cancel_sets(new)
    for rel, unit in zip(fam.latent, (geo.nope + geo.rope, geo.nope + geo.value)):
        w, b = edit.linear(block.name(rel))
        rows = _expand_heads(src, unit)
        new_w = _gather_rows(w, rows)
        for head_set in sets:
            shared = edit.noise((unit, w.shape[1]), _std(w), w)
            for h in head_set:
                new_w[h * unit : (h + 1) * unit] = shared
        new_b = None if b is None else _gather_rows(b, rows)
        edit.put_linear(block.name(rel), new_w, new_b, rows, None)
    w, b = edit.linear(block.name(fam.o))
    cols = _expand_heads(src, geo.value)
    new_w = _gather_rows(w, cols, axis=1)
    for head_set in sets:
        shared = edit.noise((w.shape[0], geo.value), _std(w), w)
        for h, c in zip(head_set, _coefficients(len(head_set), method)):
            new_w[:, h * geo.value : (h + 1) * geo.value] = c * shared
    new_b = torch.zeros_like(b) if (fresh and b is not None) else None
    edit.put_linear(block.name(fam.o), new_w, new_b, None, cols)
    for attr in ("num_heads", "num_attention_heads"):
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, new_heads)
    return sum(len(head_set) == 1 for head_set in sets)


def _head_rows(
    edit: _Editor, block: Block, layout: Layout, rows: np.ndarray, sets: list[list[int]]
) -> None:
    """The family's other per-head layers (``head_rows``: DeBERTa's position projections)
    get the query heads' row index ``rows``; the heads of a cancelling set share one random
    row block, so their scores stay equal. A per-head bias (DeBERTa v1's ``q_bias``) is zero
    for the new heads."""
    hd = block.head_dim
    for rel in layout.family.head_rows:
        name = block.name(rel)
        if not _exists(edit.child, name):
            continue
        if isinstance(_resolve(edit.child, name), nn.Parameter):  # a bias (heads·hd,)
            edit.put(name, _gather_rows(edit.get(name), rows), (rows,))
            continue
        w, b = edit.linear(name)
        new_w = _gather_rows(w, rows)
        new_b = None if b is None else _gather_rows(b, rows)
        for head_set in sets:
            shared = edit.noise((hd, w.shape[1]), _std(w), w)
            for h in head_set:
                new_w[h * hd : (h + 1) * hd] = shared
        edit.put_linear(name, new_w, new_b, rows, None)


def _head_scalars(edit: _Editor, block: Block, layout: Layout, q_src: np.ndarray) -> None:
    """Parameters of the attention module itself holding one entry per query head (GPT-OSS's
    ``sinks``: a logit column per head beside the scores, softmax([q·kᵀ, s_h])) get the query
    heads' index ``q_src``: a new head's entry is 0 (a fresh block's all are), so the heads of
    a cancelling set, sharing their q rows, see equal scores and their outputs cancel."""
    attention = block.name(layout.family.attention)
    for rel, p in list(edit.child.get_submodule(attention).named_parameters(recurse=False)):
        if p.dim() == 1 and p.numel() == block.heads > 1:
            edit.put(f"{attention}.{rel}", _gather_rows(p.detach(), q_src), (q_src,))


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
    """The blocks ``layers`` get ``heads`` query heads (and ``kv_heads`` key/value heads) of
    the same head_dim; RoPE and the 1/√head_dim scale are unchanged.

    Grouped-query attention: query head c reads key/value head c // (heads / kv_heads), so
    ``heads`` must be a multiple of ``kv_heads`` (default: unchanged, or ``heads`` for
    multi-head attention) and each group must keep at least its parent's query heads. New
    heads come in cancelling sets (identical q rows in one group, output columns ±C) or, with
    ``method="zero"``, with zero output columns. Where the config derives head_dim as
    hidden_size / heads (GPT-2, BERT, ViT) and heads·head_dim ≠ d_model, the config cannot
    describe the child: the stock load refuses it and ``load_grown`` rebuilds it.
    """
    layout = describe(model)
    method = _method(method)
    chosen = _layers(layout, layers)
    heads = v.positive_int(heads, "heads")
    ref = layout.blocks[chosen[0]]
    mha = ref.kv_heads == ref.heads
    kv = (
        (heads if mha else ref.kv_heads)
        if kv_heads is None
        else v.positive_int(kv_heads, "kv_heads")
    )
    for i in chosen:
        b = layout.blocks[i]
        if (b.heads, b.kv_heads, b.head_dim) != (ref.heads, ref.kv_heads, ref.head_dim):
            raise ValueError(f"layers: blocks {chosen[0]} and {i} have different attention shapes")
    if heads <= ref.heads:
        raise ValueError(f"heads={heads} must exceed the current {ref.heads} query heads")
    if layout.family.latent and kv != heads:
        raise MorphError(
            f"kv_heads={kv}: every head of {layout.family.name}'s latent attention reads the "
            "one key/value latent (key/value heads = heads); leave kv_heads unset"
        )
    if kv < ref.kv_heads:
        raise ValueError(f"kv_heads={kv} is fewer than the current {ref.kv_heads}")
    if heads % kv:
        raise MorphError(
            f"heads={heads} is not a multiple of kv_heads={kv}: grouped-query attention needs "
            "the same number of query heads in every key/value group"
        )
    check_heads(model, layout.blocks_path, heads)  # WavLM's attention
    if heads // kv < ref.heads // ref.kv_heads:
        raise MorphError(
            f"heads={heads}, kv_heads={kv}: {heads // kv} query heads per key/value group cannot "
            f"keep the parent's {ref.heads // ref.kv_heads} heads of each group together"
        )
    attention = model.get_submodule(ref.name(layout.family.attention))
    own = {ref.name(r) for r in (*layout.family.qkv, layout.family.o, *layout.family.head_rows)}
    mixer = next(
        (
            n
            for n, m in attention.named_modules()
            if isinstance(m, nn.Linear)
            and (m.in_features, m.out_features) == (ref.heads,) * 2
            and f"{ref.name(layout.family.attention)}.{n}" not in own
        ),
        None,
    )
    if mixer is not None:  # DeBERTa's talking heads
        raise MorphError(
            f"heads={heads}: '{ref.name(layout.family.attention)}.{mixer}' mixes the "
            f"{ref.heads} heads' scores (talking heads), which add_heads does not grow; refused"
        )
    records_kv = any(
        isinstance(getattr(attention, a, None), int) for a in (*KV_ATTRS, "num_key_value_groups")
    )
    if len(layout.family.qkv) == 1 and ref.kv_heads == 1 < kv and ref.heads > 1:
        raise MorphError(
            f"kv_heads={kv}: the fused multi-query projection of {layout.family.name} holds one "
            "key/value head for all query heads ([Q; k; v]); its key/value heads stay 1"
        )
    if kv != heads and not records_kv:
        raise MorphError(
            f"kv_heads={kv}: {layout.family.name} attention has kv_heads = heads (its module "
            "records no key/value head count)"
        )
    placed = _alibi_placement(layout, ref, heads, kv, len(chosen)) if layout.family.alibi else None
    # a config that derives head_dim = hidden_size / heads cannot hold these heads: it keeps
    # the parent's count (so the buffers it derives, e.g. rotary frequencies, keep head_dim),
    # the attention modules record theirs, and the child is marked for load_grown
    off_config = layout.family.derived_head_dim and heads * ref.head_dim != layout.d_model
    blocks = [layout.blocks[i] for i in chosen]
    tables = _bias_tables(model, layout, ref.heads, chosen)
    shared = [n for n in tables if not n.startswith(layout.blocks_path + ".")]
    if shared and inplace is True:
        raise MorphError(
            f"inplace=True: {shared[0]!r} is a relative position bias shared by every block, "
            "which the in-place measurement (block by block, on the parent's inputs) cannot "
            "follow; use inplace=False"
        )
    q_src = _head_sources(ref.heads, ref.kv_heads, heads, kv)[0]
    rows = tuple(r for r in layout.family.head_rows if _get_module(model, ref.name(r)) is not None)
    joint = {i: _joint_norm_sources(model, layout, layout.blocks[i], heads, kv) for i in chosen}
    edits = _linears(blocks, (*layout.family.qkv, *layout.family.latent, layout.family.o, *rows))
    grown = (
        len(chosen)
        * ref.head_dim
        * layout.d_model
        * ((2 + len(rows)) * (heads - ref.heads) + 2 * (kv - ref.kv_heads))
    )
    new_bytes = grown * _itemsize(model) + _edit_bytes(model, edits) * heads // ref.heads
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        lonely = sum(
            _attention_units(edit, layout.blocks[i], layout, heads, kv, method, placed=placed)
            for i in chosen
        )
        for i in chosen:
            for norm, proj, src in joint[i]:
                _grow_joint_norm(edit, layout.blocks[i], norm, proj, src)
        for name in tables:  # new heads: a zero bias column, one for every head of a set
            t = edit.get(name)
            last = t.dim() - 1
            edit.put(name, _gather_rows(t, q_src, axis=last), (None,) * last + (q_src,))
        notes = []
        if len(chosen) == len(layout.blocks):
            _set_outer_heads(child, layout, ref.heads, heads)
        if placed is not None:
            notes.append(
                "ALiBi: the parent's heads moved to the positions of their slopes among "
                f"{heads} heads; each new head has its own slope: zero output columns"
            )
        elif lonely and method == "netmorph":
            notes.append(f"{lonely} new heads have no partner in their group: zero output columns")
        if len(chosen) == len(layout.blocks) and not off_config:
            _set_config(
                getattr(child, "config", None),
                num_attention_heads=heads,
                num_key_value_heads=kv,
                num_kv_heads=kv,
            )
            latent = bool(layout.family.latent)  # its config's head_dim is the rotary part's
            if layout.config is not None and not layout.family.derived_head_dim and not latent:
                setattr(child.config, layout.family.head_dim_field, ref.head_dim)
        elif off_config and layout.config is not None:
            notes.append(
                f"{heads} heads of head_dim {ref.head_dim} ≠ d_model {layout.d_model}: "
                f"{layout.family.name} derives head_dim = hidden_size / heads, so the config "
                f"keeps {ref.heads} heads and each attention module records its own"
            )
        elif layout.config is not None:
            notes.append("blocks differ in head count: the config describes the others")
        return edit.outcome(notes)

    targets = tuple(layout.blocks[i].name(layout.family.attention) for i in chosen)
    return _run(
        "add_heads",
        model,
        targets,
        build,
        probe,
        tol,
        layout,
        inplace,
        edits=edits,
        # ALiBi biases and a shared relative position bias are built outside the blocks for
        # the head count: a child block cannot run on the parent's, so the model is measured
        # whole (float64 one module at a time)
        regions=()
        if layout.family.alibi or _shared_position_bias(model, layout.blocks_path)
        else tuple(Region(b.prefix, b.prefix) for b in blocks),
        new_bytes=new_bytes,
        replaced=edits,
    )


def _joint_norms(model: nn.Module, layout: Layout, block: Block) -> list[tuple[str, int]]:
    """(name, g) of the norms inside ``block``'s attention whose gain spans g > 1 heads (OLMo's
    and OLMoE's q_norm over every query head, k_norm over every key/value head)."""
    prefix = block.name(layout.family.attention)
    stream = {block.name(rel) for rel in layout.family.norms}  # ALBERT's post-LN inside it
    found: list[tuple[str, int]] = []
    if layout.family.latent:  # its norms normalise the latents, which new heads leave alone
        return found
    for rel, module in model.get_submodule(prefix).named_modules():
        w = getattr(module, "weight", None)
        if f"{prefix}.{rel}" in stream:
            continue
        shape = getattr(module, "normalized_shape", None) or ()
        size = w.numel() if w is not None else math.prod(shape) if shape else 0
        if rel and is_norm(module) and size % block.head_dim == 0:
            if size > block.head_dim:
                found.append((f"{prefix}.{rel}", size // block.head_dim))
    return found


def _joint_norm_sources(
    model: nn.Module, layout: Layout, block: Block, heads: int, kv: int
) -> list[tuple[str, str, np.ndarray]]:
    """(norm, the projection it normalises, child head → parent head) of every joint norm
    (:func:`_joint_norms`) that add_heads grows; MorphError naming one it cannot keep exact."""
    q_src, kv_src = _head_sources(block.heads, block.kv_heads, heads, kv)
    fam = layout.family
    found = []
    for name, g in _joint_norms(model, layout, block):
        which = [
            (proj, src)
            for count, proj, src in ((block.heads, 0, q_src), (block.kv_heads, 1, kv_src))
            if g == count
        ]
        if len(which) == 2:  # multi-head attention: the norm's own projection decides
            which = [which[_joint_norm_projection(layout, block, name)]]
        norm = model.get_submodule(name)
        if not which:
            why = f"{g} heads, neither q nor k"
        elif getattr(norm, "weight", None) is None:
            why = "a norm without a gain, which cannot be grown head by head"
        elif getattr(norm, "bias", None) is not None or len(fam.qkv) != 3:
            why = "a LayerNorm (the zero new heads would move its mean) or a fused q/k/v layer"
        else:
            proj, src = which[0]
            if len(src) > g:
                found.append((name, fam.qkv[proj], src))
            continue
        raise MorphError(
            f"{name!r} normalises several heads together ({why}): add_heads cannot keep it "
            "exact; refused"
        )
    return found


def _joint_norm_projection(layout: Layout, block: Block, name: str) -> int:
    """0 or 1: whether the joint norm ``name``, as wide as both q and k, normalises the query
    or the key projection: as the trace found (``Family.qk_norms``), else by its name (OLMo's
    ``q_norm``/``k_norm``); MorphError naming it otherwise."""
    rel = name.removeprefix(block.prefix + ".")
    if rel in layout.family.qk_norms:
        return layout.family.qk_norms.index(rel)
    last = rel.rpartition(".")[2].lower()
    if last.startswith(("q_", "query")) != last.startswith(("k_", "key")):
        return 0 if last.startswith(("q_", "query")) else 1
    raise MorphError(
        f"{name!r} normalises as many heads as both q and k, and neither the trace nor its name "
        "says which it reads; add_heads cannot keep it exact; refused"
    )


def _grow_joint_norm(edit: _Editor, block: Block, norm: str, proj: str, src: np.ndarray) -> None:
    """RMS-normalised q (or k) over all heads, n(q) = γ⊙q/√(ms(q) + ε), keeps the parent's
    heads exactly when the new heads' rows of ``proj`` are zero: over the child's H'·hd
    coordinates ms(q̃) = (H/H')·ms(q), so γ·√(H/H') and ε·H/H' give n(q) on the parent's heads
    (and 0 on the new ones, whose q is 0: uniform attention, outputs that still cancel)."""
    rows = _expand_heads(src, block.head_dim)
    fresh = torch.as_tensor(np.flatnonzero(rows < 0))
    layer = edit.child.get_submodule(block.name(proj))
    for p in (layer.weight, layer.bias):
        if p is not None:
            t = p.detach()
            edit.new_nonzero -= int(torch.count_nonzero(t[fresh]))
            t[fresh] = 0
    ratio = (src >= 0).sum() / len(src)
    gamma = edit.get(f"{norm}.weight")
    new = _gather_rows(gamma, rows)
    new[fresh] = gamma.mean()
    edit.put(f"{norm}.weight", new * math.sqrt(ratio), (rows,))
    module = edit.child.get_submodule(norm)
    attr = _eps_attr(module)
    setattr(module, attr, getattr(module, attr) * float(ratio))


def _periodic_joint_norms(child: nn.Module, layout: Layout, block: Block) -> None:
    """A new block's joint norms (:func:`_joint_norms`) get one gain for every head (the mean
    over heads): the heads of a cancelling set then see equal normalised queries and keys."""
    with torch.no_grad():
        for name, g in _joint_norms(child, layout, block):
            w = getattr(child.get_submodule(name), "weight", None)
            if w is not None:  # a gainless norm (DiffLlama's) treats every head alike
                w.copy_(w.view(g, -1).mean(0).repeat(g))


def _bias_tables(model: nn.Module, layout: Layout, heads: int, chosen: Sequence[int]) -> list[str]:
    """The relative-position-bias tables (…, heads) that add_heads on blocks ``chosen`` grows
    (BEiT's per-block ``relative_position_bias_table``, or the one shared by every block);
    MorphError for a shared table when only some blocks grow."""
    inside = [layout.blocks[i].prefix + "." for i in chosen]
    every = [b.prefix + "." for b in layout.blocks]
    found = []
    for name, p in model.named_parameters():
        if not any(k in name for k in POSITION_BIASES) or p.shape[-1] != heads:
            continue
        if any(name.startswith(b) for b in inside):
            found.append(name)
        elif not any(name.startswith(b) for b in every):
            if len(chosen) != len(layout.blocks):
                raise MorphError(
                    f"layers: {name!r} is a relative position bias shared by every block, one "
                    "column per head; grow the heads of all blocks"
                )
            found.append(name)
    return found


def alibi_slopes(heads: int) -> list[float]:
    """The ALiBi slopes of ``heads`` heads (Press et al.): b^1 … b^p with b = 2^(−8/p) for the
    largest power of two p ≤ heads, then c^1, c^3, … with c = 2^(−4/p) for the others."""
    p = 2 ** math.floor(math.log2(heads))
    slopes = [2.0 ** (-8.0 * (i + 1) / p) for i in range(p)]
    slopes += [2.0 ** (-4.0 * (2 * i + 1) / p) for i in range(min(p, heads - p))]
    return slopes


def _alibi_placement(layout: Layout, ref: Block, heads: int, kv: int, chosen: int) -> np.ndarray:
    """Child head → parent head (−1: new) such that every parent head keeps its ALiBi slope;
    MorphError where the slopes of ``heads`` heads do not include the parent's."""
    name = layout.family.name
    if kv != heads or ref.kv_heads != ref.heads:
        raise MorphError(
            f"heads={heads}: {name} has ALiBi slopes per head; only multi-head "
            "attention (kv_heads = heads) is grown"
        )
    if chosen != len(layout.blocks):
        raise MorphError(
            f"layers: {name}'s ALiBi slopes are one set for every block; grow the "
            "heads of all blocks"
        )
    new = alibi_slopes(heads)
    placed = np.full(heads, -1)
    for parent, slope in enumerate(alibi_slopes(ref.heads)):
        match = [c for c, s in enumerate(new) if math.isclose(s, slope, rel_tol=1e-12)]
        if not match:
            raise MorphError(
                f"heads={heads}: the ALiBi slopes of {heads} heads do not include the slope "
                f"{slope:g} of parent head {parent}; add_heads is refused for {name} at this "
                "count (a power of two times the parent's keeps every slope)"
            )
        placed[match[0]] = parent
    return placed


def _set_outer_heads(child: nn.Module, layout: Layout, old: int, new: int) -> None:
    """Head counts recorded outside the attention modules (Bloom's and Falcon's models, for
    the ALiBi builder, and their blocks) become ``new``: on the modules from the root to the
    blocks and inside the blocks (a head's own attention, SigLIP's pooling, keeps its count)."""
    path = layout.blocks_path.split(".")
    outer = [child.get_submodule(".".join(path[:i])) for i in range(len(path))]
    for module in [*outer, *child.get_submodule(layout.blocks_path).modules()]:
        for attr in ("num_heads", "n_head", "n_heads"):
            if getattr(module, attr, None) == old and isinstance(getattr(module, attr), int):
                setattr(module, attr, new)


# ---------------------------------------------------------------------------------------------
# Width of the residual stream


def _stream_index(d: int, copies: int, extra: int) -> np.ndarray:
    return np.concatenate([np.tile(np.arange(d), copies), -np.ones(extra, int)])


def _mean64(t: torch.Tensor, axis: int) -> torch.Tensor:
    """mean(t) along ``axis`` (kept) in float64, :data:`EDIT_CHUNK` entries cast at a time."""
    axis %= t.dim()
    if t.dim() == 1 or t.numel() <= EDIT_CHUNK:
        return t.to(torch.float64).mean(axis, keepdim=True)
    other = 1 if axis == 0 else 0
    step = max(1, EDIT_CHUNK * t.shape[other] // t.numel())
    parts = [c.to(torch.float64).mean(axis, keepdim=True) for c in t.split(step, other)]
    return torch.cat(parts, other)


def _write(
    t: torch.Tensor,
    axis: int,
    copies: int,
    extra: int,
    kind: str,
    gain: torch.Tensor | None = None,
) -> torch.Tensor:
    """A writer's output axis: [t; …; t; a] with a = mean(t) (LayerNorm; in float64, rounded
    to t's dtype) or 0 (RMSNorm), in t's dtype.

    ``gain``: the layer scale λ (d,) the block multiplies this writer's output by; then
    a = mean(λ⊙t), and the child's λ is 1 on the extra coordinates (see :func:`_scale`)."""
    if kind == "layer":
        if gain is not None:  # layer-scale models are small: one float64 product
            shape = [-1] + [1] * (t.dim() - axis % t.dim() - 1)
            a = _mean64(t.to(torch.float64) * gain.to(torch.float64).reshape(shape), axis)
        else:
            a = _mean64(t, axis)
        a = a.to(t.dtype)
    else:
        a = torch.zeros_like(t.narrow(axis, 0, 1))
    shape = list(t.shape)
    shape[axis] = extra
    return torch.cat([t] * copies + [a.expand(shape)], dim=axis)


def _read(edit: _Editor, w: torch.Tensor, copies: int, extra: int, noise: float) -> torch.Tensor:
    """A reader's (out, in) columns: k blocks W/k + R_j − mean(R) summing to W (W itself for
    k = 1), then random columns for the extra coordinates (whose normalised value is zero).
    Computed in float64 :data:`EDIT_CHUNK` entries at a time, in w's dtype."""
    std = _std(w)
    out = w.new_empty((w.shape[0], copies * w.shape[1] + extra))
    step = max(1, EDIT_CHUNK // max(w.shape[1] * (copies + 1), 1))
    for i in range(0, w.shape[0], step):
        rows = w[i : i + step]
        if copies == 1:
            out[i : i + step, : w.shape[1]] = rows
        else:
            r = torch.stack([edit.noise(tuple(rows.shape), noise * std, w) for _ in range(copies)])
            blocks = rows.to(torch.float64) / copies + r - r.mean(0)
            out[i : i + step, : copies * w.shape[1]] = torch.cat([*blocks], dim=1)
        out[i : i + step, copies * w.shape[1] :] = edit.noise((rows.shape[0], extra), std, w)
    return out


def _read_segments(
    edit: _Editor, w: torch.Tensor, d: int, copies: int, extra: int, noise: float
) -> tuple[torch.Tensor, np.ndarray]:
    """A head reading m·d inputs (m stream vectors side by side: DINOv2's classifier reads
    [class token; mean of the patch tokens]): each d-column segment read as by :func:`_read`;
    also the child column → parent column index."""
    segments = w.shape[1] // d
    idx = _stream_index(d, copies, extra)
    cols = [_read(edit, w[:, j * d : (j + 1) * d], copies, extra, noise) for j in range(segments)]
    index = np.concatenate([np.where(idx >= 0, idx + j * d, -1) for j in range(segments)])
    return torch.cat(cols, dim=1), index


def _scale(layout: Layout, child: nn.Module, block: Block, rel: str) -> str | None:
    """The layer-scale parameter (d,) of ``block`` that multiplies the output of its writer
    ``rel`` (the attention or feed-forward output projection), or None."""
    fam = layout.family
    if not fam.scales:
        return None
    name = block.name(fam.scales[0 if rel == fam.o else 1])
    found = _resolve(child, name) if _exists(child, name) else None
    return name if isinstance(found, nn.Parameter) else None


def _eps_attr(norm: nn.Module) -> str:
    return next(a for a in ("eps", "variance_epsilon") if isinstance(getattr(norm, a, None), float))


def _is_stream_norm(module: nn.Module, d: int) -> bool:
    """A LayerNorm/RMSNorm-like module (class name ending in "Norm") with a gain of size d."""
    w = getattr(module, "weight", None)
    named_norm = type(module).__name__.endswith("Norm")
    is_norm = isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or named_norm
    return is_norm and isinstance(w, torch.Tensor) and tuple(w.shape) == (d,)


def _norm_names(model: nn.Module, layout: Layout) -> tuple[list[str], list[str], str | None]:
    """The norms on the stream: the family's block norms and the owner's; the block's other
    norms of width d_model outside attention (Gemma2's pre/post feed-forward norms, whose
    input is a branch written like the stream); and the final norm."""
    fam = layout.family
    norms = [b.name(rel) for b in layout.blocks for rel in fam.norms]
    norms += stream_norms(model, layout)
    norms += [layout.name(r) for r in fam.head_norms if _get_module(model, layout.name(r))]
    others = []
    for b in layout.blocks:
        for rel, module in model.get_submodule(b.prefix).named_modules():
            inside_attention = rel == fam.attention or rel.startswith(f"{fam.attention}.")
            if (
                rel not in fam.norms
                and not inside_attention
                and _is_stream_norm(module, layout.d_model)
            ):
                others.append(b.name(rel))
    final = layout.name(fam.final_norm) if fam.final_norm else None
    if final is not None and isinstance(_get_module(model, final), nn.Identity):
        final = None  # BEiT with mean pooling: its pooler's norm reads the stream
    return norms, others, final


def _get_module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _gain_offset(norm: nn.Module, name: str, kind: str) -> float:
    """o such that the norm computes (o + weight)·n: 0 for γ·n, 1 for Gemma's (1 + w)·n;
    found by running a float64 copy with weight (and bias) zero on a random input."""
    probe = copy.deepcopy(norm).to(torch.float64)
    with torch.no_grad():
        for attr in ("weight", "bias"):
            if isinstance(getattr(probe, attr, None), torch.Tensor):
                getattr(probe, attr).zero_()
        x = torch.randn(3, probe.weight.shape[0], generator=torch.Generator().manual_seed(0))
        x = x.to(torch.float64)
        y = probe(x).to(torch.float64)
    if float(y.abs().max()) == 0.0:
        return 0.0
    centred = x - x.mean(-1, keepdim=True) if kind == "layer" else x
    n = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True))
    if torch.allclose(y, n, rtol=1e-3, atol=1e-3):
        return 1.0
    raise MorphError(
        f"norm {name!r} ({type(norm).__name__}) computes neither weight·n nor (1 + weight)·n "
        "of its normalised input n; its gain cannot be rescaled"
    )


def _check_norms(model: nn.Module, layout: Layout, d_model: int, rescale: bool) -> None:
    """Every norm must hold a gain (and a float eps) when the width needs them rescaled; a
    LayerNorm on a branch keeps only whole copies (its output's mean is not the stream's)."""
    norms, others, final = _norm_names(model, layout)
    branches = [*others, *(layout.blocks[0].name(r) for r in layout.family.branch_norms)]
    if branches and rescale and layout.norm_kind == "layer":
        raise MorphError(
            f"d_model={d_model} is not a multiple of {layout.d_model}: LayerNorm {branches[0]!r} "
            "normalises a branch, whose extra coordinates would not keep the stream's mean"
        )
    writes = stream_norms(model, layout)
    if writes and rescale and layout.norm_kind == "layer":
        raise MorphError(
            f"d_model={d_model} is not a multiple of {layout.d_model}: LayerNorm {writes[0]!r} "
            "writes the stream, whose extra coordinates would have to carry its output's mean "
            "per token (no bias does); use a multiple of the width"
        )
    for name in [*norms, *others, *([final] if final else [])]:
        norm = model.get_submodule(name)
        needs_gain = rescale or (name == final and _tied_on_stream(model, layout))
        if needs_gain and getattr(norm, "weight", None) is None:
            raise MorphError(
                f"d_model={d_model}: norm {name!r} has no gain to rescale (elementwise_affine="
                "False); only whole copies of a model without a tied head keep it unchanged"
            )
        if rescale and not any(
            isinstance(getattr(norm, a, None), float) for a in ("eps", "variance_epsilon")
        ):
            raise MorphError(
                f"d_model={d_model}: norm {name!r} has no float eps to rescale (eps=None "
                "depends on the dtype); use a multiple of the width"
            )


def grow_width(
    model: nn.Module,
    d_model: int,
    *,
    noise: float = 0.01,
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """The residual stream grows from d to ``d_model`` = k·d + r (any width above d).

    The child's stream is x̃ = [x; …; x; a] (k copies; r coordinates a = mean(x) under
    LayerNorm, so the mean is kept and the variance becomes (kd/D')·var(x), or a = 0 under
    RMSNorm). Writers (embeddings, output projections, their biases) get the same rows; every
    norm gets γ·√(kd/D') on the copies (so its output is unchanged there and zero on the
    extra coordinates) and eps·kd/D'; readers (q/k/v, feed-forward inputs, head) get k column
    blocks summing to W (random blocks of relative size ``noise`` projected onto that sum)
    and random columns on the extra coordinates. A tied output head keeps the embedding's
    copies, so the final norm is divided by k instead. Post-LN models (BERT) need
    d_model = k·d: LN(x̃) on extra coordinates is a constant the next residual sum cannot keep.
    WavLM's attention (per-head gates on slices of the stream) may need the copies reordered
    in blocks and places its heads by them (:mod:`.speech_wavlm`).
    """
    layout = describe(model)
    d = layout.d_model
    d_model = v.positive_int(d_model, "d_model")
    if d_model <= d:
        raise ValueError(f"d_model={d_model} must exceed the current width {d}")
    noise = v.real_number(noise, "noise", low=0.0)
    copies, extra = divmod(d_model, d)
    fam = layout.family
    check_no_tables(model, stream_writers(model, layout), d, d_model)  # Speech2Text's positions
    if fam.post_ln and extra:
        raise MorphError(
            f"d_model={d_model} is not a multiple of {d}: {fam.name} normalises after the "
            "residual sum (post-LN), which only keeps whole copies of the stream"
        )
    _check_fixed_width(model, layout, f"d_model={d_model}")
    _check_even_blocks(model, layout, f"d_model={d_model}")
    # a base model: no head (nor layers outside the owner reading the stream: DeiT's two
    # classifiers), or a pooler or a projection (CLIP's towers with one) beside the stream it
    # returns (BERT, ViT)
    outer = [r for r in fam.readers if not _exists(model, layout.name(r)) and _exists(model, r)]
    after_pool = pooled_readers(model, layout.head)  # timm's classifier after a latent pool
    returns_stream = (
        (layout.head is None and not outer)
        or (layout.head is not None and layout.head.rpartition(".")[2] in STREAM_BESIDE)
        or after_pool == []  # the pooled output itself
    )
    if returns_stream and inplace is True:
        raise MorphError(
            f"inplace=True: {type(model).__name__} returns the residual stream itself, which "
            "the child returns wider (measured on a view of the model); use inplace=False"
        )
    if fam.side_inputs and inplace is True:
        raise MorphError(
            f"inplace=True: {layout.name(fam.side_inputs[0])!r} is read by every block at the "
            "stream's width, which the in-place measurement (block by block, on the parent's "
            "inputs) cannot follow; use inplace=False"
        )
    convs = [layout.name(c) for c in fam.stream_convs]  # speech encoders' position convs
    check_stream_convs(model, convs, d, d_model)
    if extra and not fam.linear_entry and layout.norm_kind == "layer":
        raise MorphError(
            f"d_model={d_model} is not a multiple of {d}: an activation follows what "
            f"{layout.name(fam.writers[0])!r} writes into the stream (the stream is not "
            "linear in its writers), so no writer's extra rows give the stream's mean per "
            "token; use a multiple of the width"
        )
    # SigLIP's pooling head (returned: a tower's pooled output)
    pools = attention_pools(model, layout.blocks_path, d, d_model, returns_stream)
    order = stream_order(model, layout.blocks_path, d_model, convs)  # WavLM's attention
    by_weight = order is not None
    check_outside(model, convs)  # every module is rewritten; first: the norms run below
    _check_writers(model, layout, d_model)
    # a latent pool as the head is widened with the pools below, the classifier after it here
    head_reader = None if after_pool is not None else _head_reader(model, layout, d_model)
    stream_readers = [n for n in map(partial(_owned, model, layout), fam.readers) if n]
    stream_readers += [pool.reader for pool in pools]  # their norms and writers: below
    stream_readers += after_pool or []
    _check_norms(model, layout, d_model, rescale=extra > 0)
    logit_base = _logit_base(layout.config, d, d_model)
    kind = layout.norm_kind
    norms, others, final = _norm_names(model, layout)
    if final is None and fam.post_ln and layout.tied and head_reader == layout.head:
        # the tied head reads the last block's output itself (GPT-1): that block's last norm
        # is the final one, divided by the copies as a pre-LN final norm is
        final = layout.blocks[-1].name(fam.norms[-1])
        norms = [n for n in norms if n != final]
    pooled = [n for n in fam.pooled_norms if _get_module(model, n) is not None]
    if pooled and extra:
        raise MorphError(
            f"d_model={d_model} is not a multiple of {d}: {pooled[0]!r} normalises tokens "
            "pooled from the stream after its final norm, which only whole copies of the "
            "stream keep; use a multiple of the width"
        )
    all_norms = [
        *norms,
        *others,
        *(pool.norm for pool in pools),
        *pooled,
        *([final] if final else []),
    ]
    offsets = {
        name: _gain_offset(model.get_submodule(name), name, kind)
        for name in all_norms
        if getattr(model.get_submodule(name), "weight", None) is not None
    }
    ratio = copies * d / d_model
    # a tied head reading the stream sees the embedding's k copies: the final norm is divided
    # by k (not where a projection reads the stream first: OPT's project_out)
    tied_copies = copies if _tied_on_stream(model, layout) else 1
    side_readers = tuple(
        rel for rel in fam.head_rows if _get_module(model, layout.blocks[0].name(rel)) is not None
    )
    writers = (*stream_writers(model, layout), *(pool.writer for pool in pools))
    known = (*([layout.head] if layout.head else []), *stream_readers, *writers)
    writers += side_writers(model, layout.owner, d, (*known, *(pool.name for pool in pools)))
    edits = (
        *_linears(layout.blocks, (*fam.qkv, fam.o, *_ffn_linears(layout), *side_readers)),
        *(w for w in writers if _exists(model, w) and isinstance(_resolve(model, w), nn.Linear)),
        *stream_readers,
        *([head_reader] if head_reader and not layout.tied else []),
    )
    ffn_modules = [b.name(fam.ffn_out) for b in layout.blocks] if fam.moe else []
    largest = max(_edit_bytes(model, edits), stream_bytes(model, ffn_modules, d))
    new_bytes = state_bytes(model) * (d_model - d) // d + largest * (1 + copies) * d_model // d

    def lift(x: torch.Tensor) -> torch.Tensor:
        """The child's stream [x; …; x; a] of a parent stream tensor x (…, d)."""
        return _write(x, -1, copies, extra, kind)

    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        idx = _stream_index(d, copies, extra)
        for name in writers:
            if not _exists(child, name):
                continue
            obj = _resolve(child, name)
            if isinstance(obj, nn.Parameter):
                edit.put(
                    name,
                    _write(obj.detach().double(), -1, copies, extra, kind),
                    (None,) * (obj.dim() - 1) + (idx,),
                )
                continue
            axis = 1 if isinstance(obj, nn.Embedding) else 0
            w = child.get_parameter(f"{name}.weight").detach()
            index = tuple(idx if a == axis else None for a in range(w.dim()))
            edit.put(f"{name}.weight", _write(w, axis, copies, extra, kind), index)
            if getattr(obj, "bias", None) is not None:
                edit.put(
                    f"{name}.bias", _write(edit.get(f"{name}.bias"), 0, copies, extra, kind), (idx,)
                )
        read = partial(_read, edit, copies=copies, extra=extra, noise=noise)  # (out, d) columns
        write = partial(_write, axis=0, copies=copies, extra=extra, kind=kind)  # rows first

        def fresh(w: torch.Tensor, n: int) -> torch.Tensor:
            """n random rows like ``w``'s."""
            return edit.noise((n, w.shape[1]), _std(w), w).to(w.dtype)

        moe_fns = {  # the router reads the first copy: its logits sum the parent's products
            READ: read,
            ROUTE: lambda w: torch.cat([w, w.new_zeros(w.shape[0], d_model - d)], 1),
            WRITE: write,
        }
        for block in layout.blocks:
            if fam.moe:  # a mixture of experts: router, experts, shared expert (moe_stream)
                widen_ffn(edit, block.name(fam.ffn_out), d, moe_fns, idx)
            for rel in (fam.o, *_ffn_linears(layout)[-1:]):
                if by_weight and rel == fam.o:
                    continue
                w, b = edit.linear(block.name(rel))
                scale = _scale(layout, child, block, rel)
                lam = None if scale is None else edit.get(scale)
                edit.put_linear(
                    block.name(rel),
                    _write(w, 0, copies, extra, kind, lam),
                    None if b is None else _write(b, 0, copies, extra, kind, lam),
                    idx,
                    None,
                )
                if lam is not None:  # λ̃ = [λ; …; λ; 1]: the writer's extra rows carry λ
                    edit.put(scale, torch.cat([lam.repeat(copies), lam.new_ones(extra)]), (idx,))
            for rel in (*(() if by_weight else fam.qkv), *fam.ffn_in, *side_readers):
                w, _ = edit.linear(block.name(rel))
                edit.put_linear(block.name(rel), read(w), None, None, idx)
            if order is not None:
                att = block.name(fam.attention)
                widen_attention(child, att, idx[order], edit.put, read, write, fresh)
        for name in all_norms:
            scale = math.sqrt(ratio) / (tied_copies if name == final else 1)
            norm = child.get_submodule(name)
            if getattr(norm, "weight", None) is not None:
                # (o + w)·scale = o + w', exact for scale = 1
                g = edit.get(f"{name}.weight") * scale + offsets[name] * (scale - 1.0)
                new = torch.cat([g.repeat(copies), g.mean().expand(extra)])
                edit.put(f"{name}.weight", new, (idx,))
            if getattr(norm, "bias", None) is not None:
                bias = edit.get(f"{name}.bias") / (tied_copies if name == final else 1)
                edit.put(
                    f"{name}.bias", torch.cat([bias.repeat(copies), bias.new_zeros(extra)]), (idx,)
                )
            if extra:
                attr = _eps_attr(norm)
                setattr(norm, attr, getattr(norm, attr) * ratio)
            if isinstance(getattr(norm, "normalized_shape", None), tuple):
                norm.normalized_shape = (d_model,)
        widen_stream_convs(child, convs, copies, edit.put, getattr(child, "config", None))
        for pool in pools:
            widen_pool(child, pool, idx, edit.put, read, write, fresh)
        readers = stream_readers + ([head_reader] if head_reader and not layout.tied else [])
        for name in readers:
            w, _ = edit.linear(name)
            if name == head_reader and w.shape[1] != d:
                cols, index = _read_segments(edit, w, d, copies, extra, noise)
                edit.put_linear(name, cols, None, None, index)
                continue
            edit.put_linear(name, read(w), None, None, idx)
        if order is not None:  # WavLM: the copies in blocks that give each head its own slice
            permute_stream(child, edit.sources, idx, order, ParamSource)
        if layout.tied:
            embed = child.get_submodule(layout.name(fam.writers[0]))
            child.get_submodule(layout.head).weight = embed.weight
        embed_name = f"{layout.name(fam.writers[0])}.weight"
        for name, p in child.named_parameters():  # BERT's MLM decoder: the parent's embedding
            head = layout.head is not None and name.startswith(layout.head)
            if name not in edit.sources and p.shape[-1] == d and head:
                edit.sources[name] = ParamSource(embed_name, embed_name)
        notes = []
        config = getattr(child, "config", None)
        if config is not None:
            heads = layout.blocks[0].heads
            _set_config(config, hidden_size=d_model)
            if logit_base is not None:
                config.dim_model_base = logit_base
            follow_embedding_size(config, model, layout, d_model)
            wide = heads * layout.blocks[0].head_dim != d_model
            if not fam.derived_head_dim and not fam.latent:  # latent: its own fields, kept
                setattr(config, fam.head_dim_field, layout.blocks[0].head_dim)
            elif fam.derived_head_dim and wide and not by_weight:
                notes.append(
                    f"{heads} heads of head_dim {layout.blocks[0].head_dim} ≠ d_model {d_model}: "
                    f"{fam.name} derives head_dim = hidden_size / heads, so each attention "
                    "module records its own head count"
                )
        return edit.outcome(notes)

    measured = stream_view(model, d, copies, extra) if returns_stream else model
    child, report = _run(
        "grow_width",
        measured,
        (layout.blocks_path,),
        build,
        probe,
        tol,
        layout,
        inplace,
        edits=edits,
        copies=() if convs else ("",),  # check_outside did it, but for the weight-normed convs
        # blocks that read a side input at the stream's width (DeBERTa's relative-position
        # embeddings) cannot run on the parent's: such a model is measured whole
        # (WavLM's: block 0 hands its position bias, per head, to the others)
        regions=()
        if fam.side_inputs or by_weight
        else tuple(Region(b.prefix, b.prefix, lift=lift) for b in layout.blocks),
        new_bytes=new_bytes,
        replaced=("",),
    )
    if not returns_stream:
        return child, report
    return restored(child, report, model, d, copies, extra, [pool.name for pool in pools])


#: Heads of models that return their stream beside the head's output: BERT's and ViT's
#: pooler, CLIP's projections (``…ModelWithProjection`` returns the last hidden state too).
STREAM_BESIDE = ("pooler", "visual_projection", "text_projection")


def _check_fixed_width(model: nn.Module, layout: Layout, what: str) -> None:
    """MorphError naming the first module of the family's ``fixed_width`` the model holds
    (DeBERTa's convolution, its masked-LM head that reads the word embedding's weight)."""
    for rel in layout.family.fixed_width:
        name = _owned(model, layout, rel)
        if name is not None:
            kind = type(model.get_submodule(name)).__name__
            raise MorphError(
                f"{what}: {name!r} ({kind}) works at the stream's width and is not grown with "
                f"it; {layout.family.name} models that hold it are refused"
            )


def _check_writers(model: nn.Module, layout: Layout, d_model: int) -> None:
    """Every writer of the stream (the family's, or the embedding projection that replaces
    them: ELECTRA's embeddings_project) must write width d."""
    d = layout.d_model
    for name in stream_writers(model, layout):
        if not _exists(model, name):
            continue
        obj = _resolve(model, name)
        if isinstance(obj, nn.Parameter):
            width = obj.shape[-1]
        elif isinstance(obj, nn.Embedding):
            width = obj.weight.shape[1]
        else:
            width = as_matrix(obj).shape[0]
        if width != d:
            raise MorphError(
                f"d_model={d_model}: {name!r} writes width {width}, not the stream's {d}: the "
                "embeddings reach the stream through a layer the adapter does not follow (no "
                "one linear layer outside the blocks maps them to the stream's width); refused"
            )


def _check_even_blocks(model: nn.Module, layout: Layout, what: str) -> None:
    """Every block holds no parameter block 0 lacks, other than a norm's (ModernBERT's block 0
    has no attention norm); MorphError naming the first: a parameter the trace of block 0 never
    saw (GPT-NeoX-Japanese's last block adds ``attention.dense_bias`` to the stream), which
    ``grow_width`` and ``add_block`` would leave at the wrong width or copy into a new block."""
    if layout.family.moe:  # dense and expert feed-forwards alternate (moe_layout checks them)
        return
    first = model.get_submodule(layout.blocks[0].prefix)
    names = {n for n, _ in first.named_parameters()}
    for b in layout.blocks[1:]:
        block = model.get_submodule(b.prefix)
        for name, _ in block.named_parameters():
            owner = block.get_submodule(name.rpartition(".")[0]) if "." in name else block
            if name not in names and not is_norm(owner):
                raise MorphError(
                    f"{what}: '{b.prefix}.{name}' has no counterpart in block 0, whose trace "
                    "describes every block: a parameter only some blocks hold (it may write "
                    "the stream); refused"
                )


def _logit_base(config: object | None, d: int, d_model: int) -> int | None:
    """The ``dim_model_base`` that keeps MiniCPM's logits scale hidden_size / dim_model_base
    (read from the config at every forward) at width ``d_model``: base·d_model/d; None where
    the config has none; MorphError where that is not a whole number."""
    base = getattr(config, "dim_model_base", None)
    if not isinstance(base, int) or isinstance(base, bool):
        return None
    if base * d_model % d:
        raise MorphError(
            f"d_model={d_model}: the logits are divided by hidden_size / dim_model_base "
            f"({d}/{base}), which a whole dim_model_base keeps only at widths where "
            f"{base}·d_model/{d} is whole; use such a width (a multiple of {d})"
        )
    return base * d_model // d


def _tied_on_stream(model: nn.Module, layout: Layout) -> bool:
    """Whether the output head is tied to the token embedding and reads the stream itself (its
    inputs are the stream's width), rather than a projection of it."""
    if not layout.tied or layout.head is None:
        return False
    return as_matrix(model.get_submodule(layout.head)).shape[1] == layout.d_model


def _head_reader(model: nn.Module, layout: Layout, d_model: int) -> str | None:
    """The layer of the output head that reads the stream: the head itself, or the first
    linear layer of a head module (RoBERTa's classifier.dense); in a model with a pooler (BERT,
    ALBERT, DeBERTa: a stream reader itself), the first linear layer of the head's masked-LM
    part (``cls.predictions``), None where it has none (its classifier reads the pooler) or
    where a tied head reads a projection of the stream."""
    where = layout.head
    if where is None:  # the model returns the stream (:mod:`.stream_output`)
        return None
    if layout.tied and not _tied_on_stream(model, layout):
        return None  # it reads a projection of the stream (OPT's project_out), kept tied
    pooled = layout.family.pooled_head and _owned(model, layout, "pooler.dense") is not None
    pooled = pooled or any(_exists(model, layout.name(r)) for r in layout.family.readers)
    pooled = pooled and not layout.family.head_reads_stream
    if layout.family.post_ln and pooled and layout.head != "predictions":
        where = f"{layout.head}.predictions"
        if not _exists(model, where):
            return None
    elif layout.family.pooled_head and pooled:
        return None
    head = model.get_submodule(where)
    found = None
    if isinstance(head, nn.Linear) or is_conv1d(head):
        found = where
    for name, module in head.named_modules():
        if found is None and (isinstance(module, nn.Linear) or is_conv1d(module)):
            found = f"{where}.{name}"
    if found is not None:
        inputs = as_matrix(model.get_submodule(found)).shape[1]
        if inputs % layout.d_model:
            raise MorphError(
                f"d_model={d_model}: the output head {found!r} reads {inputs} inputs, not a "
                f"multiple of the stream's {layout.d_model}; refused"
            )
        return found
    raise MorphError(
        f"d_model={d_model}: the output head {layout.head!r} ({type(head).__name__}) holds no "
        "linear layer reading the stream"
    )


def _owned(model: nn.Module, layout: Layout, rel: str) -> str | None:
    """The qualified name of ``rel`` in the stream's owner, or else at the root (DeBERTa's
    classifier pooler), where the model holds it; None where it does not."""
    return next((n for n in (layout.name(rel), rel) if _exists(model, n)), None)


def _resolve(model: nn.Module, name: str) -> nn.Module | nn.Parameter:
    owner, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, attr)


def _exists(model: nn.Module, name: str) -> bool:
    try:
        return _resolve(model, name) is not None
    except AttributeError:
        return False


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
    """A new block inserted before block ``at`` (``at`` = number of blocks: at the end).

    Pre-norm blocks compute x + f(norm(x)): the new block is exact when its branches add zero.
    ``"netmorph"``: every inner weight dense and random, the heads and hidden units in
    cancelling sets (shared q rows / input rows, output columns ±C), output biases zero.
    ``"zero"``: random inner layers and zero output projections. Norms are copied from the
    neighbouring block. Heads that each see their own position bias (ALiBi, a relative bias
    shared by every block: MPNet, BEiT) cannot cancel in sets: the attention's output columns
    are zero. Post-LN models (BERT): LN(γ·n + β) ≠ γ·n + β, so the norm before the
    new block gives its gain and bias to the new block's last norm
    (:mod:`.transformer_postln`). Norms on the branches' outputs (OLMo-2, Gemma-2's sandwich):
    with ``"netmorph"`` they get zero gain and the output projections are dense
    (:mod:`.transformer_branch_block`). Blocks shared by several depths (ALBERT's layer
    group): the new block joins the group (``inner_group_num`` + 1) and runs at every depth,
    computing the identity on the output of block ``at`` − 1 at each (:mod:`.transformer_shared`).
    """
    layout = describe(model)
    method = _method(method)
    n = len(layout.blocks)
    at = v.as_int(at, "at", f"a block index in [0, {n}]")
    if not 0 <= at <= n:
        raise ValueError(f"at must be a block index in [0, {n}], got {at}")
    post = None
    if layout.family.post_ln:
        post = post_ln_plan(model, layout, at, embedding_projection(model, layout))
        method = post.units(method)
    _check_fixed_width(model, layout, f"at={at}")
    _check_even_blocks(model, layout, f"at={at}")
    template = layout.blocks[min(at, n - 1)]
    gainless = [
        name
        for name, _ in _joint_norms(model, layout, template)
        if getattr(model.get_submodule(name), "weight", None) is None
    ]
    if gainless and method == "netmorph":
        raise MorphError(
            f"method='netmorph': {gainless[0]!r} normalises several heads together without a "
            "gain (DiffLlama's differential heads), so heads of a cancelling set would not "
            "compute alike; use method='zero'"
        )
    fam = layout.family
    template_hidden = (
        0 if fam.moe else as_matrix(model.get_submodule(template.name(fam.ffn_out))).shape[1]
    )
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw
    prefix = layout.blocks_path
    edits = _linears([template], (*fam.qkv, fam.o, *_ffn_linears(layout)))
    new_bytes = state_bytes(model.get_submodule(template.prefix)) + _edit_bytes(model, edits)
    if at < n:
        region = Region(f"{prefix}.{at}", f"{prefix}.{at}", identity=True)
    else:
        region = Region(f"{prefix}.{n - 1}", f"{prefix}.{n}", identity=True, after=True)

    silenced = _branch_offsets(model, layout, template, method)
    out_std = {  # the new block's dense output projections (silenced branches)
        rel: _std(as_matrix(model.get_submodule(template.name(rel))).detach())
        for rel in (((fam.o,) if fam.moe else (fam.o, fam.ffn_out)) if silenced else ())
    }
    # a relative position bias shared by every block reaches the new block's heads, different
    # for each: as under ALiBi, heads of a cancelling set would not cancel
    shared_bias = _shared_position_bias(model, prefix)
    passed = passed_tables(model.get_submodule(prefix))

    def build(child: nn.Module) -> Outcome:
        blocks = child.get_submodule(prefix)
        blocks.insert(at, copy.deepcopy(blocks[min(at, n - 1)]))
        drop_passed_tables(blocks, passed)  # WavLM: block 0's bias table alone is read
        with torch.no_grad():  # one bias for every head: heads of a cancelling set cancel
            for name, p in blocks[at].named_parameters():
                if "relative_position_bias" in name:
                    p.zero_()
        for i, block in enumerate(blocks):
            for m in block.modules():
                for attr in ("layer_idx", "layer_id"):
                    if isinstance(getattr(m, attr, None), int):
                        setattr(m, attr, i)
        edit = _Editor(child, seed)
        new_block = Block(f"{prefix}.{at}", template.heads, template.kv_heads, template.head_dim)
        _periodic_joint_norms(child, layout, new_block)
        lonely = _attention_units(
            edit,
            new_block,
            layout,
            template.heads,
            template.kv_heads,
            method,
            fresh=True,
            alone=shared_bias is not None and not silenced,
        )
        if fam.moe:  # every expert's units in cancelling sets; the router routes as before
            fresh_ffn(edit, new_block.name(fam.ffn_out), layout.d_model, _sets_of, _std, method)
        else:
            _ffn_units(edit, new_block, layout, template_hidden, template_hidden, method, True)
        if silenced:
            draw = {rel: partial(_redraw, edit, std) for rel, std in out_std.items()}
            silence_branches(blocks[at], silenced, draw, method)
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
        for cfg in _stack_configs(child, layout):  # a VLM's language model: its text config
            if fam.shared:  # a layer of the shared group: the depth stays
                _set_config(cfg, inner_group_num=n + 1)
            else:
                _set_config(cfg, num_hidden_layers=n + 1, n_layer=n + 1)
            _insert_per_block(cfg, at, n)
            _insert_attention_type(child, cfg, at, n)
            sparse_layers(cfg, child, prefix, fam.ffn_out)  # Flint: dense blocks listed too
        for module in child.modules():  # DistilBERT's Transformer records its layer count
            if getattr(module, "n_layers", None) == n and isinstance(module.n_layers, int):
                module.n_layers = n + 1
        notes = shift_stages(child, prefix, at, n)
        if fam.shared:
            depths = getattr(config, "num_hidden_layers", None)
            notes.append(
                f"shared layers: the new block joins {prefix!r} (inner_group_num {n + 1}) and "
                f"runs at each of the {depths} depths"
            )
        if post is not None:
            edit.sources.update(post.apply(child, new_block.prefix))
            notes += post.notes()
        if silenced and method == "netmorph":
            notes.append(
                "the new block's branch norms have zero gain: its branches add exactly 0 "
                "whatever they compute (dense output projections)"
            )
        elif layout.family.alibi:
            notes.append(
                "a per-head position bias (ALiBi's slopes, WavLM's gated bias): every head "
                "sees its own: zero attention output columns"
            )
        elif shared_bias is not None and method == "netmorph":
            notes.append(
                f"{shared_bias!r} gives every head its own position bias, shared by every "
                "block: zero attention output columns"
            )
        elif lonely and method == "netmorph":
            notes.append(f"{lonely} heads have no partner in their group: zero output columns")
        outcome = edit.outcome(notes)
        return outcome.count_new(block_params(child, f"{prefix}.{at}"))

    return _run(
        "add_block",
        model,
        (f"{prefix}.{at}",),
        build,
        probe,
        tol,
        layout,
        inplace,
        edits=edits,
        copies=(template.prefix,),
        # post-LN: the block before the new one changes too; the model is measured whole
        regions=(region,) if post is None else (),
        new_bytes=new_bytes,
    )


def _branch_offsets(
    model: nn.Module, layout: Layout, template: Block, method: str
) -> dict[str, float]:
    """Branch norm (relative name) → gain offset of the norms a new block copied from
    ``template`` silences (:mod:`.transformer_branch_block`); MorphError naming one without the
    gain that "netmorph" sets to zero."""
    found = {}
    for rel in layout.family.branch_norms:
        name = template.name(rel)
        norm = model.get_submodule(name)
        if getattr(norm, "weight", None) is None:
            if method == "netmorph":
                raise MorphError(
                    f"{name!r} normalises a branch before the residual sum and has no gain to "
                    "set to zero for the new block; use method='zero' (zero output projections)"
                )
            found[rel] = 0.0
            continue
        found[rel] = _gain_offset(norm, name, layout.norm_kind)
    return found


def _redraw(edit: _Editor, std: float, w: torch.Tensor) -> torch.Tensor:
    """A random matrix shaped like ``w`` with entries of standard deviation ``std``."""
    return edit.noise(tuple(w.shape), std, w).to(w.dtype)


def _stack_configs(child: nn.Module, layout: Layout) -> list[object]:
    """The configs that describe the stack: the model's, and the one its owner holds where
    that is another (a vision-language model's language model reads its text config)."""
    found = [c for c in (getattr(child, "config", None),) if c is not None]
    if layout.owner:
        own = getattr(child.get_submodule(layout.owner), "config", None)
        if own is not None and all(own is not c for c in found):
            found.append(own)
    return found


def _insert_per_block(config: object | None, at: int, n: int) -> None:
    """The config's lists of one entry per block (:data:`PER_BLOCK`: ``layer_types``, Llama 4's
    and SmolLM3's ``no_rope_layers``) get the copied block's entry at ``at``; GPT-Neo's
    ``attention_layers``: :func:`_insert_attention_type`. Other lists that happen to hold n
    entries (DeBERTa's ``pos_att_type``) are no per-block record and stay. A heterogeneous
    config's per-layer overrides move up with the blocks above ``at``, and the copied block's
    go to ``at``."""
    for key in PER_BLOCK:
        value = getattr(config, key, None)
        if isinstance(value, list) and len(value) == n:
            value.insert(at, value[min(at, n - 1)])
    spec = vars(config).get("_heterogeneity_spec") if hasattr(config, "__dict__") else None
    if spec is not None:  # transformers' per-layer overrides (Gemma 4's full-attention head_dim)
        old, template = spec.per_layer_overrides, min(at, n - 1)
        beyond = sorted(i for i in old if not 0 <= i < n)
        if beyond:
            raise MorphError(
                f"add_block: the config's per_layer_config overrides layers {beyond} of a model "
                f"of {n} blocks (at=): they describe no block, so where they go after a new one "
                "is not known; fix the config (num_hidden_layers, per_layer_config)"
            )
        new = {i + (i >= at): copy.deepcopy(o) for i, o in old.items()}
        if template in old:
            new[at] = copy.deepcopy(old[template])
        config.per_layer_config = new


def _insert_attention_type(child: nn.Module, config: object | None, at: int, n: int) -> None:
    """GPT-Neo's per-block attention types (``attention_layers``, expanded from
    ``attention_types``, and recorded by every attention module) get the copied block's type
    at ``at``."""
    layers = getattr(config, "attention_layers", None)
    if not isinstance(layers, list) or len(layers) != n:
        return
    layers.insert(at, layers[min(at, n - 1)])
    config.attention_types = [[[t], 1] for t in layers]
    for module in child.modules():
        if isinstance(getattr(module, "attention_layers", None), list):
            module.attention_layers = list(layers)


def _shared_position_bias(model: nn.Module, prefix: str) -> str | None:
    """A relative-position-bias module with parameters outside the blocks (BEiT's shared
    bias), or None."""
    for name, module in model.named_modules():
        last = name.rpartition(".")[2]
        inside = name.startswith(prefix + ".")
        biased = any(k in last for k in ("position_bias", *POSITION_BIASES))
        if biased and not inside and any(True for _ in module.parameters()):
            return name
    return None


def deepen_projection(
    model: nn.Module,
    at: str,
    *,
    width: int | None = None,
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """The Linear or Conv1D projection ``at`` (out × in matrix W) becomes
    Sequential(Linear(in, width, no bias), Linear(width, out)) with A = s·Q (Q: width × in,
    orthonormal columns, random) and B = W·Qᵀ/s, so B·A = W; s balances ‖A‖ and ‖B‖. Both
    factors are dense. ``width`` ≥ in (default in)."""
    layer = find_layer(model, at, (nn.Linear,), replaced=True, chain=True)
    w0 = as_matrix(layer)
    out_f, in_f = w0.shape
    width = in_f if width is None else v.positive_int(width, "width")
    if width < in_f:
        raise ValueError(f"width={width} must be at least the layer's {in_f} inputs")
    # the factors in the model's dtype, Q and the QR's factor in float64, two float64 chunks
    new_bytes = width * (in_f + out_f) * w0.element_size() + 16 * width * in_f + 16 * EDIT_CHUNK
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw
    try:
        layout = describe(model)
    except MorphError:
        layout = None

    def build(child: nn.Module) -> Outcome:
        old = child.get_submodule(at)
        w = as_matrix(old).detach()  # read in float64 chunks of EDIT_CHUNK entries
        gen = torch.Generator().manual_seed(seed)
        a, tau = torch.geqrf(torch.randn(width, in_f, generator=gen, dtype=torch.float64))
        q = torch.linalg.householder_product(a, tau).to(w.device)  # torch.linalg.qr's Q
        del a, tau
        step = max(1, EDIT_CHUNK // max(in_f, 1))
        norm = math.sqrt(sum(float(c.to(torch.float64).pow(2).sum()) for c in w.split(step)))
        s = math.sqrt(max(norm, 1e-30) / math.sqrt(in_f))
        like = {"device": w.device, "dtype": old.weight.dtype}
        first = nn.Linear(in_f, width, bias=False, **like)
        second = nn.Linear(width, out_f, bias=old.bias is not None, **like)
        with torch.no_grad():
            for i in range(0, out_f, step):
                second.weight[i : i + step] = w[i : i + step].to(torch.float64) @ q.t() / s
            first.weight.copy_(q.mul_(s))
            if old.bias is not None:
                second.bias.copy_(old.bias)
        for p, ref in ((first.weight, old.weight), (second.weight, old.weight)):
            p.requires_grad_(ref.requires_grad)
        replace_module(child, at, nn.Sequential(first, second))
        sources = {
            f"{at}.0.weight": ParamSource(None, f"{at}.weight"),
            f"{at}.1.weight": ParamSource(None, f"{at}.weight"),
        }
        if old.bias is not None:
            sources[f"{at}.1.bias"] = ParamSource(f"{at}.bias", f"{at}.bias")
        total = width * (in_f + out_f)
        nonzero = int((first.weight != 0).sum() + (second.weight != 0).sum())
        return Outcome(nonzero, total, sources=sources)

    probe = _default_probe(model, layout) if (probe is None and layout is not None) else probe
    return run(
        Request(
            "deepen_projection",
            model,
            (at,),
            build,
            edits=(at,),
            aliases=True,
            regions=(Region(at, at),),
            new_bytes=new_bytes,
            replaced=(at,),
            inplace=check_bool(inplace, "inplace"),
            probe=probe,
            tol=tol,
            untie=True,
        )
    )


def conv1d_to_linear(
    model: nn.Module, *, probe: object = None, tol: float | str | None = "auto"
) -> tuple[nn.Module, MorphReport]:
    """Every transformers ``Conv1D`` (y = x·W + b, W: in × out) becomes the ``nn.Linear``
    with weight Wᵀ, so the generic adapter (``widen``, ``deepen``) can morph it. Exact: the
    same products in the same order up to the GEMM's layout."""
    names = [n for n, m in model.named_modules() if is_conv1d(m)]
    if not names:
        raise MorphError(f"{type(model).__name__} has no Conv1D layer")
    try:
        layout = describe(model)
    except MorphError:
        layout = None

    def build(child: nn.Module) -> Outcome:
        sources: dict[str, ParamSource] = {}
        for name in names:
            old = child.get_submodule(name)
            nx, nf = old.weight.shape
            layer = nn.Linear(nx, nf, device=old.weight.device, dtype=old.weight.dtype)
            with torch.no_grad():
                layer.weight.copy_(old.weight.t())
                layer.bias.copy_(old.bias)
            replace_module(child, name, layer)
            sources[f"{name}.weight"] = ParamSource(None, f"{name}.weight")
        return Outcome(
            0,
            0,
            sources=sources,
            notes=["Conv1D weights transposed: their optimizer state starts anew"],
        )

    probe = _default_probe(model, layout) if (probe is None and layout is not None) else probe
    return run(
        Request(
            "conv1d_to_linear",
            model,
            tuple(names),
            build,
            edits=tuple(names),
            regions=tuple(Region(n, n) for n in names),
            new_bytes=sum(state_bytes(model.get_submodule(n)) for n in names),
            probe=probe,
            tol=tol,
        )
    )
