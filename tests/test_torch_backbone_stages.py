"""add_block in a Hugging Face backbone that returns chosen blocks' outputs.

Tiny Depth Anything: a DINOv2 backbone of 4 blocks returns stages 1–4 (every block's output)
to a convolutional neck. A block inserted at ``at`` moves the later blocks one stage up, so
the backbone's ``out_indices`` shift with them: the child predicts the parent's depth, leaves
the parent untouched and reloads with the stock class.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from thirdparty import import_transformers

from netmorph_core.torch import add_block
from netmorph_core.torch.calibrate import trained_like

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

X = torch.randn(2, 3, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _depth_anything() -> torch.nn.Module:
    backbone = transformers.Dinov2Config(
        hidden_size=32,
        num_attention_heads=4,
        num_hidden_layers=4,
        intermediate_size=64,
        image_size=28,
        patch_size=14,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        apply_layernorm=True,
        reshape_hidden_states=False,  # the neck reshapes them itself
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 24, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        patch_size=14,
    )
    torch.manual_seed(0)
    model = transformers.DepthAnythingForDepthEstimation(config).double().eval()
    return trained_like(model, X)


def _depth(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(X).predicted_depth


@pytest.mark.parametrize(
    ("at", "indices"), [(0, [2, 3, 4, 5]), (1, [1, 3, 4, 5]), (4, [1, 2, 3, 4])]
)
def test_out_indices_follow_the_blocks(at: int, indices: list[int], tmp_path: Path) -> None:
    parent = _depth_anything()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _depth(parent)
    child, report = add_block(parent, at, probe=(X,))
    assert report.rel_dev_f64 <= 1e-12
    torch.testing.assert_close(_depth(child), want, rtol=0, atol=1e-12)
    backbone = child.backbone
    assert len(backbone.encoder.layer) == 5 and backbone.config.num_hidden_layers == 5
    assert backbone.out_indices == indices and backbone.stage_names[-1] == "stage5"
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    child.save_pretrained(tmp_path)
    again = transformers.DepthAnythingForDepthEstimation.from_pretrained(
        tmp_path, dtype=torch.float64
    ).eval()
    torch.testing.assert_close(_depth(again), want, rtol=0, atol=1e-12)
