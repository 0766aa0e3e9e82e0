"""A layer registered under several names (one module called from several places, as CoaT's
convolutional position encoding is by every block of a stage): the operations that put a
module computing the same function in its place (deepen, grow_kernel, morph_subnet) replace it
under every name, so the child's calls still share one module; widen, which changes what it
computes, is refused naming the names.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch_exactness import border_input, rel_dev  # noqa: E402

from netmorph_core.torch import (  # noqa: E402
    MorphError,
    deepen,
    grow_kernel,
    morph_subnet,
    remap_optimizer,
    widen,
)

F64_TOL = 1e-12
SHAPE = (2, 6, 7, 7)


class Block(nn.Module):
    """x + pe(x), then a pointwise conv; ``pe`` is handed in (shared with the other blocks)."""

    def __init__(self, pe: nn.Module) -> None:
        super().__init__()
        self.pe = pe
        self.fc = nn.Conv2d(6, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(x + self.pe(x)))


class SharedEncoding(nn.Module):
    """One depthwise conv registered on the model and in both blocks (three names)."""

    def __init__(self) -> None:
        super().__init__()
        self.pe = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.blocks = nn.Sequential(Block(self.pe), Block(self.pe))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ReadsWeight(SharedEncoding):
    """The model also reads the shared layer's weight directly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) * self.pe.weight.sum()


OPERATIONS: dict[str, Callable[[nn.Module, str], tuple]] = {
    "deepen": lambda m, at: deepen(m, at, seed=0, input_shape=SHAPE),
    "grow_kernel": lambda m, at: grow_kernel(m, at, 5, input_shape=SHAPE),
    "morph_subnet": lambda m, at: morph_subnet(
        m, at, [(6, (1, 1)), (None, (3, 3))], seed=0, input_shape=SHAPE
    ),
}


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("at", ["pe", "blocks.1.pe"])
def test_a_shared_layer_is_replaced_under_every_name(operation: str, at: str) -> None:
    torch.manual_seed(0)
    model = SharedEncoding().double()
    before = state(model)
    x = border_input(SHAPE)
    child, report = OPERATIONS[operation](model, at)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert rel_dev(model, child, x) <= F64_TOL
    assert child.pe is child.blocks[0].pe is child.blocks[1].pe
    assert child.pe is not model.pe
    names = dict(child.named_parameters())
    assert set(report.param_sources) == set(names)
    parent_names = set(dict(model.named_parameters()))
    for source in report.param_sources.values():
        assert source.parent is None or source.parent in parent_names
        assert source.group_of is None or source.group_of in parent_names
    optimizer = torch.optim.Adam(model.parameters())
    model(x).sum().backward()
    optimizer.step()
    model.zero_grad()
    moved = remap_optimizer(optimizer, model, child, report=report)
    assert sum(len(g["params"]) for g in moved.param_groups) == len(names)


def test_the_parent_keeps_its_shared_layer() -> None:
    torch.manual_seed(1)
    model = SharedEncoding().double()
    deepen(model, "blocks.0.pe", seed=0, input_shape=SHAPE)
    assert model.pe is model.blocks[0].pe is model.blocks[1].pe
    assert isinstance(model.pe, nn.Conv2d)


def test_widen_of_a_shared_layer_is_refused_naming_its_names() -> None:
    model = SharedEncoding().double()
    with pytest.raises(MorphError, match=r"registered under several names \['pe', 'blocks.0.pe'"):
        widen(model, "blocks.0.pe", 12, seed=0, input_shape=SHAPE)


def test_a_parent_that_reads_the_shared_layer_refuses_it() -> None:
    model = ReadsWeight().double()
    with pytest.raises(MorphError, match=r"reads pe.weight"):
        deepen(model, "blocks.0.pe", seed=0, input_shape=SHAPE)
