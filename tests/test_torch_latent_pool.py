"""``grow_width`` of a timm ViT pooled by ``AttentionPoolLatent`` (``global_pool="map"``: the
SigLIP towers): the latent query, q, kv, proj, norm and MLP of the pool grow with the stream, so
the classifier after it reads [o; …; o] (exact, float64), and a model without classifier
returns the pooled output k times. Widths that are not multiples are refused by name, as are
pools holding parts the construction does not cover."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from thirdparty import import_timm  # noqa: E402

from netmorph_core.torch import MorphError, grow_width  # noqa: E402

try:
    timm = import_timm()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("timm is not installed", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64_TOL = 1e-12
D = 32


def _vit(classes: int = 3, latent: int = 1, pool: str = "token", fused: bool = True):
    """A float64 ViT of width 32, 4 heads, 2 blocks, pooled by a latent attention pool."""
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=16,
        patch_size=8,
        embed_dim=D,
        depth=2,
        num_heads=4,
        num_classes=classes,
        global_pool="map",
    )
    model.attn_pool.pool = pool
    model.attn_pool.fused_attn = fused
    model.attn_pool.latent_len = latent
    model.attn_pool.latent = torch.nn.Parameter(torch.zeros(1, latent, D))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2 if p.dim() > 1 else 0.1)
    return model.double().eval()


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).double()


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("latent", "pool", "fused"), [(1, "token", True), (1, "token", False), (3, "avg", True)]
)
@pytest.mark.parametrize("width", [2 * D, 3 * D])
def test_a_classifier_after_the_pool_keeps_its_logits(
    latent: int, pool: str, fused: bool, width: int
) -> None:
    model, x = _vit(latent=latent, pool=pool, fused=fused), _images()
    before = _state(model)
    child, report = grow_width(model, width, seed=0, probe=(x,))
    with torch.no_grad():
        y, y_child = model(x), child(x)
    assert (y_child - y).abs().max() <= F64_TOL * y.abs().max()
    assert report.rel_dev_f64 <= F64_TOL
    assert child.attn_pool.latent.shape == (1, latent, width)
    assert child.attn_pool.head_dim == width // 4
    assert child.attn_pool.scale == (width // 4) ** -0.5
    assert child.head.in_features == width
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.attn_pool.head_dim == D // 4


def test_the_pooled_output_comes_back_k_times() -> None:
    model, x = _vit(classes=0), _images()
    child, report = grow_width(model, 2 * D, seed=0, probe=(x,))
    with torch.no_grad():
        y, y_child = model(x), child(x)
    assert y_child.shape == (2, 2 * D)
    for part in y_child.split(D, dim=1):
        assert (part - y).abs().max() <= F64_TOL * y.abs().max()
    assert any("'attn_pool'" in note for note in report.notes)


def test_a_width_that_is_not_a_multiple_is_refused() -> None:
    model = _vit()
    with pytest.raises(MorphError, match=r"d_model=36 is not a multiple of 32: 'attn_pool'"):
        grow_width(model, D + 4, seed=0, probe=(_images(),))
    with pytest.raises(MorphError, match=r"'attn_pool' \(AttentionPoolLatent, 4 heads\)"):
        grow_width(model, 2 * D + 2, seed=0, probe=(_images(),))


def test_a_pool_with_q_k_norms_is_refused_naming_them() -> None:
    model = _vit()
    model.attn_pool.q_norm = torch.nn.LayerNorm(D // 4).double()
    with pytest.raises(MorphError, match=r"'attn_pool' \(AttentionPoolLatent\).* no q/k norms"):
        grow_width(model, 2 * D, seed=0, probe=(_images(),))


def test_a_norm_after_the_pool_is_refused_naming_it() -> None:
    model = _vit()
    model.fc_norm = torch.nn.LayerNorm(D).double()
    with pytest.raises(MorphError, match=r"LayerNorm 'fc_norm'"):
        grow_width(model, 2 * D, seed=0, probe=(_images(),))
