"""The models of the acceptance run (``bench/acceptance.py``): 36 models that were in none of
the third-party test lists when the run was written (tests/test_thirdparty_vision.py,
tests/test_torch_transformer_hf.py; the failures it found on Gemma, Gemma2, OLMo-2, RoBERTa
and DeiT are regression tests there now).

Each :class:`ModelSpec` builds a model with random weights from a torchvision or timm
constructor or a small transformers config, and makes the inputs it runs on. ``quick``: the
spec is part of ``--quick``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from thirdparty import import_timm, import_torchvision, import_transformers


@dataclass(frozen=True)
class ModelSpec:
    """``name``; ``source`` ("torchvision", "timm" or "transformers"); ``build`` returns the
    model; ``inputs(seed)`` a model input (float64 images, or token ids); ``quick``."""

    name: str
    source: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], torch.Tensor]
    quick: bool = False


def images(*shape: int) -> Callable[[int], torch.Tensor]:
    """Float64 normal inputs of ``shape``."""
    return lambda seed: torch.randn(
        *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )


def tokens(vocab: int, length: int = 9) -> Callable[[int], torch.Tensor]:
    """Token ids (2, ``length``) below ``vocab``."""
    return lambda seed: torch.randint(
        0, vocab, (2, length), generator=torch.Generator().manual_seed(seed)
    )


def _tv(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    """torchvision.models.<name>, or torchvision.models.video.<name>."""

    def build() -> nn.Module:
        models = import_torchvision().models
        constructor = getattr(models, name, None) or getattr(models.video, name)
        return constructor(**kwargs)

    return build


def _timm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    return lambda: import_timm().create_model(name, pretrained=False, **kwargs)


def _hf(model: str, config: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        t = import_transformers()
        return getattr(t, model)(getattr(t, config)(**kwargs))

    return build


def _hf_whisper_encoder() -> nn.Module:
    t = import_transformers()
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = t.WhisperConfig(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        num_mel_bins=8,
        max_source_positions=8,
        vocab_size=100,
    )
    return WhisperEncoder(config)


def _tv_vit() -> nn.Module:
    tv = import_torchvision()
    return tv.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64
    )


def _tv_swin() -> nn.Module:
    tv = import_torchvision()
    return tv.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4]
    )


#: Sizes shared by the small transformers configs: width 32, 4 heads, FFN 64, 2 layers.
SMALL = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2)
LM = dict(**SMALL, vocab_size=100, max_position_embeddings=32)
VISION = dict(**SMALL, image_size=32, patch_size=8, num_channels=3)

SPECS: tuple[ModelSpec, ...] = (
    # torchvision
    ModelSpec("tv resnet34", "torchvision", _tv("resnet34"), images(2, 3, 32, 32), quick=True),
    ModelSpec("tv regnet_x_400mf", "torchvision", _tv("regnet_x_400mf"), images(2, 3, 32, 32)),
    ModelSpec("tv mnasnet0_75", "torchvision", _tv("mnasnet0_75"), images(2, 3, 32, 32)),
    ModelSpec(
        "tv efficientnet_v2_s", "torchvision", _tv("efficientnet_v2_s"), images(2, 3, 32, 32)
    ),
    ModelSpec("tv squeezenet1_1", "torchvision", _tv("squeezenet1_1"), images(2, 3, 64, 64)),
    ModelSpec(
        "tv shufflenet_v2_x1_5", "torchvision", _tv("shufflenet_v2_x1_5"), images(2, 3, 32, 32)
    ),
    ModelSpec("tv mc3_18 (Conv3d)", "torchvision", _tv("mc3_18"), images(2, 3, 4, 32, 32)),
    ModelSpec("tv VisionTransformer", "torchvision", _tv_vit, images(2, 3, 32, 32), quick=True),
    ModelSpec("tv SwinTransformer", "torchvision", _tv_swin, images(2, 3, 32, 32)),
    # timm
    ModelSpec("timm resnet26d", "timm", _timm("resnet26d"), images(2, 3, 32, 32)),
    ModelSpec("timm seresnext26d_32x4d", "timm", _timm("seresnext26d_32x4d"), images(2, 3, 32, 32)),
    ModelSpec("timm mixnet_s", "timm", _timm("mixnet_s"), images(2, 3, 32, 32), quick=True),
    ModelSpec("timm ghostnet_050", "timm", _timm("ghostnet_050"), images(2, 3, 32, 32)),
    ModelSpec("timm rexnet_100", "timm", _timm("rexnet_100"), images(2, 3, 32, 32)),
    ModelSpec(
        "timm tf_efficientnet_lite0", "timm", _timm("tf_efficientnet_lite0"), images(2, 3, 32, 32)
    ),
    ModelSpec("timm lcnet_050", "timm", _timm("lcnet_050"), images(2, 3, 32, 32)),
    ModelSpec("timm dla34", "timm", _timm("dla34"), images(2, 3, 32, 32)),
    ModelSpec("timm res2net50_14w_8s", "timm", _timm("res2net50_14w_8s"), images(2, 3, 32, 32)),
    ModelSpec(
        "timm mobilevit_xxs", "timm", _timm("mobilevit_xxs", img_size=64), images(2, 3, 64, 64)
    ),
    ModelSpec("timm poolformer_s12", "timm", _timm("poolformer_s12"), images(2, 3, 32, 32)),
    ModelSpec(
        "timm deit_tiny", "timm", _timm("deit_tiny_patch16_224", img_size=32), images(2, 3, 32, 32)
    ),
    ModelSpec("timm edgenext_xx_small", "timm", _timm("edgenext_xx_small"), images(2, 3, 64, 64)),
    # transformers
    ModelSpec(
        "hf distilbert",
        "transformers",
        _hf(
            "DistilBertForSequenceClassification",
            "DistilBertConfig",
            dim=32,
            n_heads=4,
            hidden_dim=64,
            n_layers=2,
            vocab_size=100,
            max_position_embeddings=32,
            num_labels=3,
        ),
        tokens(100),
    ),
    ModelSpec(
        "hf roberta",
        "transformers",
        _hf(
            "RobertaForSequenceClassification",
            "RobertaConfig",
            **LM,
            num_labels=3,
            pad_token_id=1,
        ),
        tokens(100),
    ),
    ModelSpec(
        "hf mistral",
        "transformers",
        _hf("MistralForCausalLM", "MistralConfig", **LM, num_key_value_heads=2),
        tokens(100),
        quick=True,
    ),
    ModelSpec(
        "hf qwen3",
        "transformers",
        _hf("Qwen3ForCausalLM", "Qwen3Config", **LM, num_key_value_heads=2, head_dim=8),
        tokens(100),
    ),
    ModelSpec(
        "hf gemma",
        "transformers",
        _hf("GemmaForCausalLM", "GemmaConfig", **LM, num_key_value_heads=1, head_dim=8),
        tokens(100),
        quick=True,
    ),
    ModelSpec(
        "hf gemma2",
        "transformers",
        _hf("Gemma2ForCausalLM", "Gemma2Config", **LM, num_key_value_heads=2, head_dim=8),
        tokens(100),
    ),
    ModelSpec(
        "hf olmo2",
        "transformers",
        _hf("Olmo2ForCausalLM", "Olmo2Config", **LM, num_key_value_heads=2),
        tokens(100),
    ),
    ModelSpec(
        "hf phi",
        "transformers",
        _hf("PhiForCausalLM", "PhiConfig", **LM),
        tokens(100),
    ),
    ModelSpec(
        "hf opt",
        "transformers",
        _hf(
            "OPTForCausalLM",
            "OPTConfig",
            hidden_size=32,
            num_attention_heads=4,
            ffn_dim=64,
            num_hidden_layers=2,
            vocab_size=100,
            max_position_embeddings=32,
            word_embed_proj_dim=32,
        ),
        tokens(100),
    ),
    ModelSpec(
        "hf t5 encoder",
        "transformers",
        _hf(
            "T5EncoderModel",
            "T5Config",
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            vocab_size=100,
        ),
        tokens(100),
    ),
    ModelSpec(
        "hf deit",
        "transformers",
        _hf("DeiTForImageClassification", "DeiTConfig", **VISION, num_labels=3),
        images(2, 3, 32, 32),
    ),
    ModelSpec(
        "hf clip vision",
        "transformers",
        _hf("CLIPVisionModel", "CLIPVisionConfig", **VISION),
        images(2, 3, 32, 32),
    ),
    ModelSpec(
        "hf convnext",
        "transformers",
        _hf(
            "ConvNextForImageClassification",
            "ConvNextConfig",
            num_stages=2,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            num_labels=3,
        ),
        images(2, 3, 32, 32),
    ),
    ModelSpec("hf whisper encoder", "transformers", _hf_whisper_encoder, images(2, 8, 16)),
)
