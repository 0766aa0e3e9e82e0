"""A transformer's parts found from its modules and one traced forward pass, not from names.

:func:`trace_stack` runs the parent on one example of its own input kind
(:func:`.transformer_stream.probe_inputs`: token ids, images or audio features) with forward
hooks (no parameter is touched; training flags are restored; every run starts from one seed,
so random masking draws alike, :mod:`.seeded`), after checking that two runs agree (no
randomness from outside torch's generators), and reads from the calls of block 0:

- the linear layers (``nn.Linear`` and its subclasses, ``Conv1D``) in the order they run,
  in four phases of consecutive calls sharing one input: the query/key/value readers (three
  layers, or one fused layer), the output projection, the feed-forward input(s) (plain, a
  gate/up pair, or one fused [gate; up] layer of twice the hidden size) and the feed-forward
  output;
- the norms (modules with a 1-D gain and a float eps): pre-LN, one feeds the attention
  readers and one the feed-forward readers (both read the block's input: a parallel block);
  post-LN, the attention reads the block's input itself and the norms follow the sums; and
  the norms N₁, N₂ that read each branch's output before its residual sum
  (:mod:`.transformer_branches`: OLMo-2 with the stream read bare; with pre-norms as well: a
  sandwich block);
- the residual sums, checked numerically on the recorded tensors
  (:mod:`.transformer_residual`): y = x + λ₁⊙o + λ₂⊙f (parallel), m = x + λ₁⊙o,
  y = m + λ₂⊙f (sequential) with per-channel layer scales λ found structurally (o and f
  being N₁'s and N₂'s outputs where the branches are normalised), or
  m = LN₁(x + o), y = LN₂(m + f) (post-LN);
- the attention's data flow, checked by two transformations of the recorded run that keep the
  output of softmax(q·kᵀ)·v·Wₒ unchanged exactly when the rows are read right: q of group g
  scaled by 2^a_g, k by 2^−a_g, v by 2^b_g and Wₒ's columns by 2^−b_g (powers of two: exact
  in floating point; after the norm where one normalises the whole q or k: OLMo-2's joint
  q/k norms), which also decides the row layout of a fused q/k/v layer; and a
  rotation of the heads (q, k, v and Wₒ's columns together), which changes the output only
  when each head carries its own position bias (ALiBi, or a relative position bias table);
- outside the blocks: the stream's writers (:func:`.transformer_stream.stream_writers`,
  proven complete by a run with their parameters zero), the norms that run before the first
  block (stream norms), and the norms and linear layers after the last one that read the
  stream itself (final and head norms, readers).

Anything else is refused with a :class:`MorphError` naming the module not understood.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import MorphError
from .forward_kept import kept
from .layer_reads import attribute_reads
from .linear_view import as_matrix
from .seeded import seeded
from .speech_stream import bias_names, entry_norms, stream_convs, weight_tables
from .speech_wavlm import called_projections, side_layers
from .transformer_branches import branch_norms, reader_norm
from .transformer_latent import heads_carry_bias, latent_geometry, latent_phases
from .transformer_residual import (
    Branches,
    factor,
    post_ln_holds,
    pre_ln_scales,
    scale_candidates,
)
from .transformer_stream import (
    NoWriterError,
    check_writers,
    entry_is_linear,
    is_linear,
    on_stream,
    owner_tables,
    probe_inputs,
    stream_writers,
    token_embedding,
    writer_candidates,
)

#: Names of per-head relative position biases (…, heads): BEiT's tables, MPNet's and T5's
#: bucketed embeddings. The operations grow them per head; a model that holds one has no
#: other per-head position bias (``alibi``).
POSITION_BIASES = ("relative_position_bias", "relative_attention_bias")
#: Attention-module attributes giving head_dim, the query heads and the key/value heads.
HEAD_DIM_ATTRS = ("head_dim", "head_size", "attention_head_size")
HEADS_ATTRS = ("num_heads", "num_attention_heads", "n_head")
KV_ATTRS = ("num_kv_heads", "num_key_value_heads")
EPS_ATTRS = ("eps", "variance_epsilon", "epsilon")


@dataclass(frozen=True)
class Stack:
    """What :func:`trace_stack` found: names relative to a block (``attention`` … ``norms``,
    ``scales``) or to the stream's owner (``writers``, ``final_norm``, ``stream_norms``,
    ``head_norms``: norms after the last block before the final one, ``readers``: linear
    layers after the last block reading the stream, those outside the owner qualified from
    the root: DeiT's class and distillation classifiers); ``post_ln``: norms after the sums;
    ``pooled_norms``: norms outside the owner (qualified from the model's root) that read
    tokens pooled from the stream after the final norm (AST's classifier LayerNorm);
    ``latent``: the query layer and key/value up-projection of a latent attention
    (:mod:`.transformer_latent`; ``qkv`` then holds its two stream readers)."""

    attention: str
    qkv: tuple[str, ...]
    qkv_layout: str
    o: str
    ffn_in: tuple[str, ...]
    gate_up: bool
    ffn_out: str
    norms: tuple[str, ...]
    parallel: bool
    alibi: bool
    writers: tuple[str, ...]
    final_norm: str | None
    stream_norms: tuple[str, ...]
    post_ln: bool = False
    scales: tuple[str, ...] = ()
    head_norms: tuple[str, ...] = ()
    readers: tuple[str, ...] = ()
    branch_norms: tuple[str, ...] = ()
    qk_norms: tuple[str, ...] = ()
    stream_convs: tuple[str, ...] = ()
    pooled_norms: tuple[str, ...] = ()
    latent: tuple[str, ...] = ()
    linear_entry: bool = True


#: Last name components that say which of q, k, v an attention input layer computes.
_ROLES = (
    frozenset({"q", "query", "q_proj", "q_lin", "wq", "query_proj"}),
    frozenset({"k", "key", "k_proj", "k_lin", "wk", "key_proj"}),
    frozenset({"v", "value", "v_proj", "v_lin", "wv", "value_proj"}),
)


def _by_role(reads: list) -> list:
    """The three attention input calls as (q, k, v): by their names where these say so
    (YOLOS runs key, value, then query), else in the order they run."""
    if len(reads) != 3:
        return reads
    ordered = [
        next((c for c in reads if c.name.rpartition(".")[2].lower() in role), None)
        for role in _ROLES
    ]
    return ordered if all(ordered) and len({id(c) for c in ordered}) == 3 else reads


def is_norm(module: nn.Module) -> bool:
    """A LayerNorm/RMSNorm-like module: torch's own, or a leaf with a 1-D gain and float eps."""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return True
    w = getattr(module, "weight", None)
    eps = any(isinstance(getattr(module, a, None), float) for a in EPS_ATTRS)
    leaf = next(module.children(), None) is None
    return leaf and eps and isinstance(w, torch.Tensor) and w.dim() == 1


def _int_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    return next(
        (int(getattr(module, a)) for a in names if isinstance(getattr(module, a, None), int)), None
    )


def head_dim(attention: nn.Module) -> int | None:
    """head_dim from the attention module or the first submodule that records it."""
    for module in attention.modules():
        value = _int_attr(module, HEAD_DIM_ATTRS)
        if value:
            return value
    return None


def _head_dim_from_heads(attention: nn.Module, rows: list[int]) -> int | None:
    """head_dim where the attention records its head count alone (GPT-1's ``n_head``) and no
    key/value head count: q's rows / heads (a fused layer: a third of its rows)."""
    heads = _int_attr(attention, HEADS_ATTRS)
    if not heads or _int_attr(attention, (*KV_ATTRS, "num_key_value_groups")) is not None:
        return None
    q_rows, rest = divmod(rows[0], 3) if len(rows) == 1 else (rows[0], 0)
    return q_rows // heads if not rest and q_rows % heads == 0 else None


def geometry(attention: nn.Module, qkv: list[nn.Module], where: str) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim) of an attention module and its q/k/v layer(s):
    from the rows of separate layers, or for one fused layer of (H + 2·KV)·head_dim rows from
    the module's head counts where it records them (multi-head attention otherwise)."""
    rows = [as_matrix(m).shape[0] for m in qkv]
    hd = head_dim(attention) or _head_dim_from_heads(attention, rows)
    if hd is None:
        raise MorphError(
            f"{where!r} records no head_dim ({'/'.join(HEAD_DIM_ATTRS)}) and no head count "
            "that divides its q/k/v rows; refused"
        )
    if len(qkv) == 3:
        if rows[1] != rows[2] or rows[1] % hd or rows[0] % rows[1]:
            raise MorphError(f"{where!r}: q/k/v rows {rows} are not whole heads of {hd}; refused")
        return rows[0] // hd, rows[1] // hd, hd
    if rows[0] % hd:
        raise MorphError(f"{where!r}: fused q/k/v rows {rows[0]} are not heads of {hd}; refused")
    units = rows[0] // hd
    heads = next(
        (_int_attr(m, HEADS_ATTRS) for m in attention.modules() if _int_attr(m, HEADS_ATTRS)),
        None,
    )
    kv = _int_attr(attention, KV_ATTRS)
    groups = _int_attr(attention, ("num_key_value_groups",))
    if kv is None and heads is not None and groups:
        kv = heads // groups
    if heads is None and kv is not None:
        heads = units - 2 * kv
    elif heads is not None and kv is None:
        kv = (units - heads) // 2
    elif heads is None:
        heads = kv = units // 3
    if heads <= 0 or kv <= 0 or heads + 2 * kv != units or heads % kv:
        raise MorphError(
            f"{where!r}: a fused q/k/v layer of {units} heads of {hd} does not hold {heads} "
            f"query and 2×{kv} key/value heads; refused"
        )
    return heads, kv, hd


def qkv_rows(layout: str, heads: int, kv: int, hd: int) -> tuple[torch.Tensor, ...]:
    """Row indices (H, hd), (KV, hd), (KV, hd) of q, k and v in a fused layer."""
    if layout == "concat":
        q = torch.arange(heads * hd).view(heads, hd)
        k = heads * hd + torch.arange(kv * hd).view(kv, hd)
        return q, k, k + kv * hd
    rep = heads // kv
    base = (torch.arange(kv) * (rep + 2) * hd)[:, None]
    q = (base[:, None, :] + torch.arange(rep * hd).view(rep, hd)[None]).reshape(heads, hd)
    k = base + rep * hd + torch.arange(hd)
    return q, k, k + hd


@dataclass
class _Call:
    name: str
    inp: torch.Tensor | None
    out: torch.Tensor | None


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in (*args, kwargs.get("hidden_states"), *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
    return None


def _output(out: object) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if callable(getattr(out, "to_tuple", None)):  # a Hugging Face ModelOutput
        out = out.to_tuple()
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


Transform = dict[str, Callable[[torch.Tensor], torch.Tensor]]


def _run(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    watch: dict[str, nn.Module],
    transform: Transform,
    params: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[_Call]]:
    """The model's output on ``inputs`` with the calls of ``watch`` recorded; ``transform``:
    name → function applied to that module's output (a name ending in ":in": to its input);
    ``params``: qualified parameter names → the values this run uses instead (the model's
    own parameters are not touched)."""
    calls: list[_Call] = []
    handles = []

    def hook(name: str) -> Callable:
        def record(module: nn.Module, args: tuple, kwargs: dict, out: object) -> object:
            value = _output(out)
            if value is not None and name.startswith("L:"):  # kept from later in-place sums
                value = value.detach().clone()
            calls.append(_Call(name, _first_tensor(args, kwargs), value))
            fn = transform.get(name)
            return fn(out) if fn is not None and isinstance(out, torch.Tensor) else None

        return record

    def begin(name: str) -> Callable:
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls.append(_Call(name + ":start", _first_tensor(args, kwargs), None))

        return record

    def pre(name: str) -> Callable:
        def change(module: nn.Module, args: tuple) -> tuple:
            return (transform[name + ":in"](args[0]), *args[1:])

        return change

    for name, module in watch.items():
        handles.append(module.register_forward_hook(hook(name), with_kwargs=True))
        if name.startswith(("B:", "W:")):
            handles.append(module.register_forward_pre_hook(begin(name), with_kwargs=True))
        if name + ":in" in transform:
            handles.append(module.register_forward_pre_hook(pre(name)))
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with kept(model), torch.no_grad(), seeded(model, inputs):  # random masking: one draw
            if params:
                out = torch.func.functional_call(model, params, inputs)
            else:
                out = model(*inputs)
            y = _output(getattr(out, "logits", out))
    except MorphError:
        raise
    except Exception as exc:  # whatever the model raises, its layout cannot be traced
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise MorphError(
            f"{type(model).__name__} does not run on {_what(inputs)} "
            f"({type(exc).__name__}: {reason}): its layout cannot be traced; refused"
        ) from exc
    finally:
        for m, flag in flags:
            m.training = flag
        for h in handles:
            h.remove()
    if y is None:
        raise MorphError(f"{type(model).__name__} returns no tensor on {_what(inputs)}; refused")
    return y.detach(), calls


def _what(inputs: tuple[torch.Tensor, ...]) -> str:
    kind = "token ids" if not inputs[0].is_floating_point() else "inputs"
    return f"{kind} of shape {tuple(inputs[0].shape)}"


def _phases(calls: list[_Call]) -> list[list[_Call]]:
    """Consecutive calls that read the same input tensor."""
    runs: list[list[_Call]] = []
    for c in calls:
        if runs and runs[-1][-1].inp is c.inp:
            runs[-1].append(c)
        else:
            runs.append([c])
    return runs


def _prefix(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """|a − b| ≤ 64·eps·max(|b|, 1), eps of ``dtype`` (default: b's)."""
    scale = float(b.abs().max()) if b.numel() else 0.0
    eps = torch.finfo(dtype or b.dtype).eps
    return bool(torch.isfinite(a).all()) and float((a - b).abs().max()) <= 64 * eps * max(scale, 1)


def trace_stack(model: nn.Module, owner: str, blocks_rel: str, d: int | None = None) -> Stack:
    """The :class:`Stack` of the block list ``owner.blocks_rel`` (module docstring); ``d``:
    the stream's width (None: block 0's output width). An attention that hands its layers'
    weights to ``F.multi_head_attention_forward`` (WavLM) is traced through calls of them
    (:func:`.speech_wavlm.called_projections`), its gate layers left out."""
    with called_projections(model):
        return _trace_stack(model, owner, blocks_rel, d)


def _trace_stack(model: nn.Module, owner: str, blocks_rel: str, d: int | None) -> Stack:
    root = model.get_submodule(owner) if owner else model
    blocks = root.get_submodule(blocks_rel)
    block = blocks[0]
    where = f"{owner}.{blocks_rel}.0" if owner else f"{blocks_rel}.0"
    embed = token_embedding(model, root)
    inputs = probe_inputs(model, root)
    side = side_layers(block)
    linears = {f"L:{n}": m for n, m in block.named_modules() if is_linear(m) and n not in side}
    norms = {f"N:{n}": m for n, m in block.named_modules() if is_norm(m)}
    outside = {
        f"O:{n}": m
        for n, m in root.named_modules()
        if n and not (n == blocks_rel or n.startswith(blocks_rel + ".")) and is_norm(m)
    }
    candidates = {f"W:{n}": m for n, m in writer_candidates(root, blocks_rel).items()}
    head_norms = {  # norms of a head outside the owner (AST's classifier)
        f"H:{n}": m
        for n, m in model.named_modules()
        if owner and not (n == owner or n.startswith(owner + ".")) and is_norm(m)
    }
    outer_layers = {  # linear layers of heads outside the owner (DeiT's two classifiers)
        f"R:{n}": m
        for n, m in model.named_modules()
        if owner and not (n == owner or n.startswith(owner + ".")) and is_linear(m)
    }
    watch = {
        **linears,
        **norms,
        **outside,
        **candidates,
        **head_norms,
        **outer_layers,
        "B:first": block,
        "B:last": blocks[-1],
    }
    y0, calls = _run(model, inputs, watch, {})
    if not _close(_run(model, inputs, {}, {})[0], y0):
        raise MorphError(
            f"{type(model).__name__} gives two outputs on one input in eval mode under one "
            "seed (randomness from outside torch's generators): its layout cannot be traced; "
            "refused"
        )
    first = next((c for c in calls if c.name == "B:first"), None)
    if first is None or first.out is None:
        raise MorphError(f"{where!r} does not run or returns no tensor; refused")
    d = d or int(first.out.shape[-1])
    runs = sum(c.name == "B:first" for c in calls)
    if runs != 1:
        raise MorphError(f"{where!r} runs {runs} times in one forward pass; refused")
    mine = [c for c in calls if c.name in linears]
    counts = {n: sum(c.name == n for c in mine) for n in linears}
    for n, k in counts.items():
        reads = [r for r in attribute_reads(block, n[2:]) if not r.chain] if k == 0 else []
        if reads:  # timm's BEiT and EVA: F.linear(x, self.qkv.weight, bias of q and v)
            raise MorphError(
                f"'{where}.{n[2:]}' is never called: {reads[0].where} reads "
                f"{reads[0].attr} directly in its forward; refused"
            )
        if k != 1:
            raise MorphError(f"'{where}.{n[2:]}' runs {k} times in one forward pass; refused")
    order = [c.name for c in calls]
    if "B:last" not in order:
        last = (
            f"{owner}.{blocks_rel}.{len(blocks) - 1}"
            if owner
            else f"{blocks_rel}.{len(blocks) - 1}"
        )
        raise MorphError(
            f"{last!r} does not run in a forward pass: {blocks_rel!r} is not a stack of blocks "
            "that the stream passes through; refused"
        )
    start, end = order.index("B:first:start"), len(order) - 1 - order[::-1].index("B:last")
    phases = _phases(mine)
    shape = " → ".join("|".join(c.name[2:] for c in p) for p in phases)
    phases, latent = latent_phases(phases)
    if len(phases) != 4 or len(phases[1]) != 1 or len(phases[3]) != 1:
        raise MorphError(
            f"{where!r}: its linear layers run as {shape}, not as q/k/v → o → feed-forward in → "
            "out (attention then one MLP); this block is not understood; refused"
        )
    reads, (o,), ffn_in, (out,) = phases
    mods = {c.name: linears[c.name] for c in mine}
    for c in (*reads, *ffn_in):
        if as_matrix(mods[c.name]).shape[1] != d:
            raise MorphError(
                f"'{where}.{c.name[2:]}' does not read the stream (width {d}); refused"
            )
    for c in (o, out):
        if as_matrix(mods[c.name]).shape[0] != d:
            raise MorphError(
                f"'{where}.{c.name[2:]}' does not write the stream (width {d}); refused"
            )
    hidden = as_matrix(mods[out.name]).shape[1]
    fin_rows = [as_matrix(mods[c.name]).shape[0] for c in ffn_in]
    gate_up = len(ffn_in) == 1 and fin_rows[0] == 2 * hidden
    if not gate_up and (len(ffn_in) > 2 or any(r != hidden for r in fin_rows)):
        raise MorphError(
            f"'{where}': feed-forward inputs {[c.name[2:] for c in ffn_in]} of {fin_rows} rows do "
            f"not feed {hidden} hidden units (plain, gated or fused [gate; up]); refused"
        )
    if len(reads) not in (1, 3) and not latent:
        raise MorphError(f"'{where}': {len(reads)} attention input layers; refused")
    reads = _by_role(reads)
    x_call = calls[start]
    norm_of = {id(c.out): c for c in calls[start:] if c.name in norms and c.out is not None}
    n_attn, n_mlp = norm_of.get(id(reads[0].inp)), norm_of.get(id(ffn_in[0].inp))
    dtype = first.out.dtype
    scales: tuple[str, ...] = ()
    b_attn, b_mlp = branch_norms(calls, o, out, set(norms))
    branched = b_attn is not None and b_mlp is not None
    bare = n_attn is None and reads[0].inp is x_call.inp
    pre = n_attn is not None and n_mlp is not None and n_attn.inp is x_call.inp
    post_ln = bare and b_attn is None and b_mlp is None
    if post_ln:
        n_attn, n_mlp = _post_ln_norms(calls, start, norms, n_mlp, o, out, first, dtype, where)
        parallel = False
    elif not (pre or (bare and n_mlp is None)) or (b_attn is None) != (b_mlp is None):
        raise MorphError(
            f"{where!r}: the attention or feed-forward inputs are not norms of the block's input "
            "(pre-LN) nor the block's input itself (post-LN, or a norm on each branch's output): "
            "a norm-free block, or one with a norm on one branch only, is not understood; "
            "refused"
        )
    else:
        mid = n_mlp if pre else ffn_in[0]
        assert mid is not None
        parallel = mid.inp is x_call.inp
        layers = {n[2:] for n in (*linears, *norms)}
        options = scale_candidates(block, d, layers)
        sums = (b_attn, b_mlp) if branched else (o, out)
        names = (sums[0].name, sums[1].name, mid.name)
        plain = _branches(calls, names, parallel)
        twice = None
        values = {c: p.detach() for c, p in block.named_parameters() if c in options}
        if options:  # candidate i multiplied by 2^(i+1): only a true scale fits both runs
            params = {f"{where}.{c}": values[c] * factor(i) for i, c in enumerate(options)}
            _, again = _run(model, inputs, watch, {}, params)
            twice = _branches(again, names, parallel)
        scales = pre_ln_scales((plain, twice), options, values, parallel, dtype, where)
    attention = _attention(block, [c.name[2:] for c in reads], o.name[2:])
    ffn_names = [c.name for c in ffn_in]
    att_module = block.get_submodule(attention) if attention else block
    names = [c.name for c in reads]
    latent_rows: tuple[str, ...] = ()
    if latent:
        ran = [c.name[2:] for c in mine if c.name not in (o.name, out.name, *ffn_names)]
        geo = latent_geometry(att_module, block, ran, o.name[2:], f"{where}.{attention}")
        alibi = heads_carry_bias(
            lambda t: _close(_run(model, inputs, watch, t)[0], y0),
            geo,
            "L:",
            o.name,
            f"{where}.{attention}",
        )
        layout, probed, latent_rows = "latent", names, (geo.q, geo.kv)
    else:
        layout, alibi, probed = _heads_layout(
            model, inputs, watch, y0, calls, start, norms, reads, o, attention, mods, d, where
        )
    if n_attn is not None and n_mlp is not None:
        norm_rels = (n_attn.name[2:],) if n_mlp is n_attn else (n_attn.name[2:], n_mlp.name[2:])
    else:
        assert b_attn is not None and b_mlp is not None
        norm_rels = (b_attn.name[2:], b_mlp.name[2:])
    before = [c for c in calls[:start] if c.name in outside]
    streams = [c.out for c in calls[end : end + 1] if c.out is not None]  # the last block's
    after = []
    for c in calls[end + 1 :]:
        if c.name in outside and c.out is not None and on_stream(c.inp, streams):
            after.append(c.name[2:])  # a norm of the stream, not of a pooling head's output
            streams.append(c.out)
    pooled = [
        c.name[2:]
        for c in calls[end + 1 :]
        if c.name in head_norms and c.out is not None and on_stream(c.inp, streams[-1:])
    ]
    started = [c.name[2:-6] for c in calls[:start] if c.name.startswith("W:") and c.out is None]
    convs = stream_convs(root, calls[:start], started, d)  # speech encoders' position convs
    started = [n for n in started if n not in convs]
    writers = stream_writers(root, list(dict.fromkeys(started)), d, embed)
    if embed is None and writers:  # position tables read by weight (SigLIP-2)
        writers += weight_tables(root, started, d, blocks_rel)
    before = entry_norms(before, calls[:start], writers, convs)
    entry = before[0].name if before else "B:first:start"

    def stream_entry(params: dict[str, torch.Tensor]) -> torch.Tensor | None:
        _, got = _run(model, inputs, watch, {}, params)
        return next((c.inp for c in got if c.name == entry), None)

    zero = (*writers, *bias_names(root, convs)) if writers else ()  # no writer: the owner's above
    try:
        check_writers(stream_entry, owner, root, zero, where)
    except NoWriterError:
        raise
    except MorphError:  # a position table the owner holds as a buffer (CTRL's sinusoids)?
        held = owner_tables(root, d)
        if not held:
            raise
        check_writers(stream_entry, owner, root, (*zero, *held), where)
        writers = (*writers, *held)
    linear_entry = entry_is_linear(stream_entry, owner, root, writers)
    readers = [
        c.name[2:]
        for c in calls[end + 1 :]
        if c.name.startswith(("W:", "R:"))
        and c.out is not None
        and is_linear(watch[c.name])
        and as_matrix(watch[c.name]).shape[1] == d
        and on_stream(c.inp, streams)
    ]
    return Stack(
        attention=attention,
        qkv=tuple(n[2:] for n in names),
        qkv_layout=layout,
        o=o.name[2:],
        ffn_in=tuple(c.name[2:] for c in ffn_in),
        gate_up=gate_up,
        ffn_out=out.name[2:],
        norms=norm_rels,
        parallel=parallel,
        alibi=alibi,
        writers=writers,
        final_norm=after[-1] if after else None,
        stream_norms=tuple(dict.fromkeys(c.name[2:] for c in before)),
        post_ln=post_ln,
        scales=scales,
        head_norms=tuple(dict.fromkeys(after[:-1])),
        readers=tuple(dict.fromkeys(readers)),
        branch_norms=(b_attn.name[2:], b_mlp.name[2:]) if branched else (),
        qk_norms=tuple(n[2:] if n.startswith("N:") else "" for n in probed[:2]),
        stream_convs=convs,
        linear_entry=linear_entry,
        pooled_norms=tuple(dict.fromkeys(pooled)),
        latent=latent_rows,
    )


def _heads_layout(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    watch: dict[str, nn.Module],
    y0: torch.Tensor,
    calls: list[_Call],
    start: int,
    norms: dict[str, nn.Module],
    reads: list[_Call],
    o: _Call,
    attention: str,
    mods: dict[str, nn.Module],
    d: int,
    where: str,
) -> tuple[str, bool, list[str]]:
    """(row layout of q/k/v, whether each head carries its own position bias, the calls the
    data-flow checks transform) of block 0's attention: the two transformations of the module
    docstring run on the recorded inputs."""
    block = model.get_submodule(where)
    att_module = block.get_submodule(attention) if attention else block
    qkv_mods = [mods[c.name] for c in reads]
    heads, kv, hd = geometry(att_module, qkv_mods, f"{where}.{attention}")
    fused = ("concat",) if kv == 1 else ("concat", "grouped")
    layouts = ("separate",) if len(reads) == 3 else fused
    names = [c.name for c in reads]
    probed = names  # q and k normalised whole (OLMo-2): scaled and rotated after their norms
    if len(reads) == 3:
        probed = [getattr(reader_norm(calls, c, set(norms)), "name", c.name) for c in reads]
    geo = (heads, kv, hd)
    # a norm over each head's coordinates with its ε (Exaone-4's q_norm after the transpose)
    # keeps q·2^a only to rounding: q and k are then left unscaled (_rotated pairs them)
    per_head = any(
        c.name in norms and c.inp is not None and c.inp.shape[-1] == hd != d
        for c in calls[start:]
        if c.name[2:].startswith(attention + ".") or not attention
    )
    found = [
        lay
        for lay in layouts
        if _close(_run(model, inputs, watch, _scaled(lay, probed, o.name, geo, per_head))[0], y0)
    ]
    if len(found) != 1:
        what = (
            f"the fused projection '{where}.{names[0][2:]}' holds rows neither as [Q; K; V] nor "
            "per key/value group"
            if len(reads) == 1
            else f"'{where}.{attention}' does not compute softmax(q·kᵀ)·v per head from "
            f"{', '.join(n[2:] for n in names)} (q, k, v in the order they run)"
        )
        raise MorphError(f"{what}; this attention is not understood; refused")
    layout = found[0]
    turned = _rotated_head_params(att_module, f"{where}.{attention}" if attention else where, geo)
    alibi = heads > 1 and not _close(
        _run(model, inputs, watch, _rotated(layout, probed, o.name, geo), turned)[0], y0
    )
    return layout, alibi, probed


def _post_ln_norms(
    calls: list[_Call],
    start: int,
    norms: dict[str, nn.Module],
    n_mlp: _Call | None,
    o: _Call,
    out: _Call,
    first: _Call,
    dtype: torch.dtype,
    where: str,
) -> tuple[_Call, _Call]:
    """The norms (LN₁, LN₂) of a post-LN block: LN₁ reads x + o and feeds the feed-forward,
    LN₂ reads LN₁'s output + f and gives the block's output; MorphError otherwise."""
    x = calls[start].inp
    after_out = calls.index(out)
    n2 = next(
        (
            c
            for c in calls[after_out:]
            if c.name in norms and c.out is not None and c.inp is not None
        ),
        None,
    )
    ok = n_mlp is not None and n2 is not None and calls.index(n_mlp) > calls.index(o)
    if ok and n_mlp is not None and n2 is not None:
        assert x is not None and n_mlp.inp is not None and n_mlp.out is not None
        assert o.out is not None and out.out is not None and first.out is not None
        ok = post_ln_holds(
            x.double(),
            o.out.double(),
            n_mlp.inp.double(),
            n_mlp.out.double(),
            out.out.double(),
            n2.inp.double(),
            n2.out.double(),
            first.out.double(),
            dtype,
        )
    if not ok or n_mlp is None or n2 is None:
        raise MorphError(
            f"{where!r}: the attention reads the block's input, but the block does not compute "
            "LN₁(x + attention) → feed-forward → LN₂(· + feed-forward) (post-LN); this block is "
            "not understood; refused"
        )
    return n_mlp, n2


def _branches(calls: list[_Call], names: tuple[str, str, str], parallel: bool) -> Branches:
    """The recorded x, o, f, m and y of block 0 (:class:`.transformer_residual.Branches`)."""
    o, out, n_mlp = names

    def find(name: str) -> _Call:
        return next(c for c in calls if c.name == name)

    x, y = find("B:first:start").inp, find("B:first").out
    mid = None if parallel else find(n_mlp).inp
    o_out, f_out = find(o).out, find(out).out
    assert x is not None and y is not None and o_out is not None and f_out is not None
    return Branches(
        x.double(),
        o_out.double(),
        f_out.double(),
        None if mid is None else mid.double(),
        y.double(),
    )


def _attention(block: nn.Module, qkv: list[str], o: str) -> str:
    """The attention module: the deepest of the common prefixes of q/k/v and o and of q/k/v
    alone that records its heads (BERT's ``attention.self``), else the former."""
    both, inner = _prefix([*qkv, o]), _prefix(qkv) if len(qkv) > 1 else qkv[0].rpartition(".")[0]
    for name in (inner, both):
        module = block.get_submodule(name) if name else block
        if _int_attr(module, HEAD_DIM_ATTRS + HEADS_ATTRS) is not None:
            return name
    return both


def shared_block(model: nn.Module) -> tuple[str, int] | None:
    """(name, runs) of the first block (an entry of a ModuleList holding two or more linear
    layers) that runs more than once in one forward pass on token ids (ALBERT's layer group,
    used at every depth); None when none does or the model does not run on token ids."""
    watch = {
        f"{name}.{i}": block
        for name, blocks in model.named_modules()
        if isinstance(blocks, nn.ModuleList)
        for i, block in enumerate(blocks)
        if sum(is_linear(m) for m in block.modules()) >= 2
    }
    if not watch:
        return None
    try:
        _, calls = _run(model, probe_inputs(model, model), watch, {})
    except MorphError:
        return None
    counts: dict[str, int] = {}
    for call in calls:
        counts[call.name] = counts.get(call.name, 0) + 1
    return next(((n, k) for n, k in counts.items() if k > 1), None)


def _head_factors(kv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Powers of two per key/value group: a_g for q (1/a_g for k), s_g for v."""
    g = torch.arange(kv, dtype=torch.float64)
    return 2.0 ** (1 + g % 3), 2.0 ** -(1 + (g + 1) % 3)


def _fused(
    layout: str, geo: tuple[int, int, int], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """One row vector of a fused layer from per-row values of q (H, hd), k and v (KV, hd)."""
    heads, kv, hd = geo
    rows_q, rows_k, rows_v = qkv_rows(layout, heads, kv, hd)
    out = torch.empty((heads + 2 * kv) * hd, dtype=q.dtype)
    out[rows_q.reshape(-1)] = q.reshape(-1)
    out[rows_k.reshape(-1)] = k.reshape(-1)
    out[rows_v.reshape(-1)] = v.reshape(-1)
    return out


def _scaled(
    layout: str, names: list[str], o: str, geo: tuple[int, int, int], qk_fixed: bool = False
) -> Transform:
    """q·2^a, k·2^−a (a = 0 where ``qk_fixed``), v·2^b per group and Wₒ's columns 2^−b: the
    output is unchanged."""
    heads, kv, hd = geo
    a, s = _head_factors(kv)
    if qk_fixed:
        a = torch.ones_like(a)
    group = torch.arange(heads) // (heads // kv)
    q = a[group][:, None].expand(heads, hd)
    k = (1 / a)[:, None].expand(kv, hd)
    v = s[:, None].expand(kv, hd)
    o_cols = (1 / s[group])[:, None].expand(heads, hd).reshape(-1)
    factors = [q.reshape(-1), k.reshape(-1), v.reshape(-1)]
    if layout != "separate":
        factors = [_fused(layout, geo, q, k, v)]
    out: Transform = {
        n: (lambda y, f=f: y * f.to(y.device, y.dtype)) for n, f in zip(names, factors)
    }
    out[o + ":in"] = lambda x: x * o_cols.to(x.device, x.dtype)
    return out


def _rotation(heads: int, kv: int) -> torch.Tensor:
    """pq: the query head whose q head h takes in :func:`_rotated` (the next group's, or the
    next head under multi-query attention)."""
    h = torch.arange(heads)
    return (h + 1) % heads if kv == 1 else (h + heads // kv) % heads


def _rotated_head_params(
    attention: nn.Module, prefix: str, geo: tuple[int, int, int]
) -> dict[str, torch.Tensor]:
    """The attention module's own parameters of one entry per query head (GPT-OSS's sink
    logits), taken as :func:`_rotated` takes the heads: such a parameter moves with its head,
    so it alone does not make the attention a per-head position bias (``alibi``)."""
    pq = _rotation(geo[0], geo[1])
    return {
        f"{prefix}.{n}": p.detach()[pq.to(p.device)]
        for n, p in attention.named_parameters(recurse=False)
        if p.dim() == 1 and p.numel() == geo[0]
    }


def _rotated(layout: str, names: list[str], o: str, geo: tuple[int, int, int]) -> Transform:
    """Head h takes head pq[h]'s q (groups rotate together with their k and v; under
    multi-query attention the query heads rotate); Wₒ's columns follow."""
    heads, kv, hd = geo
    pq = _rotation(heads, kv)
    pk = (torch.arange(kv) + 1) % kv
    unit = torch.arange(hd)
    q = (pq[:, None] * hd + unit).reshape(-1)
    k = (pk[:, None] * hd + unit).reshape(-1)
    if layout == "separate":
        perms = [q, k, k]
    else:
        rows_q, rows_k, rows_v = qkv_rows(layout, heads, kv, hd)
        perms = [_fused(layout, geo, rows_q[pq], rows_k[pk], rows_v[pk])]
    inv = torch.argsort(pq)
    o_perm = (inv[:, None] * hd + unit).reshape(-1)
    out: Transform = {n: (lambda y, p=p: y[..., p.to(y.device)]) for n, p in zip(names, perms)}
    out[o + ":in"] = lambda x: x[..., o_perm.to(x.device)]
    return out
