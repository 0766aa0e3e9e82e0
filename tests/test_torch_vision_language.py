"""A vision-language model's language model grown on token ids alone.

Tiny Llava (a CLIP vision tower, a two-layer projector, a Llama language model): the
transformer operations find the language model as the stream's owner; each child computes
the parent's logits on text and on text with an image (whose projected features replace the
image tokens' embeddings: ``grow_width`` grows the projector's output as a writer of the
stream), leaves the parent untouched, and reloads. A module beside the owner holding a tensor
of the stream's width that is not followed is refused by name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from thirdparty import import_transformers
from torch import nn

from netmorph_core.torch import MorphError, add_block, add_heads, grow_ffn, grow_width, load_grown
from netmorph_core.torch.transformer_layout import describe

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

IMAGE_TOKEN = 110
#: The language model every test below grows: width 32, 4 heads (2 key/value), 2 blocks.
TEXT = dict(
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    intermediate_size=64,
    vocab_size=200,
    head_dim=8,
)
#: A one-block vision tower of width 16 on 28×28 images of 14×14 patches.
VISION = dict(
    hidden_size=16,
    num_attention_heads=2,
    num_hidden_layers=1,
    intermediate_size=32,
    image_size=28,
    patch_size=14,
)
OPS: dict[str, Callable[[nn.Module], tuple[nn.Module, object]]] = {
    "grow_ffn": lambda m: grow_ffn(m, 96),
    "add_heads": lambda m: add_heads(m, 8),
    "grow_width": lambda m: grow_width(m, 64),
    "add_block": lambda m: add_block(m, 1),
}
#: operation → how the child reloads: the projector's hidden width follows the text's in the
#: stock model, so a wider stream's child is rebuilt by load_grown
STOCK = {"grow_ffn": True, "add_heads": True, "grow_width": False, "add_block": True}


@pytest.fixture(autouse=True)
def exact_rmsnorm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama's RMSNorm computed in the input's dtype (its own forward rounds to float32)."""

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))

    monkeypatch.setattr(transformers.models.llama.modeling_llama.LlamaRMSNorm, "forward", forward)


def _llava() -> nn.Module:
    text = transformers.LlamaConfig(**TEXT)
    vision = transformers.CLIPVisionConfig(
        hidden_size=16,
        num_attention_heads=2,
        num_hidden_layers=2,
        intermediate_size=24,
        image_size=16,
        patch_size=8,
    )
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN
    )
    torch.manual_seed(0)
    return transformers.LlavaForConditionalGeneration(config).double().eval()


def _logits(model: nn.Module, image: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (1, 9), generator=gen)
    kwargs = {}
    if image:
        ids[0, 1:5] = IMAGE_TOKEN  # 4 patches of 8×8 in a 16×16 image
        kwargs["pixel_values"] = torch.randn(1, 3, 16, 16, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def test_the_language_model_owns_the_stream() -> None:
    layout = describe(_llava())
    assert (layout.owner, layout.family.name, layout.head) == (
        "model.language_model",
        "llama",
        "lm_head",
    )


@pytest.mark.parametrize("op", OPS)
def test_the_child_computes_the_parents_logits_with_and_without_an_image(
    op: str, tmp_path: Path
) -> None:
    parent = _llava()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, report = OPS[op](parent)
    for image in (False, True):
        want = _logits(parent, image)
        got = _logits(child, image)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9 * float(want.abs().max()))
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    child.save_pretrained(tmp_path)
    if STOCK[op]:
        assert any("reloads this child exactly" in n for n in report.notes), report.notes
        again = transformers.LlavaForConditionalGeneration.from_pretrained(
            tmp_path, dtype=torch.float64
        )
    else:
        again = load_grown(tmp_path)
    want = _logits(child, True)
    torch.testing.assert_close(
        _logits(again.eval(), True), want, rtol=0, atol=1e-12 * float(want.abs().max())
    )


def test_a_tensor_of_the_streams_width_beside_the_owner_is_refused_by_name() -> None:
    parent = _llava()
    parent.model.adapter = nn.Module()
    # d on its first axis: not a projection features · W of the stream's width
    parent.model.adapter.mix = nn.Parameter(torch.zeros(32, 8, dtype=torch.float64))
    with pytest.raises(MorphError, match=r"'model\.adapter' \(Module\) sits beside the stream"):
        grow_width(parent, 64)


def test_a_projector_with_an_activation_after_its_last_layer_is_refused_by_name() -> None:
    """σ(0) = 0.5: the new coordinates of σ([W; W; 0]·f) would not be zero, so a projector
    whose last linear layer is followed by a registered activation is not grown."""
    parent = _llava()
    parent.model.multi_modal_projector.squash = nn.Sigmoid()
    with pytest.raises(MorphError, match=r"'model\.multi_modal_projector' .* sits beside"):
        grow_width(parent, 64)


def _aya() -> nn.Module:
    """Aya Vision: its vision tower's blocks come before the language model's; its projector
    normalises and reshuffles the image features before its linear layers."""
    config = transformers.AyaVisionConfig(
        text_config=TEXT, vision_config=VISION, image_token_index=IMAGE_TOKEN
    )
    torch.manual_seed(0)
    return transformers.AyaVisionForConditionalGeneration(config).double().eval()


def test_the_stack_holding_the_token_embedding_is_grown_not_the_vision_tower() -> None:
    """Aya Vision's projector normalises (over the image features' width) and reshuffles
    them before its linear layers: its last layer grows as a writer of the stream, and the
    child computes the parent's logits with an image (one image token: 2×2 patches shuffled
    into one)."""
    parent = _aya()
    assert describe(parent).owner == "model.language_model"
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (1, 9), generator=gen)
    pixels = torch.randn(1, 3, 28, 28, generator=gen, dtype=torch.float64)
    with_image = ids.clone()
    with_image[0, 1] = IMAGE_TOKEN
    with torch.no_grad():
        want = parent(input_ids=with_image, pixel_values=pixels).logits
    for op in (lambda m: grow_ffn(m, 96, probe=(ids,)), lambda m: grow_width(m, 64, probe=(ids,))):
        child, _ = op(parent)
        with torch.no_grad():
            got = child(input_ids=with_image, pixel_values=pixels).logits
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9 * float(want.abs().max()))


def test_gemma3_projection_tensor_grows_as_a_writer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Gemma-3's projector multiplies its normalised, pooled image features by one parameter
    ``mm_input_projection_weight`` (vision width × d): ``grow_width`` grows it along d, and the
    child computes the parent's logits with an image; the wider child reloads with the stock
    class (its text embedding's √d scale folded into the embedding)."""

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:  # in the input's dtype
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed * (1.0 + self.weight)

    gemma3 = transformers.models.gemma3.modeling_gemma3
    monkeypatch.setattr(gemma3.Gemma3RMSNorm, "forward", forward)
    config = transformers.Gemma3Config(
        text_config=dict(TEXT, sliding_window=4),
        vision_config=VISION,
        mm_tokens_per_image=1,
        image_token_index=IMAGE_TOKEN,
        boi_token_index=IMAGE_TOKEN + 1,
        eoi_token_index=IMAGE_TOKEN + 2,
    )
    torch.manual_seed(0)
    parent = transformers.Gemma3ForConditionalGeneration(config).double().eval()
    with torch.no_grad():  # non-trivial gains and projection
        for name, p in parent.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 0.5)
        parent.model.multi_modal_projector.mm_input_projection_weight.normal_()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (1, 9), generator=gen)
    with_image = ids.clone()
    with_image[0, 2] = IMAGE_TOKEN
    pixels = torch.randn(1, 3, 28, 28, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        want = parent(input_ids=with_image, pixel_values=pixels).logits
    child, report = grow_width(parent, 64, probe=(ids,))
    with torch.no_grad():
        got = child(input_ids=with_image, pixel_values=pixels).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9 * float(want.abs().max()))
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    again = transformers.Gemma3ForConditionalGeneration.from_pretrained(
        tmp_path, dtype=torch.float64
    ).eval()
    with torch.no_grad():
        reloaded = again(input_ids=with_image, pixel_values=pixels).logits
    torch.testing.assert_close(reloaded, want, rtol=0, atol=1e-9 * float(want.abs().max()))


def test_qwen3_vl_mergers_grow_as_writers() -> None:
    """Qwen3-VL's vision tower ends in a patch merger and deepstack mergers whose features
    are added to the stream inside the language model: their last layers are the tower's only
    tensors of the stream's width, and grow as writers; the child computes the parent's logits
    with an image (4 patches merged into one token)."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    vision = dict(
        depth=2,
        hidden_size=16,
        out_hidden_size=32,
        intermediate_size=24,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        deepstack_visual_indexes=[0],
        num_position_embeddings=16,
    )
    config = transformers.Qwen3VLConfig(
        text_config=dict(TEXT, rope_parameters=rope),
        vision_config=vision,
        image_token_id=IMAGE_TOKEN,
        vision_start_token_id=IMAGE_TOKEN + 1,
        vision_end_token_id=IMAGE_TOKEN + 2,
    )
    torch.manual_seed(0)
    parent = transformers.Qwen3VLForConditionalGeneration(config).double().eval()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (1, 9), generator=gen)
    image = ids.clone()
    image[0, 2:5] = torch.tensor([IMAGE_TOKEN + 1, IMAGE_TOKEN, IMAGE_TOKEN + 2])
    inputs = dict(
        input_ids=image,
        pixel_values=torch.randn(4, 3 * 2 * 14 * 14, generator=gen, dtype=torch.float64),
        image_grid_thw=torch.tensor([[1, 2, 2]]),
        mm_token_type_ids=(image == IMAGE_TOKEN).long(),
    )
    with torch.no_grad():
        want = parent(**inputs).logits
    child, _ = grow_width(parent, 64, probe=(ids,))
    with torch.no_grad():
        got = child(**inputs).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9 * float(want.abs().max()))
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
