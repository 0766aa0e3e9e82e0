"""A wider residual stream for an encoder–decoder (T5, BART): both stacks, one width.

The encoder and decoder share the token embedding and their width d; the decoder's
cross-attention reads the encoder's output, so both streams become x̃ = [x; …; x; a]
(k copies, r extra coordinates, D' = k·d + r) as in :func:`.transformer.grow_width`:

- writers (the token embeddings, BART's learned positions, every self-attention,
  cross-attention and feed-forward output projection) repeat their rows, a = 0 under T5's
  RMSNorm (no mean);
- readers (q/k/v of self-attention, q of cross-attention, k/v of cross-attention, which read the
  encoder's output [y; …; y; 0], feed-forward inputs, an untied head's layer reading the
  decoder's stream: ``lm_head``, ``classification_head.dense``) get k column
  blocks summing to W and random columns on the extra coordinates;
- every norm gets γ·√(kd/D') on the copies and eps·kd/D' (T5), so its output is unchanged
  there and zero on the extra coordinates;
- the encoder's output, which the model also returns, becomes [y; …; y; 0]: the
  measurement compares the other outputs (the logits) and each d-wide part of it with the
  parent's (zero on the extra coordinates; :mod:`.stream_output`);
- a head tied to the shared embedding reads k copies: the decoder's last norm is divided by
  k; T5's ``scale_decoder_outputs`` multiplies the decoder output by ``model_dim``^−½, which
  becomes D'^−½, so that norm is also multiplied by √(D'/d).

The BART layout normalises with LayerNorm (after each residual sum in BART and Marian, before
each branch in MBart and Pegasus): only whole copies (D' = k·d) are made, which keep
LayerNorm's output, LN([x; …; x]) = [LN(x); …; LN(x)] with the same eps. A model that returns
the stream itself (``T5Model``, ``BartModel``, ``T5EncoderModel``: no head reading the
decoder's stream) returns it as [y; …; y; 0] too.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from .encdec_layout import EncoderDecoder
from .errors import MorphError
from .pipeline import Request, run
from .position_tables import check_no_tables
from .report import MorphReport, Outcome, state_bytes
from .stream_output import restored, stream_view
from .support import check_subtree
from .transformer import (
    _edit_bytes,
    _Editor,
    _gain_offset,
    _is_stream_norm,
    _read,
    _stream_index,
    _write,
)

#: Module attributes that record the stream's width (T5's ``model_dim`` scales the decoder
#: output by model_dim^−½ where the config says so).
WIDTH_ATTRS = ("d_model", "embed_dim", "model_dim")


def _norms(model: nn.Module, es: EncoderDecoder) -> list[str]:
    """Every norm of width d in the stacks (block norms, final norms, BART's
    ``layernorm_embedding``)."""
    return [
        f"{s.prefix}.{rel}"
        for s in es.stacks
        for rel, m in model.get_submodule(s.prefix).named_modules()
        if rel and _is_stream_norm(m, es.d_model)
    ]


def _last_norm(model: nn.Module, es: EncoderDecoder) -> str:
    """The norm whose output the head reads: the decoder's final norm (T5's
    ``final_layer_norm``), else its last block's last norm (BART, post-LN); the encoder's
    where there is no decoder (T5's token classifier)."""
    s = es.stack("decoder") or es.stacks[-1]
    own = [f"{s.prefix}.{r}" for r in ("final_layer_norm", "layer_norm")]
    found = next((n for n in own if _exists(model, n)), None)
    return found or s.layout.blocks[-1].name(s.layout.family.norms[-1])


def _embeddings(model: nn.Module, d: int) -> dict[int, list[str]]:
    """Modules holding a (…, d) embedding table (token embeddings, learned positions, a tied
    head), grouped by their shared weight."""
    groups: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, nn.Embedding) and m.weight.shape[1] == d:
            groups.setdefault(id(m.weight), []).append(name)
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, nn.Linear) and id(m.weight) in groups:
            groups[id(m.weight)].append(name)
    return groups


def _exists(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def grow_width(
    model: nn.Module,
    es: EncoderDecoder,
    d_model: int,
    *,
    noise: float,
    probe: object,
    tol: float | str | None,
    seed: int | np.random.Generator | None,
    inplace: bool,
) -> tuple[nn.Module, MorphReport]:
    """The stream of both stacks grows from d to ``d_model`` (module docstring)."""
    d = es.d_model
    d_model = v.positive_int(d_model, "d_model")
    if d_model <= d:
        raise ValueError(f"d_model={d_model} must exceed the current width {d}")
    noise = v.real_number(noise, "noise", low=0.0)
    copies, extra = divmod(d_model, d)
    writers = [f"{s.prefix}.{w}" for s in es.stacks for w in s.layout.family.writers]
    check_no_tables(model, writers, d, d_model)  # Speech2Text's sinusoidal positions
    post_ln = es.stacks[0].layout.family.post_ln
    kind = es.stacks[0].layout.norm_kind
    if kind == "layer" and extra:
        why = (
            "normalises after each residual sum (post-LN)"
            if post_ln
            else "normalises with LayerNorm, whose extra coordinates would have to carry the "
            "mean of every writer"
        )
        raise MorphError(
            f"d_model={d_model} is not a multiple of {d}: {es.model_type} {why}; only whole copies "
            f"of the stream (a multiple of {d}) keep it"
        )
    if inplace:
        raise MorphError(
            f"inplace=True: grow_width of {type(model).__name__} (an encoder–decoder) builds the "
            "child on a copy; use inplace=False"
        )
    check_subtree(model, ("",))  # every module is rewritten; first: the norms run below
    norms = _norms(model, es)
    offsets = {n: _gain_offset(model.get_submodule(n), n, kind) for n in norms}
    last = _last_norm(model, es) if es.head is not None else None
    ratio = copies * d / d_model
    config = es.config
    scaled = isinstance(getattr(model, "model_dim", None), int) and bool(
        getattr(config, "scale_decoder_outputs", False)
    )
    factor = (math.sqrt(d_model / d) if scaled else 1.0) / (copies if es.tied else 1)
    groups = _embeddings(model, d)
    readers, writers = [], []
    attentions: set[str] = set()
    for s, block in es.blocks():
        for lay in (s.layout, s.cross):
            if lay is None:
                continue
            writers.append(block.name(lay.family.o))  # both layouts: the same blocks
            readers += [block.name(r) for r in lay.family.qkv]
            attentions.add(block.name(lay.family.attention))
        writers.append(block.name(s.layout.family.ffn_out))
        readers += [block.name(r) for r in s.layout.family.ffn_in]
    if not es.tied and es.head is not None:  # else the model returns the stream
        readers.append(es.head)
    edits = (*readers, *writers)
    new_bytes = (
        state_bytes(model) * (d_model - d) // d
        + _edit_bytes(model, edits) * (1 + copies) * d_model // d
    )
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        idx = _stream_index(d, copies, extra)
        for names in groups.values():
            first = names[0]
            w = child.get_parameter(f"{first}.weight").detach()
            edit.put(f"{first}.weight", _write(w, 1, copies, extra, kind), (None, idx))
            new = child.get_submodule(first).weight
            for other in names[1:]:  # tied tables and a tied head: one parameter
                child.get_submodule(other).weight = new
        for name in writers:
            w, b = edit.linear(name)
            edit.put_linear(
                name,
                _write(w, 0, copies, extra, kind),
                None if b is None else _write(b, 0, copies, extra, kind),
                idx,
                None,
            )
        for name in readers:
            w, _ = edit.linear(name)
            edit.put_linear(name, _read(edit, w, copies, extra, noise), None, None, idx)
        for name in norms:
            norm = child.get_submodule(name)
            scale = math.sqrt(ratio) * (factor if name == last else 1.0)
            g = edit.get(f"{name}.weight") * scale + offsets[name] * (scale - 1.0)
            edit.put(
                f"{name}.weight", torch.cat([g.repeat(copies), g.mean().expand(extra)]), (idx,)
            )
            if getattr(norm, "bias", None) is not None:
                bias = edit.get(f"{name}.bias") * (factor if name == last else 1.0)
                edit.put(
                    f"{name}.bias", torch.cat([bias.repeat(copies), bias.new_zeros(extra)]), (idx,)
                )
            if extra:
                attr = (
                    "eps" if isinstance(getattr(norm, "eps", None), float) else "variance_epsilon"
                )
                setattr(norm, attr, getattr(norm, attr) * ratio)
            if isinstance(getattr(norm, "normalized_shape", None), tuple):
                norm.normalized_shape = (d_model,)
        for name, module in child.named_modules():
            for attr in WIDTH_ATTRS:
                if name in attentions and attr == "embed_dim":
                    continue  # an attention's embed_dim is heads × head_dim, which stays
                if getattr(module, attr, None) == d and isinstance(getattr(module, attr), int):
                    setattr(module, attr, d_model)
        configs = {id(c): c for c in (getattr(child, "config", None),) if c is not None}
        for s in es.stacks:
            c = getattr(child.get_submodule(s.prefix), "config", None)
            if c is not None:
                configs[id(c)] = c
        eps = [float(getattr(child.get_submodule(n), "variance_epsilon", -1.0)) for n in norms]
        for c in configs.values():
            if hasattr(c, "d_model"):
                c.d_model = d_model
            if extra and hasattr(c, "layer_norm_epsilon") and len(set(eps)) == 1 and eps[0] > 0:
                c.layer_norm_epsilon = eps[0]
        notes = []
        if es.tied:
            notes.append(
                f"the head shares the embedding's {copies} copies: {last!r} divided by {copies}"
            )
        return edit.outcome(notes)

    # the stream is an output: a model without a head, or an encoder–decoder's encoder output
    # beside its head's (T5's token classifier, an encoder alone with a head, returns none)
    returns = es.head is None or es.stack("decoder") is not None
    child, report = run(
        Request(
            "grow_width",
            stream_view(model, d, copies, extra) if returns else model,
            tuple(s.prefix for s in es.stacks),
            build,
            probe=probe,
            tol=tol,
            layer_scope=False,
            inplace=inplace,
            edits=edits,
            copies=("",),
            new_bytes=new_bytes,
            replaced=("",),
        )
    )
    return restored(child, report, model, d, copies, extra) if returns else (child, report)
