"""Transformer growth (netmorph_core.torch.transformer) on the project's Llama-style model.

Every case: the child's deviation from the parent measured here on our own token ids (float64:
≤ 1e-9 when the morph runs on a float64 model; float32: reported, ≤ 1e-5 relative), the parent
bitwise unchanged, and the new weights dense where the construction says so. The Hugging Face
models are in test_torch_transformer_hf.py.
"""

from __future__ import annotations

import pytest
import torch

from netmorph_core.torch import MorphError, remap_optimizer
from netmorph_core.torch.models import LlamaStyle, TransformerMLP
from netmorph_core.torch.transformer import (
    add_block,
    add_heads,
    deepen_projection,
    grow_ffn,
    grow_width,
)
from netmorph_core.torch.transformer_layout import describe

F64_TOL = 1e-9
F32_TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(dtype: torch.dtype = torch.float64, **kw: object) -> LlamaStyle:
    torch.manual_seed(0)
    return LlamaStyle(**kw).to(dtype).eval()


def _ids(vocab: int = 64, length: int = 7) -> torch.Tensor:
    return torch.randint(0, vocab, (3, length), generator=torch.Generator().manual_seed(1))


def _rel_dev(parent: torch.nn.Module, child: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        y, z = parent(ids), child(ids)
    return float((y - z).abs().max() / y.abs().max())


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == snapshot.keys() and all(
        torch.equal(state[k], snapshot[k]) for k in state
    )


OPS = {
    "ffn_pairs": lambda m: grow_ffn(m, 68),
    "ffn_odd": lambda m: grow_ffn(m, 67, layers=[1]),
    "ffn_zero": lambda m: grow_ffn(m, 70, method="zero"),
    "heads_gqa_pairs": lambda m: add_heads(m, 8),
    "heads_gqa_single": lambda m: add_heads(m, 6),
    "heads_new_groups": lambda m: add_heads(m, 9, kv_heads=3),
    "width_multiple": lambda m: grow_width(m, 64),
    "width_any": lambda m: grow_width(m, 45),
    "width_small": lambda m: grow_width(m, 33),
    "block_middle": lambda m: add_block(m, 1),
    "block_front": lambda m: add_block(m, 0),
    "block_end_zero": lambda m: add_block(m, 2, method="zero"),
    "deepen_q": lambda m: deepen_projection(m, "layers.0.self_attn.q_proj", width=40),
}


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("op", list(OPS))
def test_every_growth_preserves_the_function(op: str, tied: bool) -> None:
    ids = _ids()
    parent = _model(tie_embeddings=tied)
    before = _snapshot(parent)
    child, report = OPS[op](parent)
    assert _unchanged(parent, before)
    dev = _rel_dev(parent, child, ids)
    assert dev <= F64_TOL, f"{op}: float64 deviation {dev:.2e}"
    assert report.rel_dev_f64 <= F64_TOL
    assert report.params_after > report.params_before
    if tied:
        assert child.lm_head.weight is child.embed_tokens.weight
    parent32 = _model(torch.float32, tie_embeddings=tied)
    child32, report32 = OPS[op](parent32)
    dev32 = _rel_dev(parent32, child32, ids)
    print(f"{op} tied={tied}: float64 {dev:.1e}, float32 {dev32:.1e}")
    assert dev32 <= F32_TOL and report32.rel_dev <= F32_TOL


@pytest.mark.parametrize(
    ("heads", "kv", "dim", "op"),
    [
        (4, 4, 32, lambda m: add_heads(m, 6)),  # multi-head: new pairs share q, k and v rows
        (4, 4, 32, lambda m: add_block(m, 1)),
        (6, 2, 48, lambda m: add_block(m, 1)),  # 3 heads per group: a cancelling triple
        (3, 3, 24, lambda m: add_block(m, 1)),  # odd head count across groups
    ],
    ids=["mha_heads", "mha_block", "gqa_triples_block", "odd_mha_block"],
)
def test_head_layouts_cancel_with_dense_weights(heads: int, kv: int, dim: int, op: object) -> None:
    parent = _model(num_heads=heads, num_kv_heads=kv, dim=dim)
    child, report = op(parent)
    assert _rel_dev(parent, child, _ids()) <= F64_TOL
    assert report.new_nonzero_ratio == 1.0 and not report.notes


def test_single_head_block_gets_zero_output_columns() -> None:
    parent = _model(num_heads=1, num_kv_heads=1, dim=8)
    child, report = add_block(parent, 1)
    assert _rel_dev(parent, child, _ids()) <= F64_TOL
    assert torch.count_nonzero(child.layers[1].self_attn.o_proj.weight) == 0
    assert report.notes == ("1 heads have no partner in their group: zero output columns",)


def test_ffn_of_blocks_grown_apart() -> None:
    parent = _model()
    child, _ = grow_ffn(parent, 80, layers=[0])
    child, report = grow_ffn(child, 96)
    assert [b.mlp.down_proj.in_features for b in child.layers] == [96, 96]
    assert _rel_dev(parent, child, _ids()) <= F64_TOL and report.rel_dev_f64 <= F64_TOL


def test_grown_shapes_and_attributes() -> None:
    parent = _model()
    child, _ = add_heads(parent, 9, kv_heads=3)
    attn = child.layers[0].self_attn
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim) == (9, 3, 8)
    assert attn.q_proj.weight.shape == (72, 32) and attn.k_proj.weight.shape == (24, 32)
    assert attn.o_proj.in_features == 72
    child, _ = grow_width(parent, 45)
    assert child.embed_tokens.weight.shape == (64, 45) and child.lm_head.in_features == 45
    assert child.norm.eps == pytest.approx(1e-6 * 32 / 45)
    child, _ = add_block(parent, 1)
    assert len(child.layers) == 3
    assert describe(child).blocks[1].prefix == "layers.1"


def test_width_stream_is_copies_and_extra_coordinates() -> None:
    """RMSNorm: x̃ = [x; 0]; the extra coordinates of every writer are zero, the copies equal."""
    parent = _model()
    child, _ = grow_width(parent, 70)  # 2 copies of 32 and 6 extra coordinates
    e = child.embed_tokens.weight
    assert torch.equal(e[:, :32], parent.embed_tokens.weight)
    assert torch.equal(e[:, 32:64], parent.embed_tokens.weight)
    assert torch.count_nonzero(e[:, 64:]) == 0
    q = child.layers[0].self_attn.q_proj.weight
    w = parent.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(q[:, :32] + q[:, 32:64], w, rtol=0, atol=1e-12)
    assert not torch.allclose(q[:, :32], q[:, 32:64])  # symmetry broken


def test_netmorph_block_is_dense_and_cancels() -> None:
    parent = _model()
    child, report = add_block(parent, 1, seed=3)
    block = child.layers[1]
    for layer in (
        block.self_attn.q_proj,
        block.self_attn.k_proj,
        block.self_attn.v_proj,
        block.self_attn.o_proj,
        block.mlp.gate_proj,
        block.mlp.up_proj,
        block.mlp.down_proj,
    ):
        assert torch.count_nonzero(layer.weight) == layer.weight.numel()
    assert report.new_nonzero_ratio == 1.0
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    with torch.no_grad():
        branch = block.self_attn(block.input_layernorm(x))
        assert float(branch.abs().max()) < 1e-12 * float(x.abs().max()) + 1e-14
        assert float(block.mlp(x).abs().max()) < 1e-12
    zero_child, zero_report = add_block(parent, 1, method="zero")
    assert torch.count_nonzero(zero_child.layers[1].mlp.down_proj.weight) == 0
    assert zero_report.new_nonzero_ratio < 1.0


def test_llama_example_grows_width_heads_and_depth() -> None:
    """The README example: width 32 → 64, heads 4 → 8 (GQA 2 groups), a third block."""
    ids = _ids()
    parent = _model()
    child, r1 = grow_width(parent, 64)
    child, r2 = add_heads(child, 8, kv_heads=2)
    child, r3 = add_block(child, 2)
    child, r4 = grow_ffn(child, 128)
    assert _rel_dev(parent, child, ids) <= F64_TOL
    assert max(r.rel_dev_f64 for r in (r1, r2, r3, r4)) <= F64_TOL
    attn = child.layers[0].self_attn
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim, len(child.layers)) == (8, 2, 8, 3)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: add_heads(m, 5), MorphError, "heads=5 is not a multiple of kv_heads=2"),
        (lambda m: add_heads(m, 8, kv_heads=8), MorphError, "cannot keep"),
        (lambda m: add_heads(m, 4), ValueError, "heads=4 must exceed"),
        (lambda m: add_heads(m, 8, kv_heads=1), ValueError, "kv_heads=1 is fewer"),
        (lambda m: add_heads(m, 8, layers=[2]), ValueError, "layers must be block indices"),
        (lambda m: grow_ffn(m, 64), ValueError, "width=64 must exceed"),
        (lambda m: grow_ffn(m, 80, method="copy"), ValueError, "method must be one of"),
        (lambda m: grow_width(m, 32), ValueError, "d_model=32 must exceed"),
        (lambda m: grow_width(m, 40, noise=-1.0), ValueError, "noise must be"),
        (lambda m: add_block(m, 3), ValueError, r"at must be a block index in \[0, 2\]"),
        (
            lambda m: deepen_projection(m, "layers.0.self_attn.q_proj", width=16),
            ValueError,
            "width=16",
        ),
        (lambda m: deepen_projection(m, "norm"), TypeError, "expected Linear or Conv1D"),
        (lambda m: grow_ffn(TransformerMLP(), 80), MorphError, "not a recognised transformer"),
    ],
)
def test_bad_input_is_refused_by_name(call: object, error: type, match: str) -> None:
    parent = _model()
    before = _snapshot(parent)
    with pytest.raises(error, match=match):
        call(parent)
    assert _unchanged(parent, before)


def test_width_refuses_norms_it_cannot_rescale() -> None:
    """A width that is not a multiple rescales every gain and eps: a norm without a gain or
    with eps=None (dtype-dependent) is refused before any work."""
    no_gain = _model()
    no_gain.norm = torch.nn.RMSNorm(32, eps=1e-6, elementwise_affine=False, dtype=torch.float64)
    eps_none = _model()
    eps_none.layers[0].input_layernorm.eps = None
    for parent, match in ((no_gain, "'norm' has no gain"), (eps_none, "no float eps")):
        before = _snapshot(parent)
        with pytest.raises(MorphError, match=match):
            grow_width(parent, 40)
        assert _unchanged(parent, before)
    child, _ = grow_width(no_gain, 64)  # whole copies need no rescaling
    assert _rel_dev(no_gain, child, _ids()) <= F64_TOL


def _adam_state(model: torch.nn.Module, ids: torch.Tensor, steps: int = 3) -> torch.optim.Adam:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        model(ids).square().mean().backward()
        opt.step()
    return opt


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor) -> None:
    opt.zero_grad()
    model(ids).square().mean().backward()
    opt.step()


@pytest.mark.parametrize(
    ("op", "name", "axis"),
    [
        (lambda m: grow_ffn(m, 70), "layers.0.mlp.down_proj.weight", 1),
        (lambda m: add_heads(m, 8), "layers.1.self_attn.q_proj.weight", 0),
    ],
    ids=["ffn", "heads"],
)
def test_adam_moments_carried_and_one_step_matches(op: object, name: str, axis: int) -> None:
    """Old entries keep their Adam moments, new ones start at zero; the new units add zero to
    the output and to every old parameter's gradient, so one Adam step moves the old entries
    exactly as it moves the parent's."""
    ids = _ids()
    parent = _model()
    opt = _adam_state(parent, ids)
    child, report = op(parent)
    new_opt = remap_optimizer(opt, parent, child, report=report)
    for model in (parent, child):
        model.zero_grad()
        model(ids).square().mean().backward()
    index = torch.as_tensor(report.param_sources[name].index[axis])
    old = index >= 0
    grad_child = child.get_parameter(name).grad.index_select(axis, torch.nonzero(old).squeeze(1))
    grad_parent = parent.get_parameter(name).grad.index_select(axis, index[old])
    torch.testing.assert_close(grad_child, grad_parent, rtol=0, atol=1e-10)
    source = report.param_sources[name]
    index = torch.as_tensor(source.index[axis])
    old = index >= 0
    p_parent, p_child = parent.get_parameter(name), child.get_parameter(name)
    for key in ("exp_avg", "exp_avg_sq"):
        carried = new_opt.state[p_child][key].index_select(axis, torch.nonzero(old).squeeze(1))
        torch.testing.assert_close(carried, opt.state[p_parent][key].index_select(axis, index[old]))
        fresh = new_opt.state[p_child][key].index_select(axis, torch.nonzero(~old).squeeze(1))
        assert torch.count_nonzero(fresh) == 0
    _step(parent, opt, ids)
    _step(child, new_opt, ids)
    stepped = p_child.detach().index_select(axis, torch.nonzero(old).squeeze(1))
    torch.testing.assert_close(
        stepped, p_parent.detach().index_select(axis, index[old]), rtol=0, atol=1e-5
    )
    for pname, p in parent.named_parameters():
        if report.param_sources[pname].index is None:
            torch.testing.assert_close(child.get_parameter(pname), p, rtol=0, atol=1e-5)


def test_adam_state_follows_the_widened_stream() -> None:
    ids = _ids()
    parent = _model()
    opt = _adam_state(parent, ids)
    child, report = grow_width(parent, 70)
    new_opt = remap_optimizer(opt, parent, child, report=report)
    m_parent = opt.state[parent.embed_tokens.weight]["exp_avg"]
    m_child = new_opt.state[child.embed_tokens.weight]["exp_avg"]
    assert torch.equal(m_child[:, :32], m_parent) and torch.equal(m_child[:, 32:64], m_parent)
    assert torch.count_nonzero(m_child[:, 64:]) == 0
    _step(child, new_opt, ids)  # the carried state has the child's shapes
