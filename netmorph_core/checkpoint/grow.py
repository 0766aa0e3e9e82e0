"""Grow a Llama-family checkpoint directory into another, in memory bounded by a few pieces.

:func:`grow_checkpoint` reads SRC (``config.json``; sharded safetensors with
``model.safetensors.index.json`` or one ``model.safetensors``) and writes DST, a complete
Hugging Face checkpoint of the grown child that a stock ``from_pretrained`` loads. The growth
(in this order): ``width`` (:func:`~netmorph_core.torch.grow_width`), ``heads``
(:func:`~netmorph_core.torch.add_heads`), ``ffn`` (:func:`~netmorph_core.torch.grow_ffn`, a
factor on the hidden size), ``add_blocks`` (:func:`~netmorph_core.torch.add_block`; new
blocks inserted before the given parent blocks, a copy of the grown neighbour's norms).

Each operation runs on one-block models of the checkpoint's own class (:mod:`.pieces`):
the in-memory construction, measured by the operation itself, applied piece by piece.
Every block is then verified on real activations: a probe's hidden states are carried from
block to block, parent and child side by side; per block the child block on the parent's
stream mapped into the child's (x ↦ [x; …; x; 0]) must give the parent block's output mapped
the same way, in float64 (reported) and in the model's dtype within ``tol="auto"``'s bound
(:func:`~netmorph_core.torch.report.auto_bound`); a new block must add zero. The logits at
the end, child against parent, are checked the same way. A failed check raises MorphError and
nothing is left at DST (:func:`~.io.staging`).

Memory: the pieces in use (their float64 copies while measured), one vocabulary slice, and
the grown embedding/head; never the model.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _validation as v
from .._memory import check_working_set
from ..torch.errors import MorphError
from ..torch.hf_config import config_from_dict
from ..torch.report import auto_bound
from ..torch.transformer import add_block, add_heads, grow_ffn, grow_width
from .io import CONFIG, ShardWriter, Source, staging
from .pieces import (
    ATTENTION,
    DUMMY_HEAD_DIM,
    DUMMY_UNITS,
    MLP,
    block_tensors,
    build_piece,
    join_units,
    piece_config,
    split,
    unit_slices,
)

#: model_type → model class of the families read.
SUPPORTED = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
EMBED, NORM, HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"
DUMMY_VOCAB = 8
METHODS = ("netmorph", "zero")


@dataclass(frozen=True)
class BlockCheck:
    """The check of child block ``block`` (``parent``: its parent block, None for a new one):
    relative deviations from the parent block in float64 and in the model's dtype (against
    the parent in float64), the parent's own rounding noise in that dtype and the bound."""

    block: int
    parent: int | None
    rel_dev_f64: float
    rel_dev: float
    parent_noise: float
    bound: float


@dataclass(frozen=True)
class GrowthSummary:
    """What :func:`grow_checkpoint` wrote and how closely the child follows the parent.

    ``logits_*``: the child's logits on the probe, carried through every block in the
    model's dtype, against the parent's (``max_abs_dev``: max |child − parent| in that dtype;
    ``rel_dev``: relative to the parent in float64; ``parent_noise``: the parent's own).
    ``probe``: the token ids (tokens,); ``parent_logits``: the parent's float64 logits on them
    (tokens, vocab), to check a reload of DST against."""

    dst: str
    config: dict[str, Any]
    params_before: int
    params_after: int
    blocks: tuple[BlockCheck, ...]
    logits_max_abs_dev: float
    logits_rel_dev: float
    logits_parent_noise: float
    probe: torch.Tensor = field(repr=False)
    parent_logits: torch.Tensor = field(repr=False)
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class _Dims:
    d: int
    heads: int
    kv: int
    head_dim: int
    units: int


@dataclass
class _Grown:
    """One child block's tensors (named inside the block): attention, the mlp in unit
    slices; and the parent's (None for a new block)."""

    attention: dict[str, torch.Tensor]
    mlp: list[dict[str, torch.Tensor]]
    parent_attention: dict[str, torch.Tensor] | None
    parent_mlp: list[dict[str, torch.Tensor]] | None
    parent_units: list[int]


def _factor(ffn: object) -> float | None:
    if ffn is None:
        return None
    if isinstance(ffn, bool) or not isinstance(ffn, (int, float)) or not ffn > 1:
        raise ValueError(f"ffn must be a factor above 1 on the feed-forward size, got {ffn!r}")
    return float(ffn)


def _blocks(add_blocks: object, n: int) -> tuple[int, ...]:
    items = tuple(add_blocks) if isinstance(add_blocks, Sequence) else None
    if items is None or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= n for i in items
    ):
        raise ValueError(
            f"add_blocks must be parent block positions in [0, {n}], got {add_blocks!r}"
        )
    if len(set(items)) != len(items):
        raise ValueError(f"add_blocks names a position more than once: {list(items)}")
    return tuple(sorted(items))


def _child_dims(
    parent: _Dims, ffn: float | None, heads: int | None, kv_heads: int | None, width: int | None
) -> _Dims:
    d = parent.d if width is None else v.positive_int(width, "width")
    if d < parent.d or (width is not None and d == parent.d):
        raise ValueError(f"width={width} must exceed the checkpoint's hidden size {parent.d}")
    h = parent.heads if heads is None else v.positive_int(heads, "heads")
    if heads is not None and h <= parent.heads:
        raise ValueError(f"heads={heads} must exceed the checkpoint's {parent.heads} heads")
    mha = parent.kv == parent.heads
    kv = (h if mha else parent.kv) if kv_heads is None else v.positive_int(kv_heads, "kv_heads")
    if kv < parent.kv or h % kv or h // kv < parent.heads // parent.kv:
        raise ValueError(
            f"heads={h}, kv_heads={kv}: need kv_heads ≥ {parent.kv}, heads a multiple of "
            f"kv_heads and at least {parent.heads // parent.kv} query heads per group"
        )
    units = parent.units if ffn is None else round(parent.units * ffn)
    if ffn is not None and units <= parent.units:
        raise ValueError(f"ffn={ffn} does not add a unit to {parent.units}")
    return _Dims(d, h, kv, parent.head_dim, units)


def grow_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    ffn: float | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    width: int | None = None,
    add_blocks: Sequence[int] = (),
    method: str = "netmorph",
    seed: int = 0,
    probe_tokens: int = 8,
    shard_bytes: int = 2 << 30,
    piece_params: int = 1 << 25,
    progress: bool = True,
    on_block: Callable[[int], None] | None = None,
) -> GrowthSummary:
    """Write the grown child of the checkpoint ``src`` to the new directory ``dst`` (module
    docstring). ``shard_bytes``: size of the shard files; ``piece_params``: the most
    parameters one piece's grown part may hold (memory ≈ 20 bytes per such parameter, a few
    pieces at a time); ``on_block``: called with each written block's index (an exception
    it raises aborts the run, leaving nothing at DST). Errors: FileNotFoundError and
    FileExistsError for the directories, MorphError for an unsupported family or a failed
    check, ValueError for bad arguments."""
    start = time.perf_counter()
    source = Source(src)
    model_type = source.config.get("model_type")
    if model_type not in SUPPORTED:
        raise MorphError(
            f"src: model_type {model_type!r} is not supported; grow_checkpoint reads "
            f"{sorted(SUPPORTED)} checkpoints (grow others in memory)"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    probe_tokens = v.positive_int(probe_tokens, "probe_tokens")
    shard_bytes = v.positive_int(shard_bytes, "shard_bytes")
    piece_params = v.positive_int(piece_params, "piece_params")
    import transformers

    config_class = type(transformers.AutoConfig.for_model(model_type))
    model_class = getattr(transformers, SUPPORTED[model_type])
    parent_config = config_from_dict(config_class, dict(source.config))
    n = int(parent_config.num_hidden_layers)
    pd = _Dims(
        int(parent_config.hidden_size),
        int(parent_config.num_attention_heads),
        int(parent_config.num_key_value_heads),
        int(getattr(parent_config, "head_dim", None) or 0)
        or parent_config.hidden_size // parent_config.num_attention_heads,
        int(parent_config.intermediate_size),
    )
    cd = _child_dims(pd, _factor(ffn), heads, kv_heads, width)
    inserted = _blocks(add_blocks, n)
    if cd == pd and not inserted:
        raise ValueError("nothing to grow: give ffn, heads, width or add_blocks")
    order: list[tuple[int | None, int]] = []
    for i in range(n + 1):
        order += [(None, min(i, n - 1)) for at in inserted if at == i]
        if i < n:
            order.append((i, i))
    child_config = _child_config(config_class, source.config, pd, cd, order)
    dtype = source.dtype(EMBED)
    with torch.device("meta"):
        stock = model_class(child_config)
    shapes = {name: tuple(p.shape) for name, p in stock.named_parameters()}
    params_after = sum(math.prod(s) for s in shapes.values())
    del stock
    plan = _plan(shapes, len(order), dtype)
    job = _Job(source, model_class, config_class, pd, cd, dtype, method, seed, piece_params)
    job.child_values = child_config.to_dict()
    job.check_memory(child_config)
    notes: list[str] = []
    from tqdm import tqdm

    with staging(dst) as tmp:
        writer = ShardWriter(tmp, plan, shard_bytes)
        try:
            bar = tqdm(total=len(order) + 1, desc="grow", unit="block", disable=not progress)
            ends = job.ends()
            for name in (EMBED, HEAD, NORM):
                if name in ends and name in shapes:
                    writer.put(name, ends[name])
            gen = torch.Generator().manual_seed(seed)
            ids = torch.randint(0, int(parent_config.vocab_size), (probe_tokens,), generator=gen)
            streams = job.start_streams(ids, ends)
            bar.update(1)
            checks, cache = [], {}
            for j, (parent_index, template) in enumerate(order):
                names = [n for n, _, _ in plan if n.startswith(f"model.layers.{j}.")]
                if parent_index is not None:
                    grown = cache.get(parent_index) or job.grow_block(parent_index)
                    cache = {parent_index: grown}
                else:
                    base = cache.get(template) or job.grow_block(template)
                    cache = {template: base}
                    grown = job.new_block(base, template)
                checks.append(job.verify(j, parent_index, template, grown, streams))
                tensors = job.block_tensors(grown)
                if sorted(f"model.layers.{j}.{k}" for k in tensors) != sorted(names):
                    raise MorphError(f"block {j}: the grown tensors are not the stock block's")
                for name in names:
                    writer.put(name, tensors[name.removeprefix(f"model.layers.{j}.")])
                if on_block is not None:
                    on_block(j)
                bar.update(1)
            logits = job.logits(streams, ends)
            bar.close()
            writer.finish()
        finally:
            writer.close()
        for path in source.other_files():
            shutil.copy2(path, tmp / path.name)
        child_config.save_pretrained(tmp)  # config.json last
        if not (tmp / CONFIG).is_file():
            raise MorphError(f"dst: {CONFIG} was not written")
    if cd.d != pd.d and cd.d % pd.d:
        notes.append(f"norm eps rescaled by {pd.d * (cd.d // pd.d)}/{cd.d} in the config")
    return GrowthSummary(
        dst=str(dst),
        config=child_config.to_dict(),
        params_before=source.numel(),
        params_after=params_after,
        blocks=tuple(checks),
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
        probe=ids,
        **logits,
    )


def _child_config(config_class: type, values: dict, pd: _Dims, cd: _Dims, order: list) -> object:
    """The child's config: sizes, layer count and types, eps·kd/D' for a width D' = k·d + r."""
    from huggingface_hub.errors import StrictDataclassError

    values = dict(values)
    values.update(
        hidden_size=cd.d,
        num_attention_heads=cd.heads,
        num_key_value_heads=cd.kv,
        head_dim=cd.head_dim,
        intermediate_size=cd.units,
        num_hidden_layers=len(order),
    )
    if cd.d != pd.d and cd.d % pd.d:
        values["rms_norm_eps"] = values["rms_norm_eps"] * ((cd.d // pd.d) * pd.d / cd.d)
    types = values.get("layer_types")
    if isinstance(types, list):
        values["layer_types"] = [types[p if p is not None else t] for p, t in order]
    try:
        return config_class.from_dict(values)
    except StrictDataclassError as exc:
        reason = str(exc.__cause__ or exc).splitlines()[0]
        raise MorphError(
            f"{config_class.__name__} refuses the child's sizes ({reason}): a stock "
            "from_pretrained could not load it; choose sizes the config accepts"
        ) from exc


def _plan(
    shapes: dict[str, tuple[int, ...]], blocks: int, dtype: torch.dtype
) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """The order tensors are written in: embedding, head, final norm, then block by block."""
    first = [n for n in (EMBED, HEAD, NORM) if n in shapes]
    rest = [n for n in shapes if n not in first]
    by_block = [[n for n in rest if n.startswith(f"model.layers.{j}.")] for j in range(blocks)]
    ordered = first + [n for names in by_block for n in names]
    if sorted(ordered) != sorted(shapes):
        unknown = sorted(set(shapes) - set(ordered))
        raise MorphError(
            f"the child's stock model has parameters outside the blocks: {unknown[:3]}"
        )
    return [(n, shapes[n], dtype) for n in ordered]


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    scale = float(ref.double().abs().max())
    err = float((a.double() - ref.double()).abs().max())
    return err / scale if scale > 0 else err


class _Job:
    """The state of one run: the source, the sizes and the piece construction."""

    def __init__(
        self,
        source: Source,
        model_class: type,
        config_class: type,
        pd: _Dims,
        cd: _Dims,
        dtype: torch.dtype,
        method: str,
        seed: int,
        piece_params: int,
    ) -> None:
        self.source, self.model_class, self.config_class = source, model_class, config_class
        self.pd, self.cd, self.dtype, self.method, self.seed = pd, cd, dtype, method, seed
        self.values = dict(source.config)
        self.child_values = self.values
        self.tied = bool(self.values.get("tie_word_embeddings", False))
        self.vocab = int(self.values["vocab_size"])
        self.types = self.values.get("layer_types")
        grown = 3 * cd.d * cd.units
        self.slices = max(1, math.ceil(grown / piece_params))
        self.vocab_rows = max(1, piece_params // (2 * max(cd.d, 1)))
        self.piece_params = piece_params

    # -- memory and sizes -------------------------------------------------------------------

    def check_memory(self, child_config: object) -> None:
        """Bytes held at once: a piece and its grown child in the dtype and in float64 (three
        blocks' worth for add_block), the grown embedding and head."""
        cd = self.cd
        attention = cd.d * cd.head_dim * (2 * cd.heads + 2 * cd.kv)
        piece = max(attention, 3 * cd.d * (cd.units // self.slices + 1), self.piece_params)
        item = torch.empty((), dtype=self.dtype).element_size()
        ends = self.vocab * cd.d * item * (1 if self.tied else 2)
        check_working_set(3 * piece * (2 * item + 16) + ends, "grow_checkpoint")

    def _seed(self, block: int, piece: int, op: int) -> int:
        """A seed per (block, piece, operation): every piece's noise independent."""
        return ((self.seed * 100_003 + block + 1) * 10_007 + piece) * 8 + op

    # -- pieces ----------------------------------------------------------------------------

    def _config(self, dims: _Dims, part: str, units: int, vocab: int, layer: int) -> object:
        attention = part in ("attention", "ends")
        own = self.child_values if dims is self.cd else self.values  # the child's norm eps
        values = dict(own, hidden_size=dims.d, layer_types=self.types)
        layer_type = self.types[layer] if isinstance(self.types, list) else None
        return piece_config(
            self.config_class,
            values | ({"tie_word_embeddings": False} if part != "ends" else {}),
            heads=dims.heads if part == "attention" else 1,
            kv_heads=dims.kv if part == "attention" else 1,
            head_dim=dims.head_dim if part == "attention" else DUMMY_HEAD_DIM,
            units=DUMMY_UNITS if attention else units,
            vocab=vocab,
            layer_type=layer_type,
        )

    def _piece(
        self,
        dims: _Dims,
        part: str,
        tensors: dict[str, torch.Tensor],
        units: int = DUMMY_UNITS,
        layer: int = 0,
        dtype: torch.dtype | None = None,
    ) -> nn.Module:
        config = self._config(dims, part, units, DUMMY_VOCAB, layer)
        named = {f"model.layers.0.{k}": t for k, t in tensors.items()}
        return build_piece(self.model_class, config, named, dtype or self.dtype)

    def _read_block(self, i: int) -> tuple[dict, dict]:
        prefix = f"model.layers.{i}."
        names = [n for n in self.source.files if n.startswith(prefix)]
        tensors = {n[len(prefix) :]: self.source.get(n) for n in names}
        attention = {k: t for k, t in tensors.items() if k.startswith(ATTENTION)}
        mlp = {k: t for k, t in tensors.items() if k.startswith(MLP)}
        if not attention or not mlp or len(attention) + len(mlp) != len(tensors):
            raise MorphError(f"src: block {i} does not hold the {sorted(SUPPORTED)} block tensors")
        return attention, mlp

    def grow_block(self, i: int) -> _Grown:
        """Parent block ``i`` grown: width, heads on the attention piece; width, ffn on each
        unit slice of the mlp."""
        pd, cd = self.pd, self.cd
        attention, mlp = self._read_block(i)
        piece = self._piece(pd, "attention", attention, layer=i)
        if cd.d != pd.d:
            piece, _ = grow_width(piece, cd.d, seed=self._seed(i, 0, 0))
        if (cd.heads, cd.kv) != (pd.heads, pd.kv):
            piece, _ = add_heads(
                piece, cd.heads, kv_heads=cd.kv, method=self.method, seed=self._seed(i, 0, 1)
            )
        child_attention = block_tensors(piece, 0, ATTENTION)
        del piece
        parent_units = split(pd.units, self.slices)
        new_units = split(cd.units - pd.units, self.slices)
        parent_mlp = unit_slices(mlp, parent_units)
        child_mlp = []
        for s, (part, old, new) in enumerate(zip(parent_mlp, parent_units, new_units)):
            piece = self._piece(pd, "mlp", part, units=old, layer=i)
            if cd.d != pd.d:
                piece, _ = grow_width(piece, cd.d, seed=self._seed(i, s + 1, 0))
            if new:
                piece, _ = grow_ffn(
                    piece, old + new, method=self.method, seed=self._seed(i, s + 1, 1)
                )
            child_mlp.append(block_tensors(piece, 0, MLP))
            del piece
        return _Grown(child_attention, child_mlp, attention, parent_mlp, parent_units)

    def new_block(self, template: _Grown, t: int) -> _Grown:
        """A new block grown from the grown block ``template`` (parent block ``t``)."""
        cd = self.cd
        piece = self._piece(cd, "attention", template.attention, layer=t)
        child, _ = add_block(piece, 1, method=self.method, seed=self._seed(t, 0, 2))
        attention = block_tensors(child, 1, ATTENTION)
        del piece, child
        mlp = []
        for s, part in enumerate(template.mlp):
            units = part["mlp.down_proj.weight"].shape[1]
            piece = self._piece(cd, "mlp", part, units=units, layer=t)
            child, _ = add_block(piece, 1, method=self.method, seed=self._seed(t, s + 1, 2))
            mlp.append(block_tensors(child, 1, MLP))
            del piece, child
        return _Grown(attention, mlp, None, None, [0] * len(mlp))

    def block_tensors(self, grown: _Grown) -> dict[str, torch.Tensor]:
        return {**grown.attention, **join_units(grown.mlp, grown.parent_units)}

    # -- the ends: embedding, final norm, head ---------------------------------------------

    def _ends_piece(
        self, dims: _Dims, tensors: dict[str, torch.Tensor], rows: int, dtype: torch.dtype
    ) -> nn.Module:
        config = self._config(dims, "ends", DUMMY_UNITS, rows, 0)
        return build_piece(self.model_class, config, tensors, dtype)

    def _ends_slice(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        tensors = {EMBED: self.source.rows(EMBED, start, stop), NORM: self.source.get(NORM)}
        if not self.tied:
            tensors[HEAD] = self.source.rows(HEAD, start, stop)
        return tensors

    def ends(self) -> dict[str, torch.Tensor]:
        """The child's embedding, final norm and head (grow_width on vocabulary slices)."""
        pd, cd = self.pd, self.cd
        if cd.d == pd.d:
            out = {EMBED: self.source.get(EMBED), NORM: self.source.get(NORM)}
            if not self.tied:
                out[HEAD] = self.source.get(HEAD)
            return out
        out = {EMBED: torch.empty((self.vocab, cd.d), dtype=self.dtype)}
        if not self.tied:
            out[HEAD] = torch.empty((self.vocab, cd.d), dtype=self.dtype)
        for k, start in enumerate(range(0, self.vocab, self.vocab_rows)):
            stop = min(start + self.vocab_rows, self.vocab)
            piece = self._ends_piece(pd, self._ends_slice(start, stop), stop - start, self.dtype)
            child, _ = grow_width(piece, cd.d, seed=self._seed(-1, k, 0))
            state = child.state_dict()
            out[EMBED][start:stop] = state[EMBED]
            if not self.tied:
                out[HEAD][start:stop] = state[HEAD]
            out[NORM] = state[NORM].clone()
            del piece, child, state
        return out

    # -- verification ----------------------------------------------------------------------

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        """The parent's stream in the child's: [x; …; x; 0] (RMSNorm: extra coordinates 0)."""
        copies, extra = divmod(self.cd.d, self.pd.d)
        return torch.cat([x] * copies + [x.new_zeros((*x.shape[:-1], extra))], dim=-1)

    def start_streams(self, ids: torch.Tensor, ends: dict) -> dict[str, torch.Tensor]:
        """Hidden states (1, tokens, d) entering block 0: the parent's in float64 and in its
        dtype, the child's in its dtype (embedding rows; these families scale none)."""
        parent = torch.stack([self.source.rows(EMBED, int(i), int(i) + 1)[0] for i in ids])
        child = ends[EMBED][ids]
        return {"p64": parent.double()[None], "p": parent[None], "c": child.clone()[None]}

    def _attention_out(self, dims: _Dims, tensors: dict, layer: int, xs: list) -> list:
        """The attention half x + attn(norm(x)) on each input, in its dtype."""
        out = []
        for dtype in {x.dtype for x in xs}:
            piece = self._piece(dims, "attention", tensors, layer=layer, dtype=dtype)
            piece.model.norm = nn.Identity()
            with torch.no_grad():
                for k, x in enumerate(xs):
                    if x.dtype == dtype:
                        out.append((k, piece.model(inputs_embeds=x).last_hidden_state))
            del piece
        return [y for _, y in sorted(out, key=lambda kv: kv[0])]

    def _mlp_out(self, dims: _Dims, slices: list, layer: int, hs: list) -> list:
        """h + Σ_slices mlp(norm(h)) on each input (slices summed in float32 or float64)."""
        sums = [
            torch.zeros_like(h, dtype=torch.float64 if h.dtype == torch.float64 else torch.float32)
            for h in hs
        ]
        for part in slices:
            units = part["mlp.down_proj.weight"].shape[1]
            for dtype in {h.dtype for h in hs}:
                piece = self._piece(dims, "mlp", part, units=units, layer=layer, dtype=dtype)
                block = piece.model.layers[0]
                with torch.no_grad():
                    for k, h in enumerate(hs):
                        if h.dtype == dtype:
                            sums[k] += block.mlp(block.post_attention_layernorm(h)).to(
                                sums[k].dtype
                            )
                del piece, block
        return [h + s.to(h.dtype) for h, s in zip(hs, sums)]

    def verify(
        self, j: int, parent_index: int | None, template: int, grown: _Grown, streams: dict
    ) -> BlockCheck:
        """Check child block ``j`` against its parent block (or, for a new block grown from
        ``template``, the identity) on the streams and advance them (module docstring)."""
        layer = parent_index if parent_index is not None else template
        p64, p, c = streams["p64"], streams["p"], streams["c"]
        iso = p64.to(self.dtype)
        if grown.parent_attention is not None:
            h = self._attention_out(self.pd, grown.parent_attention, layer, [p64, iso, p])
            y64, y_iso, y_p = self._mlp_out(self.pd, grown.parent_mlp, layer, h)
        else:
            y64, y_iso, y_p = p64, iso, p
        mapped = self._map(p64)
        h = self._attention_out(self.cd, grown.attention, layer, [mapped, mapped.to(self.dtype), c])
        c64, c_iso, c_own = self._mlp_out(self.cd, grown.mlp, layer, h)
        reference = self._map(y64)
        parent_noise = _rel(y_iso, y64)
        dev = _rel(c_iso, reference)
        bound = auto_bound(self.dtype, parent_noise)
        check = BlockCheck(j, parent_index, _rel(c64, reference), dev, parent_noise, bound)
        if not dev <= bound:
            raise MorphError(
                f"block {j} (parent block {parent_index}): the child deviates from the parent by "
                f"{dev:.3e} in {self.dtype}, above the bound {bound:.3e} (parent noise "
                f"{parent_noise:.3e}, float64 deviation {check.rel_dev_f64:.3e})"
            )
        streams.update(p64=y64, p=y_p, c=c_own)
        return check

    def logits(self, streams: dict, ends: dict) -> dict[str, float]:
        """The final norm and head on the carried streams, vocabulary slice by slice."""
        p64, p, c = streams["p64"], streams["p"], streams["c"]
        parts: dict[str, list] = {"p64": [], "p": [], "c": []}
        for start in range(0, self.vocab, self.vocab_rows):
            stop = min(start + self.vocab_rows, self.vocab)
            rows = stop - start
            parent = self._ends_slice(start, stop)
            child = {EMBED: ends[EMBED][start:stop], NORM: ends[NORM]}
            if not self.tied:
                child[HEAD] = ends[HEAD][start:stop]
            for key, dims, tensors, dtype, x in (
                ("p64", self.pd, parent, torch.float64, p64),
                ("p", self.pd, parent, self.dtype, p),
                ("c", self.cd, child, self.dtype, c),
            ):
                piece = self._ends_piece(dims, tensors, rows, dtype)
                with torch.no_grad():
                    parts[key].append(piece.lm_head(piece.model.norm(x)))
                del piece
        out = {k: torch.cat(v, dim=-1) for k, v in parts.items()}
        parent_noise = _rel(out["p"], out["p64"])
        dev = _rel(out["c"], out["p64"])
        bound = auto_bound(self.dtype, parent_noise, 0)
        if not dev <= bound:
            raise MorphError(
                f"logits: the child deviates from the parent by {dev:.3e} in {self.dtype}, above "
                f"the bound {bound:.3e} (the parent's own noise {parent_noise:.3e})"
            )
        return {
            "logits_max_abs_dev": float((out["c"].double() - out["p"].double()).abs().max()),
            "logits_rel_dev": dev,
            "logits_parent_noise": parent_noise,
            "parent_logits": out["p64"][0],
        }
