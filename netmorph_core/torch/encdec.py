"""Function-preserving growth of encoder–decoder transformers (T5, BART), both stacks.

The transformer operations of :mod:`.transformer` dispatch here when the model is an
encoder–decoder of a layout :mod:`.encdec_layout` recognises (or T5's encoder alone); any
other model goes on to :mod:`.transformer`. Each stack is a :class:`~.transformer_layout.Layout`
of its blocks, so the block edits are the decoder-only ones:

- :func:`grow_ffn` — every block of both stacks (or ``layers``, global indices: the encoder's
  blocks 0 … E−1, then the decoder's E … E+D−1); T5's gated ``wi_0``/``wi_1`` grow together.
- :func:`add_heads` — self-attention of the chosen blocks and, in the decoder, their
  cross-attention (queries from the decoder stream, keys and values from the encoder output):
  new heads in cancelling sets (shared q/k/v rows, output columns ±C). T5's relative attention
  bias (buckets × heads, in block 0 of a stack, passed on to every later block) gets a zero
  column per new head, the same for every head of a set; it is one table per stack, so a
  stack grows whole or not at all. T5 has no 1/√d_kv scale and an explicit ``d_kv``.
- :func:`add_block` — T5 (pre-RMSNorm) and the pre-LN BART layouts (MBart, Pegasus): a new
  block whose branches add zero; T5's self-attention reads the stack's per-head relative bias,
  so its heads get zero output columns, while its cross-attention and feed-forward units come
  in cancelling sets. At a T5 stack's position 0 the new block takes over the bias table
  (block 0 computes the bias for every block). In a post-LayerNorm stack (BART, Marian) the
  norm before the new block gives its affine to the new block's last norm
  (:mod:`.transformer_postln`; a decoder block's three norms in a row).
- :func:`grow_width` — both stacks (:mod:`.encdec_width`).
- :func:`deepen_projection` — :func:`.transformer.deepen_projection` with the encoder–decoder
  probe.

Every operation keeps the config describing the child (T5: ``d_ff``, ``num_heads``,
``num_layers``/``num_decoder_layers``; BART: ``encoder_ffn_dim``/``decoder_ffn_dim``,
``encoder_attention_heads``/``decoder_attention_heads``), also in the stacks' own copies of it,
where one value covers what it sizes; else :func:`.hf_config.sync_config` marks it for
:func:`~netmorph_core.torch.load_grown`. The default probe holds token ids (2, 8), their
attention mask and decoder ids (2, 8) of other tokens (:func:`probe_inputs`).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from . import encdec_width, transformer
from .encdec_layout import EncoderDecoder, Stack, describe_encoder_decoder
from .errors import MorphError
from .pipeline import WHOLE_COPY_LIMIT, run_on_model
from .report import MorphReport, Outcome, ParamSource, state_bytes
from .speech_inputs import encdec_inputs
from .surgery import count_parameters
from .tracing import default_inputs
from .transformer import (
    _attention_units,
    _edit_bytes,
    _Editor,
    _ffn_units,
    _gather_rows,
    _head_sources,
    _itemsize,
    _linears,
    _method,
    check_bool,
)
from .transformer_layout import Block, Layout, as_matrix
from .transformer_postln import PostLnNorms, norms_plan

SEQ_LEN = 8
#: The relative attention bias (buckets × heads) of T5's block 0 self-attention (UMT5: every
#: block's); LongT5's transient-global attention holds a second one for its global tokens.
T5_BIAS = "relative_attention_bias"
T5_BIASES = (T5_BIAS, f"global_{T5_BIAS}")


def probe_inputs(model: nn.Module, es: EncoderDecoder) -> tuple[torch.Tensor, ...]:
    """Token ids (B, 8) and, with a decoder, the attention mask and decoder ids (B, 8) of
    other tokens, in the order of ``model.forward``'s parameters (B = 2, or 1 above
    :data:`~.pipeline.WHOLE_COPY_LIMIT` parameters). Each row of ids ends in the config's
    end-of-sequence token, found nowhere else (sequence-classification heads read the
    decoder's stream there, at the same positions)."""
    batch = 1 if count_parameters(model) > WHOLE_COPY_LIMIT else 2
    embed = getattr(model.get_submodule(es.stacks[0].prefix), "embed_tokens", None)
    found = None if isinstance(embed, nn.Embedding) else _speech_probe(model, es, batch)
    if found is not None:
        return found
    if not isinstance(embed, nn.Embedding):
        raise MorphError(
            f"{type(model).__name__}: the encoder reads no token embedding (embed_tokens), so no "
            "default probe is made; pass probe= (the model's positional inputs)"
        )
    device = embed.weight.device
    vocab = embed.num_embeddings
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, SEQ_LEN), generator=gen)
    eos = getattr(es.config, "eos_token_id", None)
    if isinstance(eos, int) and 0 <= eos < vocab and vocab > 1:
        ids[ids == eos] = (eos + 1) % vocab
        ids[:, -1] = eos
    ids = ids.to(device)
    if es.stack("decoder") is None:
        return (ids,)
    named = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "decoder_input_ids": torch.randint(0, vocab, (batch, SEQ_LEN), generator=gen).to(device),
    }
    order = [p for p in inspect.signature(model.forward).parameters if p != "self"][:3]
    if set(order) != set(named):
        raise MorphError(
            f"{type(model).__name__}.forward does not take input_ids, attention_mask and "
            "decoder_input_ids first; pass probe= (the model's positional inputs)"
        )
    return tuple(named[n] for n in order)


def _speech_probe(
    model: nn.Module, es: EncoderDecoder, batch: int
) -> tuple[torch.Tensor, ...] | None:
    """A speech encoder–decoder's audio features, mask and decoder ids
    (:func:`.speech_inputs.encdec_inputs`), None where they cannot be built."""
    decoder = es.stack("decoder")
    embed = getattr(model.get_submodule(decoder.prefix), "embed_tokens", None) if decoder else None
    features = default_inputs(model)
    if not isinstance(embed, nn.Embedding) or not features:
        return None
    gen = torch.Generator().manual_seed(0)
    return encdec_inputs(model, features[0][:batch], embed.num_embeddings, gen)


def _run(
    operation: str,
    model: nn.Module,
    es: EncoderDecoder,
    targets: tuple[str, ...],
    build: object,
    probe: object,
    tol: float | str | None,
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
        lambda: probe_inputs(model, es),
        **request,
    )


def _blocks(es: EncoderDecoder, layers: object) -> tuple[int, ...]:
    """The global block indices ``layers`` names (default: every block of both stacks)."""
    n = es.total
    if layers is None:
        return tuple(range(n))
    listed = v.int_sequence(layers)
    what = f"a global block index in [0, {n}) (encoder first, then decoder) or a list of them"
    items = [v.as_int(i, "layers", what) for i in ([layers] if listed is None else listed)]
    if not items or not all(0 <= i < n for i in items):
        raise ValueError(
            f"layers must be global block indices in [0, {n}) (the encoder's "
            f"{len(es.stacks[0])} blocks first, then the decoder's), got {items}"
        )
    if len(set(items)) != len(items):
        raise ValueError(f"layers names a block more than once: {items}")
    return tuple(sorted(items))


def _configs(child: nn.Module, es: EncoderDecoder, stack: str | None) -> list[object]:
    """The model's config and the stacks' own copies of it (T5 builds each stack from a
    copy): all of them, or the model's and ``stack``'s."""
    found = [getattr(child, "config", None)]
    for s in es.stacks:
        if stack is None or s.name == stack:
            found.append(getattr(child.get_submodule(s.prefix), "config", None))
    unique: dict[int, object] = {id(c): c for c in found if c is not None}
    return list(unique.values())


def _set(configs: Sequence[object], **values: int) -> None:
    for config in configs:
        for key, value in values.items():
            if hasattr(config, key):
                setattr(config, key, value)


def _whole(es: EncoderDecoder, chosen: Sequence[int]) -> list[Stack]:
    """The stacks every block of which is in ``chosen``."""
    picked = set(chosen)
    return [s for s in es.stacks if all(s.offset + j in picked for j in range(len(s)))]


# ---------------------------------------------------------------------------------------------
# Feed-forward hidden units


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
    """The feed-forward hidden size of the blocks ``layers`` grows to ``width`` (module
    docstring; other models: :func:`.transformer.grow_ffn`)."""
    es = describe_encoder_decoder(model)
    if es is None:
        return transformer.grow_ffn(
            model,
            width,
            layers=layers,
            method=method,
            probe=probe,
            tol=tol,
            seed=seed,
            inplace=inplace,
        )
    method = _method(method)
    chosen = _blocks(es, layers)
    width = v.positive_int(width, "width")
    where = {i: es.locate(i) for i in chosen}
    hidden = {
        i: as_matrix(model.get_submodule(s.layout.blocks[j].name(s.layout.family.ffn_out))).shape[1]
        for i, (s, j) in where.items()
    }
    if width <= max(hidden.values()):
        raise ValueError(
            f"width={width} must exceed the feed-forward hidden size {max(hidden.values())}"
        )
    edits = tuple(
        name
        for s, j in where.values()
        for name in _linears(
            [s.layout.blocks[j]], (*s.layout.family.ffn_in, s.layout.family.ffn_out)
        )
    )
    grown = sum(
        (width - hidden[i]) * es.d_model * (len(s.layout.family.ffn_in) + 1)
        for i, (s, _) in where.items()
    )
    new_bytes = grown * _itemsize(model) + _edit_bytes(model, edits) * width // min(hidden.values())
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        for i, (s, j) in where.items():
            _ffn_units(edit, s.layout.blocks[j], s.layout, hidden[i], width, method)
        whole = {s.name for s in _whole(es, chosen)}
        if es.kind == "t5" and len(whole) == len(es.stacks):
            _set(_configs(child, es, None), d_ff=width)
        for name in whole if es.kind == "bart" else ():
            _set(_configs(child, es, name), **{f"{name}_ffn_dim": width})
        notes = []
        if 1 in {width - h for h in hidden.values()} and method == "netmorph":
            notes.append("one new unit has no partner: its output column is zero")
        return edit.outcome(notes)

    targets = tuple(s.layout.blocks[j].name(s.layout.family.ffn_out) for s, j in where.values())
    return _run(
        "grow_ffn",
        model,
        es,
        targets,
        build,
        probe,
        tol,
        inplace,
        edits=edits,
        new_bytes=new_bytes,
        replaced=edits,
    )


# ---------------------------------------------------------------------------------------------
# Attention heads


def _attentions(s: Stack, j: int) -> list[tuple[Layout, Block]]:
    """(layout, block) of block ``j``'s self-attention and, in the decoder, cross-attention.
    T5's self-attention layout drops ``alibi``: new heads get one (zero) bias column each, so
    the heads of a cancelling set see one bias and cancel."""
    own = dataclasses.replace(s.layout, family=dataclasses.replace(s.layout.family, alibi=False))
    found = [(own, s.layout.blocks[j])]
    if s.cross is not None:
        found.append((s.cross, s.cross.blocks[j]))
    return found


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
    """Every attention of the blocks ``layers`` (self-attention, and the decoder's
    cross-attention) gets ``heads`` heads of its head_dim (module docstring; other models:
    :func:`.transformer.add_heads`)."""
    es = describe_encoder_decoder(model)
    if es is None:
        return transformer.add_heads(
            model,
            heads,
            kv_heads=kv_heads,
            layers=layers,
            method=method,
            probe=probe,
            tol=tol,
            seed=seed,
            inplace=inplace,
        )
    method = _method(method)
    chosen = _blocks(es, layers)
    heads = v.positive_int(heads, "heads")
    if kv_heads is not None and v.positive_int(kv_heads, "kv_heads") != heads:
        raise MorphError(
            f"kv_heads={kv_heads}: {es.model_type} attention is multi-head (one key/value head per "
            "query head); leave kv_heads None"
        )
    where = {i: es.locate(i) for i in chosen}
    parts = [(lay, b) for s, j in where.values() for lay, b in _attentions(s, j)]
    for lay, b in parts:
        if heads <= b.heads:
            name = b.name(lay.family.attention)
            raise ValueError(f"heads={heads} must exceed the {b.heads} heads of {name!r}")
    touched = {s.name for s, _ in where.values()}
    whole = {s.name for s in _whole(es, chosen)}
    if es.kind == "t5" and touched - whole:
        s = es.stack(sorted(touched - whole)[0])
        raise MorphError(
            f"layers: T5 computes the {s.name}'s attention biases once, for the head count of "
            f"'{s.prefix}.block.0', and passes them to every block of the stack; grow the heads "
            f"of all its blocks (global indices {s.offset} … {s.offset + len(s) - 1})"
        )
    tables = [  # block 0's (T5), or every block's (UMT5)
        f"{b.name(s.layout.family.attention)}.{table}.weight"
        for s in es.stacks
        if s.name in touched
        for b in s.layout.blocks
        for table in T5_BIASES
        if isinstance(
            getattr(model.get_submodule(b.name(s.layout.family.attention)), table, None),
            nn.Embedding,
        )
    ]
    edits = tuple(b.name(rel) for lay, b in parts for rel in (*lay.family.qkv, lay.family.o))
    grown = sum(4 * (heads - b.heads) * b.head_dim * es.d_model for _, b in parts)
    least = min(b.heads for _, b in parts)
    new_bytes = grown * _itemsize(model) + _edit_bytes(model, edits) * heads // least
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        lonely = 0
        for lay, b in parts:
            lonely += _attention_units(edit, b, lay, heads, heads, method)
            attention = child.get_submodule(b.name(lay.family.attention))
            for attr, value in (("n_heads", heads), ("inner_dim", heads * b.head_dim)):
                if isinstance(getattr(attention, attr, None), int):
                    setattr(attention, attr, value)
        for name in tables:  # a zero column per new head, one for every head of a set
            t = edit.get(name)
            q_src = _head_sources(t.shape[1], t.shape[1], heads, heads)[0]
            edit.put(name, _gather_rows(t, q_src, axis=1), (None, q_src))
        if es.kind == "t5" and len(whole) == len(es.stacks):
            _set(_configs(child, es, None), num_heads=heads)
        if es.kind == "bart" and es.d_model % heads == 0:  # else the stock class refuses it
            for name in whole:
                _set(_configs(child, es, name), **{f"{name}_attention_heads": heads})
        notes = []
        if lonely and method == "netmorph":
            notes.append(f"{lonely} new heads have no partner: zero output columns")
        return edit.outcome(notes)

    targets = tuple(b.name(lay.family.attention) for lay, b in parts)
    return _run(
        "add_heads",
        model,
        es,
        targets,
        build,
        probe,
        tol,
        inplace,
        edits=edits,
        new_bytes=new_bytes,
        replaced=(*edits, *(n.rpartition(".")[0] for n in tables)),
    )


# ---------------------------------------------------------------------------------------------
# Depth


def _position(es: EncoderDecoder, at: object) -> tuple[Stack, int]:
    """(stack, insertion position) of ``at``: a global block index (the new block goes
    before that block; the total count appends to the last stack), or "encoder.i" /
    "decoder.i" (position i of that stack, its length appending to it)."""
    if isinstance(at, str):
        name, _, pos = at.partition(".")
        s = es.stack(name)
        if s is None or not (pos.isascii() and pos.isdigit()) or int(pos) > len(s):
            stacks = ", ".join(f"'{t.name}.0' … '{t.name}.{len(t)}'" for t in es.stacks)
            raise ValueError(f"at={at!r} must name a stack position: {stacks}")
        return s, int(pos)
    n = es.total
    index = v.as_int(at, "at", f"a global block index in [0, {n}] or 'encoder.i'/'decoder.i'")
    if not 0 <= index <= n:
        raise ValueError(f"at must be a global block index in [0, {n}], got {index}")
    if index == n:
        return es.stacks[-1], len(es.stacks[-1])
    return es.locate(index)


def _owns_bias(model: nn.Module, s: Stack, block: Block) -> bool:
    """Whether ``block``'s self-attention computes a relative attention bias itself."""
    attention = model.get_submodule(block.name(s.layout.family.attention))
    return isinstance(getattr(attention, T5_BIAS, None), nn.Embedding)


def add_block(
    model: nn.Module,
    at: int | str,
    *,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """A new block inserted at ``at`` (module docstring; other models:
    :func:`.transformer.add_block`)."""
    es = describe_encoder_decoder(model)
    if es is None:
        return transformer.add_block(
            model, at, method=method, probe=probe, tol=tol, seed=seed, inplace=inplace
        )
    method = _method(method)
    s, pos = _position(es, at)
    n = len(s)
    post = _post_ln(model, es, s, pos, at) if s.layout.family.post_ln else None
    method = method if post is None else post.units(method)
    blocks_path = f"{s.prefix}.{s.layout.family.blocks}"
    owns = [_owns_bias(model, s, b) for b in s.layout.blocks]
    shared_bias = owns[0] and not all(owns)  # T5: block 0's bias serves every block
    template = s.layout.blocks[min(pos, n - 1)]
    hidden = as_matrix(model.get_submodule(template.name(s.layout.family.ffn_out))).shape[1]
    layouts = [lay for lay in (s.layout, s.cross) if lay is not None]
    rels = [(*lay.family.qkv, lay.family.o) for lay in layouts]
    rels.append((*s.layout.family.ffn_in, s.layout.family.ffn_out))
    edits = tuple(template.name(rel) for group in rels for rel in group)
    new_bytes = state_bytes(model.get_submodule(template.prefix)) + _edit_bytes(model, edits)
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        blocks = child.get_submodule(blocks_path)
        block = copy.deepcopy(blocks[min(pos, n - 1)])
        blocks.insert(pos, block)
        # T5: the stack's bias table stays in (or moves to) the new block 0, which computes
        # it for every block as block 0 did; any other copy of it is dropped
        for m in blocks[1 if pos == 0 else pos].modules() if shared_bias else ():
            if getattr(m, "has_relative_attention_bias", False) is True:
                m.has_relative_attention_bias = False
                for table in T5_BIASES:
                    if hasattr(m, table):
                        delattr(m, table)
        for i, b in enumerate(blocks):
            for m in b.modules():
                if isinstance(getattr(m, "layer_idx", None), int):
                    m.layer_idx = i
        edit = _Editor(child, seed)
        new = Block(f"{blocks_path}.{pos}", template.heads, template.kv_heads, template.head_dim)
        lonely = _attention_units(
            edit, new, s.layout, template.heads, template.heads, method, fresh=True
        )
        if s.cross is not None:
            c = s.cross.blocks[min(pos, n - 1)]
            cross = Block(new.prefix, c.heads, c.kv_heads, c.head_dim)
            _attention_units(edit, cross, s.cross, c.heads, c.heads, method, fresh=True)
        _ffn_units(edit, new, s.layout, hidden, hidden, method, fresh=True)
        sources: dict[str, ParamSource] = {}
        offset = len(blocks_path) + 1
        for name, _ in child.named_parameters():
            if not name.startswith(blocks_path + "."):
                continue
            i, _, rest = name[offset:].partition(".")
            j = int(i)
            if j == pos and T5_BIAS in rest:  # the stack's table, moved to the new block 0
                sources[name] = ParamSource(
                    f"{template.prefix}.{rest}", f"{template.prefix}.{rest}"
                )
            elif j == pos:
                sources[name] = ParamSource(None, f"{template.prefix}.{rest}")
            elif j > pos:
                old = f"{blocks_path}.{j - 1}.{rest}"
                sources[name] = ParamSource(old, old)
        edit.sources = sources
        notes = []
        if post is not None:
            edit.sources.update(post.apply(child, new.prefix))
            notes += post.notes()
        field = "num_layers" if s.name == "encoder" else "num_decoder_layers"
        if es.kind == "bart":
            field = f"{s.name}_layers"
        # the model's config and its language model's (Florence-2 holds a BART)
        owner = child.get_submodule(es.owner) if es.owner else None
        tops = [c for c in (getattr(child, "config", None), getattr(owner, "config", None)) if c]
        _set(list({id(c): c for c in tops}.values()), **{field: n + 1})
        stack_config = getattr(child.get_submodule(s.prefix), "config", None)
        if stack_config is not None and all(stack_config is not c for c in tops):
            _set([stack_config], **({field: n + 1} if es.kind == "bart" else {"num_layers": n + 1}))
        if lonely and method == "netmorph":
            notes.append(
                "the self-attention's heads read a relative bias per head: zero output columns"
            )
        outcome = edit.outcome(notes)
        named = child.named_parameters()
        return outcome.count_new(
            p for name, p in named if name.startswith(f"{new.prefix}.") and T5_BIAS not in name
        )

    return _run(
        "add_block",
        model,
        es,
        (f"{blocks_path}.{pos}",),
        build,
        probe,
        tol,
        inplace,
        edits=edits,
        copies=(template.prefix,),
        new_bytes=new_bytes,
    )


def _post_ln(model: nn.Module, es: EncoderDecoder, s: Stack, pos: int, at: object) -> PostLnNorms:
    """The norm edits of a new block at position ``pos`` of a post-LN stack (BART's):
    :mod:`.transformer_postln`, with the norm before it the previous block's last, or the
    stack's ``layernorm_embedding`` at 0, and a decoder block's cross-attention norm among the
    norms in between; MorphError where no norm precedes block 0 (Marian adds its embeddings
    unnormalised)."""
    fam = s.layout.family
    blocks_path = f"{s.prefix}.{fam.blocks}"
    if pos > 0:
        previous = f"{blocks_path}.{pos - 1}.{fam.norms[-1]}"
    else:
        previous = next(
            (
                f"{s.prefix}.{rel}"
                for rel in fam.stream_norms
                if isinstance(getattr(model.get_submodule(s.prefix), rel, None), nn.LayerNorm)
            ),
            None,
        )
        if previous is None:
            raise MorphError(
                f"at={at!r}: {es.model_type} normalises after each residual sum (post-LN) and "
                f"adds the {s.name}'s embeddings unnormalised (no layernorm_embedding): a new "
                f"block before block 0 would normalise them; insert at {s.name}.1 or later"
            )
    template = s.layout.blocks[min(pos, len(s) - 1)].prefix
    middle = (fam.norms[0], *(s.cross.family.norms if s.cross is not None else ()))
    return norms_plan(model, es.d_model, previous, template, middle, fam.norms[-1])


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
    """:func:`.transformer.deepen_projection`, measured on :func:`probe_inputs` for an
    encoder–decoder when no probe is given (one that makes none is measured as before)."""
    if probe is None:
        try:
            es = describe_encoder_decoder(model)
            probe = None if es is None else probe_inputs(model, es)
        except MorphError:  # another layout, or no token ids: the model's own inputs
            probe = None
    return transformer.deepen_projection(
        model, at, width=width, probe=probe, tol=tol, seed=seed, inplace=inplace
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
    """The residual stream of both stacks grows to ``d_model`` (:mod:`.encdec_width`; other
    models: :func:`.transformer.grow_width`)."""
    es = describe_encoder_decoder(model)
    if es is None:
        return transformer.grow_width(
            model, d_model, noise=noise, probe=probe, tol=tol, seed=seed, inplace=inplace
        )
    return encdec_width.grow_width(
        model,
        es,
        d_model,
        noise=noise,
        probe=probe_inputs(model, es) if probe is None else probe,
        tol=tol,
        seed=seed,
        inplace=check_bool(inplace, "inplace"),
    )
