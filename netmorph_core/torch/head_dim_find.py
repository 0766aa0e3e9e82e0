"""Which attention a ``widen`` of a query, key or value projection names, and where its parts
live (:class:`Attention`): a block of a transformer :mod:`.transformer_layout` recognises, a
self- or cross-attention of an encoder–decoder (:mod:`.encdec_layout`), a window attention of
Swin (:mod:`.swin_layout`), a spatial-reduction attention of a hierarchical vision transformer
(:mod:`.hier_layout`: SegFormer, GLPN, PVT-v2), or a fused-q/k/v attention module found by its
structure alone (timm's ``Attention`` of ViT, DeiT, …).

The last is a module holding a Linear ``qkv`` of rows [Q; K; V] (3 · heads · head_dim), a
Linear ``proj`` reading heads · head_dim, and the integers ``num_heads`` and ``head_dim``, with
no other part than identities and dropouts and no parameter or buffer of its own: a norm over
the heads' coordinates (``q_norm``, ``k_norm``), a gate of the heads' outputs, a position bias
table, separate q/v biases (BEiT) or rotary position embeddings (a ``rope`` argument) are not
understood here, and such a module is left to the general ``widen``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from . import hierarchical, swin
from .encdec import probe_inputs
from .encdec_layout import describe_encoder_decoder
from .errors import MorphError
from .swin_edit import by_attribute
from .transformer import _default_probe, _exists, _fused_layout
from .transformer_layout import Layout, describe, is_conv1d


@dataclass(frozen=True)
class Attention:
    """One attention module: its ``name``; ``qkv``, the query, key and value Linear layers
    or one fused layer whose rows follow ``layout`` ("concat": [Q; K; V], "grouped": per
    key/value group [q heads; k; v]); the output projection ``o``; ``heads``, ``kv_heads``,
    ``head_dim``; ``head_rows``, its other per-head layers and biases (DeBERTa's position
    projections, ``q_bias``/``v_bias``); ``probe``, the model's default inputs (None: the
    pipeline's own inference from the first layer); ``check``, a dry run of the attention
    alone at a new head_dim (MorphError where its forward cannot run so: PVT-v2's)."""

    name: str
    qkv: tuple[str, ...]
    layout: str
    o: str
    heads: int
    kv_heads: int
    head_dim: int
    head_rows: tuple[str, ...] = ()
    probe: Callable[[], tuple[torch.Tensor, ...]] | None = None
    check: Callable[[int], None] | None = None


def attention_projection(model: nn.Module, at: object) -> Attention | None:
    """The :class:`Attention` whose query, key or value Linear layer (or fused q/k/v layer) is
    ``at``; None when ``at`` is no such layer of an attention this recognises."""
    if not isinstance(at, str) or not isinstance(model, nn.Module):
        return None
    try:
        layer = model.get_submodule(at)
        if not isinstance(layer, nn.Linear) and not is_conv1d(layer):  # GPT-1's, GPT-2's Conv1D
            return None
        es = describe_encoder_decoder(model)
        if es is not None:
            layouts = [x for s in es.stacks for x in (s.layout, s.cross) if x is not None]
            probe = partial(probe_inputs, model, es)
        else:
            layout = describe(model)
            layouts, probe = [layout], partial(_default_probe, model, layout)
    except Exception:  # not a transformer these layouts describe: perhaps a module alone
        return _swin_attention(model, at) or _hier_attention(model, at) or _fused_module(model, at)
    for layout in layouts:
        found = _in_layout(model, layout, at, probe)
        if found is not None:
            return found
    return None


def _in_layout(
    model: nn.Module, layout: Layout, at: str, probe: Callable[[], tuple[torch.Tensor, ...]]
) -> Attention | None:
    fam = layout.family
    if len(fam.qkv) not in (1, 3):
        return None
    for block in layout.blocks:
        if at in {block.name(rel) for rel in fam.qkv}:
            return Attention(
                block.name(fam.attention),
                tuple(block.name(rel) for rel in fam.qkv),
                _fused_layout(layout),
                block.name(fam.o),
                block.heads,
                block.kv_heads,
                block.head_dim,
                tuple(block.name(r) for r in fam.head_rows if _exists(model, block.name(r))),
                probe,
            )
    return None


def _swin_attention(model: nn.Module, at: str) -> Attention | None:
    """The window attention of a Swin block (:mod:`.swin_layout`) whose q, k, v or fused
    q|k|v layer is ``at``; None for one whose forward derives head_dim from the stream width
    (torchvision's: it passes its layers' weights to a functional; the general ``widen``
    refuses it by name). MorphError for a cosine attention (Swin-v2): the norms of q and k
    would count the new coordinates."""
    try:
        sw = swin.recognise(model)
    except MorphError:
        return None
    for st in sw.stages if sw is not None else ():
        fam = st.layout.family
        for block in st.layout.blocks:
            if at not in {block.name(rel) for rel in fam.qkv}:
                continue
            if not by_attribute(model, (at,)):
                return None
            if st.logit_scale:
                raise MorphError(
                    f"widening {at!r}: no exact child — {block.name(fam.attention)!r} is a "
                    "cosine attention (Swin-v2): q and k are normalised over head_dim, so new "
                    "coordinates would change every score; add heads instead (add_heads)"
                )
            return Attention(
                block.name(fam.attention),
                tuple(block.name(rel) for rel in fam.qkv),
                fam.qkv_layout if len(fam.qkv) == 1 else "separate",
                block.name(fam.o),
                block.heads,
                block.kv_heads,
                block.head_dim,
                probe=partial(swin.probe_images, model),
            )
    return None


def _hier_attention(model: nn.Module, at: str) -> Attention | None:
    """The spatial-reduction attention of a block of a hierarchical vision transformer
    (SegFormer, GLPN, PVT-v2: :mod:`.hier_layout`) whose query, key or value layer is ``at``. Keys
    and values read a spatially reduced sequence (a strided Conv2d and LayerNorm of the
    stream): that changes which tokens they are computed from, not the per-head algebra. Its
    ``check`` runs the attention alone at the new head_dim: PVT-v2's forward reshapes its
    context to the stream width (heads·head_dim = d_s) and has no exact child. None for
    another model or one whose stages are not understood."""
    try:
        hier = hierarchical.recognise(model)
    except MorphError:
        return None
    for stage in hier.stages if hier is not None else ():
        fam = stage.layout.family
        for block in stage.layout.blocks:
            if at in {block.name(rel) for rel in fam.qkv}:
                return Attention(
                    block.name(fam.attention),
                    tuple(block.name(rel) for rel in fam.qkv),
                    "separate",
                    block.name(fam.o),
                    block.heads,
                    block.kv_heads,
                    block.head_dim,
                    probe=partial(hierarchical.probe_images, model, hier),
                    check=partial(hierarchical.check_heads_fit, model, stage, block, block.heads),
                )
    return None


def _fused_module(model: nn.Module, at: str) -> Attention | None:
    """The fused-q/k/v attention module (module docstring) whose ``qkv`` is ``at``."""
    owner, _, rel = at.rpartition(".")
    if rel != "qkv" or not owner:
        return None
    module = model.get_submodule(owner)
    heads, hd = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    proj = getattr(module, "proj", None)
    if not (isinstance(heads, int) and isinstance(hd, int) and heads > 0 and hd > 0):
        return None
    if not isinstance(proj, nn.Linear) or proj.in_features != heads * hd:
        return None
    if module.get_submodule(rel).out_features != 3 * heads * hd:
        return None
    if any(p is not None for p in (*module._parameters.values(), *module._buffers.values())):
        return None  # a position bias table, separate q/v biases (BEiT): not understood here
    if any(
        name not in ("qkv", "proj") and not isinstance(child, (nn.Identity, nn.Dropout))
        for name, child in module.named_children()
    ):
        return None  # q/k norms over head_dim, a gate, rotary parts: the new coordinates count
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return None
    if any("rope" in p or "rotary" in p for p in params):
        return None
    return Attention(owner, (at,), "concat", f"{owner}.proj", heads, heads, hd)
