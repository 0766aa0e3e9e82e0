"""A second acceptance set (``python bench/acceptance.py --families``): the transformer families
and graph shapes people grow that the first set (:mod:`acceptance_models`) does not name —
mixture-of-experts, parallel-attention and fused-projection decoders, ALiBi, encoder-only
variants, encoder–decoders, shared layers, layer scales, grouped CNN families and detection
backbones — at the same tiny sizes and with the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable

from acceptance_models import LM, VISION, ModelSpec, _hf, _timm, _tv, images, tokens
from acceptance_speech import SPEECH_SPECS
from thirdparty import import_torchvision, import_transformers
from torch import nn


def _tv_fpn_backbone() -> nn.Module:
    """torchvision's detection backbone: ResNet-18 with FrozenBatchNorm2d, its body only."""
    tv = import_torchvision()
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    del tv
    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5).body


def _t5_on_ids(**config: object) -> Callable[[], nn.Module]:
    """T5ForConditionalGeneration whose decoder reads the input ids shifted right when no
    decoder ids are given (this run feeds each model one tensor; BART does the same itself)."""

    def build() -> nn.Module:
        t = import_transformers()

        class T5OnIds(t.T5ForConditionalGeneration):
            def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, **kw):
                if decoder_input_ids is None and input_ids is not None:
                    decoder_input_ids = self._shift_right(input_ids)
                return super().forward(input_ids, attention_mask, decoder_input_ids, **kw)

        return T5OnIds(t.T5Config(**config))

    return build


T5 = dict(
    vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0
)
#: Two Swin stages of two blocks (widths 16, 32): 4×4 windows, the odd blocks shifted.
WINDOWS = dict(
    image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4
)
#: Two hierarchical stages (SegFormer, PVT-v2).
STAGES = dict(
    num_encoder_blocks=2,
    depths=[1, 1],
    sr_ratios=[2, 1],
    hidden_sizes=[16, 32],
    patch_sizes=[7, 3],
    strides=[4, 2],
    num_attention_heads=[1, 2],
    mlp_ratios=[2, 2],
    num_labels=3,
)
TEXT = tokens(100)
PICTURES = images(2, 3, 32, 32)
FAMILY_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "hf mixtral",
        "transformers",
        _hf(
            "MixtralForCausalLM",
            "MixtralConfig",
            **LM,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            experts_implementation="eager",  # the default grouped_mm has no float64 kernel
        ),
        TEXT,
    ),
    ModelSpec(
        "hf olmoe",
        "transformers",
        _hf(
            "OlmoeForCausalLM",
            "OlmoeConfig",
            **LM,
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            experts_implementation="eager",  # the default grouped_mm has no float64 kernel
        ),
        TEXT,
    ),
    ModelSpec(
        "hf qwen2-moe",
        "transformers",
        _hf(
            "Qwen2MoeForCausalLM",
            "Qwen2MoeConfig",
            **LM,
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            decoder_sparse_step=2,  # a dense block, then a mixture of experts
            experts_implementation="eager",  # the default grouped_mm has no float64 kernel
        ),
        TEXT,
    ),
    ModelSpec(
        "hf falcon",
        "transformers",
        _hf(
            "FalconForCausalLM",
            "FalconConfig",
            hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=100,
        ),
        TEXT,
    ),
    ModelSpec(
        "hf bloom",
        "transformers",
        _hf("BloomForCausalLM", "BloomConfig", hidden_size=32, n_head=4, n_layer=2, vocab_size=100),
        TEXT,
    ),
    ModelSpec(
        "hf gpt_neo",
        "transformers",
        _hf(
            "GPTNeoForCausalLM",
            "GPTNeoConfig",
            hidden_size=32,
            num_heads=4,
            num_layers=2,
            attention_types=[[["global", "local"], 1]],
            vocab_size=100,
            max_position_embeddings=32,
            intermediate_size=64,
        ),
        TEXT,
    ),
    ModelSpec(
        "hf gptj",
        "transformers",
        _hf(
            "GPTJForCausalLM",
            "GPTJConfig",
            n_embd=32,
            n_head=4,
            n_layer=2,
            rotary_dim=4,
            vocab_size=100,
            n_positions=32,
            n_inner=64,
        ),
        TEXT,
    ),
    ModelSpec(
        "hf gpt_neox", "transformers", _hf("GPTNeoXForCausalLM", "GPTNeoXConfig", **LM), TEXT
    ),
    ModelSpec(
        "hf phi3",
        "transformers",
        _hf("Phi3ForCausalLM", "Phi3Config", **LM, num_key_value_heads=2, pad_token_id=0),
        TEXT,
    ),
    ModelSpec(
        "hf deepseek_v3",  # latent attention, a dense block then experts with a shared one
        "transformers",
        _hf(
            "DeepseekV3ForCausalLM",
            "DeepseekV3Config",
            **LM,
            num_key_value_heads=4,
            moe_intermediate_size=16,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=1,
            first_k_dense_replace=1,
            kv_lora_rank=16,
            q_lora_rank=24,
            qk_nope_head_dim=8,
            qk_rope_head_dim=4,
            v_head_dim=6,
            n_group=1,
            topk_group=1,
            experts_implementation="eager",
        ),
        TEXT,
    ),
    ModelSpec(
        "hf gpt_oss",  # transposed, interleaved, biased fused experts; attention sinks
        "transformers",
        _hf(
            "GptOssForCausalLM",
            "GptOssConfig",
            **LM,
            num_key_value_heads=2,
            head_dim=8,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=4,
            experts_implementation="eager",
        ),
        TEXT,
    ),
    ModelSpec(
        "hf llama4",  # transposed fused experts with a shared expert, chunked attention
        "transformers",
        _hf(
            "Llama4ForCausalLM",
            "Llama4TextConfig",
            **LM,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size_mlp=64,
            num_local_experts=2,
            num_experts_per_tok=1,
            interleave_moe_layer_step=2,
            attention_chunk_size=4,
            experts_implementation="eager",
        ),
        TEXT,
    ),
    ModelSpec(
        "hf minicpm3",  # latent attention, branches times scale_depth/√layers
        "transformers",
        _hf(
            "MiniCPM3ForCausalLM",
            "MiniCPM3Config",
            **LM,
            num_key_value_heads=4,
            kv_lora_rank=16,
            q_lora_rank=24,
            qk_nope_head_dim=8,
            qk_rope_head_dim=4,
            v_head_dim=6,
        ),
        TEXT,
    ),
    ModelSpec(
        "hf openai-gpt",
        "transformers",
        _hf(
            "OpenAIGPTLMHeadModel",
            "OpenAIGPTConfig",
            n_embd=32,
            n_head=4,
            n_layer=2,
            vocab_size=100,
            n_positions=32,
        ),
        TEXT,
    ),
    ModelSpec("hf biogpt", "transformers", _hf("BioGptForCausalLM", "BioGptConfig", **LM), TEXT),
    ModelSpec(
        "hf diffllama",
        "transformers",
        _hf("DiffLlamaForCausalLM", "DiffLlamaConfig", **LM, num_key_value_heads=2),
        TEXT,
    ),
    ModelSpec(
        "hf starcoder2",
        "transformers",
        _hf("Starcoder2ForCausalLM", "Starcoder2Config", **LM, num_key_value_heads=2),
        TEXT,
    ),
    ModelSpec(
        "hf modernbert",
        "transformers",
        _hf(
            "ModernBertForMaskedLM",
            "ModernBertConfig",
            **LM,
            pad_token_id=0,
            global_attn_every_n_layers=2,
            local_attention=8,
        ),
        TEXT,
    ),
    ModelSpec(
        "hf deberta_v2",
        "transformers",
        _hf("DebertaV2ForSequenceClassification", "DebertaV2Config", **LM, num_labels=3),
        TEXT,
    ),
    ModelSpec(
        "hf deberta_v3",
        "transformers",
        _hf(
            "DebertaV2ForMaskedLM",
            "DebertaV2Config",
            **LM,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=8,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            position_biased_input=False,
        ),
        TEXT,
    ),
    ModelSpec(
        "hf deberta",
        "transformers",
        _hf(
            "DebertaForSequenceClassification",
            "DebertaConfig",
            **LM,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            num_labels=3,
        ),
        TEXT,
    ),
    ModelSpec("hf mpnet", "transformers", _hf("MPNetForMaskedLM", "MPNetConfig", **LM), TEXT),
    ModelSpec(
        "hf modernbert_decoder",
        "transformers",
        _hf(
            "ModernBertDecoderForCausalLM",
            "ModernBertDecoderConfig",
            **LM,
            pad_token_id=0,
            global_attn_every_n_layers=2,
            local_attention=8,
        ),
        TEXT,
    ),
    ModelSpec(
        "hf albert",
        "transformers",
        _hf("AlbertForMaskedLM", "AlbertConfig", **LM, embedding_size=16),
        TEXT,
    ),
    ModelSpec(
        "hf electra",
        "transformers",
        _hf(
            "ElectraForSequenceClassification",
            "ElectraConfig",
            **LM,
            embedding_size=16,
            num_labels=3,
        ),
        TEXT,
    ),
    ModelSpec(
        "hf bart",
        "transformers",
        _hf(
            "BartModel",
            "BartConfig",
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            vocab_size=100,
            max_position_embeddings=32,
        ),
        TEXT,
    ),
    ModelSpec(
        "hf bart lm",
        "transformers",
        _hf(
            "BartForConditionalGeneration",
            "BartConfig",
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            vocab_size=100,
            max_position_embeddings=32,
        ),
        TEXT,
    ),
    ModelSpec("hf t5", "transformers", _t5_on_ids(**T5), TEXT),
    ModelSpec(
        "hf t5 gated", "transformers", _t5_on_ids(**T5, feed_forward_proj="gated-gelu"), TEXT
    ),
    ModelSpec(
        "hf mamba",
        "transformers",
        _hf(
            "MambaForCausalLM",
            "MambaConfig",
            hidden_size=32,
            state_size=4,
            num_hidden_layers=2,
            vocab_size=100,
            expand=2,
        ),
        TEXT,
    ),
    ModelSpec(
        "hf falcon-mamba",
        "transformers",
        _hf(
            "FalconMambaForCausalLM",
            "FalconMambaConfig",
            hidden_size=32,
            state_size=4,
            num_hidden_layers=2,
            vocab_size=100,
            expand=2,
        ),
        TEXT,
    ),
    ModelSpec(
        "hf mamba2",
        "transformers",
        _hf(
            "Mamba2ForCausalLM",
            "Mamba2Config",
            hidden_size=32,
            state_size=4,
            num_hidden_layers=2,
            vocab_size=100,
            expand=2,
            num_heads=8,
            head_dim=8,
            n_groups=2,
        ),
        TEXT,
    ),
    ModelSpec("hf dinov2", "transformers", _hf("Dinov2Model", "Dinov2Config", **VISION), PICTURES),
    ModelSpec(
        "hf beit",
        "transformers",
        _hf(
            "BeitForImageClassification",
            "BeitConfig",
            **VISION,
            num_labels=3,
            use_relative_position_bias=True,
            layer_scale_init_value=0.1,
        ),
        PICTURES,
    ),
    ModelSpec(
        "hf segformer",
        "transformers",
        _hf(
            "SegformerForImageClassification",
            "SegformerConfig",
            **STAGES,
        ),
        PICTURES,
    ),
    ModelSpec(
        "hf pvt_v2",
        "transformers",
        _hf(
            "PvtV2ForImageClassification",
            "PvtV2Config",
            **STAGES,
        ),
        PICTURES,
    ),
    ModelSpec(
        "hf swin",
        "transformers",
        _hf("SwinForImageClassification", "SwinConfig", **WINDOWS, num_labels=3),
        PICTURES,
    ),
    ModelSpec(
        "hf swinv2",
        "transformers",
        _hf("Swinv2ForImageClassification", "Swinv2Config", **WINDOWS, num_labels=3),
        PICTURES,
    ),
    ModelSpec("tv resnext50_32x4d", "torchvision", _tv("resnext50_32x4d"), PICTURES),
    ModelSpec("tv regnet_y_800mf", "torchvision", _tv("regnet_y_800mf"), PICTURES),
    ModelSpec("tv efficientnet_b3", "torchvision", _tv("efficientnet_b3"), PICTURES),
    ModelSpec("tv fpn backbone (FrozenBN)", "torchvision", _tv_fpn_backbone, PICTURES),
    ModelSpec("timm tinynet_a", "timm", _timm("tinynet_a"), PICTURES),
    ModelSpec("timm resnest14d", "timm", _timm("resnest14d"), PICTURES),
    ModelSpec("timm cspresnet50", "timm", _timm("cspresnet50"), PICTURES),
    ModelSpec("timm convnext_atto", "timm", _timm("convnext_atto"), PICTURES),
    ModelSpec("timm cait_xxs24", "timm", _timm("cait_xxs24_224", img_size=32, depth=2), PICTURES),
    *SPEECH_SPECS,
)
