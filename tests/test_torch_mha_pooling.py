"""``grow_width`` through SigLIP's and SigLIP-2's attention-pooling heads (a learned probe
querying the stream through ``nn.MultiheadAttention``'s packed ``in_proj_weight``, then
o + mlp(LN(o))): the head grows with the stream (embed_dim D' = k·d, the same 4 heads of
head_dim k·hd).

Tiny float64 models (d 32, 4 heads, 2 blocks; norm gains and biases redrawn, so the
attention's biases are not zero): SigLIP-2's NaFlex vision tower and classifier on 16 patches
of which the second image uses 12 (its mask and a 3×4 grid: the head's attention mask
matters), SigLIP's vision tower on 16×16 images. Each child returns the parent's stream and
pooled output as k copies (within 1e-9), leaves the parent unchanged and reloads through
``save_pretrained`` with ``load_grown`` (the stock load refuses: the encoder's attention
keeps head_dim 8, which a config deriving it as hidden_size / heads cannot describe). The
classifier, which only runs the head, also grows to 36 = 32 + 4. Widths the head cannot take
(45: not divided by the heads; 36 on a tower, which returns the pooled output), and an
``nn.MultiheadAttention`` outside a known pooling head, are refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from thirdparty import import_transformers  # noqa: E402
from torch_exactness import lifted_stream  # noqa: E402

from netmorph_core.torch import MorphError, grow_width, load_grown  # noqa: E402
from netmorph_core.torch.tracing import default_inputs  # noqa: E402

try:
    transformers = import_transformers()
except ImportError:
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, HEADS, HD = 32, 4, 8
NAFLEX = dict(
    hidden_size=D,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=HEADS,
    num_patches=16,
    patch_size=4,
    num_channels=3,
)
SIGLIP = dict(
    hidden_size=D,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=HEADS,
    image_size=16,
    patch_size=8,
)


def _classifier() -> torch.nn.Module:
    text = dict(hidden_size=D, intermediate_size=64, num_hidden_layers=1)
    config = transformers.Siglip2Config(vision_config=NAFLEX, text_config=text, num_labels=3)
    return transformers.Siglip2ForImageClassification(config)


#: model → (builder, its pooling head, the Auto class a stock reload would use).
MODELS: dict[str, tuple[Callable[[], torch.nn.Module], str, str]] = {
    "SigLIP-2 vision tower": (
        lambda: transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(**NAFLEX)),
        "head",
        "AutoModel",
    ),
    "SigLIP-2 classifier": (_classifier, "vision_model.head", "AutoModelForImageClassification"),
    "SigLIP vision tower": (
        lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SIGLIP)),
        "head",
        "AutoModel",
    ),
}


def _parent(model: str) -> torch.nn.Module:
    torch.manual_seed(0)
    parent = MODELS[model][0]().double().eval()
    with torch.no_grad():  # non-trivial norms and biases (the attention's start at zero)
        for name, p in parent.named_parameters():
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.uniform_(-0.2, 0.2)
    return parent


def _inputs(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """NaFlex: 16 patches, the second image on a 3×4 grid (4 padding patches masked out);
    SigLIP: images (2, 3, 16, 16)."""
    if not isinstance(model, transformers.SiglipVisionModel):
        pixels, mask, shapes = default_inputs(model)
        mask, shapes = mask.clone(), shapes.clone()
        mask[1, 12:] = 0
        shapes[1] = torch.tensor([3, 4])
        return pixels, mask, shapes
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(2, 3, 16, 16, generator=gen, dtype=torch.float64),)


def _outputs(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The classifier's logits; a tower's stream and pooled output."""
    with torch.no_grad():
        out = model(*inputs)
    if "logits" in out:
        return [out.logits]
    return [out.last_hidden_state, out.pooler_output]


def _unchanged(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    after = model.state_dict()
    return set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("width", [64, 128])
@pytest.mark.parametrize("model", MODELS)
def test_grow_width_through_the_pooling_head(model: str, width: int, tmp_path: Path) -> None:
    """×2 (√2 on the q rows: one more rounding) and ×4 (exact scale 2)."""
    parent = _parent(model)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    inputs = _inputs(parent)
    want = _outputs(parent, inputs)
    child, report = grow_width(parent, width, probe=inputs)
    assert report.rel_dev_f64 is not None and report.rel_dev_f64 <= 1e-9
    for got, y in zip(_outputs(child, inputs), want, strict=True):
        torch.testing.assert_close(got, lifted_stream(y, got.shape[-1]), rtol=0, atol=1e-9)
    assert _unchanged(before, parent)
    att = child.get_submodule(f"{MODELS[model][1]}.attention")
    assert (att.embed_dim, att.num_heads, att.head_dim) == (width, HEADS, width // HEADS)
    if "tower" in model:  # it returns the stream and what the head pools
        assert any("so is the pooled output of 'head'" in n for n in report.notes), report.notes

    child.save_pretrained(tmp_path)
    assert any("cannot describe" in n for n in report.notes), report.notes
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        getattr(transformers, MODELS[model][2]).from_pretrained(tmp_path)
    reloaded = load_grown(tmp_path)
    for got, y in zip(_outputs(reloaded, inputs), want, strict=True):
        torch.testing.assert_close(got, lifted_stream(y, got.shape[-1]), rtol=0, atol=1e-9)


def test_the_heads_keep_the_parents_scores_and_values() -> None:
    """×2: child head i's first 8 rows of q are √2 times the parent's (read from the two
    copies: their column blocks sum to it), the other 8 are zero; its k and v rows hold the
    parent's then dense new rows, whose out_proj columns are zero; out_proj writes its rows
    twice; the probe and the head's norm are repeated."""
    parent = _parent("SigLIP-2 classifier")
    child, _ = grow_width(parent, 2 * D, probe=_inputs(parent))
    old = parent.vision_model.head
    new = child.vision_model.head
    w, b = old.attention.in_proj_weight.detach(), old.attention.in_proj_bias.detach()
    w2, b2 = new.attention.in_proj_weight.detach(), new.attention.in_proj_bias.detach()
    for s, scale in enumerate((math.sqrt(2), 1.0, 1.0)):  # q, k, v
        for i in range(HEADS):
            rows = slice(2 * D * s + 2 * HD * i, 2 * D * s + 2 * HD * i + HD)
            fresh = slice(rows.stop, rows.stop + HD)
            parent_rows = slice(D * s + HD * i, D * s + HD * (i + 1))
            summed = w2[rows, :D] + w2[rows, D:]
            torch.testing.assert_close(summed, scale * w[parent_rows], rtol=0, atol=1e-12)
            torch.testing.assert_close(b2[rows], scale * b[parent_rows], rtol=0, atol=1e-15)
            if s == 0:
                assert not w2[fresh].any() and not b2[fresh].any()
            else:
                assert bool(w2[fresh].ne(0).all())
    out, out2 = old.attention.out_proj.weight.detach(), new.attention.out_proj.weight.detach()
    kept = [2 * HD * i + j for i in range(HEADS) for j in range(HD)]
    fresh = [c for c in range(2 * D) if c not in kept]
    assert torch.equal(out2[:D, kept], out) and torch.equal(out2[D:, kept], out)
    assert not out2[:, fresh].any()
    assert torch.equal(new.probe.detach(), torch.cat([old.probe.detach()] * 2, -1))
    assert torch.equal(new.layernorm.weight.detach(), old.layernorm.weight.detach().repeat(2))


def test_a_classifier_takes_any_width_its_heads_divide(tmp_path: Path) -> None:
    """SigLIP-2's classifier mean-pools the stream and only runs the head: to 36 = 32 + 4
    (head_dim 9, √(9/8) on the q rows) its logits are the parent's and the head's own residual
    stream carries mean(o) on its 4 extra coordinates, as the stream does under LayerNorm."""
    parent = _parent("SigLIP-2 classifier")
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    inputs = _inputs(parent)
    want = _outputs(parent, inputs)
    with torch.no_grad():
        pooled = parent.vision_model(*inputs).pooler_output
    child, report = grow_width(parent, 36, probe=inputs)
    # the tower resizes its position table in float32: ~1e-10
    assert report.rel_dev_f64 is not None and report.rel_dev_f64 <= 1e-9
    torch.testing.assert_close(_outputs(child, inputs)[0], want[0], rtol=0, atol=1e-9)
    att = child.vision_model.head.attention
    assert (att.embed_dim, att.num_heads, att.head_dim) == (36, HEADS, 9)
    with torch.no_grad():
        got = child.vision_model(*inputs).pooler_output
    lifted = torch.cat([pooled, pooled.mean(-1, keepdim=True).expand(-1, 4)], -1)
    torch.testing.assert_close(got, lifted, rtol=0, atol=1e-9)
    assert _unchanged(before, parent)
    child.save_pretrained(tmp_path)
    reloaded = load_grown(tmp_path)
    torch.testing.assert_close(_outputs(reloaded, inputs)[0], want[0], rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("model", "width", "message", "works"),
    [
        (
            "SigLIP-2 classifier",
            45,
            r"d_model=45: 'vision_model.head.attention' \(nn.MultiheadAttention, 4 heads\)",
            "multiples of 4 (36, 40, …)",
        ),
        (
            "SigLIP vision tower",
            45,
            r"d_model=45: 'head.attention' \(nn.MultiheadAttention, 4 heads\)",
            "multiples of 32 (64, 96, …)",
        ),
        (
            "SigLIP-2 vision tower",
            36,
            r"d_model=36 is not a multiple of 32: 'head.attention' feeds .* among the model's",
            "multiples of 32 (64, 96, …)",
        ),
    ],
    ids=["classifier-45", "siglip-tower-45", "siglip2-tower-36"],
)
def test_widths_the_head_cannot_take_are_refused_by_name(
    model: str, width: int, message: str, works: str
) -> None:
    """45: the 4 heads do not divide it; 36 on a tower, which returns the pooled output: its
    4 extra coordinates would carry mean(o), not the zeros of a returned stream."""
    parent = _parent(model)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(MorphError, match=message) as caught:
        grow_width(parent, width, probe=_inputs(parent))
    assert f"widths that work: {works}" in str(caught.value)
    assert _unchanged(before, parent)


class _Readout(torch.nn.Module):
    """Self-attention over the stream, first token: not a pooling head grow_width knows."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(D, HEADS, batch_first=True)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.attention(hidden_state, hidden_state, hidden_state)[0][:, 0]


def test_another_multihead_attention_on_the_stream_is_refused() -> None:
    parent = _parent("SigLIP vision tower")
    parent.head = _Readout().double()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(MorphError, match=r"'head.attention' \(nn.MultiheadAttention\) reads the"):
        grow_width(parent, 2 * D, probe=_inputs(parent))
    assert _unchanged(before, parent)


def test_the_naflex_tower_gets_its_default_probe() -> None:
    """Without ``probe=``: the tower returns its stream, so grow_width measures a view of it,
    whose forward keeps the tower's signature: the patches, mask and grid of its config."""
    parent = _parent("SigLIP-2 vision tower")
    inputs = default_inputs(parent)
    want = _outputs(parent, inputs)
    child, report = grow_width(parent, 2 * D)
    assert report.probe_shapes == ((2, 16, 48), (2, 16), (2, 2))
    for got, y in zip(_outputs(child, inputs), want, strict=True):
        torch.testing.assert_close(got, lifted_stream(y, got.shape[-1]), rtol=0, atol=1e-9)
