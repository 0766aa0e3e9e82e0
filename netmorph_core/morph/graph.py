"""Module graphs (modularized morphing): blobs are vertices, layers are edges.

A module is a directed acyclic graph with one source s (the parent layer's input blob) and one
sink t (its output blob). Edge e = (tail → head) carries either a convolution filter
F_e (C_head, C_tail, *K_e) or a fixed scaled identity λ·I (a δ kernel, C_head = C_tail). A
vertex with several out-edges copies its blob to each; one with several in-edges sums them.
The module computes one kernel (the module equation, notes eq. 5):

    M = Σ_{paths p: s → t} F_{p,last} ⊛ … ⊛ F_{p,1},

each path's composition zero-padded centred to the effective size
Kt = max over paths of (Σ_{e ∈ p} (K_e − 1)) + 1. Centring needs every path into a vertex to have
an effective size of the same parity.

Algorithm 1 of the notes (:func:`reduce_module`) undoes the two atomic morphs: TYPE-I (an edge
replaced by two in series through a new vertex, G~ = F2 ⊛ F1) and TYPE-II (an edge replaced by
two parallel edges, G = F¹ + F²), until one edge is left or the module is irreducible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .. import _validation as v
from ..reference import compose_ref, pad_centered
from .solvability import layer_kernel

KernelSpec = int | tuple[int, ...]


def _check_name(x: object, what: str) -> str:
    if not isinstance(x, str) or not x:
        raise TypeError(f"{what} must be a non-empty string, got {x!r}")
    return x


def _check_kernel_spec(k: object, edge: str) -> KernelSpec:
    """A positive int (every spatial dimension) or a tuple of positive ints (one per
    dimension), as Python ints (NumPy integers, 0-d integer arrays and lists accepted)."""
    what = "a positive int or tuple"
    items = v.int_sequence(k)
    if items is None:
        size: KernelSpec = v.as_int(k, f"kernel_size of edge {edge!r}", what)
        sizes: tuple[int, ...] = (size,)
    else:
        sizes = size = tuple(v.as_int(d, f"kernel_size of edge {edge!r}", what) for d in items)
    if any(d < 1 for d in sizes):
        raise ValueError(f"kernel_size of edge {edge!r} must be positive, got {k}")
    return size


@dataclass(frozen=True)
class Edge:
    """One layer of a module: ``tail`` → ``head``.

    A convolution edge (``identity=False``) has a filter (C_head, C_tail, *kernel_size) to be
    solved for; ``kernel_size`` is an int (every spatial dimension; 1 for a linear layer) or one
    int per dimension. An identity edge is the fixed map ``scale``·I (C_head = C_tail, kernel 1).
    """

    name: str
    tail: str
    head: str
    kernel_size: KernelSpec = 1
    identity: bool = False
    scale: float = 1.0

    def __post_init__(self) -> None:
        _check_name(self.name, "edge name")
        _check_name(self.tail, f"tail of edge {self.name!r}")
        _check_name(self.head, f"head of edge {self.name!r}")
        object.__setattr__(self, "kernel_size", _check_kernel_spec(self.kernel_size, self.name))
        if not isinstance(self.identity, (bool, np.bool_)):
            raise TypeError(f"identity of edge {self.name!r} must be a bool, got {self.identity!r}")
        if isinstance(self.scale, bool) or not isinstance(
            self.scale, (int, float, np.integer, np.floating)
        ):
            raise TypeError(
                f"scale of edge {self.name!r} must be a real number, got {self.scale!r}"
            )
        if not math.isfinite(self.scale):
            raise ValueError(f"scale of edge {self.name!r} must be finite, got {self.scale}")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "identity", bool(self.identity))
        if self.identity and self.kernel_size != 1:
            raise ValueError(
                f"identity edge {self.name!r} has kernel size 1, got {self.kernel_size!r}"
            )
        if not self.identity and self.scale != 1.0:
            raise ValueError(
                f"scale applies to identity edges only; edge {self.name!r} is a convolution"
            )


def conv_edge(name: str, tail: str, head: str, kernel_size: KernelSpec = 1) -> Edge:
    """A convolution edge ``tail`` → ``head`` with a filter to be solved for."""
    return Edge(name, tail, head, kernel_size)


def identity_edge(name: str, tail: str, head: str, scale: float = 1.0) -> Edge:
    """The fixed edge ``scale``·I from ``tail`` to ``head`` (both carry the same channels)."""
    return Edge(name, tail, head, 1, True, scale)


def _find_cycle_vertex(edges: Sequence[Edge], left: set[str]) -> str:
    """A vertex on a cycle among the vertices ``left`` over by a topological sort."""
    preds: dict[str, str] = {}
    for e in edges:
        if e.head in left and e.tail in left:
            preds.setdefault(e.head, e.tail)
    vertex = next(u for e in edges if (u := e.head) in preds)
    seen: set[str] = set()
    while vertex not in seen:
        seen.add(vertex)
        vertex = preds[vertex]
    return vertex


class Module:
    """A single-source, single-sink DAG of :class:`Edge` (see the module docstring).

    ``channels`` optionally maps vertices to their channel counts; the source and sink take the
    parent layer's (C_in, C_out), vertices joined by identity edges share theirs, and every
    other vertex must be given. Raises ``TypeError``/``ValueError`` naming the offending edge
    or vertex: duplicate edge names, a cycle, several sources or sinks, unknown vertices in
    ``channels``, non-positive channel counts, kernel tuples of different lengths.
    """

    def __init__(self, edges: Iterable[Edge], channels: Mapping[str, int] | None = None) -> None:
        if isinstance(edges, (str, bytes)) or not isinstance(edges, Iterable):
            raise TypeError(f"edges must be a sequence of Edge, got {type(edges).__name__}")
        edges = tuple(edges)
        if not edges:
            raise ValueError("a module needs at least one edge")
        names: set[str] = set()
        for e in edges:
            if not isinstance(e, Edge):
                raise TypeError(f"edges must be Edge instances, got {type(e).__name__}")
            if e.name in names:
                raise ValueError(f"duplicate edge name {e.name!r}")
            names.add(e.name)
            if e.tail == e.head:
                raise ValueError(f"edge {e.name!r} is a cycle at vertex {e.tail!r}")
        lengths = {len(e.kernel_size) for e in edges if isinstance(e.kernel_size, tuple)}
        if len(lengths) > 1:
            bad = next(e.name for e in edges if isinstance(e.kernel_size, tuple))
            raise ValueError(
                f"kernel sizes must all have the same number of dimensions; edge {bad!r} and "
                f"others give tuples of lengths {sorted(lengths)}"
            )
        self.edges: tuple[Edge, ...] = edges
        self.vertices: tuple[str, ...] = self._topological_order()
        sources = [u for u in self.vertices if not self.in_edges(u)]
        sinks = [u for u in self.vertices if not self.out_edges(u)]
        if len(sources) != 1:
            raise ValueError(f"a module has a single source; vertices with no in-edge: {sources}")
        if len(sinks) != 1:
            raise ValueError(f"a module has a single sink; vertices with no out-edge: {sinks}")
        self.source: str = sources[0]
        self.sink: str = sinks[0]
        self.channels: dict[str, int] = {}
        if channels is not None:
            if not isinstance(channels, Mapping):
                raise TypeError(f"channels must be a mapping, got {type(channels).__name__}")
            for vertex, c in channels.items():
                if vertex not in self.vertices:
                    raise ValueError(f"channels: unknown vertex {vertex!r}")
                self.channels[vertex] = v.positive_int(c, f"channels[{vertex!r}]")

    def _topological_order(self) -> tuple[str, ...]:
        order: list[str] = []
        for e in self.edges:
            for u in (e.tail, e.head):
                if u not in order:
                    order.append(u)
        indegree = {u: 0 for u in order}
        for e in self.edges:
            indegree[e.head] += 1
        ready = [u for u in order if indegree[u] == 0]
        out: list[str] = []
        while ready:
            u = ready.pop(0)
            out.append(u)
            for e in self.edges:
                if e.tail == u:
                    indegree[e.head] -= 1
                    if indegree[e.head] == 0:
                        ready.append(e.head)
        if len(out) < len(order):
            vertex = _find_cycle_vertex(self.edges, set(order) - set(out))
            raise ValueError(f"the module has a cycle through vertex {vertex!r}")
        return tuple(out)

    def edge(self, name: str) -> Edge:
        """The edge called ``name`` (``ValueError`` naming it when there is none)."""
        for e in self.edges:
            if e.name == name:
                return e
        raise ValueError(f"unknown edge {name!r}; the module's edges are {self.edge_names}")

    @property
    def edge_names(self) -> list[str]:
        """Every edge name in the order given."""
        return [e.name for e in self.edges]

    def in_edges(self, vertex: str) -> list[Edge]:
        """Edges whose head is ``vertex``."""
        return [e for e in self.edges if e.head == vertex]

    def out_edges(self, vertex: str) -> list[Edge]:
        """Edges whose tail is ``vertex``."""
        return [e for e in self.edges if e.tail == vertex]

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{e.name}: {e.tail}->{e.head} "
            + (f"{e.scale:g}*I" if e.identity else f"k={e.kernel_size}")
            for e in self.edges
        )
        return f"Module({parts})"


# ----------------------------------------------------------------------------------------------
# Shapes: channels per vertex, kernel per edge, effective sizes.


@dataclass(frozen=True)
class ModuleShape:
    """A module bound to concrete shapes.

    ``channels`` per vertex; ``kernels`` per edge (tuples of ``ndim`` ints); ``reach[u]`` the
    effective size of all paths source → u (``(1,)*ndim`` at the source), ``span[u]`` of all
    paths u → sink; ``effective_size`` = reach[sink].
    """

    module: Module
    ndim: int
    channels: dict[str, int]
    kernels: dict[str, tuple[int, ...]]
    reach: dict[str, tuple[int, ...]]
    span: dict[str, tuple[int, ...]]

    @property
    def effective_size(self) -> tuple[int, ...]:
        return self.reach[self.module.sink]

    def filter_shape(self, name: str) -> tuple[int, ...]:
        """(C_head, C_tail, *K) of edge ``name``."""
        e = self.module.edge(name)
        return (self.channels[e.head], self.channels[e.tail], *self.kernels[name])

    def identity_kernel(self, name: str) -> np.ndarray:
        """The float64 kernel scale·I (C, C, 1, …) of identity edge ``name``."""
        e = self.module.edge(name)
        return e.scale * delta(self.channels[e.tail], self.ndim)


def delta(c: int, ndim: int) -> np.ndarray:
    """The identity kernel I (C, C, *(1,)*ndim) in float64: I ⊛ F = F ⊛ I = F."""
    out = np.zeros((c, c, *(1,) * ndim))
    out[(np.arange(c), np.arange(c), *(0,) * ndim)] = 1.0
    return out


def edge_kernel(e: Edge, ndim: int) -> tuple[int, ...]:
    """The kernel size of edge ``e`` as ``ndim`` ints ((1, …) for an identity)."""
    if e.identity:
        return (1,) * ndim
    return layer_kernel(e.kernel_size, ndim, f"kernel_size of edge {e.name!r}")


def _sizes(
    module: Module, kernels: Mapping[str, tuple[int, ...]], ndim: int
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Effective sizes of the paths into (reach) and out of (span) every vertex; checks that the
    paths meeting at a vertex have sizes of equal parity (so they centre on each other)."""

    def sweep(order: Sequence[str], forward: bool) -> dict[str, tuple[int, ...]]:
        sizes: dict[str, tuple[int, ...]] = {order[0]: (1,) * ndim}
        for u in order[1:]:
            cands = [
                tuple(
                    a + k - 1 for a, k in zip(sizes[e.tail if forward else e.head], kernels[e.name])
                )
                for e in (module.in_edges(u) if forward else module.out_edges(u))
            ]
            for c in cands[1:]:
                if any((a - b) % 2 for a, b in zip(c, cands[0])):
                    raise ValueError(
                        f"the paths {'into' if forward else 'out of'} vertex {u!r} have effective "
                        f"kernel sizes {cands[0]} and {c} of different parity; they cannot be "
                        "zero-padded centred to one size"
                    )
            sizes[u] = tuple(max(d) for d in zip(*cands)) if ndim else ()
        return sizes

    reach = sweep(module.vertices, True)
    span = sweep(module.vertices[::-1], False)
    return reach, span


def resolve_channels(module: Module, known: Sequence[tuple[str, int, str]]) -> dict[str, int]:
    """Channel count of every vertex from ``module.channels``, ``known`` facts
    (vertex, channels, where the fact comes from) and identity edges (which share channels).

    Raises ``ValueError`` naming the vertex or edge on a conflict or an undetermined vertex.
    """
    channels: dict[str, int] = {}
    origin: dict[str, str] = {}
    facts = [(u, c, f"channels[{u!r}]") for u, c in module.channels.items()] + list(known)

    def assign(u: str, c: int, why: str) -> bool:
        if u in channels:
            if channels[u] != c:
                raise ValueError(
                    f"vertex {u!r} carries {channels[u]} channels ({origin[u]}) but {why} "
                    f"needs {c}; channel counts must agree along every path"
                )
            return False
        channels[u], origin[u] = c, why
        return True

    for u, c, why in facts:
        assign(u, c, why)
    changed = True
    while changed:
        changed = False
        for e in module.edges:
            if not e.identity:
                continue
            for a, b in ((e.tail, e.head), (e.head, e.tail)):
                if a in channels:
                    changed |= assign(b, channels[a], f"identity edge {e.name!r} from {a!r}")
    for u in module.vertices:
        if u not in channels:
            raise ValueError(
                f"vertex {u!r} has no channel count: give it in Module(..., channels={{{u!r}: C}})"
            )
    return channels


def bind(module: Module, ndim: int, known: Sequence[tuple[str, int, str]]) -> ModuleShape:
    """The :class:`ModuleShape` of ``module`` with ``ndim`` spatial dimensions."""
    channels = resolve_channels(module, known)
    kernels = {e.name: edge_kernel(e, ndim) for e in module.edges}
    reach, span = _sizes(module, kernels, ndim)
    return ModuleShape(module, ndim, channels, kernels, reach, span)


def bind_to_layer(module: Module, g: np.ndarray) -> ModuleShape:
    """Bind ``module`` to the parent layer G (C_out, C_in, *K): source C_in, sink C_out; checks
    that G fits centred in the module's effective size."""
    shape = bind(
        module,
        g.ndim - 2,
        [
            (module.source, g.shape[1], "G's input channels"),
            (module.sink, g.shape[0], "G's output channels"),
        ],
    )
    kt = shape.effective_size
    if any(t < k or (t - k) % 2 for t, k in zip(kt, g.shape[2:])):
        raise ValueError(
            f"the module's effective kernel size {kt} must be at least G's kernel {g.shape[2:]} "
            "and differ from it by an even amount in every dimension"
        )
    return shape


# ----------------------------------------------------------------------------------------------
# The module equation.


def path_sums(
    shape: ModuleShape, filters: Mapping[str, np.ndarray], direction: Literal["in", "out"]
) -> dict[str, np.ndarray]:
    """Σ over the paths source → u (``"in"``: (C_u, C_s, *reach[u])) or u → sink (``"out"``:
    (C_t, C_u, *span[u])) of their compositions, for every vertex u, in float64.

    ``filters`` holds a kernel for every edge (identity edges included).
    """
    m = shape.module
    sums: dict[str, np.ndarray] = {}
    if direction == "in":
        order = m.vertices
        sums[order[0]] = delta(shape.channels[order[0]], shape.ndim)
        for u in order[1:]:
            size = shape.reach[u]
            acc = np.zeros((shape.channels[u], shape.channels[m.source], *size))
            for e in m.in_edges(u):
                acc += pad_centered(compose_ref(filters[e.name], sums[e.tail]), size)
            sums[u] = acc
    else:
        order = m.vertices[::-1]
        sums[order[0]] = delta(shape.channels[order[0]], shape.ndim)
        for u in order[1:]:
            size = shape.span[u]
            acc = np.zeros((shape.channels[m.sink], shape.channels[u], *size))
            for e in m.out_edges(u):
                acc += pad_centered(compose_ref(sums[e.head], filters[e.name]), size)
            sums[u] = acc
    return sums


def module_kernel(shape: ModuleShape, filters: Mapping[str, np.ndarray]) -> np.ndarray:
    """The module equation M = Σ_paths F_last ⊛ … ⊛ F_first (C_t, C_s, *Kt), float64."""
    return path_sums(shape, filters, "in")[shape.module.sink]


def check_filters(
    module: Module, filters: object, name: str = "filters"
) -> tuple[ModuleShape, dict[str, np.ndarray]]:
    """Validate a mapping edge name → filter against ``module``; returns its shape and the
    float64 kernels of every edge (identity edges from the module).

    Unknown or missing edge names, channel counts that disagree along a path, and an identity
    edge given a kernel other than scale·I raise ``ValueError`` naming the edge.
    """
    if not isinstance(module, Module):
        raise TypeError(f"module must be a Module, got {type(module).__name__}")
    if not isinstance(filters, Mapping):
        raise TypeError(f"{name} must be a mapping from edge name to filter, got {filters!r}")
    for key in filters:
        if key not in module.edge_names:
            raise ValueError(
                f"{name}: unknown edge {key!r}; the module's edges are {module.edge_names}"
            )
    arrays: dict[str, np.ndarray] = {}
    for e in module.edges:
        if e.name in filters:
            arrays[e.name] = v.as_filter(filters[e.name], f"{name}[{e.name!r}]")
        elif not e.identity:
            raise ValueError(f"{name}: missing the filter of edge {e.name!r}")
    if not arrays:
        raise ValueError(f"{name}: the module has no convolution edge to give the kernel shape")
    ndims = {f.ndim for f in arrays.values()}
    if len(ndims) > 1:
        raise ValueError(f"{name}: every filter must have the same number of dimensions")
    ndim = ndims.pop() - 2
    known = []
    for e in module.edges:
        if e.name in arrays:
            f = arrays[e.name]
            known.append((e.head, f.shape[0], f"edge {e.name!r} (output channels)"))
            known.append((e.tail, f.shape[1], f"edge {e.name!r} (input channels)"))
    shape = bind(module, ndim, known)
    kernels: dict[str, np.ndarray] = {}
    for e in module.edges:
        if e.identity:
            fixed = shape.identity_kernel(e.name)
            if e.name in arrays:
                given = arrays[e.name]
                if given.shape != fixed.shape or not np.array_equal(
                    given, fixed.astype(given.dtype)
                ):
                    raise ValueError(
                        f"{name}[{e.name!r}]: edge {e.name!r} is the fixed identity "
                        f"{e.scale:g}·I of shape {fixed.shape}"
                    )
            kernels[e.name] = fixed
        else:
            f = arrays[e.name]
            if f.shape[2:] != shape.kernels[e.name]:
                raise ValueError(
                    f"{name}[{e.name!r}]: edge {e.name!r} has kernel size "
                    f"{shape.kernels[e.name]}, got a filter of shape {f.shape}"
                )
            kernels[e.name] = f.astype(np.float64)
    return shape, kernels


def compose_module(module: Module, filters: Mapping[str, np.ndarray]) -> np.ndarray:
    """The kernel of a module: Σ over source → sink paths of the ⊛-composition of their edges.

    ``filters`` maps every convolution edge to its filter (C_head, C_tail, *K) (identity edges
    may be omitted; when given they must equal scale·I). Returns (C_sink, C_source, *Kt) in the
    filters' common dtype; each path is zero-padded centred to Kt.
    """
    shape, kernels = check_filters(module, filters)
    dtype = v.result_dtype(*(v.as_filter(f, f"filters[{n!r}]") for n, f in filters.items()))
    return module_kernel(shape, kernels).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Algorithm 1: reduction by reverse atomic morphs.


@dataclass(frozen=True)
class MorphStep:
    """One reverse atomic morph of :func:`reduce_module`.

    ``kind="I"`` (sequential): ``parts`` = (first, second) in data-flow order through the removed
    ``vertex`` became ``merged`` = second ⊛ first. ``kind="II"`` (parallel): the two parallel
    ``parts`` became ``merged`` = their sum (``vertex`` is None). The morph applies the steps in
    reverse order: ``merged`` is replaced by ``parts``.
    """

    kind: Literal["I", "II"]
    merged: str
    parts: tuple[str, str]
    vertex: str | None = None


@dataclass(frozen=True)
class Reduction:
    """What Algorithm 1 did: the ``steps`` in reduction order and the ``remainder`` module
    (one source → sink edge when the module is simple-morphable, else the irreducible
    module it stopped at) with every edge of the ``remainder`` and every merged part in
    ``edges``."""

    steps: tuple[MorphStep, ...]
    remainder: Module
    edges: dict[str, Edge] = field(repr=False)

    @property
    def reducible(self) -> bool:
        """Whether the module reduced to a single edge (simple morphable)."""
        return len(self.remainder.edges) == 1

    @property
    def morph_sequence(self) -> tuple[MorphStep, ...]:
        """The atomic morphs that build the module from the remainder, in order."""
        return self.steps[::-1]


def _merge_kernels(a: KernelSpec, b: KernelSpec, how: Literal["I", "II"]) -> KernelSpec:
    if isinstance(a, int) and isinstance(b, int):
        return a + b - 1 if how == "I" else max(a, b)
    n = len(a) if isinstance(a, tuple) else len(b)  # type: ignore[arg-type]
    ta = a if isinstance(a, tuple) else (a,) * n
    tb = b if isinstance(b, tuple) else (b,) * n
    return tuple(x + y - 1 if how == "I" else max(x, y) for x, y in zip(ta, tb))


def _merged_name(taken: set[str], base: str) -> str:
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}#{i}"
    return name


def _series(a: Edge, b: Edge, name: str) -> Edge:
    """b ⊛ a as one edge: identities compose to an identity; a zero identity annihilates."""
    if a.identity and b.identity:
        return identity_edge(name, a.tail, b.head, a.scale * b.scale)
    if (a.identity and a.scale == 0) or (b.identity and b.scale == 0):
        return identity_edge(name, a.tail, b.head, 0.0)
    return conv_edge(name, a.tail, b.head, _merge_kernels(a.kernel_size, b.kernel_size, "I"))


def _parallel(a: Edge, b: Edge, name: str) -> Edge:
    if a.identity and b.identity:
        return identity_edge(name, a.tail, a.head, a.scale + b.scale)
    return conv_edge(name, a.tail, a.head, _merge_kernels(a.kernel_size, b.kernel_size, "II"))


def reduce_module(module: Module) -> Reduction:
    """Algorithm 1: repeatedly merge two series edges through a vertex of in- and out-degree 1
    (reverse TYPE-I, the merged edge is second ⊛ first) and two parallel edges (reverse
    TYPE-II, their sum), first in topological order, until one edge is left or neither applies.

    Never raises for an irreducible module: the remainder is returned (``reducible`` False).
    Merged edges are named "(second⊛first)" and "(a+b)".
    """
    if not isinstance(module, Module):
        raise TypeError(f"module must be a Module, got {type(module).__name__}")
    edges = list(module.edges)
    known: dict[str, Edge] = {e.name: e for e in edges}
    steps: list[MorphStep] = []
    order = module.vertices
    while len(edges) > 1:
        step = None
        for u in order[1:-1]:
            ins = [e for e in edges if e.head == u]
            outs = [e for e in edges if e.tail == u]
            if len(ins) == 1 and len(outs) == 1:
                a, b = ins[0], outs[0]
                merged = _series(a, b, _merged_name(set(known), f"({b.name}⊛{a.name})"))
                step = MorphStep("I", merged.name, (a.name, b.name), u)
                break
        if step is None:
            for i, a in enumerate(edges):
                b = next((e for e in edges[i + 1 :] if (e.tail, e.head) == (a.tail, a.head)), None)
                if b is not None:
                    merged = _parallel(a, b, _merged_name(set(known), f"({a.name}+{b.name})"))
                    step = MorphStep("II", merged.name, (a.name, b.name))
                    break
        if step is None:
            break
        first = next(i for i, e in enumerate(edges) if e.name in step.parts)
        edges = [e for e in edges if e.name not in step.parts]
        edges.insert(first, merged)
        known[merged.name] = merged
        steps.append(step)
    kept = {u for e in edges for u in (e.tail, e.head)}
    channels = {u: c for u, c in module.channels.items() if u in kept}
    return Reduction(tuple(steps), Module(edges, channels), known)
