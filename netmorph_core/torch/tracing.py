"""A graph of a model torch.fx's symbolic tracer cannot follow (Hugging Face transformers).

``torch.fx.symbolic_trace`` fails on Hugging Face models (BERT: "'Proxy' object does not
support item assignment" in the attention-mask code; Llama and GPT-2: "co_varnames is too
small" in their decorated forwards), and transformers 5 no longer ships its own fx tracer
(``transformers.utils.fx``). :func:`trace_model` uses ``torch.export`` (non-strict, without
the key/value cache) on example inputs for those, and ``torch.fx.symbolic_trace`` otherwise.
The exported graph holds ATen calls (``aten.linear``, ``aten.layer_norm``, …) instead of
module calls: :func:`node_module` gives the qualified name of the module a node ran in.
:func:`default_inputs` builds inputs a Hugging Face model runs on from its config (token ids
or images), for tracing and for measuring a morph when no probe is given.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import fx, nn

from .errors import MorphError
from .hf_embeddings import input_embedding
from .moe_eager import set_implementation
from .speech_inputs import encdec_inputs, naflex_inputs, speech_inputs

#: Sequence length of the default token inputs.
SEQ_LEN = 8


def shell_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are empty tensors on the meta
    device: its code can be traced on it without running on ``module`` itself, at no memory
    cost."""
    memo: dict[int, object] = {}
    for t in (*module.parameters(), *module.buffers()):
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(module, memo)


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel``."""
    return any(
        c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
        for c in type(model).__mro__
    )


def trace_model(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...] | None = None
) -> fx.GraphModule:
    """An fx graph of a copy of ``model`` (tracing runs its forward code, never on ``model``
    itself): ``torch.export`` on ``example_inputs`` (required) for
    Hugging Face models, ``torch.fx.symbolic_trace`` for the rest. MorphError when neither
    traces, naming the model and the reason."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not is_hf_model(model):
        try:
            with torch.random.fork_rng(devices=[]):
                return fx.symbolic_trace(copy.deepcopy(model))
        except Exception as exc:  # fx raises many types
            raise MorphError(
                f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc})"
            ) from exc
    if example_inputs is None:
        raise ValueError(
            f"example_inputs is required to trace {type(model).__name__} (torch.export)"
        )
    return export_graph(model, example_inputs)


def export_graph(
    model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...]
) -> fx.GraphModule:
    """The graph ``torch.export`` (non-strict) records running a copy of ``model`` on
    ``example_inputs``,
    with a Hugging Face model's key/value cache switched off for the call. MorphError naming
    the model and the reason when it cannot be exported."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    # every config a submodule holds (encoder-decoder stacks keep copies of their own)
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    saved = {key: c.use_cache for key, c in configs.items() if hasattr(c, "use_cache")}
    try:
        for key in saved:
            configs[key].use_cache = False  # the cache is not a pytree the export can return
        with torch.random.fork_rng(devices=[]):
            copied = copy.deepcopy(model)
            # experts that loop over the routed experts branch on data; "batched_mm" gathers
            set_implementation(copied, "batched_mm")
            program = torch.export.export(copied, tuple(example_inputs), strict=False)
    except Exception as exc:  # export raises many types
        raise MorphError(
            f"torch.export cannot trace {type(model).__name__} ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        for key, value in saved.items():
            configs[key].use_cache = value
    return program.module()


def default_inputs(model: nn.Module) -> tuple[torch.Tensor, ...] | None:
    """Inputs a Hugging Face model runs on, from its config (None for other models): token
    ids (2, 8) below the vocabulary size (an encoder-decoder model: ids, attention mask and
    decoder ids), images (2, C, S, S) of the configured size, or mel features (2, bins,
    2·positions); speech encoders' audio and NaFlex patches: :mod:`.speech_inputs` (filter
    banks of an encoder–decoder, Speech2Text: with a mask and decoder ids)."""
    if not is_hf_model(model):
        return None
    gen = torch.Generator().manual_seed(0)
    like = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = like.device if like is not None else torch.device("cpu")
    config = getattr(model, "config", None)
    name = getattr(model, "main_input_name", "input_ids")
    if name == "input_ids":
        embed = input_embedding(model)
        if not isinstance(embed, nn.Embedding):
            return None
        limit = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        length = min(SEQ_LEN, limit) if isinstance(limit, int) else SEQ_LEN
        ids = torch.randint(0, embed.num_embeddings, (2, length), generator=gen).to(device)
        if not getattr(config, "is_encoder_decoder", False):
            return (ids,)
        return _positional(
            model,
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": ids},
        )
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    if name == "pixel_values" and "spatial_shapes" in inspect.signature(model.forward).parameters:
        found = naflex_inputs(getattr(config, "vision_config", None) or config, 2, gen)
        if found is None:
            return None
        return (found[0].to(device, dtype), *(t.to(device) for t in found[1:]))
    if name in ("input_values", "input_features"):
        found = speech_inputs(config, name, 2, gen)
        vocab = getattr(config, "vocab_size", None)
        if found is not None and getattr(config, "is_encoder_decoder", False) and vocab:
            # Speech2Text: features, a mask of ones and decoder ids, where its forward takes them
            both = encdec_inputs(model, found[0].to(device, dtype), vocab, gen)
            if both is not None:
                return both
        if found is not None:
            return (found[0].to(device, dtype),)
    if name == "pixel_values":
        config = getattr(config, "vision_config", None) or config  # CLIP's image classifier
        size = getattr(config, "image_size", None)
        channels = getattr(config, "num_channels", None)
        if not isinstance(channels, int) or size is None:
            return None
        sizes = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        x = torch.randn(2, channels, *sizes, generator=gen)
        return (x.to(device, like.dtype if like is not None else x.dtype),)
    if name == "input_features":  # Whisper: mel features, two frames per position
        bins = getattr(config, "num_mel_bins", None)
        positions = getattr(config, "max_source_positions", None)
        if not isinstance(bins, int) or not isinstance(positions, int):
            return None
        x = torch.randn(2, bins, 2 * positions, generator=gen)
        return (x.to(device, like.dtype if like is not None else x.dtype),)
    return None


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


def _positional(
    model: nn.Module, named: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, ...] | None:
    """``named`` in the order of ``model.forward``'s leading parameters (None when they are
    not exactly those names)."""
    params = [p for p in inspect.signature(model.forward).parameters if p != "self"]
    order = params[: len(named)]
    return tuple(named[n] for n in order) if set(order) == set(named) else None
