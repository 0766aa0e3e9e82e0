"""Decoder stacks whose feed-forwards are mixtures of experts (Mixtral, OLMoE, Qwen2-MoE,
Qwen3-MoE and any stack that follows them), seen by the transformer operations as
"attention + a feed-forward module that reads the normalised stream and writes the stream".

:func:`moe_ffn` finds the feed-forward module's name inside a block: every block holds a module
of that name that is either a mixture of experts (:func:`.moe_find.find_moe`) or, in a mixed
stack (Qwen2-MoE's ``mlp_only_layers``/``decoder_sparse_step``), a dense MLP of Linear layers.
:func:`trace_moe` then finds the rest of the block (attention, norms, residual sums, the stream's
writers and final norm) with the structural trace of dense decoders
(:func:`.transformer_trace.trace_stack`), run on a view of the model in which block 0's
feed-forward is a stand-in MLP d → 1 → d of zero weights: the routing's data-dependent dispatch
is not traced, and every parameter stays the parent's (the view shares them; the parent's
modules are not modified).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from .errors import MorphError
from .moe_eager import eager_experts
from .moe_find import find_moe, mlp_layout
from .transformer_trace import Stack, trace_stack

#: Names of the stand-in feed-forward's input and output layers.
STAND_IN = ("stand_in_up", "stand_in_down")


class _StandIn(nn.Module):
    """y = W_down·(W_up·x) with W_up: 1 × d, W_down: d × 1, both zero: an MLP the trace
    recognises in place of a mixture of experts (its output, 0, is what the block adds).
    ``extra`` > 0: returned as (y, None, …) with ``extra`` Nones, as a module that also returns
    its router scores (GPT-OSS) is unpacked by its block."""

    def __init__(self, d: int, like: torch.Tensor, extra: int = 0) -> None:
        super().__init__()
        self.extra = extra
        kw = {"bias": False, "device": like.device, "dtype": like.dtype}
        setattr(self, STAND_IN[0], nn.Linear(d, 1, **kw))
        setattr(self, STAND_IN[1], nn.Linear(1, d, **kw))
        for p in self.parameters():
            p.detach().zero_()

    def forward(
        self, x: torch.Tensor, *args: object, **kwargs: object
    ) -> torch.Tensor | tuple[torch.Tensor | None, ...]:
        """W_down·(W_up·x); what else the block hands its mixture of experts (DeepSeek-V4's
        token ids) is not read."""
        del args, kwargs
        up, down = (getattr(self, n) for n in STAND_IN)
        y = down(up(x))
        return (y, *(None,) * self.extra) if self.extra else y


def _extra_outputs(module: nn.Module, d: int, like: torch.Tensor) -> int:
    """How many outputs beside y the mixture of experts ``module`` returns (0: y alone), from a
    call on one zero token; 0 where that call fails (the trace then says what fails)."""
    try:
        with torch.no_grad(), eager_experts(module):
            out = module(like.new_zeros(1, 1, d))
    except Exception:
        return 0
    return len(out) - 1 if isinstance(out, tuple) else 0


def moe_ffn(model: nn.Module, owner: str, blocks_rel: str, d: int) -> str | None:
    """The block-relative name of the feed-forward module of the block list
    ``owner.blocks_rel`` when some block's is a mixture of experts; None when none is.
    MorphError naming a block whose module of that name is neither a mixture of experts nor a
    dense MLP of Linear layers reading and writing width ``d``."""
    prefix = f"{owner}.{blocks_rel}" if owner else blocks_rel
    found = [b for b in find_moe(model) if b.path.startswith(prefix + ".")]
    if not found:
        return None
    rels = {b.path[len(prefix) + 1 :].partition(".")[2] for b in found}
    if len(rels) != 1 or "" in rels:
        raise MorphError(
            f"the mixtures of experts of {prefix!r} sit at different places in their blocks "
            f"({sorted(rels)}); refused"
        )
    rel = rels.pop()
    sparse = {b.path for b in found}
    blocks = model.get_submodule(prefix)
    for i, block in enumerate(blocks):
        path = f"{prefix}.{i}.{rel}"
        if path in sparse:
            if next(b for b in found if b.path == path).d_model != d:
                raise MorphError(f"{path!r} does not read the stream (width {d}); refused")
            continue
        try:
            module = block.get_submodule(rel)
        except AttributeError:
            module = None
        if module is None or mlp_layout(module, d) is None:
            raise MorphError(
                f"{path!r} ({type(module).__name__}) is neither a mixture of experts nor a "
                "dense MLP of Linear layers reading and writing the stream; refused"
            )
    return rel


def _with_stand_in(model: nn.Module, path: str, stand_in: nn.Module) -> nn.Module:
    """A view of ``model`` with ``stand_in`` at ``path``: the modules on the way are shallow
    copies (their own child lists, the parent's parameters), the parent is left as it is."""
    parts = path.split(".")
    root = copy.copy(model)
    root._modules = dict(model._modules)
    node = root
    for name in parts[:-1]:
        child = copy.copy(node._modules[name])
        child._modules = dict(child._modules)
        node._modules[name] = child
        node = child
    node._modules[parts[-1]] = stand_in
    return root


def trace_moe(model: nn.Module, owner: str, blocks_rel: str, d: int, ffn: str) -> Stack:
    """The :class:`~.transformer_trace.Stack` of a mixture-of-experts decoder stack: block 0
    traced with its feed-forward ``ffn`` replaced by a stand-in MLP (module docstring);
    ``ffn_in`` is empty and ``ffn_out`` names the feed-forward module."""
    prefix = f"{owner}.{blocks_rel}" if owner else blocks_rel
    like = next(p for p in model.parameters() if p.is_floating_point())
    extra = _extra_outputs(model.get_submodule(f"{prefix}.0.{ffn}"), d, like)
    view = _with_stand_in(model, f"{prefix}.0.{ffn}", _StandIn(d, like, extra))
    try:
        stack = trace_stack(view, owner, blocks_rel, d)
    except MorphError as exc:
        raise MorphError(f"{exc} (traced with {prefix}.0.{ffn} as a dense feed-forward)") from exc
    expected = ((f"{ffn}.{STAND_IN[0]}",), f"{ffn}.{STAND_IN[1]}")
    if (stack.ffn_in, stack.ffn_out) != expected:
        raise MorphError(
            f"'{prefix}.0': the traced feed-forward is {stack.ffn_in} → {stack.ffn_out}, not "
            f"the module {ffn!r} the mixture of experts sits in; refused"
        )
    return dataclasses.replace(stack, ffn_in=(), ffn_out=ffn, gate_up=False)
