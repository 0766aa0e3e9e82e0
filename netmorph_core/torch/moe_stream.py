"""A mixture-of-experts feed-forward as a reader and writer of the residual stream: what
``grow_width`` and ``add_block`` do to it (the transformer operations call these for a
:attr:`~.transformer_layout.Family.moe` stack).

For a token's normalised stream x (width d) the module computes
y = Σ_{e∈S} w_e·D_e·(φ(G_e·x) ⊙ U_e·x) [+ σ(g·x)·f_s(x)] with logits l = R·x (:mod:`.moe_find`).
The **readers** of the stream are R (E × d), every expert's G_e and U_e (fused: ``gate_up_proj``
E × 2I × d, along its last axis), the shared expert's inputs and the shared-expert gate g; the
**writers** are every expert's D_e (fused: ``down_proj`` E × d × I, along its middle axis) and
the shared expert's output (and biases); transposed fused experts (GPT-OSS: ``gate_up_proj``
E × d × 2I, ``down_proj`` E × I × d) hold d on the other axis, and their ``down_proj_bias``
(E × d) writes the stream too. A dense MLP of a mixed stack reads with its inputs and
writes with its output. ``grow_width`` gives every reader the columns and every writer the rows
of any reader and writer of the stream (:func:`widen_ffn`): then R̃·x̃ = R·x, G̃_e·x̃ = G_e·x, …
up to rounding, so the routing, each expert's output and y are the parent's, y written into the
child's stream as [y; …; y; a].

A new block (:func:`fresh_ffn`) keeps the neighbouring block's router and shared-expert gate
(it routes as that block does) and gets every expert's hidden units, and the shared expert's,
in cancelling sets: equal input rows inside a set, output columns C, −C (C, C, −2C), or zero
with ``method="zero"``, so each expert's output is exactly 0 for every x, whichever experts the
router selects and with whatever weights: the block adds 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn

from . import moe_fused
from .errors import MorphError
from .moe_find import Mlp, find_moe, mlp_layout

Matrix = Callable[[torch.Tensor], torch.Tensor]
#: A stream reader's role (:func:`stream_parameters`): its input columns read every copy.
READ = "read"
#: A router's role (or a shared-expert gate's): its input columns read the first copy only.
ROUTE = "route"
#: A stream writer's role: its output rows write every copy.
WRITE = "write"
#: ERNIE-4.5-MoE's span of sparse blocks (every ``moe_layer_interval``-th in it).
ERNIE_SPAN = ("moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval")
#: Attributes of the feed-forward's modules that record the stream's width.
WIDTH_ATTRS = ("hidden_dim", "hidden_size", "input_size")


class Edits(Protocol):
    """What these functions use of the transformer operations' parameter editor."""

    child: nn.Module

    def put(self, name: str, value: torch.Tensor, index: tuple[np.ndarray | None, ...]) -> None:
        """Parameter ``name`` becomes ``value``; ``index`` maps it to the parent's."""

    def set_rows(self, new_w: torch.Tensor, sets: list[list[int]], std: float) -> None:
        """Rows ``sets`` of ``new_w``: one random row per cancelling set."""

    def set_columns(
        self, new_w: torch.Tensor, sets: list[list[int]], std: float, method: str
    ) -> None:
        """Columns ``sets`` of ``new_w``: C·coefficient per cancelling set."""


def _mlp_parameters(module: nn.Module, prefix: str, mlp: Mlp) -> list[tuple[str, int, str]]:
    found = [(f"{prefix}{rel}.weight", 1, READ) for rel in mlp.inputs]
    found.append((f"{prefix}{mlp.output}.weight", 0, WRITE))
    if module.get_submodule(mlp.output).bias is not None:
        found.append((f"{prefix}{mlp.output}.bias", 0, WRITE))
    return found


def stream_parameters(model: nn.Module, path: str, d: int) -> list[tuple[str, int, str]]:
    """(parameter name, axis of width d, :data:`READ`, :data:`ROUTE` or :data:`WRITE`) of
    every parameter of the feed-forward module ``path`` that reads or writes the stream
    (module docstring); ROUTE: the router and the shared-expert gate."""
    module = model.get_submodule(path)
    blocks = [b for b in find_moe(module) if b.path == ""]
    q = f"{path}."
    if not blocks:
        mlp = mlp_layout(module, d)
        if mlp is None:
            raise MorphError(f"{path!r} is neither a mixture of experts nor a dense MLP; refused")
        return _mlp_parameters(module, q, mlp)
    b = blocks[0]
    found = [(f"{q}{b.router}.weight", 1, ROUTE)]
    if b.fused:
        experts = f"{q}{b.experts}."
        found += [
            (f"{experts}{moe_fused.first_name(b)}", 1 if b.transposed else 2, READ),
            (f"{experts}down_proj", 2 if b.transposed else 1, WRITE),
        ]
        if b.biased:
            found.append((f"{experts}down_proj_bias", 1, WRITE))
    else:
        experts = module.get_submodule(b.experts)
        for i, expert in enumerate(experts):
            found += _mlp_parameters(expert, f"{q}{b.experts}.{i}.", b.experts_mlp)
    for rel, mlp in b.shared:
        found += _mlp_parameters(module.get_submodule(rel), f"{q}{rel}.", mlp)
    if b.shared_gate is not None:
        found.append((f"{q}{b.shared_gate}.weight", 1, ROUTE))
    return found


def _along(t: torch.Tensor, axis: int, fn: Matrix, writes: bool) -> torch.Tensor:
    """``fn`` applied to ``t`` seen as a matrix: (d, rest) for a writer (``fn`` maps its rows
    d → D'), (rest, d) for a reader (its columns); the result laid out as ``t``."""
    if writes:
        m = t.movedim(axis, 0)
        out = fn(m.reshape(m.shape[0], -1))
        return out.reshape(out.shape[0], *m.shape[1:]).movedim(0, axis).contiguous()
    m = t.movedim(axis, -1)
    out = fn(m.reshape(-1, m.shape[-1]))
    return out.reshape(*m.shape[:-1], out.shape[1]).movedim(-1, axis).contiguous()


def widen_ffn(edit: Edits, path: str, d: int, fns: dict[str, Matrix], index: np.ndarray) -> None:
    """Every stream reader of the feed-forward ``path`` gets the columns ``fns[READ]`` (the
    router and shared-expert gate: ``fns[ROUTE]``) gives an (out, d) matrix, every writer the
    rows ``fns[WRITE]`` gives a (d, in) matrix; ``index``: child stream coordinate → parent
    coordinate (−1 new)."""
    for name, axis, role in stream_parameters(edit.child, path, d):
        t = edit.child.get_parameter(name).detach()
        value = _along(t, axis, fns[role], role == WRITE)
        edit.put(name, value, tuple(index if a == axis else None for a in range(t.dim())))
    for module in edit.child.get_submodule(path).modules():
        for attr in WIDTH_ATTRS:  # the router reshapes its input to (-1, hidden_dim)
            if getattr(module, attr, None) == d and not isinstance(module, nn.Linear):
                setattr(module, attr, len(index))


def stream_bytes(model: nn.Module, paths: list[str], d: int) -> int:
    """Bytes of the largest stream-facing parameter of the feed-forwards ``paths`` (the
    editor's working copy of one)."""
    sizes = [
        p.numel() * p.element_size()
        for path in paths
        for name, _, _ in stream_parameters(model, path, d)
        for p in (model.get_parameter(name),)
    ]
    return max(sizes, default=0)


def _fresh_units(
    edit: Edits,
    inputs: list[torch.Tensor],
    output: torch.Tensor,
    sets: list[list[int]],
    std: Callable[[torch.Tensor], float],
    method: str,
) -> None:
    """In place: the (I, d) ``inputs`` of one MLP get rows shared inside each of ``sets``,
    its (d, I) ``output`` columns C·coefficient."""
    for w in inputs:
        edit.set_rows(w, sets, std(w))
    edit.set_columns(output, sets, std(output), method)


def _fresh_mlp(
    edit: Edits,
    module: nn.Module,
    mlp: Mlp,
    sets_of: Callable[[int], list[list[int]]],
    std: Callable[[torch.Tensor], float],
    method: str,
) -> None:
    layers = [module.get_submodule(rel) for rel in (*mlp.inputs, mlp.output)]
    for layer in layers:
        if layer.bias is not None:  # a set's units need equal inputs; the output adds 0
            layer.bias.detach().zero_()
    weights = [layer.weight.detach() for layer in layers]
    _fresh_units(edit, weights[:-1], weights[-1], sets_of(mlp.hidden), std, method)


def fresh_ffn(
    edit: Edits,
    path: str,
    d: int,
    sets_of: Callable[[int], list[list[int]]],
    std: Callable[[torch.Tensor], float],
    method: str,
) -> None:
    """The feed-forward ``path`` of a new block (a copy of its neighbour's) made to add
    exactly 0 (module docstring), in place: ``sets_of(I)``: the cancelling sets of I units;
    ``std(w)``: the scale of new entries next to w; ``method``: "netmorph" or "zero"."""
    module = edit.child.get_submodule(path)
    blocks = [b for b in find_moe(module) if b.path == ""]
    with torch.no_grad():
        if not blocks:
            mlp = mlp_layout(module, d)
            if mlp is None:
                raise MorphError(f"{path!r} is neither a mixture of experts nor a dense MLP")
            _fresh_mlp(edit, module, mlp, sets_of, std, method)
            return
        b = blocks[0]
        experts = module.get_submodule(b.experts)
        if b.fused:
            parts = moe_fused.views(b, experts)  # views: writing them writes the parameters
            for bias in (*parts.input_biases, parts.output_bias):
                if bias is not None:  # a set's units need equal inputs; the output adds 0
                    bias.zero_()
            sets = sets_of(b.hidden)
            for e in range(b.count):
                inputs = [w[e] for w in parts.inputs]
                _fresh_units(edit, inputs, parts.output[e], sets, std, method)
        else:
            for expert in experts:
                _fresh_mlp(edit, expert, b.experts_mlp, sets_of, std, method)
        for rel, mlp in b.shared:
            _fresh_mlp(edit, module.get_submodule(rel), mlp, sets_of, std, method)


def sparse_layers(config: object | None, model: nn.Module, prefix: str, ffn: str) -> None:
    """A config that says which blocks are dense made to say it of ``model``'s stack
    ``prefix`` (blocks whose feed-forward ``ffn`` is not a mixture of experts): Qwen-MoE's
    ``mlp_only_layers`` becomes their list (``decoder_sparse_step`` 1), GLM-4-MoE's and
    DeepSeek's ``first_k_dense_replace`` the number of leading dense blocks, Llama 4's
    ``moe_layers`` the sparse blocks, ERNIE-4.5-MoE's first and last sparse block (where
    these fields cannot say it, the comparison with the stock model marks the config)."""
    if config is None:
        return
    sparse = {b.path for b in find_moe(model)}
    count = len(model.get_submodule(prefix))
    dense = [i for i in range(count) if f"{prefix}.{i}.{ffn}" not in sparse]
    if isinstance(getattr(config, "mlp_only_layers", None), list):
        config.mlp_only_layers = dense
        if isinstance(getattr(config, "decoder_sparse_step", None), int):
            config.decoder_sparse_step = 1
    if isinstance(getattr(config, "first_k_dense_replace", None), int):
        config.first_k_dense_replace = next(k for k in range(count + 1) if k not in dense)
    sparse_at = [i for i in range(count) if i not in dense]
    if isinstance(getattr(config, "moe_layers", None), list):  # Llama 4: the sparse blocks
        config.moe_layers = sparse_at
    if sparse_at and all(isinstance(getattr(config, f, None), int) for f in ERNIE_SPAN):
        config.moe_layer_start_index, config.moe_layer_end_index = sparse_at[0], sparse_at[-1]
