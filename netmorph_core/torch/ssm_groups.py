"""Whole new groups of a Mamba-2 mixer, exactly: n_groups G → G + m.

A Mamba-2 mixer (:mod:`.ssm_layout`) of E inner channels, H heads of P = E/H channels, G groups
of N states and kernel K computes, from ``in_proj``'s rows [z (E); x (E); B (G·N); C (G·N);
Δ (H)]: u = SiLU(conv1d([x; B; C])) (depthwise, causal), head h's scan of its P channels of u
with the step softplus(Δ_h + dt_bias_h), the decay −exp(A_log_h), the skip D_h and the B, C
of group h // (H/G); then the gated norm o = w ⊙ y·SiLU(z) / RMS, the RMS taken over each run
of g = E/G consecutive channels, and ``out_proj``·o. The norm's group of g channels is the
B/C group of the H/G heads it holds.

Adding m groups appends m·g channels (m·H/G heads, in the new groups G … G + m − 1 by
h // (H/G)) at the end of the z and x rows, m·N rows at the end of the B and of the C rows,
m·H/G Δ rows, the matching ``conv1d`` channels, ``dt_bias``, ``A_log``, ``D`` (those of a
random parent head) and norm gains, and ``out_proj`` columns. Every old head reads the same
B, C group, every old norm group the same g channels: the old channels compute what they did.
The new channels reach the stream only through their ``out_proj`` columns:

- ``"netmorph"``: the channels of each new head in cancelling sets (equal z and x rows,
  kernels, biases and gains: the scan shares Δ, A, D, B, C inside a head, and the norm's RMS
  inside a group, so a set's outputs are equal) with columns C·(1, −1) or C·(1, 1, −2);
- ``"zero"``: independent channels with zero ``out_proj`` columns.

The sizes a request may reach are whole groups: inner width E + k·g, heads H + k·H/G,
``in_proj`` outputs 2E + 2GN + H + k·(2g + 2N + H/G), ``conv1d`` channels E + 2GN + k·(g + 2N);
another value is refused naming the nearest valid ones (:func:`groups_to_add`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .errors import MorphError
from .ssm_layout import Geometry
from .transformer import _cancel_sets, _Editor, _gather_rows, _std

#: The mixer's layers whose outputs ``widen`` grows by whole groups (:func:`per_group`).
LAYERS = ("in_proj", "conv1d")
#: What a request may name, and how much of it one group adds (see :func:`per_group`).
QUANTITIES = ("inner", "heads", *LAYERS)


def per_group(geo: Geometry, quantity: str) -> tuple[int, int]:
    """(the mixer's current value, what one new group adds) of ``quantity`` (one of
    :data:`QUANTITIES`: inner channels, heads, ``in_proj`` outputs, ``conv1d`` channels)."""
    g, hpg, n = geo.inner // geo.groups, geo.heads // geo.groups, geo.state
    conv = geo.inner + 2 * geo.groups * n
    return {
        "inner": (geo.inner, g),
        "heads": (geo.heads, hpg),
        "in_proj": (geo.inner + conv + geo.heads, 2 * g + 2 * n + hpg),
        "conv1d": (conv, g + 2 * n),
    }[quantity]


def groups_to_add(geo: Geometry, quantity: str, value: int, arg: str, where: str) -> int:
    """The number m ≥ 1 of new groups that bring ``quantity`` of the mixer ``where`` to
    ``value`` (requested as ``arg``); ValueError when ``value`` does not exceed it, MorphError
    naming the nearest valid values when it is not a whole number of groups."""
    current, step = per_group(geo, quantity)
    if value <= current:
        raise ValueError(f"{arg}={value} must exceed the {_NAMES[quantity]} {current} of {where!r}")
    m, rest = divmod(value - current, step)
    if rest == 0:
        return m
    valid = [f"{current + k * step} ({k} new group{'s' * (k > 1)})" for k in (m, m + 1) if k >= 1]
    g, hpg = geo.inner // geo.groups, geo.heads // geo.groups
    nearest = f"values are {' and '.join(valid)}" if len(valid) > 1 else f"value is {valid[0]}"
    raise MorphError(
        f"{arg}={value}: {where!r} is a Mamba-2 mixer whose gated norm takes its RMS over "
        f"groups of {g} channels ({hpg} heads of {geo.inner // geo.heads}); it grows exactly "
        f"by whole groups only, each adding {step} {_UNITS[quantity]}: the nearest valid "
        f"{nearest}; refused"
    )


_NAMES = {
    "inner": "inner width",
    "heads": "head count",
    "in_proj": "in_proj outputs",
    "conv1d": "conv1d channels",
}
_UNITS = {
    "inner": "inner channels",
    "heads": "heads",
    "in_proj": "in_proj outputs",
    "conv1d": "conv1d channels",
}


def check_sizes(mixer: nn.Module, geo: Geometry, where: str) -> None:
    """MorphError when a size attribute the mixer ``where`` reads in its forward (Hugging
    Face's ``n_groups``, ``num_heads``, ``head_dim``, ``ssm_state_size``,
    ``intermediate_size``, ``conv_dim``) disagrees with ``geo``, the sizes read from its
    weights and its norm's group size: a mixer whose B/C groups are not its norm's groups."""
    expected = {
        "n_groups": geo.groups,
        "num_heads": geo.heads,
        "head_dim": geo.inner // geo.heads,
        "ssm_state_size": geo.state,
        "intermediate_size": geo.inner,
        "conv_dim": geo.inner + 2 * geo.groups * geo.state,
    }
    for attr, want in expected.items():
        value = getattr(mixer, attr, None)
        if isinstance(value, int) and value != want:
            raise MorphError(
                f"'{where}.{attr}' is {value}, not {want} (read from its weights and its norm's "
                f"groups of {geo.inner // geo.groups} channels): its B/C groups are not the "
                "groups of its gated norm; refused"
            )


def group_bytes(geo: Geometry, d_model: int, element: int) -> int:
    """Bytes of the parameters one new group adds to a mixer on a stream of width d."""
    g, hpg, n = geo.inner // geo.groups, geo.heads // geo.groups, geo.state
    in_proj = (2 * g + 2 * n + hpg) * (d_model + 1)
    conv = (g + 2 * n) * (geo.kernel + 1)
    return element * (in_proj + conv + 3 * hpg + g * (d_model + 1))


def _new_sets(first: int, count: int, per_head: int, method: str) -> list[list[int]]:
    """The new channels ``first`` … ``first`` + ``count`` − 1 in cancelling sets inside each
    head of ``per_head`` channels (alone with "zero")."""
    if method == "zero":
        return [[c] for c in range(first, first + count)]
    heads = range(first, first + count, per_head)
    return [s for h in heads for s in _cancel_sets(range(h, h + per_head))]


def _blocks(sizes: list[int], grown: list[int]) -> np.ndarray:
    """Child position → parent position of a tensor made of consecutive blocks of ``sizes``
    entries, each grown by ``grown`` new entries at its end (−1)."""
    parts, start = [], 0
    for size, extra in zip(sizes, grown):
        parts += [np.arange(start, start + size), -np.ones(extra, int)]
        start += size
    return np.concatenate(parts)


def add_groups(edit: _Editor, mixer: str, geo: Geometry, m: int, method: str) -> None:
    """The mixer ``mixer`` of the child gets ``m`` whole new groups (module docstring)."""
    e, n, h = geo.inner, geo.state, geo.heads
    g, hpg, p = e // geo.groups, h // geo.groups, e // h
    ge, gn, gh = m * g, m * n, m * hpg
    bc = geo.groups * n
    sets = _new_sets(e, ge, p, method)  # positions in the child's z and x blocks
    units = [u for s in sets for u in s]
    of_set = [i for i, s in enumerate(sets) for _ in s]
    b_new = list(range(bc, bc + gn))  # the new B (and C) rows inside their blocks

    w, b = edit.linear(f"{mixer}.in_proj")  # rows [z; x; B; C; Δ]
    index = _blocks([e, e, bc, bc, h], [ge, ge, gn, gn, gh])
    rows = _gather_rows(w, index)
    offsets = np.cumsum([0, e + ge, e + ge, bc + gn, bc + gn])
    parent_offsets = np.cumsum([0, e, e, bc, bc])
    for block, size in ((0, e), (1, e)):  # z, x: shared inside their cancelling sets
        part = rows[offsets[block] : offsets[block] + e + ge]
        edit.set_rows(part, sets, _std(w[parent_offsets[block] : parent_offsets[block] + size]))
    for block in (2, 3):  # B, C of the new groups
        part = rows[offsets[block] : offsets[block] + bc + gn]
        std = _std(w[parent_offsets[block] : parent_offsets[block] + bc])
        edit.set_rows(part, [[r] for r in b_new], std)
    delta = rows[offsets[4] :]
    edit.set_rows(delta, [[r] for r in range(h, h + gh)], _std(w[parent_offsets[4] :]))
    bias = None if b is None else _gather_rows(b, index)  # new entries zero
    edit.put_linear(f"{mixer}.in_proj", rows, bias, index, None)

    conv_index = _blocks([e, bc, bc], [ge, gn, gn])
    taps = _gather_rows(edit.get(f"{mixer}.conv1d.weight")[:, 0], conv_index)
    _conv_rows(edit, taps, e, ge, bc, gn, sets)
    edit.put(f"{mixer}.conv1d.weight", taps[:, None], (conv_index, None, None))
    if edit.child.get_submodule(f"{mixer}.conv1d").bias is not None:
        cb = _gather_rows(edit.get(f"{mixer}.conv1d.bias")[:, None], conv_index)
        _conv_rows(edit, cb, e, ge, bc, gn, sets)
        edit.put(f"{mixer}.conv1d.bias", cb[:, 0], (conv_index,))

    head_index = _blocks([h], [gh])
    pick = torch.randint(0, h, (gh,), generator=edit.gen)
    for name in ("dt_bias", "A_log", "D"):  # per new head: those of a random parent head
        t = edit.get(f"{mixer}.{name}")
        new = _gather_rows(t, head_index)
        new[h:] = t[pick]
        edit.put(f"{mixer}.{name}", new, (head_index,))
    channel_index = _blocks([e], [ge])
    gain = edit.get(f"{mixer}.norm.weight")
    new_gain = _gather_rows(gain, channel_index)
    chosen = torch.randint(0, e, (len(sets),), generator=edit.gen)
    new_gain[units] = gain[chosen][of_set]  # equal inside a cancelling set
    edit.put(f"{mixer}.norm.weight", new_gain, (channel_index,))

    w, _ = edit.linear(f"{mixer}.out_proj")
    cols = _gather_rows(w, channel_index, axis=1)
    edit.set_columns(cols, sets, _std(w), method)
    edit.put_linear(f"{mixer}.out_proj", cols, None, None, channel_index)

    module = edit.child.get_submodule(mixer)
    module.conv1d.groups = len(conv_index)
    for attr, value in (
        ("intermediate_size", e + ge),
        ("num_heads", h + gh),
        ("n_groups", geo.groups + m),
        ("conv_dim", len(conv_index)),
    ):
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, value)


def _conv_rows(
    edit: _Editor,
    t: torch.Tensor,
    e: int,
    ge: int,
    bc: int,
    gn: int,
    sets: list[list[int]],
) -> None:
    """New rows of the convolution's taps or bias ``t`` (channels [x; B; C]): shared inside
    the cancelling sets of x, independent for the new B and C channels."""
    x = t[: e + ge]
    edit.set_rows(x, sets, _std(x[:e]))
    for start in (e + ge, e + ge + bc + gn):
        part = t[start : start + bc + gn]
        edit.set_rows(part, [[r] for r in range(bc, bc + gn)], _std(part[:bc]))
