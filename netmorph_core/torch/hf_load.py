"""Reload a grown Hugging Face model saved with ``save_pretrained``, exactly.

A child whose config describes it (:mod:`.hf_config`) reloads with the stock
``from_pretrained``; :func:`load_grown` reloads every child, including those whose config
is marked ``netmorph-<model_type>``: it builds the stock architecture from the config, puts
the recorded replacement modules in place (:mod:`.hf_modules`: a layer split into a
Sequential of Linear layers and P-activations, a Conv1D turned Linear), takes every parameter
from the checkpoint with its own shape (those the class never saves, such as Marian's
sinusoidal positions, it builds itself), sets the recorded
module attributes (per-layer head counts, per-norm eps, …) and refuses anything missing or
left over. Memory: the model once, plus the tensors of one shard file while it is read.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from .errors import MorphError
from .hf_config import MARK, config_from_dict, shared_parameters
from .hf_modules import build_module
from .surgery import replace_module
from .transformer_layout import sync_shapes

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of the checkpoint directory ``path`` (index order)."""
    index = path / INDEX
    if index.is_file():
        shards = json.loads(index.read_text())["weight_map"].values()
        return [path / name for name in dict.fromkeys(shards)]
    if (path / SINGLE).is_file():
        return [path / SINGLE]
    raise FileNotFoundError(f"{path}: neither {INDEX} nor {SINGLE}")


def load_grown(path: str | Path, *, dtype: torch.dtype | None = None) -> nn.Module:
    """The model saved in the directory ``path`` by ``save_pretrained``, rebuilt exactly
    (module docstring); ``dtype`` casts it. MorphError when the config names no class of
    ``transformers``, or a weight is missing or has no place in the model."""
    import transformers
    from safetensors import safe_open

    path = Path(path)
    if not (path / CONFIG).is_file():
        raise FileNotFoundError(f"path={str(path)!r} holds no {CONFIG}")
    # decodes the floats JSON cannot hold (Mamba-2's time_step_limit (0, ∞))
    values = transformers.PretrainedConfig._dict_from_json_file(path / CONFIG)
    spec = values.pop("netmorph", None) or {}
    model_type = spec.get("model_type", values.pop("model_type", None))
    values.pop("model_type", None)
    if not model_type or model_type.startswith(MARK):
        raise MorphError(f"{path / CONFIG}: no stock model_type to rebuild from")
    if spec and not spec.get("rebuildable", False):
        raise MorphError(f"{path}: the saved child has modules no config describes: {spec['why']}")
    config_class = transformers.AutoConfig.for_model(model_type).__class__
    config = config_from_dict(config_class, values)
    names = getattr(config, "architectures", None) or []
    model_class = _model_class(transformers, config_class, names[0]) if names else None
    if not isinstance(model_class, type):
        raise MorphError(f"{path / CONFIG}: architectures={names!r} names no transformers class")
    model = model_class(config)
    for name, description in spec.get("replace", {}).items():
        replace_module(model, name, build_module(description))
    shared = [*shared_parameters(model), *spec.get("shared", [])]
    loaded: dict[str, nn.Parameter | torch.Tensor] = {}
    renames, splits = _conversions(model)
    for file in weight_files(path):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # renamed first, then split, as the stock loader does
                parts = _split(model, _renamed(key, renames), f.get_tensor(key), splits, config)
                for name, tensor in parts.items():
                    loaded[name] = _assign(model, name, tensor)
    for names in shared:
        source = next((n for n in names if n in loaded), None)
        for name in names:
            if source is not None and name not in loaded:
                owner, _, attr = name.rpartition(".")
                model.get_submodule(owner)._parameters[attr] = loaded[source]
                loaded[name] = loaded[source]
    ids = {id(t) for t in loaded.values()}
    if getattr(config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
    unsaved = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    missing = [
        k
        for k, t in model.state_dict(keep_vars=True).items()
        if id(t) not in ids and not _non_persistent(model, k) and k not in unsaved
    ]
    if missing:
        raise MorphError(f"{path}: no weights for {missing[:5]} ({len(missing)} in all)")
    sync_shapes(model)
    for name, attrs in spec.get("attributes", {}).items():
        module = model.get_submodule(name)
        for key, value in attrs.items():
            old = getattr(module, key, None)
            setattr(module, key, tuple(value) if isinstance(old, tuple) else value)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _model_class(transformers: ModuleType, config_class: type, name: str) -> object:
    """The class ``name`` of ``transformers``, else of the modeling module beside the config's
    (a part saved alone, such as Whisper's ``WhisperEncoder``); None if neither has it."""
    found = getattr(transformers, name, None)
    if found is not None:
        return found
    modeling = config_class.__module__.replace(".configuration_", ".modeling_")
    try:
        return getattr(importlib.import_module(modeling), name, None)
    except ImportError:
        return None


def _conversions(model: nn.Module) -> tuple[list, list]:
    """The key conversions the stock loader applies to ``model``'s checkpoints: the renamings
    (GPT-NeoX saves its head as ``embed_out``, Llava its language model as
    ``language_model.model``), applied in turn as the stock loader applies them, and the
    converters that split one stored tensor into several parameters (DINOv2's SwiGLU stores
    [gate; up] as ``weights_in``)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming
    except ImportError:  # a transformers release without conversion mappings
        return [], []
    renames, splits = [], []
    for t in get_model_conversion_mapping(model):
        if isinstance(t, WeightRenaming):
            renames.append(t)
        elif isinstance(t, WeightConverter) and len(t.source_patterns) == 1:
            splits.append(t)
    return renames, splits


def _split(model: nn.Module, key: str, tensor: torch.Tensor, splits: list, config: object) -> dict:
    """{parameter name: tensor} for the stored ``key``: the converter's parameters when one of
    ``splits`` stores several parameters under ``key`` (its operations run on the tensor as
    the stock loader runs them, so a grown [gate; up] splits in two halves again; when all but
    one of them were replaced by other modules, the stored tensor is that one's alone), else
    {key: tensor}."""
    for converter in splits:
        source = converter.source_patterns[0]
        if re.search(source, key) is None:
            continue
        targets = [re.sub(source, target, key) for target in converter.target_patterns]
        present = [t for t in targets if _has_slot(model, t)]
        if len(present) == 1 and len(targets) > 1:
            return {present[0]: tensor}
        if len(present) != len(targets):
            raise MorphError(
                f"weight {key!r} stores {targets} together, but the model has only {present}"
            )
        parts: dict = {key: [tensor]}
        try:
            for op in converter.operations:
                parts = op.convert(parts, [key], targets, config=config)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise MorphError(
                f"weight {key!r}: the stored tensor {tuple(tensor.shape)} cannot be split into "
                f"{targets} ({exc})"
            ) from exc
        return {name: t[0] if isinstance(t, list) else t for name, t in parts.items()}
    return {key: tensor}


def _has_slot(model: nn.Module, key: str) -> bool:
    owner, _, attr = key.rpartition(".")
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        return False
    return attr in module._parameters or attr in module._buffers


def _renamed(key: str, renames: list) -> str:
    from transformers.core_model_loading import apply_renamings

    return apply_renamings(key, renames) if renames else key


def _non_persistent(model: nn.Module, key: str) -> bool:
    owner, _, attr = key.rpartition(".")
    return attr in model.get_submodule(owner)._non_persistent_buffers_set


def _assign(model: nn.Module, key: str, value: torch.Tensor) -> nn.Parameter | torch.Tensor:
    """Put ``value`` in place of the parameter or buffer ``key`` (any shape); returns it."""
    owner, _, attr = key.rpartition(".")
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        module = None
    if module is not None and attr in module._parameters:
        old = module._parameters[attr]
        param = nn.Parameter(value, requires_grad=old.requires_grad if old is not None else True)
        module._parameters[attr] = param
        return param
    if module is not None and attr in module._buffers:
        module._buffers[attr] = value
        return value
    raise MorphError(f"weight {key!r} has no place in {type(model).__name__}")
