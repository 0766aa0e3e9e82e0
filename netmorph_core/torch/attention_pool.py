"""``grow_width`` of an attention pooling head outside the blocks (SigLIP's and SigLIP-2's
``…MultiheadAttentionPoolingHead``, timm's ``AttentionPoolLatent``): o = MHA(p, y, y), then
o + mlp(LN(o)), first token (timm: first or mean of its latent tokens).

``nn.MultiheadAttention`` ties its embed_dim to the width of q, k and v, so the child's is the
stream's D' = k·d + r with the same h heads: head_dim hd → hd' = D'/h. The child's stream is
ỹ = [y; …; y; 0] (the final norm's output: k copies, r zeros) and its probe, a query that no
residual sum carries, p̃ = [p; …; p; 0]. Child head i owns rows [i·hd', (i+1)·hd') of each
of q, k and v in the packed ``in_proj_weight`` (3D', D'): its first hd rows are the parent's
head i rows, read from the copies (k column blocks summing to W, random columns on the zeros),
q's times √(hd'/hd), so that q̃ᵢ·k̃ᵢ/√hd' = qᵢ·kᵢ/√hd; its other rows are zero in q (they add
exactly nothing to the scores) and random in k and v, whose ``out_proj`` columns are zero.
``out_proj`` writes the head's own residual stream like any writer of the stream: õ =
[o; …; o; a], a = mean(o) under LayerNorm; ``grow_width`` then treats the head's LN, its
``mlp.fc1`` (reader) and ``mlp.fc2`` (writer) as every norm, reader and writer of the stream.
√(hd'/hd) is exact for a square ratio (×4); otherwise the scores round once more (≈1e-16).

The pooled output is then [o; …; o; mean(o)]: with r > 0 not the [o; …; o; 0] of a returned
stream, so a model that returns it (a vision tower: ``pooler_output``) is refused a width that
is not a multiple of d; a classifier that only runs the head (SigLIP-2's mean-pools the
stream) is not. Also refused by name: a width the heads do not divide, and any other
``nn.MultiheadAttention`` of embed_dim d outside the blocks (its use of the stream is unknown).

timm's ``AttentionPoolLatent`` computes the same with separate layers: q = q(p) of its latent
p (1, L, d), [k; v] = kv(y) (k's rows first), ``proj`` in place of ``out_proj``, ``norm`` and
``mlp``; its ``head_dim`` and ``scale`` attributes follow hd'. Its pooled output is the
model's output or what the classifier after it reads, so it takes widths that are multiples
of d only; refused by name where it holds what the construction does not cover (a position
table, q/k norms, a latent or embed width other than d, no output projection).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import MorphError

Put = Callable[[str, torch.Tensor, tuple], None]
Rows = Callable[[torch.Tensor], torch.Tensor]
#: Class names of the pooling heads whose forward is MHA(probe, y, y), then o + mlp(LN(o)).
POOL_CLASSES = ("SiglipMultiheadAttentionPoolingHead", "Siglip2MultiheadAttentionPoolingHead")
#: The same with separate q, kv and proj layers and a latent query (timm).
LATENT_CLASSES = ("AttentionPoolLatent",)
PACKED, LATENT = "packed", "latent"


@dataclass(frozen=True)
class Pool:
    """An attention pooling head: its module's qualified name, its attention's heads and its
    kind (``PACKED``: an ``nn.MultiheadAttention`` and a probe; ``LATENT``: timm's)."""

    name: str
    heads: int
    kind: str = PACKED

    def part(self, rel: str) -> str:
        return f"{self.name}.{rel}"

    @property
    def norm(self) -> str:
        return self.part("layernorm" if self.kind == PACKED else "norm")

    @property
    def reader(self) -> str:
        return self.part("mlp.fc1")

    @property
    def writer(self) -> str:
        return self.part("mlp.fc2")


def attention_pools(
    model: nn.Module, blocks: str, d: int, d_model: int, returned: bool
) -> tuple[Pool, ...]:
    """The attention pooling heads of ``model`` outside the blocks ``blocks`` (qualified name
    of their list) that read the stream of width ``d``; MorphError naming any other
    ``nn.MultiheadAttention`` of embed_dim ``d`` there, or a head ``d_model`` does not fit
    (``returned``: the model returns what the head pools, module docstring)."""
    pools = []
    for name, module in model.named_modules():
        if type(module).__name__ in LATENT_CLASSES and not _inside(name, blocks):
            _check_latent(name, module, d, d_model)
            pool = Pool(name, module.num_heads, LATENT)
            _check_width(pool, d, d_model, True)
            pools.append(pool)
        if _inside(name, blocks) or not _reads(module, d):
            continue
        owner, _, rel = name.rpartition(".")
        pool = Pool(owner, module.num_heads)
        if rel != "attention" or not _is_pool(model.get_submodule(owner), d):
            raise MorphError(
                f"d_model={d_model}: {name!r} (nn.MultiheadAttention) reads the stream through "
                f"its packed in_proj_weight of width {d}, which grow_width widens only in an "
                f"attention pooling head ({', '.join(POOL_CLASSES)}); refused"
            )
        _check_width(pool, d, d_model, returned)
        pools.append(pool)
    return tuple(pools)


def pooled_readers(model: nn.Module, head: str | None) -> list[str] | None:
    """The classifier reading the output of the model's output head ``head`` where that is a
    latent pool (timm: the ``head`` Linear beside it, after an identity ``fc_norm``); [] where
    the model returns the pooled output itself; None where ``head`` is no latent pool.
    MorphError where something else reads it."""
    if head is None or type(model.get_submodule(head)).__name__ not in LATENT_CLASSES:
        return None
    owner_name = head.rpartition(".")[0]
    owner = model.get_submodule(owner_name) if owner_name else model
    norm, classifier = getattr(owner, "fc_norm", None), getattr(owner, "head", None)
    if norm is not None and type(norm) is not nn.Identity:
        raise MorphError(
            f"{head!r}'s pooled output goes through {type(norm).__name__} 'fc_norm', "
            "which grow_width does not widen after an attention pooling head; refused"
        )
    if classifier is None or type(classifier) is nn.Identity:
        return []
    if not isinstance(classifier, nn.Linear):
        raise MorphError(
            f"{head!r}'s pooled output is read by {type(classifier).__name__} 'head', "
            "which grow_width widens only as a Linear layer; refused"
        )
    return [f"{owner_name}.head" if owner_name else "head"]


def _inside(name: str, blocks: str) -> bool:
    return name == blocks or name.startswith(blocks + ".")


def _check_latent(name: str, pool: nn.Module, d: int, d_model: int) -> None:
    """timm's latent pool ``pool`` holds only what :func:`widen_pool` covers (module
    docstring); MorphError naming the part otherwise."""
    latent, q, kv = getattr(pool, "latent", None), getattr(pool, "q", None), pool.kv
    proj, norm, mlp = getattr(pool, "proj", None), getattr(pool, "norm", None), pool.mlp
    checks = {
        "a position table (pos_embed)": getattr(pool, "pos_embed", None) is None,
        f"a latent of width {d}": isinstance(latent, nn.Parameter) and latent.shape[-1] == d,
        "a q projection of the latent": isinstance(q, nn.Linear) and q.weight.shape == (d, d),
        f"a kv projection of width {d}": isinstance(kv, nn.Linear)
        and kv.weight.shape == (2 * d, d),
        "no q/k norms": all(type(getattr(pool, n)) is nn.Identity for n in ("q_norm", "k_norm")),
        "an output projection": isinstance(proj, nn.Linear) and proj.weight.shape == (d, d),
        "a LayerNorm with gain and bias": isinstance(norm, nn.LayerNorm)
        and norm.weight is not None
        and norm.bias is not None,
        "an MLP fc1 → fc2": isinstance(getattr(mlp, "fc1", None), nn.Linear)
        and isinstance(getattr(mlp, "fc2", None), nn.Linear)
        and type(getattr(mlp, "norm", nn.Identity())) is nn.Identity,
        "head_dim = width / heads": pool.head_dim * pool.num_heads == d,
    }
    missing = [what for what, ok in checks.items() if not ok]
    if missing:
        raise MorphError(
            f"d_model={d_model}: the attention pooling head {name!r} ({type(pool).__name__}) "
            f"reads the stream, and grow_width widens one with {', '.join(missing)} only; "
            "refused"
        )


def _reads(module: nn.Module, d: int) -> bool:
    return isinstance(module, nn.MultiheadAttention) and module.embed_dim == d


def _is_pool(owner: nn.Module, d: int) -> bool:
    """``owner`` is a known pooling head of width ``d`` whose attention packs q, k, v."""
    att, norm = getattr(owner, "attention", None), getattr(owner, "layernorm", None)
    probe, mlp = getattr(owner, "probe", None), getattr(owner, "mlp", None)
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    return (
        type(owner).__name__ in POOL_CLASSES
        and isinstance(probe, nn.Parameter)
        and tuple(probe.shape) == (1, 1, d)
        and isinstance(norm, nn.LayerNorm)
        and norm.weight is not None
        and norm.bias is not None
        and isinstance(fc1, nn.Linear)
        and isinstance(fc2, nn.Linear)
        and fc1.in_features == d == fc2.out_features
        and att._qkv_same_embed_dim
        and att.bias_k is None
        and att.bias_v is None
        and not att.add_zero_attn
    )


def _check_width(pool: Pool, d: int, d_model: int, returned: bool) -> None:
    name = pool.part("attention") if pool.kind == PACKED else pool.name
    kind = "nn.MultiheadAttention" if pool.kind == PACKED else LATENT_CLASSES[0]
    where = "among the model's outputs" if pool.kind == PACKED else "to the model or its classifier"
    step = d if returned else pool.heads
    works = f"widths that work: multiples of {step} ({d + step}, {d + 2 * step}, …)"
    if d_model % pool.heads:
        raise MorphError(
            f"d_model={d_model}: {name!r} ({kind}, {pool.heads} heads) takes the "
            f"stream's width as its embed_dim, which its {pool.heads} heads must divide; {works}"
        )
    if d_model % d and returned:
        raise MorphError(
            f"d_model={d_model} is not a multiple of {d}: {name!r} feeds the residual sum "
            f"o + mlp(LN(o)) that {pool.name!r} returns {where}, whose extra coordinates "
            f"would carry mean(o) under LayerNorm instead of zeros; {works}"
        )


def widen_pool(
    child: nn.Module,
    pool: Pool,
    stream: np.ndarray,
    put: Put,
    read: Rows,
    write: Rows,
    fresh: Callable[[torch.Tensor, int], torch.Tensor],
) -> None:
    """Widen the attention and the probe of ``pool`` in ``child`` in place for the child's
    stream ``stream`` (the parent's coordinate at each position, −1 on the r extra ones; module
    docstring). ``put(parameter, value, index)`` stores each new parameter; ``read(w)``: the
    (out, d) ``w``'s columns as k blocks summing to it, then random ones; ``write(w)``: its
    rows (output axis first) as the stream's writers write them; ``fresh(w, n)``: n random rows
    like ``w``'s."""
    if pool.kind == LATENT:
        _widen_latent(child, pool, stream, put, read, write, fresh)
        return
    name = pool.part("attention")
    att = child.get_submodule(name)
    d, heads, wide = att.embed_dim, att.num_heads, stream.size
    hd, wide_hd = d // heads, wide // heads
    rows = _head_rows(heads, d, wide)
    kept = rows >= 0
    w, b = att.in_proj_weight.detach(), att.in_proj_bias
    weights, biases = [], []
    for s, scale in enumerate((math.sqrt(wide_hd / hd), 1.0, 1.0)):  # q, k, v
        part = read(w[s * d : (s + 1) * d])
        new = part.new_zeros(wide, wide) if s == 0 else fresh(part, wide)
        new[kept] = (part[rows[kept]].double() * scale).to(part.dtype)
        weights.append(new)
        if b is not None:
            bias = b.detach().new_zeros(wide)
            bias[kept] = (b.detach()[s * d + rows[kept]].double() * scale).to(b.dtype)
            biases.append(bias)
    packed = np.concatenate([np.where(kept, rows + s * d, -1) for s in range(3)])
    put(f"{name}.in_proj_weight", torch.cat(weights), (packed, stream))
    if b is not None:
        put(f"{name}.in_proj_bias", torch.cat(biases), (packed,))
    _output_and_query(child, pool, f"{name}.out_proj", "probe", stream, rows, put, write)
    att.embed_dim = att.kdim = att.vdim = wide
    att.head_dim = wide_hd


def _head_rows(heads: int, d: int, wide: int) -> np.ndarray:
    """Child row of q (k, v) → parent row: head i's first hd = d/h of its hd' = D'/h rows are
    the parent's head i, the others −1."""
    hd, wide_hd = d // heads, wide // heads
    rows = np.full(wide, -1)
    for i in range(heads):
        rows[i * wide_hd : i * wide_hd + hd] = np.arange(i * hd, (i + 1) * hd)
    return rows


def _projection(
    w: torch.Tensor,
    b: torch.Tensor | None,
    read: Rows,
    rows: np.ndarray,
    scale: float,
    other: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of one of q, k, v (parent weight ``w`` (d, d), bias ``b``) in the child:
    the parent's rows of each head at ``rows`` (read from the copies, times ``scale``), the
    other rows from ``other`` (the read weight (d, D') → (D', D'))."""
    kept = rows >= 0
    part = read(w)
    new = other(part)
    new[kept] = (part[rows[kept]].double() * scale).to(part.dtype)
    if b is None:
        return new, None
    bias = b.new_zeros(rows.size)
    bias[kept] = (b[rows[kept]].double() * scale).to(b.dtype)
    return new, bias


def _widen_latent(
    child: nn.Module,
    pool: Pool,
    stream: np.ndarray,
    put: Put,
    read: Rows,
    write: Rows,
    fresh: Callable[[torch.Tensor, int], torch.Tensor],
) -> None:
    """:func:`widen_pool` of timm's ``AttentionPoolLatent`` (module docstring)."""
    module = child.get_submodule(pool.name)
    d, heads, wide = module.q.in_features, module.num_heads, stream.size
    rows = _head_rows(heads, d, wide)
    kept = rows >= 0
    hd, wide_hd = d // heads, wide // heads
    q, q_bias = _projection(  # q's other rows are zero: they add nothing to the scores
        module.q.weight.detach(),
        None if module.q.bias is None else module.q.bias.detach(),
        read,
        rows,
        math.sqrt(wide_hd / hd),
        lambda part: part.new_zeros(wide, wide),
    )
    put(pool.part("q.weight"), q, (rows, stream))
    if q_bias is not None:
        put(pool.part("q.bias"), q_bias, (rows,))
    kv = module.kv
    w, b = kv.weight.detach(), None if kv.bias is None else kv.bias.detach()
    parts = [  # k, then v: their other rows random
        _projection(
            w[s * d : (s + 1) * d],
            None if b is None else b[s * d : (s + 1) * d],
            read,
            rows,
            1.0,
            lambda part: fresh(part, wide),
        )
        for s in range(2)
    ]
    packed = np.concatenate([np.where(kept, rows + s * d, -1) for s in range(2)])
    put(pool.part("kv.weight"), torch.cat([w for w, _ in parts]), (packed, stream))
    if kv.bias is not None:
        put(pool.part("kv.bias"), torch.cat([b for _, b in parts]), (packed,))
    _output_and_query(child, pool, pool.part("proj"), "latent", stream, rows, put, write)
    module.head_dim = wide_hd
    module.scale = wide_hd**-0.5


def _output_and_query(
    child: nn.Module,
    pool: Pool,
    out: str,
    query: str,
    stream: np.ndarray,
    rows: np.ndarray,
    put: Put,
    write: Rows,
) -> None:
    """The pool's output projection ``out`` writes its own residual stream (rows as the
    stream's writers, the parent's columns at ``rows``, zero ones for the other head rows),
    and its learned query ``query`` (1, L, d) becomes [p; …; p; 0]."""
    layer = child.get_submodule(out)
    w = write(layer.weight.detach())
    kept = rows >= 0
    new = w.new_zeros(stream.size, stream.size)
    new[:, kept] = w[:, rows[kept]]
    put(f"{out}.weight", new, (stream, rows))
    if layer.bias is not None:
        put(f"{out}.bias", write(layer.bias.detach()), (stream,))
    p = child.get_parameter(pool.part(query)).detach()
    new = p.new_zeros((*p.shape[:-1], stream.size))
    new[..., stream >= 0] = p[..., stream[stream >= 0]]
    put(pool.part(query), new, (None, None, stream))
