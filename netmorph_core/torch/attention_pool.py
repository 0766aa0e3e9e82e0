"""``grow_width`` of an attention pooling head outside the blocks (SigLIP's and SigLIP-2's
``…MultiheadAttentionPoolingHead``): o = MHA(p, y, y), then o + mlp(LN(o)), first token.

``nn.MultiheadAttention`` ties its embed_dim to the width of q, k and v, so the child's is
D' = k·d with the same h heads: head_dim hd → k·hd. The child's stream is ỹ = [y; …; y]
and its probe p̃ = [p; …; p] (k copies). Child head i owns rows [i·k·hd, (i+1)·k·hd) of each
of q, k and v in the packed ``in_proj_weight`` (3D', D'): its first hd rows are the parent's
head i rows, read from the copies (k column blocks summing to W), q's times √k, so that
q̃ᵢ·k̃ᵢ/√(k·hd) = qᵢ·kᵢ/√hd; its other rows are zero in q (they add exactly nothing to the
scores) and random in k and v, whose ``out_proj`` columns are zero. ``out_proj`` writes its
rows as copies: õ = [o; …; o]. The head's own residual sum then keeps the copies: LN's gain
and bias repeated (LN([o; …; o]) = [LN(o); …; LN(o)]), ``mlp.fc1`` reads the copies, ``mlp.fc2``
writes copies. √k is exact for a square k; otherwise the scores round once more (≈1e-16).

Refused by name: a width that is not a multiple of d (r > 0 extra coordinates: the head
returns its own residual sum, whose extra coordinates would carry mean(o) under LayerNorm, not
the zeros of [o; …; o; 0]), one its heads do not divide, and any other
``nn.MultiheadAttention`` of embed_dim d outside the blocks (its use of the stream is unknown).
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


@dataclass(frozen=True)
class Pool:
    """An attention pooling head: its module's qualified name and its attention's heads."""

    name: str
    heads: int

    def part(self, rel: str) -> str:
        return f"{self.name}.{rel}"

    @property
    def linears(self) -> tuple[str, str]:
        """Its feed-forward layers (reader, writer of its residual sum)."""
        return self.part("mlp.fc1"), self.part("mlp.fc2")


def attention_pools(model: nn.Module, blocks: str, d: int, d_model: int) -> tuple[Pool, ...]:
    """The attention pooling heads of ``model`` outside the blocks ``blocks`` (qualified name
    of their list) that read the stream of width ``d``; MorphError naming any other
    ``nn.MultiheadAttention`` of embed_dim ``d`` there, or a head ``d_model`` does not fit."""
    pools = []
    for name, module in model.named_modules():
        if name == blocks or name.startswith(blocks + ".") or not _reads(module, d):
            continue
        owner, _, rel = name.rpartition(".")
        pool = Pool(owner, module.num_heads)
        if rel != "attention" or not _is_pool(model.get_submodule(owner), d):
            raise MorphError(
                f"d_model={d_model}: {name!r} (nn.MultiheadAttention) reads the stream through "
                f"its packed in_proj_weight of width {d}, which grow_width widens only in an "
                f"attention pooling head ({', '.join(POOL_CLASSES)}); refused"
            )
        _check_width(pool, d, d_model)
        pools.append(pool)
    return tuple(pools)


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


def _check_width(pool: Pool, d: int, d_model: int) -> None:
    name = pool.part("attention")
    works = f"widths that work: multiples of {d} ({2 * d}, {3 * d}, …)"
    if d_model % pool.heads:
        raise MorphError(
            f"d_model={d_model}: {name!r} (nn.MultiheadAttention, {pool.heads} heads) takes the "
            f"stream's width as its embed_dim, which its {pool.heads} heads must divide; {works}"
        )
    if d_model % d:
        raise MorphError(
            f"d_model={d_model} is not a multiple of {d}: {name!r} feeds the residual sum "
            f"o + mlp(LN(o)) that {pool.name!r} returns, whose extra coordinates would carry "
            f"mean(o) under LayerNorm instead of zeros; {works}"
        )


def widen_pool(
    child: nn.Module,
    pool: Pool,
    copies: int,
    put: Put,
    read: Rows,
    write: Rows,
    fresh: Callable[[torch.Tensor, int], torch.Tensor],
) -> None:
    """Widen ``pool`` of ``child`` in place for k = ``copies`` copies of the stream (module
    docstring). ``put(parameter, value, index)`` stores each new parameter; ``read(w)``: the
    (out, d) ``w``'s columns as k blocks summing to it; ``write(w)``: its rows (output axis
    first) as k copies; ``fresh(w, n)``: n random rows like ``w``'s."""
    name = pool.part("attention")
    att = child.get_submodule(name)
    d, heads = att.embed_dim, att.num_heads
    hd, wide = d // heads, copies * d
    rows = np.full(wide, -1)  # child row of q (k, v) → parent row
    for i in range(heads):
        rows[i * copies * hd : i * copies * hd + hd] = np.arange(i * hd, (i + 1) * hd)
    kept, cols = rows >= 0, np.tile(np.arange(d), copies)
    w, b = att.in_proj_weight.detach(), att.in_proj_bias
    weights, biases = [], []
    for s, scale in enumerate((math.sqrt(copies), 1.0, 1.0)):  # q, k, v
        part = read(w[s * d : (s + 1) * d])
        new = part.new_zeros(wide, wide) if s == 0 else fresh(part, wide)
        new[kept] = (part[rows[kept]].double() * scale).to(part.dtype)
        weights.append(new)
        if b is not None:
            bias = b.detach().new_zeros(wide)
            bias[kept] = (b.detach()[s * d + rows[kept]].double() * scale).to(b.dtype)
            biases.append(bias)
    packed = np.concatenate([np.where(kept, rows + s * d, -1) for s in range(3)])
    put(f"{name}.in_proj_weight", torch.cat(weights), (packed, cols))
    if b is not None:
        put(f"{name}.in_proj_bias", torch.cat(biases), (packed,))
    out = write(att.out_proj.weight.detach())
    new = out.new_zeros(wide, wide)
    new[:, kept] = out[:, rows[kept]]
    put(f"{name}.out_proj.weight", new, (cols, rows))
    if att.out_proj.bias is not None:
        put(f"{name}.out_proj.bias", write(att.out_proj.bias.detach()), (cols,))
    att.embed_dim = att.kdim = att.vdim = wide
    att.head_dim = wide // heads
    owner = child.get_submodule(pool.name)
    probe = owner.probe.detach()
    put(pool.part("probe"), torch.cat([probe] * copies, -1), (None, None, cols))
    for attr in ("weight", "bias"):  # LN([o; …; o]) = [LN(o); …; LN(o)]
        t = getattr(owner.layernorm, attr).detach()
        put(pool.part(f"layernorm.{attr}"), torch.cat([t] * copies), (cols,))
    owner.layernorm.normalized_shape = (wide,)
    fc1, fc2 = pool.linears
    put(f"{fc1}.weight", read(child.get_parameter(f"{fc1}.weight").detach()), (None, cols))
    put(f"{fc2}.weight", write(child.get_parameter(f"{fc2}.weight").detach()), (cols, None))
    if child.get_submodule(fc2).bias is not None:
        put(f"{fc2}.bias", write(child.get_parameter(f"{fc2}.bias").detach()), (cols,))
