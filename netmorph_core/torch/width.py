"""Width morphing of Conv/Linear layers inside a model (NetMorph §3.4.1, DESIGN.md §3).

The layers ``at`` get C̃ − C new output channels; every module the widened tensor reaches is
found with torch.fx (:mod:`.consumers`; Hugging Face models, and models torch.fx cannot
trace: torch.export, :mod:`.exported_consumers`) and updated: BatchNorm and per-channel PReLU
get the new channels, consumers (Conv, Linear, flatten → Linear column blocks) get new input
columns. New producer rows N1 and new consumer columns N2 satisfy N2 ⊛ N1 = 0:

- "inner": N1 (and the new bias entries) are zero, N2 random. Exact only when a zero channel
  stays zero on the way to every consumer (BatchNorm's new channels keep it: running mean 0,
  var 1, weight 1, bias 0; the activation needs φ(0) = 0).
- "outer": N2 is zero, N1 random (and the new bias entries): exact for any activation.
- "auto": "inner" when it is exact, gradient passes a zero pre-activation on the way (not so
  for ReLU, whose zeroed units would never train) and it zeroes fewer parameters than "outer"
  (the paper's rule); otherwise "outer".

Random entries are Gaussian with the std of the existing weights of that layer. The C̃
channels are then permuted randomly (the same permutation for every producer), which changes
nothing downstream. BatchNorm is per channel, so the morph is also exact in train mode. A
per-channel parameter multiplying the widened tensor (a layer scale) gets the mean of its
values on the new channels: a new channel is zero where it meets the scale, or meets zero
columns further on.

Grouped producers (``groups`` g) get (C̃ − C)/g new channels in every group, permuted within the
group. A grouped consumer (p input, q output channels per group; depthwise: p = 1) grows by
whole new groups: the channel map keeps the parent's groups whole and in order and puts the
new channels in (C̃ − C)/p new groups; a new group's filters (random) read only new channels,
its bias is zero (a zero channel gives zero outputs; a non-zero one gives outputs that meet
zero columns further on), and its q new outputs are followed to the next consumer like the
widened channels. The gate conv of a squeeze-and-excitation product is
widened like a producer: a new channel of the product is the widened channel times its gate,
zero when the widened channel is, and met by zero columns otherwise.

A weight-normed layer (W = g·v/‖v‖, :mod:`.weight_normed`) keeps its weight norm: its new
entries go through :func:`.weight_normed.regrow`. Non-zero new entries inside a slice of its
norm (random rows of a producer normed along another axis than its outputs, random columns of
a consumer normed along another axis than its inputs) recompute that slice's g, exact up to
its rounding; "auto" then zeroes the side that avoids it where the rule above allows (a
weight-normed consumer gets zero columns: with dim=0 its per-row norms are unchanged).

A weight-standardised conv (Ŵ_o = g_o·(W_o − mean)/√(var + ε), :mod:`.standardized`) keeps its
class: its new filters are standardised on their own, and a consumer's new columns are zero or
random in Ŵ (W's new entries centred on each filter's mean, the gain rescaled for the variance,
:func:`.standardized.regrow`); a consumer without a gain is refused. "auto" zeroes the columns
(a zero filter W = 0 has Ŵ = 0, but (W − mean)/√(var + ε) has gradient 1/√ε there: its first
update would give it full scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from ..morph.width import as_generator, noise_scale
from .budget import hidden_budget
from .consumers import (
    FLAT,
    BlockRequest,
    FxTraceError,
    PartnerRequest,
    Use,
    WidthPlan,
    grouped_outputs,
    plan_widening,
)
from .errors import MorphError
from .exported_consumers import plan_exported_widening
from .pipeline import Request, run
from .report import MorphReport, Outcome, ParamSource
from .standardized import check_gain, is_weight_standardised
from .standardized import gain_index as standardised_gain_index
from .standardized import install as install_standardised
from .standardized import note as standardised_note
from .standardized import regrow as regrow_standardised
from .support import check_editable, check_model_state, check_widen_memory
from .surgery import find_layer, gather, to_numpy64, to_tensor
from .tracing import default_inputs, is_hf_model
from .transformer_layout import as_matrix, is_conv1d, weight_axes
from .weight_normed import install, is_weight_normed, norm_axis, regrow
from .weight_normed import note as weight_note
from .weight_normed import sources as weight_sources

ZERO_SIDES = ("auto", "inner", "outer")


def _names(at: object) -> tuple[str, ...]:
    names = (at,) if isinstance(at, str) else at
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"at must be a module name or a non-empty list of names, got {at!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"at names a module more than once: {list(names)}")
    return tuple(names)


def _column_index(use: Use, in_features: int) -> np.ndarray:
    """Child input column → parent input column (−1: new) of a consumer."""
    src = use.flow.src
    if use.kind != "linear" or use.flow.layout != FLAT:
        return src
    block = in_features // use.flow.parent_channels
    cols = np.where(src[:, None] >= 0, src[:, None] * block + np.arange(block), -1)
    return cols.reshape(-1)


def _noise(
    rng: np.random.Generator, shape: tuple[int, ...], like: torch.Tensor, scale: float
) -> torch.Tensor:
    return to_tensor(rng.normal(0.0, scale, shape), like)


def _set_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))


def _put_weight(
    layer: nn.Module,
    name: str,
    weight: torch.Tensor,
    index: tuple[np.ndarray | None, ...],
    outcome: Outcome,
) -> None:
    """``layer``'s weight becomes ``weight`` (``index``: child → parent entries per axis),
    through its weight norm where it has one (:func:`.weight_normed.regrow`), regrown with its
    gain where it is weight-standardised (:func:`.standardized.regrow`)."""
    if is_weight_standardised(layer):
        grown = regrow_standardised(layer, weight, index)
        install_standardised(layer, grown)
        outcome.sources[f"{name}.weight"] = ParamSource(f"{name}.weight", f"{name}.weight", index)
        if grown.gain is not None:
            outcome.sources[f"{name}.gain"] = ParamSource(
                f"{name}.gain", f"{name}.gain", standardised_gain_index(index)
            )
        outcome.notes.append(standardised_note(name, grown))
        return
    if not is_weight_normed(layer):
        _set_param(layer, "weight", weight)
        outcome.sources[f"{name}.weight"] = ParamSource(f"{name}.weight", f"{name}.weight", index)
        return
    kept = regrow(layer, weight, index)
    install(layer, kept, layer)
    for child_name, (parent, idx) in weight_sources(name, name, layer, index).items():
        outcome.sources[child_name] = ParamSource(parent, parent, idx)
    outcome.notes.append(weight_note(name, layer, kept))


def _regauged(plan: WidthPlan, model: nn.Module, side: str) -> list[str]:
    """The weight-normed layers in which zeroing ``side`` puts random new entries inside
    slices of their norm (whose g is then recomputed): producers normed along another axis
    than their outputs ("outer"), consumers along another axis than their inputs ("inner")."""
    if side == "outer":
        names, axis = [*plan.producers, *plan.gates], 0
    else:
        names, axis = [use.name for use in plan.consumers], 1
    found = []
    for name in names:
        layer = model.get_submodule(name)
        if is_weight_normed(layer) and norm_axis(layer) != weight_axes(layer)[axis]:
            found.append(name)
    return found


def _choose_side(zero_side: str, plan: WidthPlan, model: nn.Module, extra: int) -> tuple[str, str]:
    """The side to zero and why."""
    broken = plan.zero_broken()
    if zero_side == "inner" and broken:
        raise ValueError(
            f"zero_side='inner' is not exact here: {broken} maps a zero channel to a non-zero "
            "value on the way to a consumer; use zero_side='outer' or 'auto'"
        )
    if zero_side != "auto":
        dead = plan.dead() if zero_side == "inner" else None
        return zero_side, "requested" + (
            f"; {dead} has zero gradient at 0, so the zeroed new rows will not train"
            if dead
            else ""
        )
    if broken:
        return "outer", f"{broken} does not keep zero channels at zero"
    dead = plan.dead()
    if dead:
        return "outer", f"{dead} has zero gradient at 0, zeroed new rows would never train"
    producers = (*plan.producers, *plan.gates)
    singular = next((n for n in producers if is_weight_standardised(model.get_submodule(n))), None)
    if singular:
        return "outer", (
            f"zeroed new filters of the weight-standardised {singular!r} would sit where its "
            "standardisation has gradient 1/√ε: the first update would give them full scale"
        )
    by_inner, by_outer = _regauged(plan, model, "inner"), _regauged(plan, model, "outer")
    if by_inner and not by_outer:
        return "outer", f"the weight norm of {by_inner[0]!r} keeps its norms with zero columns"
    if by_outer and not by_inner:
        return "inner", f"the weight norm of {by_outer[0]!r} keeps its norms with zero rows"
    inner = outer = 0
    for name in plan.producers:
        layer = model.get_submodule(name)
        inner += extra * (math.prod(as_matrix(layer).shape[1:]) + (layer.bias is not None))
    for use in plan.consumers:
        w = as_matrix(model.get_submodule(use.name))
        block = w.shape[1] // use.flow.parent_channels
        outer += extra * block * w.shape[0] * math.prod(w.shape[2:])
    if inner < outer:
        return "inner", f"zeroes fewer parameters ({inner} < {outer})"
    return "outer", f"zeroes no more parameters ({outer} <= {inner})"


def _module_of(use: Use) -> str:
    """The module a use edits (a layer scale's owner for a "scale" use)."""
    return use.name.rpartition(".")[0] if use.kind == "scale" else use.name


def _check_untied(model: nn.Module, plan: WidthPlan) -> None:
    """The parameters widen replaces must not be shared with other modules."""
    touched = {*plan.producers, *plan.gates, *(use.name for use in plan.uses)}
    owners: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), set()).add(name.rpartition(".")[0])
    for names in owners.values():
        if len(names) > 1 and names & touched:
            raise MorphError(
                f"widening {list(plan.producers)}: a parameter is shared by modules "
                f"{sorted(names)}; widening would untie it"
            )


def _apply(
    child: nn.Module, plan: WidthPlan, src: np.ndarray, side: str, rng: np.random.Generator
) -> Outcome:
    """Widen the producers and update every use in ``child`` in place."""
    outcome = Outcome(new_nonzero=0, new_total=0)
    sources = outcome.sources
    nonzero = total = 0
    rows_of = [(name, src) for name in plan.producers] + list(plan.gates.items())
    for name, mapping in rows_of:
        new = mapping < 0
        layer = child.get_submodule(name)
        w = layer.weight
        out_axis = weight_axes(layer)[0]  # 1 for Conv1D, whose W is (in, out)
        shape = (int(new.sum()), *as_matrix(layer).shape[1:])
        rows = torch.zeros(shape, dtype=w.dtype, device=w.device)
        if side == "outer":
            rows = _noise(rng, shape, w, noise_scale(to_numpy64(w)))
        nonzero += int(torch.count_nonzero(rows))
        total += rows.numel()
        index: list[np.ndarray | None] = [None] * w.dim()
        index[out_axis] = mapping
        grown = gather(w, mapping, out_axis, rows.movedim(0, out_axis))
        _put_weight(layer, name, grown, tuple(index), outcome)
        if layer.bias is not None:
            b = layer.bias
            fill = torch.zeros(int(new.sum()), dtype=b.dtype, device=b.device)
            if side == "outer":
                fill = _noise(rng, tuple(fill.shape), b, noise_scale(to_numpy64(b)))
            _set_param(layer, "bias", gather(b, mapping, 0, fill))
            sources[f"{name}.bias"] = ParamSource(f"{name}.bias", f"{name}.bias", (mapping,))
        if isinstance(layer, nn.Linear):
            layer.out_features = mapping.size
        elif is_conv1d(layer):
            layer.nf = mapping.size
        else:
            layer.out_channels = mapping.size
    for use in plan.uses:
        m = child.get_submodule(_module_of(use))
        s = use.flow.src
        if use.kind == "batch_norm":
            for attr, fill in (("weight", 1.0), ("bias", 0.0)):
                if getattr(m, attr) is not None:
                    _set_param(m, attr, gather(getattr(m, attr), s, 0, fill))
                    sources[f"{use.name}.{attr}"] = ParamSource(
                        f"{use.name}.{attr}", f"{use.name}.{attr}", (s,)
                    )
            if m.running_mean is not None:
                m.running_mean = gather(m.running_mean, s, 0, 0.0)
                m.running_var = gather(m.running_var, s, 0, 1.0)
            m.num_features = s.size
        elif use.kind == "group_norm":  # the parent's groups, then whole new groups
            size = m.num_channels // m.num_groups
            for attr, fill in (("weight", 1.0), ("bias", 0.0)):
                if getattr(m, attr) is not None:
                    _set_param(m, attr, gather(getattr(m, attr), s, 0, fill))
                    sources[f"{use.name}.{attr}"] = ParamSource(
                        f"{use.name}.{attr}", f"{use.name}.{attr}", (s,)
                    )
            m.num_channels = s.size
            m.num_groups = s.size // size
        elif use.kind == "frozen_batch_norm":  # buffers, not parameters
            for attr, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0)):
                setattr(m, attr, gather(getattr(m, attr), s, 0, fill))
            m.running_var = gather(m.running_var, s, 0, 1.0)
            if hasattr(m, "num_features"):
                m.num_features = s.size
        elif use.kind == "grouped":
            per_in = m.in_channels // m.groups
            out = grouped_outputs(s, per_in, m.out_channels // m.groups)
            w = m.weight
            rows = _noise(rng, (int((out < 0).sum()), *w.shape[1:]), w, noise_scale(to_numpy64(w)))
            nonzero += int(torch.count_nonzero(rows))
            total += rows.numel()
            index = (out,) + (None,) * (w.dim() - 1)
            _put_weight(m, use.name, gather(w, out, 0, rows), index, outcome)
            if m.bias is not None:
                _set_param(m, "bias", gather(m.bias, out, 0, 0.0))
                sources[f"{use.name}.bias"] = ParamSource(
                    f"{use.name}.bias", f"{use.name}.bias", (out,)
                )
            m.in_channels, m.out_channels, m.groups = s.size, out.size, s.size // per_in
        elif use.kind == "scale":
            attr = use.name.rpartition(".")[2]
            p = getattr(m, attr)
            _set_param(m, attr, gather(p, s, use.axis, float(p.detach().mean())))
            index = (None,) * use.axis + (s,) + (None,) * (p.dim() - use.axis - 1)
            sources[use.name] = ParamSource(use.name, use.name, index)
        elif use.kind == "prelu":
            _set_param(m, "weight", gather(m.weight, s, 0, float(m.weight.detach().mean())))
            sources[f"{use.name}.weight"] = ParamSource(
                f"{use.name}.weight", f"{use.name}.weight", (s,)
            )
            m.num_parameters = s.size
        else:
            w, matrix = m.weight, as_matrix(m)
            cols = _column_index(use, matrix.shape[1])
            shape = (matrix.shape[0], int((cols < 0).sum()), *matrix.shape[2:])
            fill = torch.zeros(shape, dtype=w.dtype, device=w.device)
            if side == "inner":
                fill = _noise(rng, shape, w, noise_scale(to_numpy64(w)))
            nonzero += int(torch.count_nonzero(fill))
            total += fill.numel()
            in_axis = weight_axes(m)[1]  # 0 for Conv1D, whose W is (in, out)
            rows = sources.get(f"{use.name}.weight")  # a producer that consumes too
            index = [None] * w.dim() if rows is None else list(rows.index)
            index[in_axis] = cols
            grown = gather(w, cols, in_axis, fill.movedim(1, in_axis))
            _put_weight(m, use.name, grown, tuple(index), outcome)
            if is_conv1d(m):
                m.nx = cols.size
            elif use.kind == "linear":
                m.in_features = cols.size
            else:
                m.in_channels = cols.size
    for owner, (attr, sizes) in plan.sizes.items():
        setattr(child.get_submodule(owner), attr, sizes)
    outcome.new_nonzero, outcome.new_total = nonzero, total
    return outcome


def grouped_channel_map(
    rng: np.random.Generator, channels: int, width: int, groups: int
) -> np.ndarray:
    """Child channel → parent channel (−1: new) of a producer with ``groups``: every group's
    C/g old and (C̃ − C)/g new channels, randomly permuted within the group."""
    cg, wg = channels // groups, width // groups
    local = np.stack([rng.permutation(wg) for _ in range(groups)])
    base = np.arange(groups)[:, None] * cg
    return np.where(local < cg, base + local, -1).reshape(-1)


def block_channel_map(
    rng: np.random.Generator, channels: int, width: int, blocks: int
) -> np.ndarray:
    """Child channel → parent channel (−1: new) in ``blocks`` equal blocks: child block i holds
    parent block i's C/b channels and (C̃ − C)/b new ones, every block with the same random
    permutation (chunk(b) of the widened tensor then pairs its parts position by position)."""
    cb, wb = channels // blocks, width // blocks
    local = rng.permutation(wb)
    base = np.arange(blocks)[:, None] * cb
    return np.where(local < cb, base + local, -1).reshape(-1)


def group_channel_map(rng: np.random.Generator, channels: int, width: int, size: int) -> np.ndarray:
    """Child channel → parent channel (−1: new) in whole groups of ``size``: the parent's
    groups in order, each kept in order, and (C̃ − C)/size all-new groups placed at random
    among them (a grouped consumer then grows by whole new groups)."""
    old, new = channels // size, (width - channels) // size
    order = np.sort(rng.permutation(old + new)[:old])  # the positions of the parent's groups
    src = np.full((old + new, size), -1)
    src[order] = np.arange(channels).reshape(old, size)
    return src.reshape(-1)


def _blocks_for(request: BlockRequest, blocks: int, channels: int, width: int, names: tuple) -> int:
    """The blocks of a producer map that satisfy ``request`` as well as the ``blocks`` already
    needed (grouped producers: their groups)."""
    need = math.lcm(blocks, request.blocks)
    if channels % need or width % need:
        raise MorphError(
            f"widening {list(names)}: its channels are chunked into {request.blocks} parts "
            f"(and come in {blocks} blocks), so the {channels} channels and the width must be "
            f"multiples of {need}; got width {width}"
        ) from request
    return need


#: The most producers one widen grows (the layer asked for and its residual partners).
MAX_PRODUCERS = 256


def _producers(model: nn.Module, names: Sequence[str]) -> tuple[list[nn.Module], int, int]:
    """The layers ``names`` (found and checked), their common output channels and groups."""
    layers = [
        find_layer(model, n, grouped=True, same_padding=True, weight_norm=True, standardised=True)
        for n in names
    ]
    counts = {n: layer.weight.shape[0] for n, layer in zip(names, layers)}
    if len(set(counts.values())) > 1:
        raise ValueError(f"layers widened together must have the same output channels: {counts}")
    groups = {getattr(layer, "groups", 1) for layer in layers}
    if len(groups) > 1:
        raise ValueError(f"layers widened together must have the same groups, got {groups}")
    return layers, layers[0].weight.shape[0], groups.pop()


def _with_partners(
    model: nn.Module,
    names: tuple[str, ...],
    request: PartnerRequest,
    channels: int,
    groups: int,
) -> tuple[str, ...]:
    """``names`` and the layers ``request`` found added to their widened channels, which grow
    with them (same channels and groups); the request's refusal where there are none, they
    cannot be widened, or there would be more than :data:`MAX_PRODUCERS`."""
    new = [p for p in dict.fromkeys(request.partners) if p not in names]
    if not new or len(names) + len(new) > MAX_PRODUCERS:
        raise MorphError(str(request)) from request
    grown = (*names, *new)
    try:
        _, partner_channels, partner_groups = _producers(model, grown)
    except (MorphError, TypeError, ValueError) as exc:
        raise MorphError(f"{request}; its partners cannot grow with it: {exc}") from exc
    if (partner_channels, partner_groups) != (channels, groups):
        raise MorphError(str(request)) from request
    return grown


def _shape_inputs(
    model: nn.Module, probe: object, input_shape: object
) -> tuple[torch.Tensor, ...] | None:
    """Inputs to record the traced graph's shapes on: ``probe`` (floating tensors in the model's
    dtype and device) or zeros of ``input_shape``; None when neither is a valid input (the
    measurement validates them and names the argument)."""
    like = next((p for p in model.parameters() if p.is_floating_point()), None)
    device, dtype = (like.device, like.dtype) if like is not None else ("cpu", None)
    items = (probe,) if isinstance(probe, torch.Tensor) else probe
    if (
        isinstance(items, (tuple, list))
        and items
        and all(isinstance(t, torch.Tensor) for t in items)
    ):
        return tuple(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in items)
    if isinstance(input_shape, Sequence) and all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in input_shape
    ):
        return (torch.zeros(tuple(input_shape), device=device, dtype=dtype),)
    return None


def widen(
    model: nn.Module,
    at: str | Sequence[str],
    width: int,
    *,
    zero_side: str = "auto",
    seed: int | np.random.Generator | None = None,
    probe: object = None,
    input_shape: Sequence[int] | None = None,
    tol: float | str | None = "auto",
) -> tuple[nn.Module, MorphReport]:
    """Widen the outputs of the Conv/Linear layer ``at`` to ``width`` channels.

    ``at`` may list several layers whose outputs meet in a residual add: they are widened
    together (same width, same permutation). The other conv/linear producers of a residual sum
    the widened channels reach join them (a ResNet stage's stem or shortcut and every block's
    last conv; the report names them); a sum with a model input, a parameter or a layer of other
    channels or groups raises :class:`MorphError` naming it. ``zero_side``: "auto", "inner" or
    "outer" (module docstring); ``seed``: the permutation and the random entries. ``probe``/
    ``input_shape``/``tol`` as in :func:`deepen` (no single-layer fallback: without a model
    input tol="auto" raises, tol=None leaves the deviation unmeasured). Needs a model
    torch.fx can trace (MorphError otherwise); a Hugging Face model is exported with
    torch.export on ``probe`` (default: inputs from its config) and walked by
    :mod:`.exported_consumers`. Transformers' ``Conv1D`` layers (producers, gates and consumers)
    keep their class and (in, out) weight layout. Returns (child, report); ``model`` is
    unchanged.
    """
    names = _names(at)
    layers, channels, group_count = _producers(model, names)
    check_model_state(model)  # before tracing, which copies the model
    width = v.positive_int(width, "width")
    if width <= channels:
        raise ValueError(
            f"width must exceed the current {channels} output channels of {list(names)}, "
            f"got {width}"
        )
    if zero_side not in ZERO_SIDES:
        raise ValueError(f"zero_side must be one of {ZERO_SIDES}, got {zero_side!r}")
    if width % group_count:
        raise ValueError(
            f"width ({width}) must be divisible by the groups={group_count} of {list(names)}"
        )
    check_widen_memory(model, names, (), width)
    rng = as_generator(seed)
    src = grouped_channel_map(rng, channels, width, group_count)
    if is_hf_model(model):
        inputs = probe if probe is not None else default_inputs(model)
        if inputs is None:
            raise MorphError(
                f"widening {list(names)}: {type(model).__name__} is traced with torch.export, "
                "which needs example inputs; pass probe="
            )
    else:
        inputs = _shape_inputs(model, probe, input_shape)
    blocks = 1
    exported = is_hf_model(model)
    asked = _names(at)
    first: PartnerRequest | None = None  # the first residual sum met, where partners join
    while True:
        try:
            if exported:
                plan = plan_exported_widening(model, names, src, inputs)
            else:
                plan = plan_widening(model, names, src, inputs)
            break
        except FxTraceError as exc:
            if inputs is None:
                raise MorphError(
                    f"{exc}; torch.export can record it but needs example inputs: pass probe= "
                    "or input_shape="
                ) from exc
            exported = True  # the exported graph instead (its walk follows the same rules)
        except PartnerRequest as request:
            first = first or request
            names = _with_partners(model, names, request, channels, group_count)
            check_widen_memory(model, names, (), width)
        except BlockRequest as request:
            if request.whole_groups and blocks == 1 and group_count == 1:
                src = group_channel_map(rng, channels, width, request.blocks)
                blocks = 0  # laid out in whole groups: no other layout can be asked for
                continue
            if request.whole_groups or blocks < 1 or blocks % request.blocks == 0:
                raise MorphError(
                    f"widening {list(names)}: its channels reach a chunk or a grouped "
                    f"convolution that needs them in blocks of {request.blocks}, which the "
                    "layout another use needs (the producer's groups, another chunk or "
                    "grouped convolution) rules out"
                ) from request
            blocks = _blocks_for(request, math.lcm(blocks, group_count), channels, width, names)
            src = block_channel_map(rng, channels, width, blocks)
        except MorphError as exc:
            if first is None:
                raise
            raise MorphError(
                f"{first}; widened together with {list(names[len(asked) :])}, "
                f"the other producers of its residual sums, it is refused too: {exc}"
            ) from exc
    _check_untied(model, plan)
    check_editable(
        model,
        [_module_of(use) for use in plan.uses],
        same_padding=True,
        weight_norm=True,
        standardised=True,
    )
    for use in plan.consumers:
        consumer = model.get_submodule(use.name)
        if is_weight_standardised(consumer):
            check_gain(consumer, use.name, "new input columns")
    check_widen_memory(model, names, [use.name for use in plan.consumers], width)
    side, why = _choose_side(zero_side, plan, model, width - channels)
    # the widened output itself, one float64 tensor of it (its consumers' weights are bounded
    # by check_widen_memory)
    budget = hidden_budget("widen", model, names[0], layers[0], [width], 0, copies=1)

    partners = [n for n in names if n not in asked]

    def build(child: nn.Module) -> Outcome:
        outcome = _apply(child, plan, src, side, rng)
        outcome.notes.append(f"zero_side={side!r}: {why}")
        if partners:
            outcome.notes.append(
                f"widened with the other producers of its residual sums: {partners} (a sum "
                "of widened and unwidened channels has no exact child)"
            )
        if any(use.kind == "batch_norm" for use in plan.uses):
            outcome.notes.append(
                "new BatchNorm channels: running mean 0, var 1, weight 1, bias 0; BatchNorm is "
                "per channel, so train mode is exact too"
            )
        if is_hf_model(child):
            outcome.notes.append(
                "the config still gives the parent's layer sizes: save the child whole "
                "(torch.save); type(child)(child.config) would build the parent's architecture"
            )
        return outcome

    return run(
        Request(
            "widen",
            model,
            names,
            build,
            edits=tuple(dict.fromkeys(_module_of(use) for use in plan.uses)),
            probe=probe,
            input_shape=input_shape,
            tol=tol,
            budget=budget,
            same_padding=True,
            layer_scope=False,
            weight_norm=True,
            standardised=True,
        )
    )
