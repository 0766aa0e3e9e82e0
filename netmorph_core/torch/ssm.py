"""Function-preserving growth of selective state-space (Mamba) language models.

The blocks compute x + out_proj(y) with y the mixer's channels (:mod:`.ssm_layout`): channel
c runs u_c = SiLU(conv_c(W_x,c·n(x))), a scan of u_c with the step Δ_c = softplus(dt_c·δ +
b_c), the decay A_c = −exp(A_log,c), the shared B, C = x_proj·u, the skip D_c·u_c, and the
gate SiLU(W_z,c·n(x)). Every operation goes through :mod:`.pipeline` like the transformer
operations (support checks, ``tol="auto"``, measurement; the parent is never modified):

- :func:`grow_ffn` — more inner channels E → E' (``intermediate_size``): a new channel's
  input rows (x and gate), kernel and Δ row are random and shared inside its cancelling set,
  its Δ bias, A_log row and D are those of a random parent channel; its ``x_proj`` and
  ``out_proj`` columns are C·(1, −1) or C·(1, 1, −2), so Δ, B, C and the output are unchanged
  (``method="zero"``: independent channels with zero columns).
- :func:`grow_width` — the stream d → d' = k·d + r as for the pre-norm decoders
  (:func:`.transformer.grow_width`): the embedding and each ``out_proj`` write [x; …; x; 0],
  ``in_proj`` reads k column blocks summing to W, the norms get γ·√(kd/d') and eps·kd/d'.
- :func:`add_block` — a new block whose ``out_proj`` sums to zero over cancelling sets of
  channels (``method="zero"``: zero ``out_proj``); the stream passes unchanged.
- :func:`grow_kernel` — the causal convolution of one mixer K → K' (any K' > K): new taps
  at the past end, zero, and padding K' − 1, so output t still reads inputs t − K + 1 … t.
- :func:`add_heads` — refused for Mamba: its mixer has no attention heads.

Mamba-2 mixers (heads of P channels sharing Δ, A and D, a gated norm per group of channels)
take :func:`grow_width`, :func:`add_block` (a new mixer's channels paired inside their heads:
equal z and x rows, kernels and norm gains, ``out_proj`` columns ±C) and :func:`grow_kernel`;
their inner width (:func:`grow_ffn`), heads (:func:`add_heads`) and the outputs of ``in_proj``
and ``conv1d`` (:func:`widen`) grow by whole new groups (:mod:`.ssm_groups`): a channel added
to an existing group would change its RMS, so a size between whole groups is refused naming
the nearest valid ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from .errors import MorphError
from .norm_kind import norm_kind
from .pipeline import run_on_model
from .report import MorphReport, Outcome, ParamSource, block_params, state_bytes
from .ssm_groups import LAYERS, add_groups, check_sizes, group_bytes, groups_to_add
from .ssm_layout import Geometry, SSMLayout, find_ssm
from .stream_output import restored, stream_view
from .streamed import Region
from .transformer import (
    _cancel_sets,
    _Editor,
    _eps_attr,
    _gain_offset,
    _gather_rows,
    _method,
    _read,
    _std,
    _stream_index,
    _write,
)

SEQ_LEN = 8


def mamba_layout(model: nn.Module, operation: str) -> SSMLayout:
    """The :class:`SSMLayout` of ``model``; MorphError when it is not a Mamba model."""
    layout = find_ssm(model)
    if layout is None:
        raise MorphError(
            f"{operation}: {type(model).__name__} holds no state-space (Mamba) mixer; refused"
        )
    return layout


def _probe(model: nn.Module, layout: SSMLayout) -> tuple[torch.Tensor, ...]:
    """Token ids (2, :data:`SEQ_LEN`) over the embedding's vocabulary."""
    embed = model.get_submodule(layout.embed)
    ids = torch.randint(
        0, embed.num_embeddings, (2, SEQ_LEN), generator=torch.Generator().manual_seed(0)
    )
    return (ids.to(embed.weight.device),)


def _run(
    operation: str,
    model: nn.Module,
    layout: SSMLayout,
    targets: tuple[str, ...],
    build: Callable[[nn.Module], Outcome],
    probe: object,
    tol: float | str | None,
    inplace: object,
    **request: object,
) -> tuple[nn.Module, MorphReport]:
    return run_on_model(
        operation,
        model,
        targets,
        build,
        probe,
        tol,
        inplace,
        lambda: _probe(model, layout),
        **request,
    )


def _layers(layout: SSMLayout, layers: object) -> tuple[int, ...]:
    n = len(layout.geometry)
    if layers is None:
        return tuple(range(n))
    listed = v.int_sequence(layers)
    raw = [layers] if listed is None else listed
    items = [v.as_int(i, "layers", f"a block index in [0, {n}) or a list of them") for i in raw]
    if not items or not all(0 <= i < n for i in items) or len(set(items)) != len(items):
        raise ValueError(f"layers must be distinct block indices in [0, {n}), got {items}")
    return tuple(sorted(items))


def _set(config: object | None, **values: object) -> None:
    for key, value in values.items():
        if config is not None and hasattr(config, key):
            setattr(config, key, value)


def _bytes(model: nn.Module) -> int:
    return next((p.element_size() for p in model.parameters() if p.is_floating_point()), 4)


# ---------------------------------------------------------------------------------------------
# Inner channels


def _channel_sets(first: int, width: int, method: str) -> list[list[int]]:
    """New channels ``first`` … ``width`` − 1 in cancelling sets (alone with "zero")."""
    new = range(first, width)
    return [[c] for c in new] if method == "zero" else _cancel_sets(new)


def _mixer_units(
    edit: _Editor, mixer: str, geo: Geometry, width: int, method: str, fresh: bool = False
) -> None:
    """The mixer ``mixer`` of the child gets ``width`` channels (module docstring); with
    ``fresh`` every channel is new (a new block), its ``x_proj`` dense and random."""
    inner = geo.inner
    kept = 0 if fresh else inner
    src = np.concatenate([np.arange(kept), -np.ones(width - kept, int)])
    sets = _channel_sets(kept, width, method)
    units = [u for s in sets for u in s]
    of_set = [i for i, s in enumerate(sets) for _ in s]
    w, b = edit.linear(f"{mixer}.in_proj")  # rows [x; z]
    halves = [w[j * inner : (j + 1) * inner] for j in range(2)]
    parts = []
    for half in halves:
        new = _gather_rows(half, src)
        edit.set_rows(new, sets, _std(half))
        parts.append(new)
    bias = (
        None
        if b is None
        else torch.cat([_gather_rows(b[j * inner : (j + 1) * inner], src) for j in range(2)])
    )
    index = np.concatenate([np.where(src >= 0, src + j * inner, -1) for j in range(2)])
    edit.put_linear(f"{mixer}.in_proj", torch.cat(parts), bias, index, None)
    conv = edit.get(f"{mixer}.conv1d.weight").reshape(inner, geo.kernel)
    taps = _gather_rows(conv, src)
    edit.set_rows(taps, sets, _std(conv))
    edit.put(f"{mixer}.conv1d.weight", taps.reshape(width, 1, geo.kernel), (src, None, None))
    if edit.child.get_submodule(f"{mixer}.conv1d").bias is not None:
        cb = edit.get(f"{mixer}.conv1d.bias")[:, None]
        new_cb = _gather_rows(cb, src)
        edit.set_rows(new_cb, sets, _std(cb))
        edit.put(f"{mixer}.conv1d.bias", new_cb[:, 0], (src,))
    w, _ = edit.linear(f"{mixer}.x_proj")
    cols = _gather_rows(w, src, axis=1)
    if fresh:
        cols = edit.noise(tuple(cols.shape), _std(w), cols).to(cols.dtype)
    else:
        edit.set_columns(cols, sets, _std(w), method)
    edit.put_linear(f"{mixer}.x_proj", cols, None, None, src)
    w, _ = edit.linear(f"{mixer}.dt_proj")
    rows = _gather_rows(w, src)
    edit.set_rows(rows, sets, _std(w))
    edit.put(f"{mixer}.dt_proj.weight", rows, (src, None))
    pick = torch.randint(0, inner, (len(sets),), generator=edit.gen)[of_set]
    for name in (f"{mixer}.dt_proj.bias", f"{mixer}.A_log", f"{mixer}.D"):
        t = edit.get(name)  # per channel: those of a random parent channel
        new = _gather_rows(t, src)
        new[units] = t[pick]
        edit.put(name, new, (src,) + (None,) * (t.dim() - 1))
    w, b = edit.linear(f"{mixer}.out_proj")
    cols = _gather_rows(w, src, axis=1)
    edit.set_columns(cols, sets, _std(w), method)
    new_b = torch.zeros_like(b) if (fresh and b is not None) else None
    edit.put_linear(f"{mixer}.out_proj", cols, new_b, None, src)
    module = edit.child.get_submodule(mixer)
    module.conv1d.groups = width
    if width != inner:
        _resize_buffers(module, inner, width, mixer)
    if isinstance(getattr(module, "intermediate_size", None), int):
        module.intermediate_size = width


def _channel_buffers(mixer: nn.Module, inner: int, where: str) -> list[tuple[str, torch.Tensor]]:
    """The mixer's buffers of one entry per channel: all ones (FalconMamba's unused norm
    weights), or a MorphError naming the first that is not."""
    found = [(n, b) for n, b in mixer.named_buffers() if b.dim() and b.shape[0] == inner]
    for name, buf in found:
        if not bool((buf == 1).all()):
            raise MorphError(
                f"'{where}.{name}' is a buffer of one value per channel that is not all ones; "
                "refused"
            )
    return found


def _resize_buffers(mixer: nn.Module, inner: int, width: int, where: str) -> None:
    """The mixer's all-ones buffers of one entry per channel grow with ones."""
    for name, buf in _channel_buffers(mixer, inner, where):
        owner_name, _, attr = name.rpartition(".")
        owner = mixer.get_submodule(owner_name) if owner_name else mixer
        persistent = attr not in owner._non_persistent_buffers_set
        owner.register_buffer(attr, buf.new_ones((width, *buf.shape[1:])), persistent=persistent)


def _inner_config(config: object | None, d_model: int, inner: int) -> None:
    """``intermediate_size`` (and ``expand``, from which MambaConfig derives it) for a stack
    whose mixers all have ``inner`` channels on a stream of width ``d_model``."""
    _set(config, intermediate_size=inner)
    if inner % d_model == 0:
        _set(config, expand=inner // d_model)


def grow_ffn(
    model: nn.Module,
    width: int,
    *,
    layers: object = None,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """The inner width (``intermediate_size``: the channels each mixer scans) of the blocks
    ``layers`` (default all) grows to ``width`` (module docstring); a Mamba-2 mixer's by whole
    new groups (:mod:`.ssm_groups`; another width is refused naming the nearest valid ones)."""
    layout = mamba_layout(model, "grow_ffn")
    method = _method(method)
    chosen = _layers(layout, layers)
    width = v.positive_int(width, "width")
    if layout.geometry[chosen[0]].mamba2:
        request = _GroupRequest("grow_ffn", "inner", width, "width", method)
        return _grow_groups(request, model, layout, chosen, probe, tol, seed, inplace)
    inner = max(layout.geometry[i].inner for i in chosen)
    if width <= inner:
        raise ValueError(f"width={width} must exceed the inner width {inner}")
    mixers = tuple(layout.mixer_of(i) for i in chosen)
    for i, name in zip(chosen, mixers):
        _channel_buffers(model.get_submodule(name), layout.geometry[i].inner, name)
    grown = sum(width - layout.geometry[i].inner for i in chosen)
    geo = layout.geometry[chosen[0]]
    per_channel = 3 * layout.d_model + geo.kernel + 2 * geo.rank + 2 * geo.state + 4
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        for i in chosen:
            _mixer_units(edit, layout.mixer_of(i), layout.geometry[i], width, method)
        notes = []
        config = getattr(child, "config", None)
        if len(chosen) == len(layout.geometry):
            _inner_config(config, layout.d_model, width)
        elif config is not None:
            notes.append("blocks differ in inner width: the config describes the others")
        if method == "netmorph" and any(len(s) == 1 for s in _channel_sets(inner, width, method)):
            notes.append("one new channel has no partner: its x_proj and out_proj columns are zero")
        return edit.outcome(notes)

    return _run(
        "grow_ffn",
        model,
        layout,
        tuple(f"{m}.out_proj" for m in mixers),
        build,
        probe,
        tol,
        inplace,
        copies=mixers,
        regions=tuple(Region(layout.blocks[i], layout.blocks[i]) for i in chosen),
        new_bytes=grown * per_channel * _bytes(model),
        replaced=mixers,
    )


# ---------------------------------------------------------------------------------------------
# Stream width


def grow_width(
    model: nn.Module,
    d_model: int,
    *,
    noise: float = 0.01,
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """The residual stream grows from d to ``d_model`` = k·d + r, by the construction of the
    pre-norm decoders (:func:`.transformer.grow_width`): writers (the embedding, every
    ``out_proj``) write [x; …; x; a] (a = 0 under RMSNorm, mean(x) under LayerNorm), readers
    (every ``in_proj``, an untied head) read k column blocks summing to W plus random columns
    on the extra coordinates, norms get γ·√(kd/d') and eps·kd/d' (a tied head's final norm
    also 1/k). The mixers' inner width is kept."""
    layout = mamba_layout(model, "grow_width")
    d = layout.d_model
    d_model = v.positive_int(d_model, "d_model")
    if d_model <= d:
        raise ValueError(f"d_model={d_model} must exceed the current width {d}")
    noise = v.real_number(noise, "noise", low=0.0)
    if layout.head is None and inplace is True:
        raise MorphError(
            f"inplace=True: {type(model).__name__} returns the residual stream itself, which "
            "the child returns wider (measured on a view of the model); use inplace=False"
        )
    copies, extra = divmod(d_model, d)
    norms = [layout.norm_of(i) for i in range(len(layout.geometry))]
    final = layout.final_norm
    all_norms = norms + ([final] if final else [])
    kinds = {norm_kind(model.get_submodule(n)) for n in all_norms}
    if len(kinds) != 1:
        raise MorphError(f"d_model={d_model}: the stack mixes LayerNorm and RMSNorm; refused")
    kind = kinds.pop()
    if final is None and layout.tied:
        raise MorphError(
            f"d_model={d_model}: the tied head reads the stream without a final norm to "
            "rescale; refused"
        )
    # the stream owner's load_state_dict pre-hook (MambaModel's key renaming) does not compute
    parts = (layout.blocks_path, layout.embed, *([layout.head] if layout.head else []))
    parts = (*parts, *([final] if final else []))
    offsets = {n: _gain_offset(model.get_submodule(n), n, kind) for n in all_norms}
    ratio = copies * d / d_model
    mixers = [layout.mixer_of(i) for i in range(len(layout.geometry))]
    new_bytes = state_bytes(model) * (d_model - d) // d * 2

    def lift(x: torch.Tensor) -> torch.Tensor:
        return _write(x, -1, copies, extra, kind)

    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        idx = _stream_index(d, copies, extra)
        w = child.get_parameter(f"{layout.embed}.weight").detach()
        edit.put(f"{layout.embed}.weight", _write(w, 1, copies, extra, kind), (None, idx))
        for mixer in mixers:
            w, b = edit.linear(f"{mixer}.out_proj")
            new_b = None if b is None else _write(b, 0, copies, extra, kind)
            edit.put_linear(
                f"{mixer}.out_proj", _write(w, 0, copies, extra, kind), new_b, idx, None
            )
            w, _ = edit.linear(f"{mixer}.in_proj")
            edit.put_linear(
                f"{mixer}.in_proj", _read(edit, w, copies, extra, noise), None, None, idx
            )
            module = child.get_submodule(mixer)
            if isinstance(getattr(module, "hidden_size", None), int):
                module.hidden_size = d_model
        for name in all_norms:
            scale = ratio**0.5 / (copies if (name == final and layout.tied) else 1)
            norm = child.get_submodule(name)
            g = edit.get(f"{name}.weight") * scale + offsets[name] * (scale - 1.0)
            edit.put(
                f"{name}.weight", torch.cat([g.repeat(copies), g.mean().expand(extra)]), (idx,)
            )
            if getattr(norm, "bias", None) is not None:
                bias = edit.get(f"{name}.bias") / (copies if (name == final and layout.tied) else 1)
                new = torch.cat([bias.repeat(copies), bias.new_zeros(extra)])
                edit.put(f"{name}.bias", new, (idx,))
            if extra:
                attr = _eps_attr(norm)
                setattr(norm, attr, getattr(norm, attr) * ratio)
            if isinstance(getattr(norm, "normalized_shape", None), tuple):
                norm.normalized_shape = (d_model,)
        head = layout.head
        if layout.tied:
            child.get_submodule(head).weight = child.get_submodule(layout.embed).weight
            edit.sources[f"{head}.weight"] = ParamSource(
                f"{layout.embed}.weight", f"{layout.embed}.weight"
            )
        elif head is not None:  # else the model returns the stream (:mod:`.stream_output`)
            w, _ = edit.linear(head)
            edit.put_linear(head, _read(edit, w, copies, extra, noise), None, None, idx)
        config = getattr(child, "config", None)
        _set(config, hidden_size=d_model)
        inner = {g.inner for g in layout.geometry}
        if len(inner) == 1:
            _inner_config(config, d_model, inner.pop())
        eps = {
            getattr(child.get_submodule(n), _eps_attr(child.get_submodule(n))) for n in all_norms
        }
        if len(eps) == 1:
            _set(config, layer_norm_epsilon=eps.pop())
        return edit.outcome([])

    returns_stream = layout.head is None
    child, report = _run(
        "grow_width",
        stream_view(model, d, copies, extra) if returns_stream else model,
        layout,
        (layout.blocks_path,),
        build,
        probe,
        tol,
        inplace,
        copies=tuple(parts),
        regions=tuple(Region(b, b, lift=lift) for b in layout.blocks),
        new_bytes=new_bytes,
        replaced=("",),
    )
    if not returns_stream:
        return child, report
    return restored(child, report, model, d, copies, extra)


# ---------------------------------------------------------------------------------------------
# Depth


def add_block(
    model: nn.Module,
    at: int,
    *,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """A new block inserted before block ``at`` (``at`` = number of blocks: at the end), a
    copy of its neighbour's norm with a new mixer whose output is zero: ``"netmorph"``: every
    weight dense and random, the channels in cancelling sets (equal input rows, kernels and
    Δ rows, one parent channel's A_log, D and Δ bias; ``out_proj`` columns C, −C or C, C, −2C);
    ``"zero"``: independent random channels and a zero ``out_proj``. In a float64 model the
    new block does not round the stream to float32 (``residual_in_fp32`` off for it alone):
    the config then cannot describe the child, which reloads with ``load_grown``."""
    layout = mamba_layout(model, "add_block")
    method = _method(method)
    n = len(layout.geometry)
    at = v.as_int(at, "at", f"a block index in [0, {n}]")
    if not 0 <= at <= n:
        raise ValueError(f"at must be a block index in [0, {n}], got {at}")
    prefix = layout.blocks_path
    source = min(at, n - 1)
    template = layout.blocks[source]
    geo = layout.geometry[source]
    if at < n:
        region = Region(f"{prefix}.{at}", f"{prefix}.{at}", identity=True)
    else:
        region = Region(f"{prefix}.{n - 1}", f"{prefix}.{n}", identity=True, after=True)
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        blocks = child.get_submodule(prefix)
        blocks.insert(at, copy.deepcopy(blocks[source]))
        for i, block in enumerate(blocks):
            for m in block.modules():
                if isinstance(getattr(m, "layer_idx", None), int):
                    m.layer_idx = i
        notes = []
        new = blocks[at]
        if getattr(new, "residual_in_fp32", False) is True and _is_float64(child):
            new.residual_in_fp32 = False
            notes.append(
                "residual_in_fp32 rounds the float64 stream to float32: the new block keeps it "
                "in float64 (its residual_in_fp32 is False), so that it passes the stream on "
                "unchanged"
            )
        edit = _Editor(child, seed)
        mixer = f"{prefix}.{at}.{layout.mixer}"
        if geo.mamba2:
            _fresh_mixer2(edit, mixer, geo, method)
        else:
            _mixer_units(edit, mixer, geo, geo.inner, method, fresh=True)
        sources: dict[str, ParamSource] = {}
        offset = len(prefix) + 1
        for name, _ in child.named_parameters():
            if not name.startswith(prefix + "."):
                continue
            i, _, rest = name[offset:].partition(".")
            if int(i) == at:
                sources[name] = ParamSource(None, f"{template}.{rest}")
            elif int(i) > at:
                old = f"{prefix}.{int(i) - 1}.{rest}"
                sources[name] = ParamSource(old, old)
        edit.sources = sources
        config = getattr(child, "config", None)
        _set(config, num_hidden_layers=n + 1)
        if config is not None and isinstance(getattr(config, "layer_types", None), list):
            config.layer_types.insert(at, config.layer_types[source])
        outcome = edit.outcome(notes)
        return outcome.count_new(block_params(child, f"{prefix}.{at}"))

    return _run(
        "add_block",
        model,
        layout,
        (f"{prefix}.{at}",),
        build,
        probe,
        tol,
        inplace,
        copies=(template,),
        regions=(region,),
        new_bytes=state_bytes(model.get_submodule(template)) * 2,
    )


def _fresh_mixer2(edit: _Editor, mixer: str, geo: Geometry, method: str) -> None:
    """A new Mamba-2 mixer (a copy of its neighbour's) whose output is zero: ``"zero"``: a
    zero ``out_proj``; ``"netmorph"``: the channels of each head in cancelling sets (equal z
    and x rows of ``in_proj``, kernels, biases and norm gains: equal outputs after the scan,
    which shares Δ, A, D per head and B, C per group, and after the gated norm, whose group
    holds the whole head) and ``out_proj`` columns C·(1, −1) or C·(1, 1, −2)."""
    inner, per_head = geo.inner, geo.inner // geo.heads
    w, b = edit.linear(f"{mixer}.out_proj")
    if method == "zero":
        cols = torch.zeros_like(w)
        edit.put_linear(
            f"{mixer}.out_proj", cols, None if b is None else torch.zeros_like(b), None, None
        )
        return
    sets = [
        s for h in range(geo.heads) for s in _cancel_sets(range(h * per_head, (h + 1) * per_head))
    ]
    first = torch.tensor([s[0] for s in sets for _ in s])
    units = [u for s in sets for u in s]
    cols = w.clone()
    edit.set_columns(cols, sets, _std(w), method)
    edit.put_linear(
        f"{mixer}.out_proj", cols, None if b is None else torch.zeros_like(b), None, None
    )
    w, b = edit.linear(f"{mixer}.in_proj")  # rows [z; x; B; C; Δ]
    rows = w.clone()
    for start in (0, inner):
        part = rows[start : start + inner]
        edit.set_rows(part, sets, _std(part))
    bias = None
    if b is not None:
        bias = b.clone()
        for start in (0, inner):
            bias[start + torch.tensor(units)] = b[start + first]
    edit.put_linear(f"{mixer}.in_proj", rows, bias, None, None)
    taps = edit.get(f"{mixer}.conv1d.weight").clone()
    x_taps = taps[:inner, 0]
    edit.set_rows(x_taps, sets, _std(x_taps))
    edit.put(f"{mixer}.conv1d.weight", taps, (None, None, None))
    for name in (f"{mixer}.conv1d.bias", f"{mixer}.norm.weight"):
        if _exists(edit.child, name):
            t = edit.get(name).clone()
            t[units] = t[first]
            edit.put(name, t, (None,))


def _exists(model: nn.Module, name: str) -> bool:
    owner, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(owner), attr, None) is not None


def _is_float64(model: nn.Module) -> bool:
    return any(p.dtype == torch.float64 for p in model.parameters())


def add_heads(
    model: nn.Module,
    heads: int,
    *,
    kv_heads: int | None = None,
    layers: object = None,
    method: str = "netmorph",
    probe: object = None,
    tol: float | str | None = "auto",
    seed: int | np.random.Generator | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, MorphReport]:
    """The Mamba-2 mixers of the blocks ``layers`` (default all) get ``heads`` heads in all,
    by whole new groups (:mod:`.ssm_groups`; ``kv_heads`` must stay None: the heads share B
    and C by group, not keys and values); a Mamba mixer has no heads and is refused by name
    (MorphError naming what to grow)."""
    layout = mamba_layout(model, "add_heads")
    if not layout.geometry[0].mamba2:
        raise MorphError(
            f"heads={heads!r}: {type(model).__name__} is a state-space (Mamba) model: its mixers "
            f"({layout.mixer_of(0)!r}, …) have no attention heads; grow its inner width with "
            "grow_ffn (intermediate_size), its stream with grow_width or its convolution with "
            "grow_kernel"
        )
    method = _method(method)
    chosen = _layers(layout, layers)
    heads = v.positive_int(heads, "heads")
    if kv_heads is not None:
        raise ValueError(
            f"kv_heads={kv_heads!r}: the heads of a Mamba-2 mixer share B and C by group, "
            "not keys and values; leave kv_heads None"
        )
    request = _GroupRequest("add_heads", "heads", heads, "heads", method)
    return _grow_groups(request, model, layout, chosen, probe, tol, seed, inplace)


@dataclass(frozen=True)
class _GroupRequest:
    """A request met by whole new groups of Mamba-2 mixers: the ``operation``, the
    ``quantity`` of :data:`.ssm_groups.QUANTITIES` it names, its ``value`` (the argument
    ``arg``) and the ``method``."""

    operation: str
    quantity: str
    value: int
    arg: str
    method: str


def _grow_groups(
    request: _GroupRequest,
    model: nn.Module,
    layout: SSMLayout,
    chosen: tuple[int, ...],
    probe: object,
    tol: float | str | None,
    seed: object,
    inplace: bool,
) -> tuple[nn.Module, MorphReport]:
    """The Mamba-2 mixers of the blocks ``chosen`` grow by the whole groups that bring
    ``request``'s quantity to its value (:func:`.ssm_groups.groups_to_add`, refusals first)."""
    groups = {}
    for i in chosen:
        geo, where = layout.geometry[i], layout.mixer_of(i)
        if not geo.mamba2:
            raise MorphError(f"{where!r} is not a Mamba-2 mixer like the others; refused")
        check_sizes(model.get_submodule(where), geo, where)
        groups[i] = groups_to_add(geo, request.quantity, request.value, request.arg, where)
    mixers = tuple(layout.mixer_of(i) for i in chosen)
    element = _bytes(model)
    new_bytes = sum(
        groups[i] * group_bytes(layout.geometry[i], layout.d_model, element) for i in chosen
    )
    seed = v.torch_seed(seed)  # last: a numpy Generator advances by one draw

    def build(child: nn.Module) -> Outcome:
        edit = _Editor(child, seed)
        for i in chosen:
            add_groups(edit, layout.mixer_of(i), layout.geometry[i], groups[i], request.method)
        grown = [_grown(g, groups.get(i, 0)) for i, g in enumerate(layout.geometry)]
        return edit.outcome(_groups_config(getattr(child, "config", None), layout, grown))

    return _run(
        request.operation,
        model,
        layout,
        tuple(f"{m}.out_proj" for m in mixers),
        build,
        probe,
        tol,
        inplace,
        copies=mixers,
        regions=tuple(Region(layout.blocks[i], layout.blocks[i]) for i in chosen),
        new_bytes=new_bytes,
        replaced=mixers,
    )


def _grown(geo: Geometry, m: int) -> Geometry:
    """``geo`` with ``m`` more groups (:mod:`.ssm_groups`)."""
    return Geometry(
        geo.inner + m * (geo.inner // geo.groups),
        geo.state,
        geo.rank,
        geo.kernel,
        heads=geo.heads + m * (geo.heads // geo.groups),
        groups=geo.groups + m,
    )


def _groups_config(config: object | None, layout: SSMLayout, grown: list[Geometry]) -> list[str]:
    """Write ``n_groups``, ``num_heads`` and ``expand`` for mixers now ``grown``, where one
    value of each describes every block and hidden_size·expand (an integer) = num_heads·
    head_dim holds; otherwise leave the config and say why (the child is then marked and
    reloads with ``load_grown``)."""
    if config is None:
        return []
    if len(set(grown)) > 1:
        return ["blocks differ in groups: the config describes the others"]
    geo, d = grown[0], layout.d_model
    if geo.inner % d:
        return [
            f"an inner width of {geo.inner} is not a whole multiple of hidden_size {d}: the "
            "config's expand (an integer) cannot describe it"
        ]
    _set(config, n_groups=geo.groups, num_heads=geo.heads, expand=geo.inner // d)
    return []


# ---------------------------------------------------------------------------------------------
# Causal convolution


def conv_block(layout: SSMLayout, at: str) -> int | None:
    """The block whose mixer's causal convolution is the layer ``at`` (None: another layer)."""
    return next(
        (i for i in range(len(layout.geometry)) if at == f"{layout.mixer_of(i)}.conv1d"), None
    )


def grow_kernel(
    model: nn.Module,
    at: str,
    kernel_size: int | Sequence[int],
    *,
    probe: object = None,
    input_shape: Sequence[int] | None = None,
    tol: float | str | None = "auto",
) -> tuple[nn.Module, MorphReport]:
    """The causal convolution ``at`` (a mixer's ``conv1d``) grows from K to ``kernel_size``
    K' > K taps: output t reads inputs t − K' + 1 … t through padding K' − 1 and the cut
    to the sequence length, so the K' − K new taps, at the past end, are zero and the channel
    computes what it did. The model reads token ids: give ``probe=``, not ``input_shape``."""
    layout = mamba_layout(model, "grow_kernel")
    if input_shape is not None:
        raise ValueError(
            f"input_shape={input_shape!r}: {type(model).__name__} reads token ids, not a random "
            "tensor; pass probe= (token ids) instead"
        )
    block = conv_block(layout, at) if isinstance(at, str) else None
    if block is None:
        raise MorphError(
            f"grow_kernel at={at!r}: not the causal convolution of a mixer of "
            f"{type(model).__name__} (e.g. {layout.mixer_of(0) + '.conv1d'!r}); refused"
        )
    old = layout.geometry[block].kernel
    size = v.kernel_tuple(kernel_size, 1, "kernel_size")[0]
    if size <= old:
        raise ValueError(f"kernel_size={size} must exceed the causal kernel's {old}")
    mixer = layout.mixer_of(block)

    def build(child: nn.Module) -> Outcome:
        conv = child.get_submodule(at)
        w = conv.weight.detach()
        new = torch.cat([w.new_zeros((*w.shape[:2], size - old)), w], dim=2)
        conv.weight = nn.Parameter(new, requires_grad=conv.weight.requires_grad)
        conv.kernel_size, conv.padding = (size,), (size - 1,)
        module = child.get_submodule(mixer)
        if isinstance(getattr(module, "conv_kernel_size", None), int):
            module.conv_kernel_size = size
        kernels = {g.kernel for i, g in enumerate(layout.geometry) if i != block}
        notes = []
        if kernels <= {size}:
            _set(getattr(child, "config", None), conv_kernel=size)
        else:
            notes.append("blocks differ in kernel size: the config describes the others")
        index = np.concatenate([-np.ones(size - old, int), np.arange(old)])
        sources = {f"{at}.weight": ParamSource(f"{at}.weight", f"{at}.weight", (None, None, index))}
        return Outcome(0, w.shape[0] * (size - old), sources=sources, notes=notes)

    return _run(
        "grow_kernel",
        model,
        layout,
        (at,),
        build,
        probe,
        tol,
        False,
        copies=(mixer,),
        regions=(Region(layout.blocks[block], layout.blocks[block]),),
        new_bytes=model.get_submodule(at).weight.numel() * size // old * _bytes(model),
    )


# ---------------------------------------------------------------------------------------------
# Widening a mixer's inner layers

#: The mixer's layers whose outputs are its inner channels, and how many outputs per channel
#: (``in_proj``: the x and gate halves).
INNER_WRITERS = {"in_proj": 2, "conv1d": 1, "dt_proj": 1}


def inner_writer(layout: SSMLayout, at: object) -> tuple[int, str] | None:
    """(block, part) where ``at`` is one of :data:`INNER_WRITERS` of a mixer (else None)."""
    for i in range(len(layout.geometry)):
        for part in INNER_WRITERS:
            if at == f"{layout.mixer_of(i)}.{part}":
                return i, part
    return None


def widen(
    model: nn.Module,
    at: str,
    width: int,
    *,
    zero_side: str = "auto",
    seed: int | np.random.Generator | None = None,
    probe: object = None,
    input_shape: Sequence[int] | None = None,
    tol: float | str | None = "auto",
) -> tuple[nn.Module, MorphReport]:
    """A mixer's ``in_proj`` (2E outputs: the x and gate halves), ``conv1d`` or ``dt_proj``
    (E outputs) widened to ``width`` outputs: its block's inner width grows to E' = width / 2
    or width by :func:`grow_ffn` (``zero_side="auto"``: new channels in cancelling sets;
    ``"outer"``: zero ``x_proj``/``out_proj`` columns; ``"inner"`` is refused: a channel with
    zero input rows is not zero after the convolution's bias and the skip). A Mamba-2 mixer's
    ``in_proj`` ([z; x; B; C; Δ]) or ``conv1d`` ([x; B; C]) reaches ``width`` by whole new
    groups (:mod:`.ssm_groups`), or is refused naming the nearest valid widths."""
    layout = mamba_layout(model, "widen")
    found = inner_writer(layout, at)
    if found is None:
        raise MorphError(
            f"widen at={at!r}: not an inner layer (in_proj, conv1d, dt_proj) of a mixer of "
            f"{type(model).__name__}; refused"
        )
    block, part = found
    geo = layout.geometry[block]
    if geo.mamba2 and part not in LAYERS:
        raise MorphError(
            f"widen at={at!r}: a Mamba-2 mixer has no {part}; its inner layers are in_proj and "
            "conv1d; refused"
        )
    if input_shape is not None:
        raise ValueError(
            f"input_shape={input_shape!r}: {type(model).__name__} reads token ids, not a random "
            "tensor; pass probe= (token ids) instead"
        )
    width = v.positive_int(width, "width")
    if zero_side not in ("auto", "inner", "outer"):
        raise ValueError(f"zero_side must be one of ('auto', 'inner', 'outer'), got {zero_side!r}")
    if zero_side == "inner":
        raise MorphError(
            f"widen at={at!r} with zero_side='inner': a new inner channel with zero input rows "
            "still outputs its convolution bias through the scan and the skip D; use 'auto' or "
            "'outer'"
        )
    method = "netmorph" if zero_side == "auto" else "zero"
    if geo.mamba2:
        request = _GroupRequest("widen", part, width, "width", method)
        return _grow_groups(request, model, layout, (block,), probe, tol, seed, False)
    per = INNER_WRITERS[part]
    if width % per:
        raise ValueError(
            f"width={width}: {at!r} writes the x and gate halves of each inner channel; give "
            "an even width (twice the new inner width)"
        )
    return grow_ffn(
        model, width // per, layers=[block], method=method, probe=probe, tol=tol, seed=seed
    )
