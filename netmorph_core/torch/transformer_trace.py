"""A transformer's parts found from its modules and one traced forward pass, not from names.

:func:`trace_stack` runs the parent once on a few token ids with forward hooks (no parameter
is touched; training flags are restored) and reads from the calls of block 0:

- the linear layers (``nn.Linear`` and its subclasses, ``Conv1D``) in the order they run,
  in four phases of consecutive calls sharing one input: the query/key/value readers (three
  layers, or one fused layer), the output projection, the feed-forward input(s) (plain, a
  gate/up pair, or one fused [gate; up] layer of twice the hidden size) and the feed-forward
  output;
- the norms (modules with a 1-D gain and a float eps): which one feeds the attention readers
  and which the feed-forward readers; both read the block's input → a parallel block; or,
  where the readers take the stream itself, the norms N₁, N₂ that read each branch's output
  (:mod:`.transformer_branches`: OLMo-2; both kinds: a sandwich block);
- the residual sums, checked numerically: y = x + o + f (parallel) or
  m = x + o, y = m + f (sequential) on the recorded tensors, o and f being N₁'s and N₂'s
  outputs where the branches are normalised;
- the attention's data flow, checked by two transformations of the recorded run that keep the
  output of softmax(q·kᵀ)·v·Wₒ unchanged exactly when the rows are read right: q of group g
  scaled by 2^a_g, k by 2^−a_g, v by 2^b_g and Wₒ's columns by 2^−b_g (powers of two: exact
  in floating point; after the norm where one normalises the whole q or k: OLMo-2's joint
  q/k norms), which also decides the row layout of a fused q/k/v layer; and a
  rotation of the heads (q, k, v and Wₒ's columns together), which changes the output only
  when each head carries its own position bias (ALiBi);
- outside the blocks: the embeddings of width d (stream writers) and the norms that run
  before the first block (stream norms) or after the last (the final norm).

Anything else is refused with a :class:`MorphError` naming the module not understood.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import MorphError
from .hf_embeddings import input_embedding
from .linear_view import as_matrix, is_conv1d
from .transformer_branches import branch_norms, reader_norm

#: Attention-module attributes giving head_dim, the query heads and the key/value heads.
HEAD_DIM_ATTRS = ("head_dim", "head_size", "attention_head_size")
HEADS_ATTRS = ("num_heads", "num_attention_heads", "n_head")
KV_ATTRS = ("num_kv_heads", "num_key_value_heads")
EPS_ATTRS = ("eps", "variance_epsilon", "epsilon")
PROBE_TOKENS = 8


@dataclass(frozen=True)
class Stack:
    """What :func:`trace_stack` found: names relative to a block (``attention`` … ``norms``)
    or to the stream's owner (``writers``, ``final_norm``, ``stream_norms``)."""

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
    branch_norms: tuple[str, ...] = ()
    qk_norms: tuple[str, ...] = ()


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


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


def geometry(attention: nn.Module, qkv: list[nn.Module], where: str) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim) of an attention module and its q/k/v layer(s):
    from the rows of separate layers, or for one fused layer of (H + 2·KV)·head_dim rows from
    the module's head counts where it records them (multi-head attention otherwise)."""
    hd = head_dim(attention)
    if hd is None:
        raise MorphError(f"{where!r} records no head_dim ({'/'.join(HEAD_DIM_ATTRS)}); refused")
    rows = [as_matrix(m).shape[0] for m in qkv]
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
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


Transform = dict[str, Callable[[torch.Tensor], torch.Tensor]]


def _run(
    model: nn.Module, ids: torch.Tensor, watch: dict[str, nn.Module], transform: Transform
) -> tuple[torch.Tensor, list[_Call]]:
    """The model's output on ``ids`` with the calls of ``watch`` recorded; ``transform``:
    name → function applied to that module's output (a name ending in ":in": to its input)."""
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
        if name.startswith("B:"):
            handles.append(module.register_forward_pre_hook(begin(name), with_kwargs=True))
        if name + ":in" in transform:
            handles.append(module.register_forward_pre_hook(pre(name)))
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            out = model(ids)
            y = _output(getattr(out, "logits", out))
    except MorphError:
        raise
    except Exception as exc:  # whatever the model raises, its layout cannot be traced
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise MorphError(
            f"{type(model).__name__} does not run on token ids of shape {tuple(ids.shape)} "
            f"({type(exc).__name__}: {reason}): its layout cannot be traced; refused"
        ) from exc
    finally:
        for m, flag in flags:
            m.training = flag
        for h in handles:
            h.remove()
    if y is None:
        raise MorphError(f"{type(model).__name__} returns no tensor on token ids; refused")
    return y.detach(), calls


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


def trace_stack(model: nn.Module, owner: str, blocks_rel: str, d: int) -> Stack:
    """The :class:`Stack` of the block list ``owner.blocks_rel`` (module docstring)."""
    root = model.get_submodule(owner) if owner else model
    blocks = root.get_submodule(blocks_rel)
    block = blocks[0]
    where = f"{owner}.{blocks_rel}.0" if owner else f"{blocks_rel}.0"
    embed = _token_embedding(model, root)
    linears = {f"L:{n}": m for n, m in block.named_modules() if is_linear(m)}
    norms = {f"N:{n}": m for n, m in block.named_modules() if is_norm(m)}
    outside = {
        f"O:{n}": m
        for n, m in root.named_modules()
        if n and not (n == blocks_rel or n.startswith(blocks_rel + ".")) and is_norm(m)
    }
    watch = {**linears, **norms, **outside, "B:first": block, "B:last": blocks[-1]}
    ids = _probe_ids(embed)
    y0, calls = _run(model, ids, watch, {})
    mine = [c for c in calls if c.name in linears]
    counts = {n: sum(c.name == n for c in mine) for n in linears}
    for n, k in counts.items():
        if k != 1:
            raise MorphError(f"'{where}.{n[2:]}' runs {k} times in one forward pass; refused")
    first = next(c for c in calls if c.name == "B:first")
    order = [c.name for c in calls]
    start, end = order.index("B:first:start"), len(order) - 1 - order[::-1].index("B:last")
    phases = _phases(mine)
    shape = " → ".join("|".join(c.name[2:] for c in p) for p in phases)
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
    if len(reads) not in (1, 3):
        raise MorphError(f"'{where}': {len(reads)} attention input layers; refused")
    norm_of = {id(c.out): c for c in calls[start:] if c.name in norms and c.out is not None}
    n_attn, n_mlp = norm_of.get(id(reads[0].inp)), norm_of.get(id(ffn_in[0].inp))
    b_attn, b_mlp = branch_norms(calls, o, out, set(norms))
    pre = n_attn is not None and n_mlp is not None and n_attn.inp is calls[start].inp
    bare = n_attn is None and n_mlp is None and reads[0].inp is calls[start].inp
    post = b_attn is not None and b_mlp is not None
    if not (pre or (bare and post)) or (b_attn is None) != (b_mlp is None):
        raise MorphError(
            f"{where!r}: the attention or feed-forward inputs are not norms of the block's input "
            "nor, with a norm on each branch's output, the block's input itself (norm-free "
            "blocks and blocks normalised after the residual sum are not understood); refused"
        )
    mid_in = n_mlp.inp if pre else ffn_in[0].inp
    parallel = mid_in is calls[start].inp
    dtype = first.out.dtype
    x, y = calls[start].inp.double(), first.out.double()
    o_out, f_out = (b.out.double() for b in ((b_attn, b_mlp) if post else (o, out)))
    if parallel:
        ok = _close(x + o_out + f_out, y, dtype)
    else:
        mid = mid_in.double()
        ok = _close(x + o_out, mid, dtype) and _close(mid + f_out, y, dtype)
    if not ok:
        raise MorphError(
            f"{where!r}: the block's output is not its input plus the attention and feed-forward "
            "outputs (a layer scale or post-norm residual is not understood); refused"
        )
    attention = _prefix([c.name[2:] for c in (*reads, o)])
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
    found = [
        lay
        for lay in layouts
        if _close(_run(model, ids, watch, _scaled(lay, probed, o.name, geo))[0], y0)
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
    alibi = heads > 1 and not _close(
        _run(model, ids, watch, _rotated(layout, probed, o.name, geo))[0], y0
    )
    if pre:
        norm_rels = (n_attn.name[2:],) if n_mlp is n_attn else (n_attn.name[2:], n_mlp.name[2:])
    else:
        norm_rels = (b_attn.name[2:], b_mlp.name[2:])
    before = [c.name[2:] for c in calls[:start] if c.name in outside]
    after = [c.name[2:] for c in calls[end + 1 :] if c.name in outside]
    writers = _writers(root, blocks_rel, embed, d)
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
        stream_norms=tuple(dict.fromkeys(before)),
        branch_norms=(b_attn.name[2:], b_mlp.name[2:]) if post else (),
        qk_norms=tuple(n[2:] if n.startswith("N:") else "" for n in probed[:2]),
    )


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
        ids = _probe_ids(_token_embedding(model, model))
        _, calls = _run(model, ids, watch, {})
    except MorphError:
        return None
    counts: dict[str, int] = {}
    for call in calls:
        counts[call.name] = counts.get(call.name, 0) + 1
    return next(((n, k) for n, k in counts.items() if k > 1), None)


def _token_embedding(model: nn.Module, root: nn.Module) -> nn.Embedding:
    embed = input_embedding(model)
    if not isinstance(embed, nn.Embedding):
        embed = next((m for m in root.modules() if isinstance(m, nn.Embedding)), None)
    if embed is None:
        raise MorphError(f"{type(model).__name__} has no token embedding (nn.Embedding); refused")
    return embed


def _probe_ids(embed: nn.Embedding) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, embed.num_embeddings, (1, PROBE_TOKENS), generator=gen)
    return ids.to(embed.weight.device)


def _writers(root: nn.Module, blocks_rel: str, embed: nn.Embedding, d: int) -> tuple[str, ...]:
    """Embeddings of width d outside the blocks, the token embedding first."""
    names = [
        n
        for n, m in root.named_modules()
        if isinstance(m, nn.Embedding)
        and m.embedding_dim == d
        and not (n == blocks_rel or n.startswith(blocks_rel + "."))
    ]
    names.sort(key=lambda n: root.get_submodule(n) is not embed)
    return tuple(names)


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


def _scaled(layout: str, names: list[str], o: str, geo: tuple[int, int, int]) -> Transform:
    """q·2^a, k·2^−a, v·2^b per group and Wₒ's columns 2^−b: the output is unchanged."""
    heads, kv, hd = geo
    a, s = _head_factors(kv)
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


def _rotated(layout: str, names: list[str], o: str, geo: tuple[int, int, int]) -> Transform:
    """Head h takes head pq[h]'s q (groups rotate together with their k and v; under
    multi-query attention the query heads rotate); Wₒ's columns follow."""
    heads, kv, hd = geo
    rep = heads // kv
    h = torch.arange(heads)
    pq = (h + 1) % heads if kv == 1 else (h + rep) % heads
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
