"""Module morphing of a Conv/Linear layer inside a model (modularized morphing, DESIGN.md §3).

The layer G (padding p, stride s, dilation d, kernel K, bias b) becomes a :class:`MorphedModule`
that runs the module graph ``spec`` (a :class:`netmorph_core.morph.graph.Module`): one layer per
convolution edge, a fixed ``scale``·x per identity edge, blobs copied at forks and summed at
joins, and [identity BN] → PActivation(a = 1) on every inner vertex. The filters solve the module
equation Σ_paths F_last ⊛ … ⊛ F_first = G~ (:func:`netmorph_core.morph.module.morph_module`),
G~ being G zero-padded centred to the module's effective size Kt.

Exactness in space: the input is padded once, at the source, by p + d·(Kt − K)/2 (the parent's
padding mode; for reflect/circular, which bound the input size, the growth d·(Kt − K)/2 is zeros
outside the parent's own p, see :meth:`ConvGeometry.split_pads`); every edge is then an
unpadded ("valid") layer with dilation d. A path whose
effective size r at its head is below the head's reach R sees a blob larger by d·(R − r); the
edge crops d·(R − r)/2 from each side of its input so that the blobs meeting at a join line up
(the crop is the zero ring of the centred kernel). Edges into the sink carry the stride (a
subsampling of the summed output distributes over the sum). The parent's bias is added once,
at the sink; inner layers get a zero bias when the parent has one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..morph.graph import Module, ModuleShape, bind_to_layer
from ..morph.module import morph_module as morph_module_filters
from .activation import make_activation
from .budget import hidden_budget
from .depth import check_flag, check_method, new_layer_sources, weight_counts
from .pipeline import Request, run
from .report import MorphReport, Outcome, ParamSource
from .samepad import split_same_padding
from .streamed import Region
from .support import check_new_entries
from .surgery import (
    LAYER_TYPES,
    ConvGeometry,
    find_layer,
    identity_batch_norm,
    linear_equivalent,
    make_layer,
    replace_module,
    to_numpy64,
    to_tensor,
)

#: torch.nn.functional.pad's name of each Conv padding mode.
_PAD_MODES = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "replicate",
    "circular": "circular",
}

Pads = tuple[tuple[int, int], ...]


def _crop(x: torch.Tensor, crops: Pads) -> torch.Tensor:
    """``x`` (N, C, *spatial) with crops[i] = (lo, hi) entries removed from spatial dim i."""
    if not any(lo or hi for lo, hi in crops):
        return x
    return x[
        (slice(None), slice(None), *(slice(lo, n - hi) for n, (lo, hi) in zip(x.shape[2:], crops)))
    ]


class SourcePad(nn.Module):
    """Pads (N, C, *spatial) by ``pads`` = ((lo, hi) per spatial dim) in a Conv padding mode."""

    def __init__(self, pads: Pads, padding_mode: str) -> None:
        super().__init__()
        self.pads = tuple(pads)
        self.padding_mode = padding_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = tuple(v for lo, hi in reversed(self.pads) for v in (lo, hi))
        return F.pad(x, flat, mode=_PAD_MODES[self.padding_mode])

    def extra_repr(self) -> str:
        return f"pads={self.pads}, mode={self.padding_mode}"


class ConvEdge(nn.Module):
    """One convolution edge: crop its input by ``crops``, then the unpadded ``layer``."""

    def __init__(self, layer: nn.Module, crops: Pads) -> None:
        super().__init__()
        self.layer = layer
        self.crops = tuple(crops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(_crop(x, self.crops))

    def extra_repr(self) -> str:
        return f"crops={self.crops}"


class IdentityEdge(nn.Module):
    """A fixed identity edge: ``scale``·x, cropped by ``crops`` and subsampled by ``stride``."""

    def __init__(self, scale: float, crops: Pads, stride: tuple[int, ...]) -> None:
        super().__init__()
        self.scale = float(scale)
        self.crops = tuple(crops)
        self.stride = tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _crop(x, self.crops)
        if any(s > 1 for s in self.stride):
            x = x[(slice(None), slice(None), *(slice(None, None, s) for s in self.stride))]
        return self.scale * x

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, crops={self.crops}, stride={self.stride}"


class MorphedModule(nn.Module):
    """A module graph as a network: ``pad`` at the source, ``edges[name]`` per edge,
    ``vertices[u]`` (identity BN → PActivation) on each inner vertex, ``bias`` at the sink.

    The forward pass visits the vertices in topological order; the blob of vertex u is
    ``Σ_{e: tail → u} edges[e](blob[tail])``, then ``vertices[u]`` when u is inner. Returns the
    sink's blob plus ``bias`` (broadcast over the spatial dimensions).
    """

    def __init__(
        self,
        pad: nn.Module,
        order: Sequence[tuple[str, Sequence[tuple[str, str]]]],
        edges: dict[str, nn.Module],
        vertices: dict[str, nn.Module],
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.pad = pad
        self.order = tuple((u, tuple(ins)) for u, ins in order)
        self.edges = nn.ModuleDict(edges)
        self.vertices = nn.ModuleDict(vertices)
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source = self.order[0][0]
        blobs = {source: self.pad(x)}
        out = blobs[source]
        for u, ins in self.order[1:]:
            out = self.edges[ins[0][0]](blobs[ins[0][1]])
            for name, tail in ins[1:]:
                out = out + self.edges[name](blobs[tail])
            if u in self.vertices:
                out = self.vertices[u](out)
            blobs[u] = out
        if self.bias is not None:
            out = out + self.bias.view(-1, *(1,) * (out.dim() - 2))
        return out


def check_spec(layer: nn.Module, spec: object) -> ModuleShape:
    """Bind ``spec`` to ``layer`` before any work: channel counts along every path, kernel
    parities, edge and vertex names usable as submodule names; errors name the edge/vertex."""
    if not isinstance(spec, Module):
        raise TypeError(f"spec must be a netmorph_core.morph.graph.Module, got {spec!r}")
    for kind, names in (("edge", spec.edge_names), ("vertex", spec.vertices)):
        for name in names:
            if "." in name or hasattr(nn.ModuleDict, name):
                raise ValueError(
                    f"spec: {kind} name {name!r} cannot name a submodule (it contains '.' or "
                    "is an nn.Module attribute)"
                )
    if all(e.identity for e in spec.edges):
        raise ValueError("spec: the module has no convolution edge to morph the layer into")
    g = np.zeros(tuple(layer.weight.shape))
    try:
        shape = bind_to_layer(spec, g)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"spec: {exc}") from None
    entries = sum(
        shape.channels[e.head] * shape.channels[e.tail] * math.prod(shape.kernels[e.name])
        for e in spec.edges
    )
    entries += g.shape[0] * g.shape[1] * math.prod(shape.effective_size)
    check_new_entries(entries, layer.weight, "morph_module spec (its edges' weights)")
    return shape


def build_module(
    geo: ConvGeometry,
    shape: ModuleShape,
    filters: dict[str, np.ndarray],
    bias: torch.Tensor | None,
    like: torch.Tensor,
    *,
    activation: object,
    batch_norm: bool,
) -> MorphedModule:
    """The :class:`MorphedModule` of ``shape`` with ``filters`` (edge → kernel) in place of a
    layer of geometry ``geo`` (see the module docstring for padding, crops and stride)."""
    m = shape.module
    ndim = geo.ndim
    kt = shape.effective_size
    pad: nn.Module = nn.Identity()
    if ndim:
        inner, outer = geo.split_pads(kt)
        pads = [
            SourcePad(p, mode)
            for p, mode in ((inner, geo.padding_mode), (outer, "zeros"))
            if any(lo or hi for lo, hi in p)
        ]
        if pads:
            pad = pads[0] if len(pads) == 1 else nn.Sequential(*pads)
    edges: dict[str, nn.Module] = {}
    order = []
    for u in m.vertices:
        ins = m.in_edges(u)
        order.append((u, [(e.name, e.tail) for e in ins]))
        for e in ins:
            k = shape.kernels[e.name]
            crops = tuple(
                (d * (r - (a + kk - 1)) // 2,) * 2
                for d, r, a, kk in zip(geo.dilation, shape.reach[u], shape.reach[e.tail], k)
            )
            stride = geo.stride if u == m.sink else (1,) * ndim
            if e.identity:
                edges[e.name] = IdentityEdge(e.scale, crops, stride)
                continue
            f = filters[e.name]
            b = None
            if geo.has_bias and u != m.sink:
                b = torch.zeros(f.shape[0], dtype=like.dtype, device=like.device)
            if ndim == 0:
                layer = make_layer(to_tensor(f, like), b)
            else:
                layer = make_layer(
                    to_tensor(f, like),
                    b,
                    stride=stride,
                    dilation=tuple(d if kk > 1 else 1 for d, kk in zip(geo.dilation, k)),
                    pads=((0, 0),) * ndim,
                )
            edges[e.name] = ConvEdge(layer, crops)
    vertices = {}
    for u in m.vertices[1:-1]:
        parts: list[nn.Module] = []
        if batch_norm:
            parts.append(identity_batch_norm(shape.channels[u], ndim, like))
        parts.append(make_activation(activation).to(device=like.device, dtype=like.dtype))
        vertices[u] = nn.Sequential(*parts)
    return MorphedModule(pad, order, edges, vertices, bias)


def replace_with_module(
    child: nn.Module,
    at: str,
    spec: Module,
    *,
    method: str,
    seed: int | np.random.Generator | None,
    max_iter: int,
    solver_tol: float | None,
    activation: object,
    batch_norm: bool,
    group_of: str | None = None,
) -> Outcome:
    """Solve the module's filters for layer ``at`` of ``child`` and put the
    :class:`MorphedModule` in its place. New parameters join the optimizer group of
    ``group_of`` (default: the layer's own weight/bias)."""
    layer = linear_equivalent(child.get_submodule(at))
    same, geo = split_same_padding(layer, ConvGeometry.of(layer))
    g = to_numpy64(layer.weight)
    shape = bind_to_layer(spec, g)
    res = morph_module_filters(g, spec, method=method, seed=seed, max_iter=max_iter, tol=solver_tol)
    filters, residual, exact, iterations = res.filters, res.residual, res.exact, res.iterations
    how = "reducible (Algorithm 1)" if res.reduction.reducible else "irreducible (Algorithm 2)"
    bias = None if layer.bias is None else layer.bias.detach().clone()
    new = build_module(
        geo, shape, filters, bias, layer.weight, activation=activation, batch_norm=batch_norm
    )
    replace_module(child, at, new if same is None else nn.Sequential(same, new))
    nonzero, total = weight_counts(new, LAYER_TYPES)
    sources = new_layer_sources(child, at, geo.has_bias)
    if group_of is not None:
        sources = {n: ParamSource(None, group_of) for n in sources}
    if bias is not None:
        sources[f"{at}.bias" if same is None else f"{at}.1.bias"] = ParamSource(
            f"{at}.bias", f"{at}.bias"
        )
    notes = [f"module of {len(spec.edges)} edges, effective kernel {shape.effective_size}: {how}"]
    if batch_norm and len(spec.vertices) > 2:
        notes.append(
            "the new BatchNorms are the identity in eval mode only (gamma = sqrt(var + eps), "
            "beta = mean); in train mode they normalise with batch statistics"
        )
    return Outcome(
        new_nonzero=nonzero,
        new_total=total,
        residual=residual,
        exact=exact,
        iterations=iterations,
        sources=sources,
        notes=notes,
        train_exact=not (batch_norm and len(spec.vertices) > 2),
    )


def morph_module(
    model: nn.Module,
    at: str,
    spec: Module,
    *,
    method: str = "general",
    activation: object = "prelu",
    batch_norm: bool = True,
    max_iter: int = 300,
    solver_tol: float | None = None,
    probe: object = None,
    input_shape: Sequence[int] | None = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
) -> tuple[nn.Module, MorphReport]:
    """Replace the Conv1d/2d/3d or Linear layer ``at`` by the module graph ``spec``.

    ``spec``: a :class:`netmorph_core.morph.graph.Module` whose source takes the layer's input
    channels and sink its output channels (inner widths in ``Module(..., channels=)``; identity
    edges need equal channels at both ends); its effective kernel Kt ≥ K with Kt − K even.
    ``method`` ("general"/"practical"), ``max_iter`` and ``solver_tol`` go to the core solver
    (:func:`netmorph_core.morph.module.morph_module`; it raises ValueError when the module
    cannot reproduce G within ``solver_tol``). ``batch_norm``: an identity BN before the
    PActivation(a = 1) of every inner vertex. ``probe``/``input_shape``/``tol`` as in
    :func:`netmorph_core.torch.deepen`. Returns (child, report); ``model`` is not modified.
    """
    layer = find_layer(model, at, same_padding=True, replaced=True)
    shape = check_spec(layer, spec)
    inner = [c for u, c in shape.channels.items() if u not in (spec.source, spec.sink)]
    entries = sum(
        shape.channels[e.head] * shape.channels[e.tail] * math.prod(shape.kernels[e.name])
        for e in spec.edges
    )
    budget = hidden_budget("morph_module", model, at, layer, inner, entries)
    check_method(method)
    make_activation(activation)
    check_flag(batch_norm, "batch_norm")

    def build(child: nn.Module) -> Outcome:
        return replace_with_module(
            child,
            at,
            spec,
            method=method,
            seed=seed,
            max_iter=max_iter,
            solver_tol=solver_tol,
            activation=activation,
            batch_norm=batch_norm,
        )

    return run(
        Request(
            "morph_module",
            model,
            (at,),
            build,
            edits=(at,),
            aliases=True,
            regions=(Region(at, at),),
            same_padding=True,
            probe=probe,
            input_shape=input_shape,
            tol=tol,
            untie=True,
            budget=budget,
        )
    )
