"""``grow_width`` of an attention pooling head outside the blocks (SigLIP's and SigLIP-2's
``…MultiheadAttentionPoolingHead``): o = MHA(p, y, y), then o + mlp(LN(o)), first token.

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
    def norm(self) -> str:
        return self.part("layernorm")

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
        _check_width(pool, d, d_model, returned)
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


def _check_width(pool: Pool, d: int, d_model: int, returned: bool) -> None:
    name = pool.part("attention")
    step = d if returned else pool.heads
    works = f"widths that work: multiples of {step} ({d + step}, {d + 2 * step}, …)"
    if d_model % pool.heads:
        raise MorphError(
            f"d_model={d_model}: {name!r} (nn.MultiheadAttention, {pool.heads} heads) takes the "
            f"stream's width as its embed_dim, which its {pool.heads} heads must divide; {works}"
        )
    if d_model % d and returned:
        raise MorphError(
            f"d_model={d_model} is not a multiple of {d}: {name!r} feeds the residual sum "
            f"o + mlp(LN(o)) that {pool.name!r} returns among the model's outputs, whose extra "
            f"coordinates would carry mean(o) under LayerNorm instead of zeros; {works}"
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
    name = pool.part("attention")
    att = child.get_submodule(name)
    d, heads, wide = att.embed_dim, att.num_heads, stream.size
    hd, wide_hd = d // heads, wide // heads
    rows = np.full(wide, -1)  # child row of q (k, v) → parent row
    for i in range(heads):
        rows[i * wide_hd : i * wide_hd + hd] = np.arange(i * hd, (i + 1) * hd)
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
    out = write(att.out_proj.weight.detach())
    new = out.new_zeros(wide, wide)
    new[:, kept] = out[:, rows[kept]]
    put(f"{name}.out_proj.weight", new, (stream, rows))
    if att.out_proj.bias is not None:
        put(f"{name}.out_proj.bias", write(att.out_proj.bias.detach()), (stream,))
    att.embed_dim = att.kdim = att.vdim = wide
    att.head_dim = wide_hd
    probe = child.get_parameter(pool.part("probe")).detach()
    new = probe.new_zeros((*probe.shape[:-1], wide))
    new[..., stream >= 0] = probe[..., stream[stream >= 0]]
    put(pool.part("probe"), new, (None, None, stream))
