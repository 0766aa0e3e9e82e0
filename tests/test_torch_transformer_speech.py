"""Speech encoders on raw audio (Wav2Vec2 post-LN and stable-LN, HuBERT, Data2Vec-Audio),
SigLIP-2's NaFlex vision tower and Speech2Text's default probe.

Each case grows a tiny random float64 model (d_model 32, 4 heads, 2 blocks; a feature
extractor of two convolutions, 90 samples → 8 frames; a grouped position convolution, weight-
normed, or Data2Vec-Audio's stack of two; norm gains and biases redrawn so that they matter)
and checks that the child computes the parent's logits (1e-9) on audio, that the parent is
untouched, and that ``save_pretrained`` reloads it: with the stock ``from_pretrained`` where
the child's config describes it, else the stock load refuses the marked model_type and
``load_grown`` rebuilds it exactly. The per-layer operations run on the feature extractor's
convolutions. Refusals are asserted by type and message (WavLM: ``test_torch_wavlm.py``).
SigLIP-2's classifier runs on patches with their mask and spatial shapes built from its
config, without its pooling head (``grow_width`` through it: ``test_torch_mha_pooling.py``).
:data:`OUTCOMES` is the table of ``docs/supported.md`` (``python
tests/test_torch_transformer_speech.py`` prints it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import doc_tables
import pytest
import torch
from thirdparty import import_transformers

from netmorph_core.torch import (
    MorphError,
    add_block,
    add_heads,
    deepen,
    deepen_projection,
    grow_ffn,
    grow_kernel,
    grow_width,
    load_grown,
    morph_subnet,
    widen,
)
from netmorph_core.torch.speech_inputs import audio_samples
from netmorph_core.torch.tracing import default_inputs
from netmorph_core.torch.transformer_layout import describe

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

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
    initializer_range=0.2,
)
#: family → (model class, config class, extra config arguments, Auto class, base prefix).
FAMILIES: dict[str, tuple[str, str, dict, str, str]] = {
    "Wav2Vec2 (CTC)": ("Wav2Vec2ForCTC", "Wav2Vec2Config", {}, "AutoModelForCTC", "wav2vec2"),
    "Wav2Vec2 stable-LN (CTC)": (
        "Wav2Vec2ForCTC",
        "Wav2Vec2Config",
        dict(do_stable_layer_norm=True, feat_extract_norm="layer"),
        "AutoModelForCTC",
        "wav2vec2",
    ),
    "HuBERT (classifier)": (
        "HubertForSequenceClassification",
        "HubertConfig",
        dict(num_labels=3),
        "AutoModelForAudioClassification",
        "hubert",
    ),
    "Data2Vec-Audio (CTC)": (
        "Data2VecAudioForCTC",
        "Data2VecAudioConfig",
        dict(num_conv_pos_embeddings=2),  # two position convolutions, a LayerNorm after each
        "AutoModelForCTC",
        "data2vec_audio",
    ),
}
Op = Callable[[torch.nn.Module, str], tuple[torch.nn.Module, object]]
#: operation → what it does to the parent (``p``: the base model's prefix).
OPS: dict[str, Op] = {
    "grow_ffn": lambda m, p: grow_ffn(m, 80),
    "add_heads": lambda m, p: add_heads(m, 8),
    "grow_width": lambda m, p: grow_width(m, 48),
    "grow_width x2": lambda m, p: grow_width(m, 64),
    "add_block": lambda m, p: add_block(m, 1),
    "deepen_projection": lambda m, p: deepen_projection(
        m, f"{p}.encoder.layers.0.attention.out_proj"
    ),
    "deepen (conv)": lambda m, p: deepen(m, f"{p}.feature_extractor.conv_layers.1.conv"),
    "widen (conv)": lambda m, p: widen(m, f"{p}.feature_extractor.conv_layers.0.conv", 20),
    "morph_subnet (conv)": lambda m, p: morph_subnet(
        m,
        f"{p}.feature_extractor.conv_layers.1.conv",
        [(24, (1,)), (24, (3,)), (None, (1,))],
    ),
    "grow_kernel (conv)": lambda m, p: grow_kernel(
        m, f"{p}.feature_extractor.conv_layers.1.conv", (5,)
    ),
}
STOCK = "exact, stock reload"
MARKED = "exact, load_grown"
POST_LN = "refused: normalises after the residual sum (post-LN)"
NOT_MULTIPLE = "refused: adds gelu(conv(x)) to it"
ROW = {
    "grow_ffn": STOCK,
    "add_heads": MARKED,  # head_dim is derived from hidden_size / heads
    "grow_width": POST_LN,
    "grow_width x2": MARKED,
    "add_block": STOCK,
    "deepen_projection": MARKED,
    "deepen (conv)": MARKED,
    "widen (conv)": MARKED,  # its GroupNorm has one group per channel
    "morph_subnet (conv)": MARKED,
    "grow_kernel (conv)": MARKED,
}
#: A feature extractor with a LayerNorm after each convolution (``feat_extract_norm="layer"``).
LAYER_NORMED = {"widen (conv)": "refused: normalises over the widened channels"}
#: (family, operation) → STOCK, MARKED or "refused: <what the MorphError says>".
OUTCOMES: dict[tuple[str, str], str] = {
    **{("Wav2Vec2 (CTC)", op): v for op, v in ROW.items()},
    **{
        ("Wav2Vec2 stable-LN (CTC)", op): v
        for op, v in (ROW | {"grow_width": NOT_MULTIPLE} | LAYER_NORMED).items()
    },
    **{("HuBERT (classifier)", op): v for op, v in ROW.items()},
    **{("Data2Vec-Audio (CTC)", op): v for op, v in (ROW | LAYER_NORMED).items()},
}


def _redraw(model: torch.nn.Module) -> torch.nn.Module:
    """Norm gains in [0.5, 1.5], biases in [−0.2, 0.2]."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1 and name != "masked_spec_embed":
                p.uniform_(-0.2, 0.2)
    return model


def _parent(family: str, **extra: object) -> torch.nn.Module:
    model, config, args, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    built = getattr(transformers, model)(getattr(transformers, config)(**AUDIO | args | extra))
    return _redraw(built.eval().double())


AUDIO_IN = torch.randn(2, 90, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(AUDIO_IN).logits


def _unchanged(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    after = model.state_dict()
    return set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


CASES = [pytest.param(f, op, id=f"{f}-{op}") for f in FAMILIES for op in OPS]


@pytest.mark.parametrize(("family", "op"), CASES)
def test_speech_operation(family: str, op: str, tmp_path: Path) -> None:
    parent = _parent(family)
    prefix, auto = FAMILIES[family][4], getattr(transformers, FAMILIES[family][3])
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _logits(parent)
    expected = OUTCOMES[family, op]
    if expected.startswith("refused: "):
        with pytest.raises(MorphError, match=re.escape(expected.removeprefix("refused: "))):
            OPS[op](parent, prefix)
        assert _unchanged(before, parent)
        return
    child, report = OPS[op](parent, prefix)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    assert _unchanged(before, parent)
    child.save_pretrained(tmp_path)
    if expected == STOCK:
        assert any("reloads this child exactly" in n for n in report.notes), report.notes
        reloaded = auto.from_pretrained(tmp_path, dtype=torch.float64).eval()
    else:
        assert any("cannot describe" in n for n in report.notes), report.notes
        with pytest.raises(ValueError, match="does not recognize this architecture"):
            auto.from_pretrained(tmp_path)
        reloaded = load_grown(tmp_path)
    assert type(reloaded) is type(parent)
    torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=1e-9)


def test_layout_is_found_by_structure() -> None:
    """The feature projection and the mask embedding write the stream; the position
    convolution reads it and adds to it; post-LN normalises it before block 0, stable-LN
    after the last block."""
    post = describe(_parent("Wav2Vec2 (CTC)"))
    fam = post.family
    assert post.owner == "wav2vec2" and post.d_model == 32 and post.head == "lm_head"
    assert fam.writers == ("feature_projection.projection", "masked_spec_embed")
    assert fam.stream_convs == ("encoder.pos_conv_embed.conv",)
    assert fam.post_ln and fam.stream_norms == ("encoder.layer_norm",) and fam.final_norm is None
    stable = describe(_parent("Wav2Vec2 stable-LN (CTC)")).family
    assert not stable.post_ln and stable.final_norm == "encoder.layer_norm"
    assert stable.stream_norms == ()
    stack = describe(_parent("Data2Vec-Audio (CTC)")).family
    assert stack.stream_convs == tuple(f"encoder.pos_conv_embed.layers.{i}.conv" for i in (0, 1))
    assert stack.stream_norms == ("encoder.layer_norm",)


def test_width_copies_the_position_convolution_by_groups() -> None:
    """k = 2: the convolution has 2·G groups, its direction v repeated and its weight-norm
    gain g (one per kernel tap) times √2, so its weight is the parent's repeated; the mask
    embedding and the config's groups follow."""
    parent = _parent("Wav2Vec2 stable-LN (CTC)")
    child, _ = grow_width(parent, 64)
    old = parent.wav2vec2.encoder.pos_conv_embed.conv
    new = child.wav2vec2.encoder.pos_conv_embed.conv
    assert new.groups == 8 and new.in_channels == new.out_channels == 64
    torch.testing.assert_close(new.weight, torch.cat([old.weight] * 2), rtol=1e-12, atol=0)
    embed = parent.wav2vec2.masked_spec_embed
    assert torch.equal(child.wav2vec2.masked_spec_embed, torch.cat([embed] * 2))
    assert child.config.num_conv_pos_embedding_groups == 8 and child.config.hidden_size == 64


def test_width_refuses_another_parametrization() -> None:
    """A position convolution under spectral norm is not widened (named)."""
    parent = _parent("Wav2Vec2 stable-LN (CTC)")
    conv = parent.wav2vec2.encoder.pos_conv_embed.conv
    torch.nn.utils.parametrize.remove_parametrizations(conv, "weight")
    torch.nn.utils.parametrizations.spectral_norm(conv)
    parent.eval()
    with pytest.raises(MorphError, match=re.escape("'wav2vec2.encoder.pos_conv_embed.conv'")):
        grow_width(parent, 64)


def test_widen_refuses_a_groupnorm_of_several_channels_per_group() -> None:
    """GroupNorm(4, 16) after the widened convolution normalises over several channels: the
    new ones would change the old ones' statistics; refused naming the norm."""
    parent = _parent("Wav2Vec2 (CTC)")
    layer = parent.wav2vec2.feature_extractor.conv_layers[0]
    layer.layer_norm = torch.nn.GroupNorm(4, 16).double()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(MorphError, match=r"4 groups of 16 channels, not one group per channel"):
        widen(parent, "wav2vec2.feature_extractor.conv_layers.0.conv", 20, probe=(AUDIO_IN,))
    assert _unchanged(before, parent)


def test_inputs_cover_the_convolution_stack() -> None:
    """L = R + S·(P − 1): receptive field 1 + 9 + 2·5 = 20 samples, stride 10, 8 frames."""
    assert audio_samples(transformers.Wav2Vec2Config(**AUDIO)) == 90
    (x,) = default_inputs(_parent("HuBERT (classifier)"))
    assert x.shape == (2, 90) and x.dtype == torch.float64


def test_xvector_inputs_cover_its_tdnn() -> None:
    """An x-vector head's TDNN (kernels 5, 3, 3, 1, 1; dilations 1, 2, 3, 1, 1) needs 15
    frames for one output: 8 + 14 = 22 frames, 20 + 10·21 = 230 samples; grow_ffn is exact on
    that default probe."""
    torch.manual_seed(0)
    parent = transformers.Wav2Vec2ForXVector(transformers.Wav2Vec2Config(**AUDIO))
    parent = _redraw(parent.eval().double())
    (x,) = default_inputs(parent)
    assert x.shape == (2, 230)
    with torch.no_grad():
        want = parent(x).logits
        child, _ = grow_ffn(parent, 80)
        torch.testing.assert_close(child(x).logits, want, rtol=0, atol=1e-9)


#: SigLIP-2's NaFlex vision tower (d 32, 4 heads, 2 blocks; 16 patches of 4×4×3 values).
NAFLEX = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_patches=16,
    patch_size=4,
)
SAVE_WHOLE = "exact, save whole (torch.save)"
#: operation → (what it does to a SigLIP-2 classifier without the pooling head, the reload).
SIGLIP2_OPS: dict[str, tuple[Callable[[torch.nn.Module], tuple], str]] = {
    "grow_ffn": (lambda m: grow_ffn(m, 80), STOCK),
    "add_heads": (lambda m: add_heads(m, 8), MARKED),
    "grow_width": (lambda m: grow_width(m, 45), SAVE_WHOLE),  # 4 heads do not divide 45
    "grow_width x2": (lambda m: grow_width(m, 64), MARKED),
    "add_block": (lambda m: add_block(m, 1), STOCK),
    "deepen_projection": (
        lambda m: deepen_projection(m, "vision_model.encoder.layers.0.self_attn.out_proj"),
        MARKED,
    ),
}


def _siglip2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.Siglip2Config(
        vision_config=NAFLEX | {"vision_use_head": False},
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1),
        num_labels=3,
    )
    model = transformers.Siglip2ForImageClassification(config)
    return _redraw(model.eval().double())


def _patches(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(*default_inputs(model)).logits


@pytest.mark.parametrize("op", SIGLIP2_OPS)
def test_siglip2_operation(op: str, tmp_path: Path) -> None:
    """SigLIP-2 (NaFlex): patches, their mask and spatial shapes built from the config; the
    position table it resizes by weight to each image's grid writes the stream."""
    parent = _siglip2()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _patches(parent)
    grow, how = SIGLIP2_OPS[op]
    child, report = grow(parent)
    torch.testing.assert_close(_patches(child), want, rtol=0, atol=1e-9)
    assert _unchanged(before, parent)
    child.save_pretrained(tmp_path)
    auto = transformers.AutoModelForImageClassification
    if how == SAVE_WHOLE:
        assert any("save it whole" in n for n in report.notes), report.notes
        with pytest.raises(MorphError, match="no config describes"):
            load_grown(tmp_path)
        return
    if how == STOCK:
        assert any("reloads this child exactly" in n for n in report.notes), report.notes
        reloaded = auto.from_pretrained(tmp_path, dtype=torch.float64).eval()
    else:
        with pytest.raises(ValueError, match="does not recognize this architecture"):
            auto.from_pretrained(tmp_path)
        reloaded = load_grown(tmp_path)
    torch.testing.assert_close(_patches(reloaded), want, rtol=0, atol=1e-9)


def test_naflex_inputs_follow_the_config() -> None:
    torch.manual_seed(0)
    tower = transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(**NAFLEX)).double()
    pixels, mask, shapes = default_inputs(tower)
    assert pixels.shape == (2, 16, 48) and pixels.dtype == torch.float64
    assert mask.shape == (2, 16) and bool((mask == 1).all())
    assert shapes.tolist() == [[4, 4], [4, 4]]


def test_speech2text_gets_a_default_probe() -> None:
    """Speech2Text (an encoder–decoder on filter banks): the probe holds features (2, 32, 8),
    a mask of ones and decoder ids; grow_ffn on both stacks is exact; grow_width is refused
    naming the sinusoidal position table (tests/test_torch_speech2text.py)."""
    torch.manual_seed(0)
    config = transformers.Speech2TextConfig(
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
    parent = _redraw(transformers.Speech2TextForConditionalGeneration(config).eval().double())
    feats = torch.randn(2, 32, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 32, dtype=torch.long)
    with torch.no_grad():
        want = parent(feats, mask, ids).logits
    child, report = grow_ffn(parent, 80)
    assert report.probe_shapes == ((2, 32, 8), (2, 32), (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(child(feats, mask, ids).logits, want, rtol=0, atol=1e-9)
    with pytest.raises(MorphError, match=r"'model\.encoder\.embed_positions' .* position table"):
        grow_width(parent, 64)


def table() -> str:
    """The markdown model × operation table of :data:`OUTCOMES`."""
    return doc_tables.table(
        "speech", "test_torch_transformer_speech.py", "model", FAMILIES, OPS, OUTCOMES
    )


def test_speech_table_matches() -> None:
    """docs/supported.md holds the table these tests assert, unchanged."""
    doc_tables.check("speech", "test_torch_transformer_speech.py", table())


def test_every_case_has_an_outcome() -> None:
    assert set(OUTCOMES) == {(f, op) for f in FAMILIES for op in OPS}


if __name__ == "__main__":
    print(table())
