"""Models that change themselves when they run come back unchanged.

A forward that grows a cache is undone after every run the adapter makes (tracing the parent,
measuring the child); a forward that replaces a submodule (BigBird's block-sparse attention,
swapped for full attention on short inputs) is refused by name, with the parent untouched.
"""

from __future__ import annotations

import pytest
import torch
from thirdparty import import_transformers
from torch import nn

from netmorph_core.torch import MorphError, add_heads, deepen, grow_ffn, widen
from netmorph_core.torch.forward_kept import kept

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Caching(nn.Module):
    """An MLP whose forward records the longest input it saw (a cache that grows)."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(6, 12), nn.Linear(12, 4)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = max(self.seen, x.shape[0])
        self.register_buffer("last", x.detach().clone(), persistent=False)
        return self.down(torch.relu(self.up(x)))


class _Switching(nn.Module):
    """An MLP whose forward replaces its activation on small batches (a mode switch)."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.act, self.down = nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < 8:
            self.act = nn.GELU()
        return self.down(self.act(self.up(x)))


def _probe() -> torch.Tensor:
    return torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_kept_restores_attributes_buffers_and_submodules() -> None:
    model = _Switching().double()
    act = model.act
    with pytest.raises(MorphError, match=r"replaces its own module 'act' \(ReLU → GELU\)"):
        with kept(model):
            model(_probe())
    assert model.act is act
    cache = _Caching().double()
    with kept(cache):
        cache(_probe())
    assert cache.seen == 0 and "last" not in cache._buffers and not hasattr(cache, "last")


@pytest.mark.parametrize("op", ["deepen", "widen"])
def test_a_growing_cache_is_undone_in_parent_and_child(op: str) -> None:
    torch.manual_seed(0)
    parent = _Caching().double()
    morph = {"deepen": lambda m: deepen(m, "up", probe=_probe()), "widen": None}[op]
    morph = morph or (lambda m: widen(m, "up", 16, probe=_probe()))
    child, report = morph(parent)
    assert report.rel_dev_f64 <= 1e-12
    for model in (parent, child):
        assert model.seen == 0 and not hasattr(model, "last")


def test_a_model_that_replaces_its_modules_is_refused_and_left_unchanged() -> None:
    torch.manual_seed(0)
    parent = _Switching().double()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(MorphError, match="replaces its own module 'act'"):
        widen(parent, "up", 16, probe=_probe())
    assert isinstance(parent.act, nn.ReLU)
    assert all(torch.equal(v, parent.state_dict()[k]) for k, v in before.items())


def _big_bird(attention_type: str) -> nn.Module:
    try:
        transformers = import_transformers()
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.skip("transformers is not installed")
    config = transformers.BigBirdConfig(
        hidden_size=32,
        num_attention_heads=4,
        num_hidden_layers=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
        attention_type=attention_type,
    )
    torch.manual_seed(0)
    return transformers.BigBirdForCausalLM(config).double().eval()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_big_bird_block_sparse_on_a_short_probe_is_refused_untouched() -> None:
    parent = _big_bird("block_sparse")
    attention = parent.bert.encoder.layer[0].attention.self
    with pytest.raises(MorphError, match="BigBirdBlockSparseAttention → BigBirdSelfAttention"):
        grow_ffn(parent, 96)
    assert parent.bert.encoder.layer[0].attention.self is attention
    assert parent.bert.attention_type == "block_sparse"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("op", ["grow_ffn", "add_heads"])
def test_big_bird_full_attention_grows_exactly(op: str) -> None:
    parent = _big_bird("original_full")
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    child, report = {
        "grow_ffn": lambda: grow_ffn(parent, 96),
        "add_heads": lambda: add_heads(parent, 8),
    }[op]()
    assert report.rel_dev_f64 <= 1e-12
    with torch.no_grad():
        torch.testing.assert_close(child(ids).logits, parent(ids).logits, rtol=0, atol=1e-12)


def test_a_lazy_module_not_yet_initialised_is_refused_before_it_runs() -> None:
    parent = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.LazyLinear(3))
    with pytest.raises(MorphError, match=r"2\.weight, 2\.bias are not initialised yet"):
        widen(parent, "0", 10, probe=torch.randn(2, 4))
    assert isinstance(parent[2], nn.LazyLinear) and parent[2].has_uninitialized_params()
    with pytest.raises(MorphError, match="not initialised yet"), kept(parent):
        parent(torch.randn(2, 4))
    assert parent[2].has_uninitialized_params()
