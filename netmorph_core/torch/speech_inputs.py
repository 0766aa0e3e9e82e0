"""Example inputs of Hugging Face speech encoders and NaFlex vision encoders, from their config.

- raw audio ``input_values`` (batch, samples) of Wav2Vec2, HuBERT, WavLM, Data2Vec-Audio:
  long enough for the convolution feature extractor to give :data:`POSITIONS` frames (an
  x-vector head's TDNN, :data:`POSITIONS` frames out of it),
  L = R + S·(P − 1) samples, S = ∏ strides and R = 1 + Σᵢ (kᵢ − 1)·∏_{j<i} s_j the
  receptive field of the stack (``conv_kernel``, ``conv_stride``);
- Speech2Text's filter banks ``input_features`` (batch, frames, channels·features): frames
  = 2^(conv layers)·P, each stride-2 convolution halving them;
- an encoder–decoder on such features (Speech2Text, Whisper): :func:`encdec_inputs` adds
  an attention mask of ones over the frames and decoder token ids;
- SigLIP-2 (NaFlex) ``pixel_values`` (batch, patches, C·p·p) with ``pixel_attention_mask``
  (batch, patches) of ones and ``spatial_shapes`` (batch, 2) of a square h × w = patches grid.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

#: Positions (frames after the feature extractor, or patches along a side squared) per input.
POSITIONS = 8


def _ints(value: object) -> list[int] | None:
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, int) for v in value):
        return [int(v) for v in value]
    return None


def audio_samples(config: object, positions: int = POSITIONS) -> int | None:
    """Samples L = R + S·(P − 1) for ``positions`` frames out of the convolution stack of
    ``config.conv_kernel``/``conv_stride`` (None where the config has no such stack)."""
    kernels, strides = (
        _ints(getattr(config, "conv_kernel", None)),
        _ints(getattr(config, "conv_stride", None)),
    )
    if kernels is None or strides is None or len(kernels) != len(strides):
        return None
    field, step = 1, 1
    for k, s in zip(kernels, strides):
        field += (k - 1) * step
        step *= s
    return field + step * (positions - 1)


def _tdnn_frames(config: object) -> int:
    """Frames an x-vector head's TDNN (``tdnn_kernel``, ``tdnn_dilation``) needs for one
    output, 1 + Σᵢ (kᵢ − 1)·dᵢ (0 without one)."""
    kernels, dilations = (
        _ints(getattr(config, "tdnn_kernel", None)),
        _ints(getattr(config, "tdnn_dilation", None)),
    )
    if kernels is None or dilations is None or len(kernels) != len(dilations):
        return 0
    return 1 + sum((k - 1) * d for k, d in zip(kernels, dilations))


def speech_inputs(
    config: object, name: str, batch: int, gen: torch.Generator
) -> tuple[torch.Tensor, ...] | None:
    """Float inputs (float32, on the CPU) for a model whose main input is ``name``
    (``input_values``: raw audio, or AST's filter banks; Speech2Text's ``input_features``);
    None when the config does not describe them."""
    if name == "input_values":
        samples = audio_samples(config, POSITIONS + max(_tdnn_frames(config) - 1, 0))
        if samples is not None:
            return (torch.randn(batch, samples, generator=gen),)
        return _spectrogram(config, batch, gen)
    per_channel = getattr(config, "input_feat_per_channel", None)
    channels = getattr(config, "input_channels", None)
    layers = getattr(config, "num_conv_layers", None)
    if name == "input_features" and all(
        isinstance(v, int) for v in (per_channel, channels, layers)
    ):
        frames = 2**layers * POSITIONS
        return (torch.randn(batch, frames, per_channel * channels, generator=gen),)
    return None


def _spectrogram(config: object, batch: int, gen: torch.Generator) -> tuple[torch.Tensor] | None:
    """(batch, max_length, num_mel_bins) filter banks of a spectrogram transformer (AST), whose
    patch embedding runs on exactly that many frames; None where the config has no such sizes."""
    frames = getattr(config, "max_length", None)
    bins = getattr(config, "num_mel_bins", None)
    if not all(isinstance(v, int) and v > 0 for v in (frames, bins)):
        return None
    return (torch.randn(batch, frames, bins, generator=gen),)


def naflex_inputs(
    config: object, batch: int, gen: torch.Generator
) -> tuple[torch.Tensor, ...] | None:
    """(pixel_values, pixel_attention_mask, spatial_shapes) of a NaFlex vision encoder
    (``num_patches``, ``patch_size``, ``num_channels`` in its config); None otherwise."""
    patches = getattr(config, "num_patches", None)
    size = getattr(config, "patch_size", None)
    channels = getattr(config, "num_channels", None)
    if not all(isinstance(v, int) and v > 0 for v in (patches, size, channels)):
        return None
    side = math.isqrt(min(patches, POSITIONS * 2))
    n = side * side
    pixels = torch.randn(batch, n, channels * size * size, generator=gen)
    mask = torch.ones(batch, n, dtype=torch.long)
    shapes = torch.tensor([[side, side]] * batch, dtype=torch.long)
    return pixels, mask, shapes


def encdec_inputs(
    model: nn.Module, features: torch.Tensor, vocab: int, gen: torch.Generator
) -> tuple[torch.Tensor, ...] | None:
    """(input_features, attention_mask, decoder_input_ids) in the order of ``model.forward``'s
    leading parameters (None when they are not these): the mask ones over the frames
    (Speech2Text's axis 1, Whisper's last axis), the ids (batch, :data:`POSITIONS`) below
    ``vocab``."""
    config = getattr(model, "config", None)
    frames = features.shape[1] if hasattr(config, "input_feat_per_channel") else features.shape[-1]
    batch = features.shape[0]
    named = {
        "input_features": features,
        "attention_mask": torch.ones(batch, frames, dtype=torch.long, device=features.device),
        "decoder_input_ids": torch.randint(0, vocab, (batch, POSITIONS), generator=gen).to(
            features.device
        ),
    }
    order = [p for p in inspect.signature(model.forward).parameters if p != "self"][:3]
    return tuple(named[n] for n in order) if set(order) == set(named) else None
