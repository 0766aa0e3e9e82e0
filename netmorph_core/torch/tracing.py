"""A graph of a model torch.fx's symbolic tracer cannot follow (Hugging Face transformers).

``torch.fx.symbolic_trace`` fails on Hugging Face models (BERT: "'Proxy' object does not
support item assignment" in the attention-mask code; Llama and GPT-2: "co_varnames is too
small" in their decorated forwards), and transformers 5 no longer ships its own fx tracer
(``transformers.utils.fx``). :func:`trace_model` uses ``torch.export`` (non-strict, without
the key/value cache) on example inputs for those, and ``torch.fx.symbolic_trace`` otherwise.
The exported graph holds ATen calls (``aten.linear``, ``aten.layer_norm``, …) instead of
module calls: :func:`node_module` gives the qualified name of the module a node ran in.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from .errors import MorphError


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel``."""
    return any(
        c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
        for c in type(model).__mro__
    )


def trace_model(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...] | None = None
) -> fx.GraphModule:
    """An fx graph of ``model``: ``torch.export`` on ``example_inputs`` (required) for
    Hugging Face models, ``torch.fx.symbolic_trace`` for the rest. MorphError when neither
    traces, naming the model and the reason."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not is_hf_model(model):
        try:
            return fx.symbolic_trace(model)
        except Exception as exc:  # fx raises many types
            raise MorphError(
                f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc})"
            ) from exc
    if example_inputs is None:
        raise ValueError(
            f"example_inputs is required to trace {type(model).__name__} (torch.export)"
        )
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    try:
        if use_cache is not None:
            config.use_cache = False  # the cache object is not a pytree the export can return
        program = torch.export.export(model, tuple(example_inputs), strict=False)
    except Exception as exc:  # export raises many types
        raise MorphError(
            f"torch.export cannot trace {type(model).__name__} ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        if use_cache is not None:
            config.use_cache = use_cache
    return program.module()


def node_module(node: fx.Node) -> str | None:
    """The qualified name of the innermost module ``node`` ran in (None at the top level),
    from an exported graph's ``nn_module_stack`` or an fx ``call_module`` target."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, _ = list(stack.values())[-1]
    return path.removeprefix("L['self'].").removeprefix("L__self__.") or None
