"""Blocks that normalise each branch's output before the residual sum, found by structure.

OLMo-2 computes h = x + N₁(attn(x)), y = h + N₂(mlp(h)) (no norm before either branch) with
q/k RMS norms over the whole projection; Gemma-2's sandwich blocks add norms before the
branches too. Each case grows a tiny float64 model (norm gains and biases redrawn so that they
matter; the Hugging Face RMSNorm, which rounds to float32, computed in the input's dtype),
checks the child's logits against the parent's (1e-9), that the parent is untouched, and that
``save_pretrained`` reloads it: with the stock ``from_pretrained`` where the config describes
the child, else the stock load refuses the marked model_type and ``load_grown`` rebuilds it.
:data:`OUTCOMES` is the table of ``docs/supported.md`` (``python
tests/test_torch_postnorm_branches.py`` prints it). A decoder with names no table knows and
LayerNorm or RMSNorm on its branches checks that the structure, not the names, decides.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import doc_tables
import pytest
import torch
from thirdparty import import_transformers
from torch import nn

from netmorph_core.torch import (
    MorphError,
    add_block,
    add_heads,
    deepen_projection,
    grow_ffn,
    grow_width,
    load_grown,
    pipeline,
)
from netmorph_core.torch.transformer_layout import describe

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

BASE = dict(
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    intermediate_size=64,
    vocab_size=100,
    max_position_embeddings=32,
)
#: model → (model class, config class, config arguments, block 0's output projection).
MODELS: dict[str, tuple[str, str, dict, str]] = {
    "OLMo-2": ("Olmo2ForCausalLM", "Olmo2Config", BASE, "model.layers.0.self_attn.o_proj"),
    "Gemma-2 (sandwich)": (
        "Gemma2ForCausalLM",
        "Gemma2Config",
        dict(BASE, head_dim=8),
        "model.layers.0.self_attn.o_proj",
    ),
    "EXAONE-4 (q/k norms per head, NoPE layers)": (
        "Exaone4ForCausalLM",
        "Exaone4Config",
        dict(BASE, sliding_window=4, layer_types=["sliding_attention", "full_attention"]),
        "model.layers.0.self_attn.o_proj",
    ),
}
#: Gemma-3's layout is Gemma-2's (per-head q/k norms, sliding-window layers); its stock load
#: builds the rotary tables in float32 even for a float64 model, so its reload is not compared
#: at 1e-9 (:func:`test_gemma3_operations_are_exact`).
GEMMA3 = (
    "Gemma3ForCausalLM",
    "Gemma3TextConfig",
    dict(BASE, head_dim=8, sliding_window=4),
    "model.layers.0.self_attn.o_proj",
)

Op = Callable[[nn.Module, str], tuple[nn.Module, object]]
OPS: dict[str, Op] = {
    "grow_ffn": lambda m, name: grow_ffn(m, 100),
    "add_heads": lambda m, name: add_heads(m, 8),
    "add_heads, new groups": lambda m, name: add_heads(m, 6, kv_heads=3),
    "grow_width": lambda m, name: grow_width(m, 45),
    "grow_width x2": lambda m, name: grow_width(m, 64),
    "add_block": lambda m, name: add_block(m, 1),
    "add_block (zero)": lambda m, name: add_block(m, 2, method="zero"),
    "deepen_projection": lambda m, name: deepen_projection(m, name),
}
STOCK = "exact, stock reload"
MARKED = "exact, load_grown"
#: (model, operation) → STOCK or MARKED. OLMo-2's joint q/k norms and every norm of a
#: non-multiple width get eps·H/H' (resp. eps·kd/D'), which its config cannot hold; a config
#: refuses 6 heads at width 32.
OUTCOMES: dict[tuple[str, str], str] = {
    **{(m, "grow_ffn"): STOCK for m in MODELS},
    **{(m, "add_heads"): MARKED for m in MODELS},
    **{(m, "add_heads, new groups"): MARKED for m in MODELS},
    **{(m, "grow_width"): MARKED for m in MODELS},
    **{(m, "grow_width x2"): STOCK for m in MODELS},
    **{(m, "add_block"): STOCK for m in MODELS},
    **{(m, "add_block (zero)"): STOCK for m in MODELS},
    **{(m, "deepen_projection"): MARKED for m in MODELS},
    ("Gemma-2 (sandwich)", "add_heads"): STOCK,
    ("EXAONE-4 (q/k norms per head, NoPE layers)", "add_heads"): STOCK,
    ("EXAONE-4 (q/k norms per head, NoPE layers)", "add_heads, new groups"): STOCK,
}


def _rms(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _offset_rms(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (1.0 + self.weight) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


@pytest.fixture
def exact_rmsnorm(monkeypatch: pytest.MonkeyPatch) -> None:
    """OLMo-2's, Gemma-2/3's and EXAONE-4's RMSNorm computed in the input's dtype (theirs round to
    float32)."""
    models = transformers.models
    monkeypatch.setattr(models.olmo2.modeling_olmo2.Olmo2RMSNorm, "forward", _rms)
    monkeypatch.setattr(models.gemma2.modeling_gemma2.Gemma2RMSNorm, "forward", _offset_rms)
    monkeypatch.setattr(models.gemma3.modeling_gemma3.Gemma3RMSNorm, "forward", _offset_rms)
    monkeypatch.setattr(models.exaone4.modeling_exaone4.Exaone4RMSNorm, "forward", _rms)


def _parent(model: str, dtype: torch.dtype = torch.float64) -> nn.Module:
    cls, config_cls, args, _ = GEMMA3 if model == "Gemma-3" else MODELS[model]
    torch.manual_seed(0)
    built = getattr(transformers, cls)(getattr(transformers, config_cls)(**args))
    built = built.eval().to(dtype)
    with torch.no_grad():  # non-trivial gains
        for name, p in built.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.2, 0.2)
    return built


IDS = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _unchanged(before: dict[str, torch.Tensor], model: nn.Module) -> bool:
    after = model.state_dict()
    return set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


CASES = [pytest.param(m, op, id=f"{m}-{op}") for m in MODELS for op in OPS]


@pytest.mark.parametrize(("model", "op"), CASES)
def test_operation_is_exact_and_reloads(
    model: str, op: str, tmp_path: Path, exact_rmsnorm: None
) -> None:
    parent = _parent(model)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    want = _logits(parent)
    child, report = OPS[op](parent, MODELS[model][3])
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    assert _unchanged(before, parent)
    child.save_pretrained(tmp_path)
    auto = transformers.AutoModelForCausalLM
    if OUTCOMES[model, op] == STOCK:
        assert any("reloads this child exactly" in n for n in report.notes), report.notes
        reloaded = auto.from_pretrained(tmp_path, dtype=torch.float64).eval()
    else:
        assert any("cannot describe" in n for n in report.notes), report.notes
        with pytest.raises(ValueError, match="does not recognize this architecture"):
            auto.from_pretrained(tmp_path)
        reloaded = load_grown(tmp_path)
    torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("op", ["add_heads", "grow_width", "add_block"])
def test_measured_one_module_at_a_time(
    model: str, op: str, monkeypatch: pytest.MonkeyPatch, exact_rmsnorm: None
) -> None:
    """The per-module float64 measurement (every model above the whole-copy limit) accepts
    the same exact children."""
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    parent = _parent(model)
    child, report = OPS[op](parent, MODELS[model][3])
    assert report.measured_by == pipeline.STREAMED
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


@pytest.mark.parametrize("op", OPS)
def test_gemma3_operations_are_exact(op: str, exact_rmsnorm: None) -> None:
    parent = _parent("Gemma-3")
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, _ = OPS[op](parent, GEMMA3[3])
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)
    assert _unchanged(before, parent)


def table() -> str:
    """The markdown model × operation table of :data:`OUTCOMES`."""
    return doc_tables.table(
        "branch-norms", "test_torch_postnorm_branches.py", "model", MODELS, OPS, OUTCOMES
    )


def test_branch_norms_table_matches() -> None:
    """docs/supported.md holds the table these tests assert, unchanged."""
    doc_tables.check("branch-norms", "test_torch_postnorm_branches.py", table())


def test_every_case_has_an_outcome() -> None:
    assert set(OUTCOMES) == {(m, op) for m in MODELS for op in OPS}


if __name__ == "__main__":
    print(table())


def test_layouts() -> None:
    """OLMo-2 is found by the trace: its branch norms are its only block norms; Gemma-2's
    sandwich keeps pre-norms and names the post-branch ones."""
    olmo = describe(_parent("OLMo-2")).family
    post = ("post_attention_layernorm", "post_feedforward_layernorm")
    assert (olmo.norms, olmo.branch_norms, olmo.parallel) == (post, post, False)
    for model in ("Gemma-2 (sandwich)", "Gemma-3"):
        gemma = describe(_parent(model)).family
        assert gemma.norms == ("input_layernorm", "pre_feedforward_layernorm")
        assert gemma.branch_norms == post


@pytest.mark.parametrize("kv_heads", [8, 4])
def test_multi_head_joint_norms_follow_their_own_projection(
    kv_heads: int, exact_rmsnorm: None
) -> None:
    """Under multi-head attention q_norm and k_norm are equally wide: each is grown with the
    projection the trace saw it read (8 heads, 8 or 4 key/value heads from 4/4)."""
    torch.manual_seed(0)
    config = transformers.Olmo2Config(**dict(BASE, num_key_value_heads=4))
    parent = transformers.Olmo2ForCausalLM(config).eval().double()
    with torch.no_grad():
        for p in parent.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    assert describe(parent).family.qk_norms == ("self_attn.q_norm", "self_attn.k_norm")
    child, _ = add_heads(parent, 8, kv_heads=kv_heads)
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)


@pytest.mark.parametrize("model", list(MODELS))
def test_new_block_branch_norms_carry_the_zero(model: str, exact_rmsnorm: None) -> None:
    """With "netmorph": zero effective gains (Gemma's (1 + w): w = −1), dense output projections;
    "zero": zero output projections, the neighbour's gains."""
    parent = _parent(model)
    child, report = add_block(parent, 1)
    new = child.model.layers[1]
    offset = 1.0 if model.startswith("Gemma") else 0.0
    for norm in (new.post_attention_layernorm, new.post_feedforward_layernorm):
        assert torch.equal(norm.weight + offset, torch.zeros_like(norm.weight))
    assert new.self_attn.o_proj.weight.all() and new.mlp.down_proj.weight.all()
    assert any("zero gain" in n for n in report.notes), report.notes
    child, _ = add_block(parent, 1, method="zero")
    new = child.model.layers[1]
    assert not new.self_attn.o_proj.weight.any() and not new.mlp.down_proj.weight.any()
    torch.testing.assert_close(
        new.post_attention_layernorm.weight, parent.model.layers[1].post_attention_layernorm.weight
    )


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("op", ["add_block", "grow_width", "add_heads"])
def test_float32_children_stay_within_twice_the_rounding(model: str, op: str) -> None:
    """The models' own float32 norms: the child is within twice the parent's float32 rounding
    (a new block's cancelling sets would leave rounding that its branch norm amplifies by
    1/√eps; the zero gain leaves none)."""
    parent = _parent(model, torch.float32)
    _, report = OPS[op](parent, MODELS[model][3])
    assert report.noise_ratio <= 2.0, report


class _Attention(nn.Module):
    """Multi-head attention with q and k normalised over all heads together."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, d // heads
        self.wq, self.wk, self.wv = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.q_norm, self.k_norm = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
        self.wo = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, -1, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_norm(self.wq(x))), heads(self.k_norm(self.wk(x))), heads(self.wv(x))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


class _Block(nn.Module):
    """h = x + n_a(attn(p_a(x))), y = h + n_f(mlp(p_f(h))) (``pre``: the sandwich's norms
    p_a, p_f before the branches, else none); ``one_norm``: no norm on the MLP's output."""

    def __init__(self, d: int, norm: type[nn.Module], one_norm: bool, pre: bool) -> None:
        super().__init__()
        self.p_a = norm(d, eps=1e-5) if pre else nn.Identity()
        self.mix = _Attention(d, 2)
        self.n_a = norm(d, eps=1e-5)
        self.p_f = norm(d, eps=1e-5) if pre else nn.Identity()
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.n_f = nn.Identity() if one_norm else norm(d, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.n_a(self.mix(self.p_a(x)))
        return h + self.n_f(self.down(torch.tanh(self.up(self.p_f(h)))))


class _Decoder(nn.Module):
    """Names no table knows: tok → stack → out_norm → lm_head."""

    def __init__(self, norm: type[nn.Module], one_norm: bool = False, pre: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tok = nn.Embedding(50, 16)
        self.stack = nn.ModuleList(_Block(16, norm, one_norm, pre) for _ in range(2))
        self.out_norm = norm(16, eps=1e-5)
        self.lm_head = nn.Linear(16, 50)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.2, 0.2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids)
        for block in self.stack:
            x = block(x)
        return self.lm_head(self.out_norm(x))


OWN_OPS: dict[str, Callable[[nn.Module], tuple[nn.Module, object]]] = {
    "grow_ffn": lambda m: grow_ffn(m, 40),
    "add_heads": lambda m: add_heads(m, 4),
    "grow_width x2": lambda m: grow_width(m, 32),
    "add_block": lambda m: add_block(m, 1),
    "add_block (zero)": lambda m: add_block(m, 2, method="zero"),
    "deepen_projection": lambda m: deepen_projection(m, "stack.0.mix.wo"),
}


@pytest.mark.parametrize("pre", [False, True], ids=["post", "sandwich"])
@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.RMSNorm], ids=["layernorm", "rmsnorm"])
@pytest.mark.parametrize("op", OWN_OPS)
def test_a_decoder_with_unknown_names_and_branch_norms(
    norm: type[nn.Module], op: str, pre: bool
) -> None:
    """The trace finds the branch norms (LayerNorm with bias or RMSNorm), the sandwich's norms
    before the branches and the joint q/k norms; every operation is exact in float64."""
    parent = _Decoder(norm, pre=pre).double().eval()
    family = describe(parent).family
    assert family.branch_norms == ("n_a", "n_f")
    assert family.norms == (("p_a", "p_f") if pre else ("n_a", "n_f"))
    assert family.qk_norms == ("mix.q_norm", "mix.k_norm")
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, _ = OWN_OPS[op](parent)
    with torch.no_grad():
        torch.testing.assert_close(child(ids), parent(ids), rtol=0, atol=1e-12)
    assert _unchanged(before, parent)


def test_rms_branch_norms_take_any_width() -> None:
    parent = _Decoder(nn.RMSNorm).double().eval()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(2))
    child, _ = grow_width(parent, 21)
    with torch.no_grad():
        torch.testing.assert_close(child(ids), parent(ids), rtol=0, atol=1e-12)


def test_layernorm_branch_norms_refuse_a_width_that_is_not_a_multiple() -> None:
    """The stream's extra coordinates carry its mean under LayerNorm, which the branches'
    readers (no norm before them) and the branch norm's output would not keep."""
    parent = _Decoder(nn.LayerNorm).double().eval()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(MorphError, match=re.escape("LayerNorm 'stack.0.n_a' normalises a branch")):
        grow_width(parent, 21)
    assert _unchanged(before, parent)


def test_a_norm_on_one_branch_only_is_refused_by_name() -> None:
    parent = _Decoder(nn.RMSNorm, one_norm=True).double().eval()
    with pytest.raises(MorphError, match=r"'stack\.0': the attention or feed-forward inputs"):
        grow_ffn(parent, 40)
