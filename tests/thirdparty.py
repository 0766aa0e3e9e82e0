"""Importing torchvision, timm and transformers for the third-party model tests, on any torch
build: :mod:`netmorph_core.torch.torchvision_ops` declares the detection operators' schemas
first where PyPI's torchvision cannot load its compiled library with the CPU torch."""

from __future__ import annotations

from types import ModuleType

from netmorph_core.torch.torchvision_ops import declare_missing_operators


def import_torchvision() -> ModuleType:
    """``torchvision``, importable whether or not its compiled operators load."""
    declare_missing_operators()
    import torchvision

    return torchvision


def import_timm() -> ModuleType:
    """``timm`` (imports torchvision first, see :func:`import_torchvision`)."""
    import_torchvision()
    import timm

    return timm


def import_transformers() -> ModuleType:
    """``transformers`` (its image utilities import torchvision, see
    :func:`import_torchvision`)."""
    import_torchvision()
    import transformers

    return transformers
