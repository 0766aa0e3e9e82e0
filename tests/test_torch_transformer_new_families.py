"""Families that follow a known pattern work without a code change.

Two models written here with their own module names, one following BERT's post-LN pattern
(m = LN(x + attention(x)), y = LN(m + mlp(m)), a token and a position embedding, a head on the
first token) and one ViT's pre-LN pattern (a patch convolution, a class token and position
parameter write the stream, per-channel layer scales, one fused q|k|v layer), and Hugging Face
and timm families named in no table and no other test (XLM-RoBERTa-XL, ERNIE, RoFormer,
ESM, Megatron-BERT, YOLOS, Data2Vec-Vision, AltCLIP's and BLIP's image encoders, timm's
VisionTransformer and distilled DeiT): every transformer operation computes the parent's
output on float64 models (1e-9) and leaves the parent untouched, or is refused with a
:class:`MorphError` naming why.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from thirdparty import import_timm, import_transformers
from torch import nn
from torch.nn import functional as F
from torch_exactness import lifted_stream

from netmorph_core.torch import (
    MorphError,
    add_block,
    add_heads,
    deepen_projection,
    grow_ffn,
    grow_width,
)
from netmorph_core.torch.transformer_layout import describe

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

D, HEADS, HIDDEN = 32, 4, 64


class _Mixing(nn.Module):
    """Multi-head attention from separate (``fused=False``) or one fused [Q; K; V] layer."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim = HEADS, D // HEADS
        if fused:
            self.look = nn.Linear(D, 3 * D)
        else:
            self.ask, self.match, self.carry = (nn.Linear(D, D) for _ in range(3))
        self.back = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h, hd = self.num_heads, self.head_dim
        if hasattr(self, "look"):
            q, k, v = self.look(x).view(b, t, 3, h, hd).unbind(2)
        else:
            q, k, v = (m(x).view(b, t, h, hd) for m in (self.ask, self.match, self.carry))
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h * hd)
        return self.back(out)


class _AfterNormLayer(nn.Module):
    """BERT's pattern: m = LN(x + attention(x)), y = LN(m + W₂·gelu(W₁·m))."""

    def __init__(self) -> None:
        super().__init__()
        self.mixing = _Mixing(fused=False)
        self.settle = nn.LayerNorm(D)
        self.widen, self.narrow = nn.Linear(D, HIDDEN), nn.Linear(HIDDEN, D)
        self.settle_again = nn.LayerNorm(D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.settle(x + self.mixing(x))
        return self.settle_again(m + self.narrow(F.gelu(self.widen(m))))


class _TextEncoder(nn.Module):
    """Token + position embeddings, an embedding norm, post-LN layers, a head on token 0."""

    def __init__(self) -> None:
        super().__init__()
        self.vocab, self.places = nn.Embedding(50, D), nn.Embedding(16, D)
        self.tidy = nn.LayerNorm(D)
        self.trunk = nn.ModuleList(_AfterNormLayer() for _ in range(2))
        self.judge = nn.Linear(D, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        places = torch.arange(ids.shape[1], device=ids.device)
        x = self.tidy(self.vocab(ids) + self.places(places))
        for layer in self.trunk:
            x = layer(x)
        return self.judge(x[:, 0])


class _ScaledLayer(nn.Module):
    """ViT's pattern with layer scales: x + γ₁⊙attention(LN₁(x)), then + γ₂⊙mlp(LN₂(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.LayerNorm(D), nn.LayerNorm(D)
        self.mixing = _Mixing(fused=True)
        self.widen, self.narrow = nn.Linear(D, HIDDEN), nn.Linear(HIDDEN, D)
        self.gain_a, self.gain_b = nn.Parameter(torch.ones(D)), nn.Parameter(torch.ones(D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gain_a * self.mixing(self.first(x))
        return x + self.gain_b * self.narrow(F.gelu(self.widen(self.second(x))))


class _ImageEncoder(nn.Module):
    """A 4×4 patch convolution, a class token and a position parameter write the stream."""

    image_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.cut = nn.Conv2d(3, D, 4, stride=4)
        self.start = nn.Parameter(torch.zeros(1, 1, D))
        self.where = nn.Parameter(torch.zeros(1, 5, D))
        self.trunk = nn.ModuleList(_ScaledLayer() for _ in range(2))
        self.close = nn.LayerNorm(D)
        self.judge = nn.Linear(D, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.cut(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.start.expand(len(images), -1, -1), patches], 1) + self.where
        for layer in self.trunk:
            x = layer(x)
        return self.judge(self.close(x)[:, 0])


def _redraw(model: nn.Module) -> nn.Module:
    """Every parameter redrawn: 1-D gains of norms and layer scales in [0.5, 1.5], other 1-D
    parameters in [−0.2, 0.2], the rest N(0, 0.3²)."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and (name.endswith("weight") or "gain" in name or "gamma" in name):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(0.4 * torch.rand(p.shape, generator=gen) - 0.2)
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model.double().eval()


def _ids() -> tuple[torch.Tensor, ...]:
    return (torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1)),)


def _images(size: int = 8) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64),)


def _out(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(*inputs)
    out = getattr(out, "logits", out)
    return out if isinstance(out, torch.Tensor) else out[0]


Op = Callable[[nn.Module, str], tuple[nn.Module, object]]
OPS: dict[str, Op] = {
    "grow_ffn": lambda m, o: grow_ffn(m, 160),
    "add_heads": lambda m, o: add_heads(m, 6),
    "grow_width": lambda m, o: grow_width(m, 64),
    "grow_width → add_heads": lambda m, o: add_heads(grow_width(m, 64)[0], 8),
    "add_block": lambda m, o: add_block(m, 1),
    "add_block (end)": lambda m, o: add_block(m, 2, method="zero"),
    "deepen_projection": lambda m, o: deepen_projection(m, o),
}


def _exact(parent: nn.Module, inputs: tuple[torch.Tensor, ...], op: str) -> None:
    """``op`` on ``parent`` computes its output (float64, 1e-9) and leaves it unchanged."""
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _out(parent, inputs)
    layout = describe(parent)
    child, _ = OPS[op](parent, layout.blocks[0].name(layout.family.o))
    got = _out(child, inputs)  # a model returning its stream returns it wider: [y; …; y; 0]
    want = lifted_stream(want, got.shape[-1])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9 * want.abs().max())
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


@pytest.mark.parametrize("op", OPS)
def test_own_post_ln_encoder(op: str) -> None:
    parent = _redraw(_TextEncoder())
    layout = describe(parent)
    assert layout.family.post_ln and layout.family.norms == ("settle", "settle_again")
    assert layout.family.writers == ("vocab", "places") and layout.head == "judge"
    _exact(parent, _ids(), op)


@pytest.mark.parametrize("op", OPS)
def test_own_pre_ln_image_encoder_with_layer_scales(op: str) -> None:
    parent = _redraw(_ImageEncoder())
    layout = describe(parent)
    assert layout.family.scales == ("gain_a", "gain_b")
    assert set(layout.family.writers) == {"cut", "start", "where"}
    assert layout.family.qkv == ("mixing.look",) and layout.family.qkv_layout == "concat"
    _exact(parent, _images(), op)


def test_layer_scales_at_one_are_still_found() -> None:
    """Gains of 1 keep the plain residual sums true: the second run with the candidates
    scaled by 2 and 4 decides which gain scales which branch."""
    parent = _ImageEncoder().double()
    assert describe(parent).family.scales == ("gain_a", "gain_b")


class _Offset(_ImageEncoder):
    """A constant enters the stream that no writer carries."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.cut(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.start.expand(len(images), -1, -1), patches], 1) + self.where + 1.0
        for layer in self.trunk:
            x = layer(x)
        return self.judge(self.close(x)[:, 0])


class _TwiceLayer(_ScaledLayer):
    """The attention branch doubled outside any parameter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 2 * self.gain_a * self.mixing(self.first(x))
        return x + self.gain_b * self.narrow(F.gelu(self.widen(self.second(x))))


def test_a_stream_written_by_something_not_understood_is_refused() -> None:
    with pytest.raises(MorphError, match="is not written by cut, start, where alone"):
        describe(_redraw(_Offset()))


def test_a_branch_scaled_by_something_not_understood_is_refused() -> None:
    parent = _ImageEncoder()
    parent.trunk = nn.ModuleList(_TwiceLayer() for _ in range(2))
    with pytest.raises(MorphError, match="each scaled by at most one per-channel layer scale"):
        describe(_redraw(parent))


# ---------------------------------------------------------------------------------------------
# Hugging Face and timm families in no table

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TEXT = dict(TINY, vocab_size=100, num_labels=3)
VISION = dict(TINY, image_size=8, patch_size=4, num_labels=3)
#: model → (class, config class, config arguments, input builder).
HF: dict[str, tuple[str, str, dict, Callable[[], tuple[torch.Tensor, ...]]]] = {
    "XLM-RoBERTa-XL (pre-LN)": (
        "XLMRobertaXLForSequenceClassification",
        "XLMRobertaXLConfig",
        TEXT,
        lambda: (torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1)),),
    ),
    "ERNIE": (
        "ErnieForSequenceClassification",
        "ErnieConfig",
        TEXT,
        lambda: (torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1)),),
    ),
    "RoFormer (rotary; its sinusoidal table sits beside the blocks)": (
        "RoFormerForSequenceClassification",
        "RoFormerConfig",
        TEXT,
        lambda: (torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1)),),
    ),
    "Data2Vec-Vision (layer scale, mean pooling)": (
        "Data2VecVisionForImageClassification",
        "Data2VecVisionConfig",
        dict(VISION, use_mean_pooling=True, layer_scale_init_value=0.1),
        _images,
    ),
    "ESM (rotary; a load_state_dict pre-hook that renames old checkpoints' keys)": (
        "EsmForMaskedLM",
        "EsmConfig",
        dict(TEXT, pad_token_id=1, position_embedding_type="rotary"),
        lambda: (torch.randint(2, 100, (2, 8), generator=torch.Generator().manual_seed(1)),),
    ),
    "Megatron-BERT base model (pre-LN; returns the stream beside its pooler)": (
        "MegatronBertModel",
        "MegatronBertConfig",
        TEXT,
        lambda: (torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1)),),
    ),
    "YOLOS (runs key, value, then query; detection tokens)": (
        "YolosModel",
        "YolosConfig",
        dict(VISION, image_size=[8, 8], num_detection_tokens=3, use_mid_position_embeddings=False),
        _images,
    ),
    "AltCLIP image encoder": ("AltCLIPVisionModel", "AltCLIPVisionConfig", VISION, _images),
    "BLIP image encoder": ("BlipVisionModel", "BlipVisionConfig", VISION, _images),
    "EXAONE-4 (per-head q/k norms, NoPE layers)": (
        "Exaone4ForCausalLM",
        "Exaone4Config",
        dict(
            TEXT,
            num_key_value_heads=2,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
        ),
        lambda: (torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1)),),
    ),
    "GPT-NeoX-Japanese (its last block alone adds a bias to the stream)": (
        "GPTNeoXJapaneseForCausalLM",
        "GPTNeoXJapaneseConfig",
        dict(TEXT, intermediate_multiple_size=2),
        lambda: (torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1)),),
    ),
    "DiffLlama (differential attention: a gainless norm over pairs of heads)": (
        "DiffLlamaForCausalLM",
        "DiffLlamaConfig",
        TEXT,
        lambda: (torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1)),),
    ),
    "CTRL (a sinusoidal position table its model holds as a buffer)": (
        "CTRLLMHeadModel",
        "CTRLConfig",
        dict(n_embd=D, n_head=HEADS, n_layer=2, dff=HIDDEN, vocab_size=100, n_positions=16),
        lambda: (torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1)),),
    ),
    "BioGPT (its tied head is output_projection)": (
        "BioGptForCausalLM",
        "BioGptConfig",
        TEXT,
        lambda: (torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1)),),
    ),
    "GPT-1 (post-LN; its tied head reads the last block's norm; records n_head alone)": (
        "OpenAIGPTLMHeadModel",
        "OpenAIGPTConfig",
        dict(n_embd=D, n_head=HEADS, n_layer=2, vocab_size=100, n_positions=16),
        lambda: (torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1)),),
    ),
}
HF_OPS = ("grow_ffn", "add_heads", "grow_width", "add_block", "deepen_projection")
#: (model, operation) → the refusal's message fragment; every other case is exact.
HF_REFUSED = {
    # BLIP's attention reshapes its fused q|k|v output with the stream's width
    ("BLIP image encoder", "add_heads"): "the child fails on the probe the parent runs",
    ("BLIP image encoder", "grow_width"): "the child fails on the probe the parent runs",
    ("DiffLlama (differential attention: a gainless norm over pairs of heads)", "add_heads"): (
        r"'model\.layers\.0\.self_attn\.groupnorm' normalises several heads together"
    ),
    ("DiffLlama (differential attention: a gainless norm over pairs of heads)", "add_block"): (
        r"without a gain \(DiffLlama's differential heads\).*use method='zero'"
    ),
    ("CTRL (a sinusoidal position table its model holds as a buffer)", "grow_width"): (
        r"'transformer\.pos_encoding' is a position table the model computes from its width"
    ),
    **{
        ("GPT-NeoX-Japanese (its last block alone adds a bias to the stream)", op): (
            r"'gpt_neox_japanese\.layers\.1\.attention\.dense_bias' has no counterpart in block 0"
        )
        for op in ("grow_width", "add_block")
    },
}


def _hf(model: str, config: str, args: dict) -> nn.Module:
    torch.manual_seed(0)
    return _redraw(getattr(transformers, model)(getattr(transformers, config)(**args)))


@pytest.mark.parametrize("op", HF_OPS)
@pytest.mark.parametrize("name", list(HF))
def test_hugging_face_family_in_no_table(name: str, op: str) -> None:
    model, config, args, inputs = HF[name]
    parent = _hf(model, config, args)
    refused = HF_REFUSED.get((name, op))
    if refused is None:
        _exact(parent, inputs(), op)
        return
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(MorphError, match=refused):
        _exact(parent, inputs(), op)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


@pytest.mark.parametrize("op", HF_OPS)
def test_random_masking_is_traced_and_measured_under_one_seed(op: str) -> None:
    """ViT-MAE keeps a random 25% of its patches in every forward pass: its layout is traced,
    and the child compared, with every run starting from one seed; under any one seed the
    child masks the same patches and computes the parent's output."""
    parent = _hf("ViTMAEModel", "ViTMAEConfig", dict(VISION, mask_ratio=0.75))
    before = {k: v.clone() for k, v in parent.state_dict().items()}

    def seeded_out(model: nn.Module, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return _out(model, _images())

    layout = describe(parent)
    child, _ = OPS[op](parent, layout.blocks[0].name(layout.family.o))
    for seed in (0, 1):
        got = seeded_out(child, seed)
        want = lifted_stream(seeded_out(parent, seed), got.shape[-1])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9 * want.abs().max())
    assert not torch.equal(seeded_out(parent, 0), seeded_out(parent, 1))  # it does mask
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


TIMM = dict(
    pretrained=False, num_classes=3, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4
)
#: timm model → create_model arguments beyond :data:`TIMM`.
TIMM_MODELS = {
    "vit_tiny_patch16_224": {},
    "vit_tiny_patch16_224 (layer scale, mean pooling)": dict(
        init_values=0.1, global_pool="avg", class_token=False, fc_norm=True
    ),
    "deit_tiny_distilled_patch16_224": {},
}
#: add_heads also sets timm's ``attn_dim``, the width its attention reshapes its output to.
TIMM_OPS = (
    "grow_ffn",
    "add_heads",
    "grow_width",
    "grow_width → add_heads",
    "add_block",
    "deepen_projection",
)


def _timm() -> object:
    try:
        return import_timm()
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.skip("timm is not installed")


@pytest.mark.parametrize("op", TIMM_OPS)
@pytest.mark.parametrize("name", list(TIMM_MODELS))
def test_timm_vision_transformer(name: str, op: str) -> None:
    timm = _timm()
    torch.manual_seed(0)
    parent = _redraw(timm.create_model(name.split(" ")[0], **TIMM, **TIMM_MODELS[name]))
    _exact(parent, _images(32), op)


@pytest.mark.parametrize("name", ["beit_base_patch16_224", "eva02_tiny_patch14_224"])
def test_timm_attention_reading_its_qkv_weight_is_refused_by_name(name: str) -> None:
    """timm's BEiT and EVA compute F.linear(x, self.qkv.weight, [q_bias; 0; v_bias]): the
    layer is never called, and the refusal names the read."""
    timm = _timm()
    parent = timm.create_model(name, **TIMM).double().eval()
    match = r"'blocks\.0\.attn\.qkv' is never called: 'attn' \(\w+\) reads qkv\.weight directly"
    with pytest.raises(MorphError, match=match):
        grow_ffn(parent, 160)


def test_yolos_mid_position_embeddings_are_refused_by_name() -> None:
    """YOLOS adds a position table to the stream between blocks, a writer no operation grows."""
    config = dict(VISION, image_size=[8, 8], num_detection_tokens=3)
    parent = _hf("YolosModel", "YolosConfig", config)
    with pytest.raises(MorphError, match=r"mid_position_embeddings alone"):
        grow_ffn(parent, 160)


def test_diffllama_add_block_with_zero_output_columns() -> None:
    """DiffLlama's new block with zero output columns is exact; its ``lambda_init`` follows
    the layer index, which the shifted blocks keep, so the child reloads with load_grown."""
    name = "DiffLlama (differential attention: a gainless norm over pairs of heads)"
    model, config, args, inputs = HF[name]
    parent = _hf(model, config, args)
    want = _out(parent, inputs())
    child, report = add_block(parent, 1, method="zero")
    torch.testing.assert_close(_out(child, inputs()), want, rtol=0, atol=1e-9 * want.abs().max())
    assert any("lambda_init" in n and "load_grown" in n for n in report.notes), report.notes


def test_per_block_rotary_bases_follow_a_new_block() -> None:
    """Granite-SWA reads each block's rotary base from ``layer_rope_theta`` (one entry per
    block, 0 for no rotary): the new block's entry is its neighbour's."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if "granite_swa" not in CONFIG_MAPPING_NAMES:  # pragma: no cover - older transformers
        pytest.skip("this transformers has no Granite-SWA")
    config = getattr(transformers, CONFIG_MAPPING_NAMES["granite_swa"])(
        **dict(TINY, num_key_value_heads=2, head_dim=8, vocab_size=100),
        layer_rope_theta=[10000.0, 0.0],
    )
    torch.manual_seed(0)
    model = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES["granite_swa"])(config)
    parent = _redraw(model.double())
    ids = (torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1)),)
    want = _out(parent, ids)
    child, _ = add_block(parent, 1)
    # its attention scales each head by a sink factor computed in float32, whose rounding
    # (1e-7) reaches the new block's cancelling heads: within the parent's own rounding
    torch.testing.assert_close(_out(child, ids), want, rtol=0, atol=1e-6 * want.abs().max())
    assert child.config.layer_rope_theta == [10000.0, 0.0, 0.0]


def test_attention_recording_no_head_dim_is_refused_naming_it() -> None:
    """CPM-Ant's attention keeps its head size as ``dim_head`` only: the refusal names the
    attention module, not just its class."""
    config = transformers.CpmAntConfig(
        vocab_size=100, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, dim_ff=64
    )
    model = transformers.CpmAntForCausalLM(config).eval()
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(MorphError, match=r"'cpmant\.encoder\.layers\.0\.self_att\.self_attention'"):
        grow_ffn(model, 70, probe=(ids,))


def test_a_norm_over_the_feed_forward_hidden_units_is_refused_by_name() -> None:
    """BitNet normalises its feed-forward's hidden units (``ffn_sub_norm``) before the output
    projection: grow_ffn refuses naming that norm before building a child."""
    config = transformers.BitNetConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = transformers.BitNetForCausalLM(config).eval()
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(MorphError, match=r"'model\.layers\.0\.mlp\.ffn_sub_norm' \(BitNet"):
        grow_ffn(model, 70, probe=(ids,))
