"""Measurement in memory proportional to one module: float64 computed one module at a time,
and the edited regions of the model checked alone.

:func:`float64_calls` makes a model compute in float64 without a float64 copy of it: each
module holding floating parameters or buffers swaps them (and those of the children whose
weights its code reads directly) for float64 copies when it is called (and gets its floating
inputs in float64: a forward may cast its input to a submodule's dtype
before that submodule swaps) and gets its own tensors back when it returns, so at most the
float64 tensors of the modules on the current call path are resident (for a transformer: one
projection). An ``nn.Embedding`` casts the rows it looks up instead of its table, and a
large ``nn.Linear`` (an output head) computes :data:`LINEAR_CHUNK` weight entries at a time.

:func:`run_model` runs a model on the probe (eval or train mode, seeded, the caller's RNG
restored, the key/value cache off, every buffer restored afterwards) and captures, with forward
hooks, the inputs (positional and keyword) and outputs of the :class:`Region` modules.
:func:`check_regions` runs each child region on the inputs captured in the parent and compares
with the parent's outputs there: in float64 against the float64 bound, and for low-precision
models also in the model's dtype against the region's own rounding noise (see :mod:`.report`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .errors import MorphError
from .forward_kept import kept
from .report import (
    AUTO_F64_BOUND,
    auto_bound,
    compare,
    eval_mode,
    layer_count,
    outputs_of,
)
from .seeded import seeded

Inputs = tuple[torch.Tensor, ...]
#: A Linear layer with more weight entries computes in float64 this many entries at a time
#: (an output head of a language model: 65M entries, 0.5 GB in float64).
LINEAR_CHUNK = 1 << 22
Outputs = list[torch.Tensor]


@dataclass(frozen=True)
class Region:
    """A part of the model whose function the child keeps, checked alone.

    The call of the parent's module ``parent`` is captured on the probe; the child's module
    ``child`` runs on the same inputs. ``identity``: the child module must return its first
    input (a new block); ``after``: its input is the parent module's output (a block appended
    after ``parent``), with the parent call's other arguments; ``lift``: maps a parent stream
    tensor (…, d) to the child's (grow_width): applied to the first input and first output.
    """

    parent: str
    child: str
    identity: bool = False
    after: bool = False
    lift: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class Captured:
    """One captured call: positional and keyword inputs and the outputs (detached clones);
    ``low``: the outputs of the same module run in the model's low-precision dtype on the
    inputs cast to it (None for float64 models and new blocks); ``layers``: its Conv/Linear
    layer count."""

    args: tuple
    kwargs: dict
    outputs: Outputs
    low: Outputs | None = None
    layers: int = 0


def own_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The floating parameters and buffers ``module`` holds itself (not its children's)."""
    items = (*module._parameters.values(), *module._buffers.values())
    return [t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()]


class _Scratch:
    """Float64 buffers reused from one module call to the next: a fresh tensor of a
    projection's size costs its page faults on every call (ten times the cast itself). A
    buffer is taken for one call and given back when the call returns; one that cannot hold a
    request is dropped, so the buffers held are those of the calls active at once."""

    def __init__(self) -> None:
        self.free: list[torch.Tensor] = []

    def take(self, numel: int, device: torch.device) -> torch.Tensor:
        """A float64 buffer of at least ``numel`` entries on ``device``, out of the free list."""
        here = [b for b in self.free if b.device == device]
        fits = [b for b in here if b.numel() >= numel]
        if fits:
            buffer = min(fits, key=torch.Tensor.numel)
            self.free = [b for b in self.free if b is not buffer]
            return buffer
        self.free = [b for b in self.free if b.device != device or b.numel() >= numel]
        return torch.empty(numel, dtype=torch.float64, device=device)

    def give(self, buffer: torch.Tensor) -> None:
        self.free.append(buffer)

    def cast(self, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(buffer, float64 copies of ``tensors`` as views of it); give the buffer back."""
        buffer = self.take(sum(t.numel() for t in tensors), tensors[0].device)
        views, start = [], 0
        for t in tensors:
            view = buffer[start : start + t.numel()].view(t.shape)
            view.copy_(t.detach())
            views.append(view)
            start += t.numel()
        return buffer, views


Slot = tuple[dict, str, torch.Tensor]


@contextmanager
def float64_calls(model: nn.Module) -> Iterator[None]:
    """While active, every module of ``model`` computes in float64 (module docstring): a
    module's own floating tensors are replaced, in its ``_parameters``/``_buffers``, by float64
    copies in reused scratch buffers for the duration of its call. The tensors themselves are
    never touched (a tensor the parent shares with the child under construction stays the
    parent's), and every module holds them again on exit."""
    scratch = _Scratch()
    active: dict[int, tuple[list[Slot], torch.Tensor | None, list[int]]] = {}

    def enter(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # a forward that casts its input to a submodule's dtype before that submodule swaps
        # (DINOv2: pixel_values.to(projection.weight.dtype)) hands it a lower-precision tensor
        lifted = (tuple(_up(a) for a in args), {k: _up(v) for k, v in kwargs.items()})
        key = id(module)
        if key in active:
            active[key][2][0] += 1
            return lifted
        holders = [module, *read_children(module)]
        slots: list[Slot] = [
            (table, name, t)
            for holder in holders
            for table in (holder._parameters, holder._buffers)
            for name, t in table.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
        ]
        buffer = None
        if slots:
            buffer, views = scratch.cast([t for _, _, t in slots])
            for (table, name, t), view in zip(slots, views):
                is_param = isinstance(t, nn.Parameter)
                table[name] = nn.Parameter(view, requires_grad=False) if is_param else view
        active[key] = (slots, buffer, [1])
        return lifted

    def restore(slots: list[Slot], buffer: torch.Tensor | None) -> None:
        for table, name, t in slots:
            table[name] = t
        if buffer is not None:
            scratch.give(buffer)

    def leave(module: nn.Module, args: object, output: object) -> None:
        entry = active.get(id(module))
        if entry is None:
            return
        entry[2][0] -= 1
        if entry[2][0] == 0:
            restore(entry[0], entry[1])
            del active[id(module)]

    handles, chunked = [], []
    for m in model.modules():
        kind = _swapped(m)
        if kind == "rows":
            handles.append(m.register_forward_hook(_rows_in_float64))
        elif kind == "chunks":
            m.forward = _chunked_linear(m, scratch)
            chunked.append(m)
        elif kind == "swap":
            handles.append(m.register_forward_pre_hook(enter, with_kwargs=True))
            handles.append(m.register_forward_hook(leave, always_call=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in chunked:
            del m.forward
        for slots, buffer, _ in active.values():
            restore(slots, buffer)
        active.clear()


def _up(x: object) -> object:
    """A floating tensor of a lower precision as float64 (exact); anything else as it is."""
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float64:
        return x.to(torch.float64)
    return x


@lru_cache(maxsize=256)
def _read_names(cls: type) -> frozenset[str]:
    """The attributes ``x`` of which the class's methods read the values of ``self.x.weight``
    / ``.bias`` (not only their dtype, device or shape: Mamba's ``self.lm_head.weight.dtype``
    reads no value, and swapping the whole head for it would hold its float64 copy)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return frozenset()
    metadata = r"\.(?:dtype|device|shape|ndim|is_cuda|requires_grad)\b|\.size\("
    found = re.findall(rf"self\.([A-Za-z_]\w*)\.(?:weight|bias)\b(?!{metadata})", source)
    return frozenset(found)


def read_children(module: nn.Module) -> list[nn.Module]:
    """The child modules whose weight or bias ``module``'s own code reads directly (Mamba's
    mixer: ``self.dt_proj.weight @ …``): they compute in float64 with it, swapped on its call
    (a child called afterwards finds its tensors in float64 already)."""
    found = []
    for name in sorted(_read_names(type(module))):
        child = module._modules.get(name)
        if isinstance(child, nn.Module):
            found.append(child)
    return found


def _swapped(module: nn.Module) -> str:
    """How :func:`float64_calls` makes ``module`` compute in float64: "rows" (an embedding),
    "chunks" (a large Linear), "swap" (its own tensors) or "none"."""
    if type(module) is nn.Embedding and module.max_norm is None:
        return "rows"
    if (
        type(module) is nn.Linear
        and module.weight.numel() > LINEAR_CHUNK
        and "forward" not in vars(module)
        and not (module._forward_pre_hooks or module._forward_hooks)
    ):
        return "chunks"
    return "swap" if own_tensors(module) or read_children(module) else "none"


def float64_bytes(model: nn.Module) -> int:
    """The most float64 bytes :func:`float64_calls` holds for one module of ``model``."""
    sizes = [0]
    for m in model.modules():
        kind = _swapped(m)
        if kind == "chunks":
            sizes.append(8 * LINEAR_CHUNK)
        elif kind == "swap":
            held = [t for h in (m, *read_children(m)) for t in own_tensors(h)]
            sizes.append(8 * sum(t.numel() for t in held))
    return max(sizes)


def _rows_in_float64(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
    """An embedding's rows are exact in float64: cast the looked-up rows, not the table."""
    return output.to(torch.float64) if output.is_floating_point() else output


def _chunked_linear(layer: nn.Linear, scratch: _Scratch) -> Callable[[torch.Tensor], torch.Tensor]:
    """``layer``'s function in float64, :data:`LINEAR_CHUNK` weight entries at a time (each
    chunk cast into one reused scratch buffer)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        rows = max(1, LINEAR_CHUNK // max(layer.in_features, 1))
        out = x.new_empty((*x.shape[:-1], layer.out_features))
        buffer = scratch.take(min(rows, layer.out_features) * layer.in_features, x.device)
        try:
            for i in range(0, layer.out_features, rows):
                chunk = layer.weight[i : i + rows]
                w = buffer[: chunk.numel()].view(chunk.shape)
                w.copy_(chunk.detach())
                b = None if layer.bias is None else layer.bias[i : i + rows].to(torch.float64)
                out[..., i : i + chunk.shape[0]] = F.linear(x, w, b)
        finally:
            scratch.give(buffer)
        return out

    return forward


@contextmanager
def cache_off(model: nn.Module) -> Iterator[None]:
    """Every config ``model``'s modules hold says ``use_cache=False`` (a key/value cache
    would carry one call's keys into the next)."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    saved = {
        k: c.use_cache
        for k, c in configs.items()
        if isinstance(getattr(c, "use_cache", None), bool)
    }
    try:
        for k in saved:
            configs[k].use_cache = False
        yield
    finally:
        for k, value in saved.items():
            configs[k].use_cache = value


@contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Every buffer of ``model`` (BatchNorm statistics, counters) holds its values again on
    exit."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                if b.shape == value.shape and b.dtype == value.dtype:
                    b.copy_(value)


def _cast(x: object, dtype: torch.dtype) -> object:
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, tuple):
        return tuple(_cast(v, dtype) for v in x)
    if isinstance(x, list):
        return [_cast(v, dtype) for v in x]
    if isinstance(x, dict):
        return {k: _cast(v, dtype) for k, v in x.items()}
    return x


def _clone(x: object) -> object:
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (tuple, list)):
        return type(x)(_clone(v) for v in x)
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    return x


def run_model(
    model: nn.Module,
    inputs: Inputs,
    *,
    float64: bool,
    train: bool = False,
    seed: int = 0,
    capture: Sequence[str] = (),
) -> tuple[Outputs, list[Captured]]:
    """``model``'s outputs on ``inputs`` (float64 per module when ``float64``) and the calls
    of the modules ``capture`` (the first call of each). Runs ``model`` itself: no grad, the
    given mode, seed ``seed``, the caller's RNG and every buffer restored."""
    found: dict[int, Captured] = {}
    handles = []
    for i, name in enumerate(capture):

        def hook(m: nn.Module, args: tuple, kwargs: dict, out: object, i: int = i) -> None:
            if i not in found:
                found[i] = Captured(
                    _clone(args), _clone(kwargs), [t.detach().clone() for t in outputs_of(out)]
                )

        handles.append(model.get_submodule(name).register_forward_hook(hook, with_kwargs=True))
    x = tuple(_cast(t, torch.float64) for t in inputs) if float64 else inputs
    try:
        with kept(model), buffers_kept(model), eval_mode(model, train=train), torch.no_grad():
            with seeded(model, inputs, seed), cache_off(model):
                if float64:
                    with float64_calls(model):
                        out = [t.detach() for t in outputs_of(model(*x))]
                else:
                    out = [t.detach() for t in outputs_of(model(*x))]
    finally:
        for h in handles:
            h.remove()
    missing = [capture[i] for i in range(len(capture)) if i not in found]
    if missing:
        raise MorphError(f"the probe never reaches {missing}: their change cannot be checked")
    return out, [found[i] for i in range(len(capture))]


def _call(module: nn.Module, args: tuple, kwargs: dict, *, float64: bool) -> Outputs:
    with kept(module), buffers_kept(module), eval_mode(module), torch.no_grad():
        with seeded(module):
            if float64:
                with float64_calls(module):
                    return [t.detach() for t in outputs_of(module(*args, **kwargs))]
            return [t.detach() for t in outputs_of(module(*args, **kwargs))]


def run_low_precision(
    model: nn.Module, regions: Sequence[Region], captured: Sequence[Captured], dtype: torch.dtype
) -> None:
    """Fill each captured call's ``low`` outputs: the parent's region module (of ``model``,
    before any edit) run in ``dtype`` on its captured inputs cast to ``dtype``."""
    for region, cap in zip(regions, captured):
        if region.identity:
            continue
        module = model.get_submodule(region.parent)
        cap.low = _call(module, _cast(cap.args, dtype), _cast(cap.kwargs, dtype), float64=False)
        cap.layers = layer_count(module)


def _inputs(region: Region, cap: Captured) -> tuple[tuple, Outputs]:
    """(child inputs, expected child outputs) of a region from the parent's captured call."""
    args = (cap.outputs[0], *cap.args[1:]) if region.after else cap.args
    expected = [args[0]] if region.identity else list(cap.outputs)
    if region.lift is not None:
        args = (region.lift(args[0]), *args[1:])
        expected = [region.lift(expected[0]), *expected[1:]]
    return args, expected


def in_float64(dtype: torch.dtype, tol: float | str | None) -> bool:
    """Whether ``tol`` is checked on float64 deviations: for float64 models, a number, and
    None (which reports every deviation); ``tol="auto"`` of a low-precision model bounds the
    deviation in the model's dtype from the float64 parent instead."""
    return dtype == torch.float64 or tol != "auto"


def check_regions(
    operation: str,
    child: nn.Module,
    regions: Sequence[Region],
    captured: Sequence[Captured],
    dtype: torch.dtype,
    tol: float | str | None,
) -> tuple[tuple[str, float], ...]:
    """Run each child region on its captured inputs and compare (module docstring): MorphError
    naming the region when it breaks ``tol``. Returns (child module, relative deviation) for
    each region: the checked one — in float64 where :func:`in_float64`, else the child region
    in the model's dtype against the float64 parent region (the region is not run in float64
    then: nothing would check it). The parent's low-precision outputs come from
    :func:`run_low_precision`."""
    found = []
    wide = in_float64(dtype, tol)
    for region, cap in zip(regions, captured):
        args, expected = _inputs(region, cap)
        module = child.get_submodule(region.child)
        where = f"{operation}: {region.child!r}"
        try:
            if wide:
                out = _call(module, args, cap.kwargs, float64=True)
            else:
                out = _call(module, _cast(args, dtype), _cast(cap.kwargs, dtype), float64=False)
            if len(expected) != len(out) or any(
                a.shape != b.shape for a, b in zip(expected, out)
            ):  # auxiliary outputs of another size (attention weights of more heads)
                expected, out = expected[:1], out[:1]
            dev = compare(expected, out)
        except MorphError:
            raise
        except Exception as exc:  # the child's forward raises any type
            raise MorphError(
                f"{operation}: {region.child!r} of the child fails on the inputs its parent "
                f"region {region.parent!r} receives ({type(exc).__name__}: {exc}); refused"
            ) from exc
        found.append((region.child, dev[1]))
        if tol is None:
            continue
        if wide:
            bound = AUTO_F64_BOUND if tol == "auto" else float(tol)
            if not dev[1] <= bound:
                raise MorphError(
                    f"{where} deviates from the parent's {region.parent!r} by {dev[1]:.3e} "
                    f"(relative, float64, on the inputs it receives on the probe), above "
                    f"tol={tol!r} (bound {bound:.1e}); refused"
                )
            continue
        if region.identity or cap.low is None:
            parent_low = [_cast(expected[0], dtype)]
            new_layers = layer_count(module)
        else:
            parent_low = cap.low[: len(expected)]
            new_layers = max(0, layer_count(module) - cap.layers)
        reference = list(cap.outputs) if not region.identity else [args[0]]
        parent_noise = compare(reference[: len(parent_low)], parent_low)[1]
        bound = auto_bound(dtype, parent_noise, new_layers)
        if not dev[1] <= bound:
            raise MorphError(
                f"{where}: in {str(dtype).removeprefix('torch.')} it deviates from the float64 "
                f"parent region {region.parent!r} by {dev[1]:.3e} (relative), above "
                f"tol='auto''s bound {bound:.3e} (the region's own rounding noise "
                f"{parent_noise:.3e}); refused"
            )
    return tuple(found)
