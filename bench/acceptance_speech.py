"""Speech encoders and SigLIP-2's NaFlex vision encoder for the families acceptance set
(:mod:`acceptance_families`): Wav2Vec2 (post-LN and stable-LN, x-vector head), HuBERT, WavLM,
Data2Vec-Audio, UniSpeech-SAT and SEW on raw audio (2, samples), Speech2Text (its encoder
alone, and the encoder–decoder) on filter banks (2, frames, features), SigLIP-2 on patches
(2, patches, C·p·p) whose attention mask and spatial shapes it builds itself when the run
gives it the patches alone.
"""

from __future__ import annotations

from collections.abc import Callable

from acceptance_models import ModelSpec, _hf, images
from thirdparty import import_transformers
from torch import nn

#: Two feature-extractor convolutions (kernels 10, 3; strides 5, 2): 90 samples give 8 frames.
AUDIO = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16, 16),
    conv_stride=(5, 2),
    conv_kernel=(10, 3),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    vocab_size=12,
    mask_time_length=2,  # SpecAugment in the calibration's train-mode run: 8 frames
)
SAMPLES = images(2, 90)
PATCHES = images(2, 16, 48)
SPEECH2TEXT = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    input_feat_per_channel=8,
    conv_channels=16,
    max_source_positions=64,
    max_target_positions=64,
    vocab_size=50,
)


def _speech2text_encoder() -> nn.Module:
    t = import_transformers()
    from transformers.models.speech_to_text.modeling_speech_to_text import Speech2TextEncoder

    return Speech2TextEncoder(t.Speech2TextConfig(**SPEECH2TEXT))


def _siglip2_on_patches(name: str, **extra: object) -> Callable[[], nn.Module]:
    """transformers.<name> (a SigLIP-2 vision model) that builds a square grid's mask and
    spatial shapes when given its patches alone."""

    def build() -> nn.Module:
        t = import_transformers()
        import torch

        class OnPatches(getattr(t, name)):
            def forward(self, pixel_values, pixel_attention_mask=None, spatial_shapes=None, **kw):
                batch, patches = pixel_values.shape[:2]
                side = int(patches**0.5)
                if pixel_attention_mask is None:
                    pixel_attention_mask = torch.ones(batch, patches, dtype=torch.long)
                if spatial_shapes is None:
                    spatial_shapes = torch.tensor([[side, side]] * batch)
                return super().forward(pixel_values, pixel_attention_mask, spatial_shapes, **kw)

        vision = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_patches=16,
            patch_size=4,
        )
        if name == "Siglip2VisionModel":
            return OnPatches(t.Siglip2VisionConfig(**vision))
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1)
        config = t.Siglip2Config(vision_config=vision, text_config=text, **extra)
        return OnPatches(config)

    return build


def _speech2text_on_features() -> nn.Module:
    """Speech2TextForConditionalGeneration whose decoder reads its start token twice when no
    decoder ids are given (this run feeds each model one tensor)."""
    t = import_transformers()
    import torch

    class OnFeatures(t.Speech2TextForConditionalGeneration):
        def forward(self, input_features, attention_mask=None, decoder_input_ids=None, **kw):
            if decoder_input_ids is None:
                start = self.config.decoder_start_token_id
                decoder_input_ids = torch.full((input_features.shape[0], 2), start)
            return super().forward(input_features, attention_mask, decoder_input_ids, **kw)

    return OnFeatures(t.Speech2TextConfig(**SPEECH2TEXT))


SPEECH_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "hf wav2vec2 ctc", "transformers", _hf("Wav2Vec2ForCTC", "Wav2Vec2Config", **AUDIO), SAMPLES
    ),
    ModelSpec(
        "hf wav2vec2 stable-ln",
        "transformers",
        _hf("Wav2Vec2ForCTC", "Wav2Vec2Config", **AUDIO, do_stable_layer_norm=True),
        SAMPLES,
    ),
    ModelSpec(
        "hf wav2vec2 xvector",
        "transformers",
        _hf("Wav2Vec2ForXVector", "Wav2Vec2Config", **AUDIO),
        images(2, 230),  # the TDNN's 15 frames: 22 frames out of the convolution stack
    ),
    ModelSpec(
        "hf hubert classifier",
        "transformers",
        _hf("HubertForSequenceClassification", "HubertConfig", **AUDIO, num_labels=3),
        SAMPLES,
    ),
    ModelSpec(
        "hf wavlm ctc",
        "transformers",
        _hf("WavLMForCTC", "WavLMConfig", **AUDIO, num_buckets=16, max_bucket_distance=20),
        SAMPLES,
    ),
    ModelSpec(
        "hf data2vec-audio",
        "transformers",
        _hf("Data2VecAudioForCTC", "Data2VecAudioConfig", **AUDIO | {"num_conv_pos_embeddings": 2}),
        SAMPLES,
    ),
    ModelSpec(
        "hf unispeech-sat ctc",
        "transformers",
        _hf("UniSpeechSatForCTC", "UniSpeechSatConfig", **AUDIO),
        images(2, 230),  # its config carries an x-vector TDNN: 22 frames
    ),
    ModelSpec(
        "hf sew ctc",
        "transformers",
        _hf("SEWForCTC", "SEWConfig", **AUDIO, squeeze_factor=2),
        SAMPLES,
    ),
    ModelSpec("hf speech2text encoder", "transformers", _speech2text_encoder, images(2, 32, 8)),
    ModelSpec("hf speech2text", "transformers", _speech2text_on_features, images(2, 32, 8)),
    ModelSpec(
        "hf siglip2 naflex", "transformers", _siglip2_on_patches("Siglip2VisionModel"), PATCHES
    ),
    ModelSpec(
        "hf siglip2 classifier",
        "transformers",
        _siglip2_on_patches("Siglip2ForImageClassification", num_labels=3),
        PATCHES,
    ),
)
