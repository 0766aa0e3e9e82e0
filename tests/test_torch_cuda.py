"""The key adapter tests on CUDA modules: weights come back to the module's device."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from netmorph_core.torch import (  # noqa: E402
    deepen,
    grow_kernel,
    morph_stacked,
    remap_optimizer,
    widen,
)
from netmorph_core.torch.models import TransformerMLP, small_resnet, vgg16  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
]
F64_TOL = 1e-9


def border_input(shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    scale = torch.full_like(x, 100.0)
    scale[(slice(None), slice(None), *(slice(1, -1) for _ in shape[2:]))] = 1.0
    return (x * scale).to("cuda", dtype)


def on_cuda(model: nn.Module) -> bool:
    return all(t.is_cuda for t in (*model.parameters(), *model.buffers()))


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_deepen_border_exact_on_cuda(mode: str) -> None:
    torch.manual_seed(0)
    parent = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=2, stride=2, dilation=2, padding_mode=mode), nn.ReLU()
    ).to("cuda", torch.float64)
    x = border_input((2, 3, 11, 11))
    child, report = deepen(parent, "0", width=12, kernel_size=(3, 3), probe=x, seed=0)
    assert on_cuda(child)
    assert report.rel_dev_f64 <= F64_TOL and report.rel_dev <= F64_TOL
    grown, report = grow_kernel(parent, "0", 5, probe=x)
    assert on_cuda(grown) and report.rel_dev_f64 <= F64_TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_models_on_cuda(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    parent = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).to(
        "cuda", dtype
    )
    x = border_input((2, 3, 8, 8), dtype)
    child, report = deepen(parent, "0", width=16, probe=x, seed=0)
    assert on_cuda(child) and all(p.dtype == dtype for p in child.parameters())
    bound = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 5e-2}[dtype]
    assert report.rel_dev_f64 <= bound and report.residual <= 1e-12
    wide, report = widen(parent, "0", 12, probe=x, seed=0)
    assert on_cuda(wide) and report.rel_dev_f64 <= F64_TOL


def test_resnet_and_transformer_on_cuda() -> None:
    torch.manual_seed(2)
    net = small_resnet().to("cuda", torch.float64).eval()
    x = torch.randn(2, 3, 8, 8, device="cuda", dtype=torch.float64)
    child, report = widen(net, ["layer2.0.conv2", "layer2.0.downsample.0"], 40, probe=x, seed=0)
    assert on_cuda(child) and report.rel_dev_f64 <= F64_TOL and report.train_mode_holds
    child, report = deepen(net, "layer1.0.conv1", width=32, batch_norm=True, probe=x, seed=0)
    assert on_cuda(child) and report.rel_dev_f64 <= F64_TOL
    mlp = TransformerMLP(16, 32).to("cuda", torch.float64)
    t = torch.randn(2, 5, 16, device="cuda", dtype=torch.float64)
    child, report = deepen(mlp, "fc1", activation="gelu", probe=t, seed=0)
    assert on_cuda(child) and report.rel_dev_f64 <= F64_TOL
    child, report = morph_stacked(
        mlp, "fc2", [[(None, None)], [(48, None), (None, None)]], probe=t, seed=0
    )
    assert on_cuda(child) and report.rel_dev_f64 <= F64_TOL


def test_vgg16_netmorph_on_cuda() -> None:
    torch.manual_seed(3)
    model = vgg16(10, width_divisor=4, pooled_size=1, hidden=128).to("cuda", torch.float64)
    x = torch.randn(2, 3, 32, 32, device="cuda", dtype=torch.float64)
    for at, c in (("features.2", 16), ("features.7", 32), ("features.14", 64)):
        model, report = deepen(model, at, width=4 * c, kernel_size=(3, 1), probe=x, seed=0)
        assert report.rel_dev_f64 <= F64_TOL
    assert on_cuda(model)


def test_remap_adam_on_cuda() -> None:
    torch.manual_seed(4)
    parent = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to("cuda", torch.float64)
    opt = torch.optim.Adam(parent.parameters(), lr=1e-2)
    x = torch.randn(16, 6, device="cuda", dtype=torch.float64)
    parent(x).square().mean().backward()
    opt.step()
    child, report = widen(parent, "0", 12, probe=x, seed=0)
    new = remap_optimizer(opt, parent, child, report=report)
    state = new.state[child[0].weight]
    assert state["exp_avg"].is_cuda and state["exp_avg"].shape == (12, 6)
    new.zero_grad()
    child(x).square().mean().backward()
    new.step()
    assert all(torch.isfinite(p).all() for p in child.parameters())
