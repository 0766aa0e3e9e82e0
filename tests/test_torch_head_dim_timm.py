"""``widen`` of timm's fused q/k/v projection (``blocks.i.attn.qkv`` of ViT and DeiT): every head
of the attention grows to a larger head_dim. timm scales the scores by ``self.scale`` on its
plain path and lets ``scaled_dot_product_attention`` derive 1/√head_dim on its fused path; the
child (``scale`` 1/√h', queries ×√(h'/h)) is exact on both (float64, 1e-9), the parent
unchanged. An attention with q/k norms over head_dim is left to the general ``widen``, which
refuses it by name."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from thirdparty import import_timm  # noqa: E402

from netmorph_core.torch import MorphError, widen  # noqa: E402

try:
    timm = import_timm()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("timm is not installed", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AT = "blocks.1.attn.qkv"


def _vit(**kwargs: object) -> torch.nn.Module:
    """A float64 ViT of 2 blocks, width 32, 4 heads of head_dim 8, weights of scale 0.2."""
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=3, **kwargs
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2 if p.dim() > 1 else 0.1)
    return model.double().eval()


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).double()


@pytest.mark.parametrize("fused", [True, False])
def test_widening_qkv_grows_every_head_exactly(fused: bool) -> None:
    parent = _vit()
    for block in parent.blocks:
        block.attn.fused_attn = fused
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with torch.no_grad():
        want = parent(_images())
    child, report = widen(parent, AT, 120)  # 3·4 row blocks of 8 → of 10
    with torch.no_grad():
        torch.testing.assert_close(child(_images()), want, rtol=0, atol=1e-9)
    attention = child.blocks[1].attn
    assert (attention.head_dim, attention.attn_dim, attention.scale) == (10, 40, 10**-0.5)
    assert attention.proj.in_features == 40 and child.blocks[0].attn.head_dim == 8
    keys = attention.qkv.weight.view(3, 4, 10, 32)[1]  # rows [Q; K; V]
    assert torch.count_nonzero(keys[:, 8:]) == 0
    assert any("grows from head_dim 8 to 10" in n for n in report.notes), report.notes
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def test_a_width_that_is_not_whole_growth_per_head_is_refused() -> None:
    with pytest.raises(ValueError, match="larger multiple of 12"):
        widen(_vit(), AT, 100)


def test_query_key_norms_over_head_dim_are_refused_by_name() -> None:
    """The trace finds the block (its q/k norms per head left unscaled); new coordinates of
    a head would change the norm's statistics."""
    with pytest.raises(MorphError, match=r"no exact child: blocks\.1\.attn\.q_norm normalises"):
        widen(_vit(qk_norm=True), AT, 120)


def test_float32_child_rounds_like_the_parent() -> None:
    """The queries ×√(h'/h) are rounded once to float32: the child's error against the parent
    in float64 stays about the parent's own float32 rounding."""
    parent = _vit().float()
    _, report = widen(parent, AT, 120)
    assert report.noise_ratio is not None and report.noise_ratio <= 2.0, report
