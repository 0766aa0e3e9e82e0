"""add_block on ALBERT: a new layer in the shared group, run at every depth.

ALBERT runs its one layer group (``inner_group_num`` layers) at each of ``num_hidden_layers``
depths. ``add_block(model, at)`` inserts a layer into that group before layer ``at``
(``inner_group_num`` + 1, the depth stays); layer ``at`` − 1's last LayerNorm feeds only the new
layer at every depth, so the post-LN construction passes its output on at each. Each case
(d_model 32, 4 heads, 3 depths, norm gains and biases redrawn so that they matter) checks the
child's logits against the parent's (float64, 1e-9) on token ids, that the parent is untouched,
that the new layer runs at every depth and that the stock ``from_pretrained`` reloads it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from thirdparty import import_transformers
from torch import nn

from netmorph_core.torch import MorphError, add_block, grow_ffn
from netmorph_core.torch.transformer_postln import _deviation

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

LAYERS = "albert.encoder.albert_layer_groups.0.albert_layers"
DEPTHS = 3


def _parent(model: str = "AlbertForMaskedLM", **extra: object) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.AlbertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=DEPTHS,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        embedding_size=16,
        **extra,
    )
    parent = getattr(transformers, model)(config).eval().double()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in parent.named_parameters():
            if p.dim() == 1:
                gain = "norm" in name.lower() and name.endswith("weight")
                p.uniform_(0.5, 1.5) if gain else p.uniform_(-0.2, 0.2)
    return parent


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(seed))


def _out(model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        out = model(_ids() if ids is None else ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _calls(model: nn.Module, name: str) -> int:
    """How many times module ``name`` runs in one forward pass."""
    calls: list[int] = []
    handle = model.get_submodule(name).register_forward_hook(lambda *_: calls.append(1))
    _out(model)
    handle.remove()
    return len(calls)


CASES = [(1, 1), (2, 1), (2, 2)]


@pytest.mark.parametrize("method", ["netmorph", "zero"])
@pytest.mark.parametrize(("inner", "at"), CASES, ids=[f"inner{i}-at{a}" for i, a in CASES])
def test_new_shared_layer_is_exact_and_reloads(
    inner: int, at: int, method: str, tmp_path: Path
) -> None:
    parent = _parent(inner_group_num=inner)
    before = _state(parent)
    want = _out(parent)
    child, report = add_block(parent, at, method=method, seed=3)
    torch.testing.assert_close(_out(child), want, rtol=0, atol=1e-9)
    assert report.rel_dev_f64 <= 1e-9, report
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    assert len(child.get_submodule(LAYERS)) == inner + 1
    assert len(child.albert.encoder.albert_layer_groups) == 1
    assert child.config.inner_group_num == inner + 1
    assert child.config.num_hidden_layers == DEPTHS
    assert _calls(child, f"{LAYERS}.{at}") == DEPTHS
    assert any("runs at each of the 3 depths" in n for n in report.notes), report.notes
    # on other inputs too (the construction holds for every input, not the probe only)
    ids = torch.randint(0, 100, (3, 14), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(_out(child, ids), _out(parent, ids), rtol=0, atol=1e-9)
    child.save_pretrained(tmp_path)
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    reloaded = transformers.AlbertForMaskedLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert reloaded.config.inner_group_num == inner + 1
    torch.testing.assert_close(_out(reloaded.eval()), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("at", [1, 2])
def test_norm_before_the_new_layer_moves_its_affine(at: int) -> None:
    """Layer ``at`` − 1's last norm gets gain 1 and bias 0 (ALBERT's ε = 1e-12: c = 1), the new
    layer's attention norm gain 1 and bias 0, its last norm λ·γ_p and β_p (λ ≈ 1); the other
    layers are the parent's."""
    parent = _parent(inner_group_num=2)
    child, report = add_block(parent, at)
    old, new = parent.get_submodule(LAYERS), child.get_submodule(LAYERS)
    p_old, p_new = old[at - 1].full_layer_layer_norm, new[at - 1].full_layer_layer_norm
    for norm in (p_new, new[at].attention.LayerNorm):
        assert torch.all(norm.weight == 1) and not norm.bias.any()
    scale = _deviation(1.0, 1e-12, 1e-12, 1e-12)[0]
    last = new[at].full_layer_layer_norm.weight
    torch.testing.assert_close(last, p_old.weight * scale, rtol=1e-15, atol=0)
    assert torch.equal(new[at].full_layer_layer_norm.bias, p_old.bias)
    kept = [(i, i) for i in range(at)] + [(i, i + 1) for i in range(at, 2)]
    for i, j in kept:
        for (name, a), b in zip(old[i].state_dict().items(), new[j].state_dict().values()):
            if not (i == at - 1 and name.startswith("full_layer_layer_norm")):
                assert torch.equal(a, b), (i, j, name)
    source = report.param_sources[f"{LAYERS}.{at - 1}.full_layer_layer_norm.weight"]
    assert source.parent is None
    assert report.param_sources[f"{LAYERS}.{at}.ffn.weight"].parent is None


def test_base_model_and_classifier() -> None:
    """AlbertModel (the stream and the pooler) and AlbertForSequenceClassification."""
    for model in ("AlbertModel", "AlbertForSequenceClassification"):
        parent = _parent(model)
        child, _ = add_block(parent, 1)
        torch.testing.assert_close(_out(child), _out(parent), rtol=0, atol=1e-9)
        if model == "AlbertModel":
            with torch.no_grad():
                got, want = child(_ids()).pooler_output, parent(_ids()).pooler_output
            torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_grows_again_after_a_new_layer() -> None:
    """Two new layers, then grow_ffn of the whole group: still exact."""
    parent = _parent()
    child, _ = add_block(parent, 1)
    child, _ = add_block(child, 1)
    child, _ = grow_ffn(child, 96)
    assert child.config.inner_group_num == 3 and child.config.intermediate_size == 96
    torch.testing.assert_close(_out(child), _out(parent), rtol=0, atol=1e-9)


def test_float32_child_rounds_like_the_parent() -> None:
    """A float32 child against the float64 parent deviates by at most twice the float32
    parent's own rounding, on inputs other than the probe."""
    exact = _parent(inner_group_num=2)
    parent = _parent(inner_group_num=2).float()
    child, _ = add_block(parent, 1)
    ids = torch.randint(0, 100, (8, 12), generator=torch.Generator().manual_seed(2))
    want = _out(exact, ids)
    own = float((_out(parent, ids).double() - want).norm() / want.norm())
    got = float((_out(child, ids).double() - want).norm() / want.norm())
    assert 0 < own and got <= 2 * own, (got, own)


def test_at_zero_is_refused_by_name() -> None:
    """Layer 0 reads the embedding projection at depth 0 and the group's last norm after."""
    parent = _parent(inner_group_num=2)
    before = _state(parent)
    with pytest.raises(MorphError, match=re.escape("reads 'albert.encoder.embedding_hidden_ma")):
        add_block(parent, 0)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def test_several_groups_are_refused_by_name() -> None:
    parent = _parent(num_hidden_groups=3)
    before = _state(parent)
    with pytest.raises(MorphError, match=re.escape("has 3 layer groups in 'albert.encoder.albert")):
        add_block(parent, 1)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
