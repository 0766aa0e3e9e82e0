"""Bottleneck transformer blocks (MobileBERT): what they are made of.

A block reads the D-wide residual stream h through bottleneck projections to an inner width B
and writes back through one projection B → D after the residual sum:

    a = N_in(W_in·h)                      (``bottleneck.input``: the block's inner stream)
    s = N_att(W_att·h)                    (``bottleneck.attention``: queries and keys read it,
                                           with ``key_query_shared_bottleneck``)
    a = N₁(attention(q=s, k=s, v=h) + a)  (``attention.output``; values read h, or the
                                           bottleneck with ``use_bottleneck_attention``)
    a = Nᵢ(FFNᵢ(a) + a)                   (``ffn.i``, then ``intermediate``/``output``:
                                           ``num_feedforward_networks`` feed-forwards)
    h' = N_out(W_out·a + h)               (``output.bottleneck``)

The norms N are MobileBERT's ``NoNorm`` (x·γ + β, elementwise, not a normalisation) or
LayerNorm (``normalization_type``). Blocks are recognised by these parts and checked by their
shapes; a block that has them with other shapes is refused naming the part.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .errors import MorphError

#: The parts of a bottleneck block (relative names) whose presence marks one.
MARKS = ("bottleneck.input.dense", "output.bottleneck.dense", "attention.self.query")
QUERY, KEY, VALUE = "attention.self.query", "attention.self.key", "attention.self.value"
ATTENTION = "attention.self"
OUTPUT = "attention.output.dense"
#: The block's last feed-forward (the others are ``ffn.i.intermediate.dense`` / ``…output.dense``).
LAST_FFN = ("intermediate.dense", "output.dense")
#: The projection back to the stream and the norm after its residual sum.
WRITER, OUT_NORM = "output.bottleneck.dense", "output.bottleneck.LayerNorm"


@dataclass(frozen=True)
class Bottlenecked:
    """A model of bottleneck blocks: ``blocks`` (the module list's name), their count,
    the stream width ``d_model``, the inner width ``inner``, ``heads`` and ``head_dim`` of
    every block, the (input, output) layers of each feed-forward of a block (relative
    names), and whether the norm after the stream's residual sum is elementwise affine
    (``affine_out``: NoNorm)."""

    blocks: str
    depth: int
    d_model: int
    inner: int
    heads: int
    head_dim: int
    ffns: tuple[tuple[str, str], ...]
    affine_out: bool

    def name(self, i: int, rel: str) -> str:
        """The qualified name of ``rel`` in block ``i``."""
        return f"{self.blocks}.{i}.{rel}"


def _has(module: nn.Module, rel: str) -> bool:
    try:
        module.get_submodule(rel)
    except AttributeError:
        return False
    return True


def is_affine(norm: nn.Module, width: int) -> bool:
    """Whether ``norm`` computes x·γ + β elementwise (MobileBERT's NoNorm), measured on a
    random float64 input against its own ``weight`` and ``bias``."""
    w, b = getattr(norm, "weight", None), getattr(norm, "bias", None)
    if not isinstance(w, torch.Tensor) or not isinstance(b, torch.Tensor):
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, width, generator=gen, dtype=torch.float64)
    probe = copy.deepcopy(norm).to(torch.float64)
    with torch.no_grad():
        got = probe(x)
        want = x * w.detach().double() + b.detach().double()
    return got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-12, atol=1e-12))


def _linear(block: nn.Module, rel: str, where: str) -> nn.Linear:
    layer = block.get_submodule(rel)
    if type(layer) is not nn.Linear:
        raise MorphError(f"{where}.{rel} is a {type(layer).__name__}, not a Linear layer; refused")
    return layer


def _block_geometry(block: nn.Module, where: str) -> tuple[int, int, int, int, tuple]:
    """(d_model, inner, heads, head_dim, ffns) of one block, checked by shapes."""
    entry = _linear(block, "bottleneck.input.dense", where)
    writer = _linear(block, WRITER, where)
    d, inner = entry.in_features, entry.out_features
    if (writer.in_features, writer.out_features) != (inner, d):
        raise MorphError(
            f"{where}.{WRITER} maps {writer.in_features} → {writer.out_features}, not the inner "
            f"width {inner} back to the stream's {d}; refused"
        )
    attention = block.get_submodule(ATTENTION)
    heads = getattr(attention, "num_attention_heads", None)
    size = getattr(attention, "attention_head_size", None)
    if not isinstance(heads, int) or not isinstance(size, int):
        raise MorphError(f"{where}.{ATTENTION} records no head count and head size; refused")
    q, k, v, o = (_linear(block, r, where) for r in (QUERY, KEY, VALUE, OUTPUT))
    if {q.out_features, k.out_features, v.out_features, o.in_features} != {heads * size}:
        raise MorphError(
            f"{where}.{ATTENTION}: its projections are not {heads} heads of {size}; refused"
        )
    if o.out_features != inner:
        raise MorphError(f"{where}.{OUTPUT} writes {o.out_features}, not the inner width {inner}")
    count = len(block.get_submodule("ffn")) if _has(block, "ffn") else 0
    ffns = (*((f"ffn.{i}.intermediate.dense", f"ffn.{i}.output.dense") for i in range(count)),)
    ffns = (*ffns, LAST_FFN)
    for up, down in ffns:
        a, b = _linear(block, up, where), _linear(block, down, where)
        if (a.in_features, b.out_features, a.out_features) != (inner, inner, b.in_features):
            raise MorphError(
                f"{where}.{up} → {down} is not a feed-forward of the inner width {inner}; refused"
            )
    return d, inner, heads, size, ffns


def recognise(model: nn.Module) -> Bottlenecked | None:
    """The model's :class:`Bottlenecked` blocks; None where it holds no module list of
    bottleneck blocks; MorphError naming the part of one that is not understood."""
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if not all(all(_has(b, m) for m in MARKS) for b in module):
            continue
        geometry = {_block_geometry(b, f"{name}.{i}") for i, b in enumerate(module)}
        if len(geometry) != 1:
            raise MorphError(f"{name}: its bottleneck blocks have different shapes; refused")
        d, inner, heads, size, ffns = geometry.pop()
        affine = all(is_affine(b.get_submodule(OUT_NORM), d) for b in module)
        return Bottlenecked(name, len(module), d, inner, heads, size, ffns, affine)
    return None
