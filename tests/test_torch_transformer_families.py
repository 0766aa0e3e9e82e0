"""The decoder families found by structure: every operation on a tiny float64 config.

Each case grows a tiny random model (norm gains and biases redrawn so that they matter), checks
that the child computes the parent's logits (float64, 1e-9), that the parent is untouched, and
that ``save_pretrained`` reloads it: with the stock ``from_pretrained`` where the child's config
describes it, else the stock load refuses the marked model_type and ``load_grown`` rebuilds it
exactly. :data:`OUTCOMES` is the family × operation table of ``docs/supported.md``
(``test_supported_table_matches`` keeps the two the same; ``python
tests/test_torch_transformer_families.py`` prints the table).
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
from netmorph_core.torch.transformer import alibi_slopes
from netmorph_core.torch.transformer_layout import describe

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

SMALL = dict(vocab_size=100, max_position_embeddings=32)
#: family → (model class, config class, config arguments, block 0's output projection).
FAMILIES: dict[str, tuple[str, str, dict, str]] = {
    "Phi-3": (
        "Phi3ForCausalLM",
        "Phi3Config",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_hidden_layers=2,
            intermediate_size=64,
            pad_token_id=0,
            **SMALL,
        ),
        "model.layers.0.self_attn.o_proj",
    ),
    "GPT-NeoX": (
        "GPTNeoXForCausalLM",
        "GPTNeoXConfig",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=2,
            intermediate_size=64,
            **SMALL,
        ),
        "gpt_neox.layers.0.attention.dense",
    ),
    "GPT-NeoX (sequential)": (
        "GPTNeoXForCausalLM",
        "GPTNeoXConfig",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=2,
            intermediate_size=64,
            use_parallel_residual=False,
            **SMALL,
        ),
        "gpt_neox.layers.0.attention.dense",
    ),
    "Falcon (multi-query)": (
        "FalconForCausalLM",
        "FalconConfig",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=2,
            ffn_hidden_size=64,
            vocab_size=100,
        ),
        "transformer.h.0.self_attention.dense",
    ),
    "Falcon (new decoder)": (
        "FalconForCausalLM",
        "FalconConfig",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_kv_heads=2,
            num_hidden_layers=2,
            ffn_hidden_size=64,
            new_decoder_architecture=True,
            vocab_size=100,
        ),
        "transformer.h.0.self_attention.dense",
    ),
    "GPT-J": (
        "GPTJForCausalLM",
        "GPTJConfig",
        dict(
            n_embd=32, n_head=4, n_layer=2, n_inner=64, rotary_dim=4, vocab_size=100, n_positions=32
        ),
        "transformer.h.0.attn.out_proj",
    ),
    "GPT-Neo": (
        "GPTNeoForCausalLM",
        "GPTNeoConfig",
        dict(
            hidden_size=32,
            num_heads=4,
            num_layers=2,
            intermediate_size=64,
            attention_types=[[["global", "local"], 1]],
            window_size=4,
            **SMALL,
        ),
        "transformer.h.0.attn.attention.out_proj",
    ),
    "Starcoder2": (
        "Starcoder2ForCausalLM",
        "Starcoder2Config",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_hidden_layers=2,
            intermediate_size=64,
            **SMALL,
        ),
        "model.layers.0.self_attn.o_proj",
    ),
    "Bloom": (
        "BloomForCausalLM",
        "BloomConfig",
        dict(hidden_size=32, n_head=4, n_layer=2, vocab_size=100),
        "transformer.h.0.self_attention.dense",
    ),
    "Phi": (
        "PhiForCausalLM",
        "PhiConfig",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=2,
            intermediate_size=64,
            **SMALL,
        ),
        "model.layers.0.self_attn.dense",
    ),
}

Op = Callable[[torch.nn.Module, str], tuple[torch.nn.Module, object]]
#: operation → what it does to the parent (``name``: block 0's output projection).
OPS: dict[str, Op] = {
    "grow_ffn": lambda m, name: grow_ffn(m, 160),
    "add_heads": lambda m, name: add_heads(m, 8),
    "grow_width": lambda m, name: grow_width(m, 48),
    "grow_width → add_heads": lambda m, name: add_heads(grow_width(m, 64)[0], 8),
    "add_block": lambda m, name: add_block(m, 1),
    "deepen_projection": lambda m, name: deepen_projection(m, name),
}
STOCK = "exact, stock reload"
MARKED = "exact, load_grown"
#: Cases run on a float32 parent (¹): Phi-3's RMSNorm computes in float32 even in a float64
#: model, so a float64 child of a width that is not a multiple deviates by float32 rounding.
FLOAT32 = {("Phi-3", "grow_width")}
#: (family, operation) → STOCK, MARKED or "refused: <what the MorphError says>".
OUTCOMES: dict[tuple[str, str], str] = {
    **{(f, "grow_ffn"): STOCK for f in FAMILIES},
    **{(f, "add_heads"): MARKED for f in FAMILIES},
    **{(f, "grow_width"): MARKED for f in FAMILIES},
    **{(f, "grow_width → add_heads"): STOCK for f in FAMILIES},
    **{(f, "add_block"): STOCK for f in FAMILIES},
    **{(f, "deepen_projection"): MARKED for f in FAMILIES},
    ("Phi-3", "add_heads"): STOCK,
    ("Phi-3", "grow_width"): STOCK + " ¹",
    ("Starcoder2", "add_heads"): STOCK,
    ("Starcoder2", "grow_width"): STOCK,
    ("Phi", "add_heads"): STOCK,
    ("Phi", "grow_width"): STOCK,
    ("Bloom", "grow_ffn"): MARKED,
    ("Bloom", "grow_width → add_heads"): MARKED,
    ("Bloom", "grow_width"): "refused: writes the stream, whose extra coordinates",
    ("Bloom", "deepen_projection"): "refused: reads dense.weight in its forward",
}


def _parent(family: str, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    model_name, config_name, args, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**args)
    model = getattr(transformers, model_name)(config).eval().to(dtype)
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5) if "norm" in name and name.endswith("weight") else p.uniform_(
                    -0.2, 0.2
                )
    return model


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


CASES = [pytest.param(f, op, id=f"{f}-{op}") for f in FAMILIES for op in OPS]


@pytest.mark.parametrize(("family", "op"), CASES)
def test_family_operation(family: str, op: str, tmp_path: Path) -> None:
    f32 = (family, op) in FLOAT32
    parent = _parent(family, torch.float32 if f32 else torch.float64)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    expected = OUTCOMES[family, op].removesuffix(" ¹")
    if expected.startswith("refused: "):
        with pytest.raises(MorphError, match=re.escape(expected.removeprefix("refused: "))):
            OPS[op](parent, FAMILIES[family][3])
    else:
        child, report = OPS[op](parent, FAMILIES[family][3])
        want = _logits(parent)
        torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-5 if f32 else 1e-9)
        if f32:  # within twice the parent's own float32 rounding
            assert report.noise_ratio <= 2.0, report
        child.save_pretrained(tmp_path)
        auto = transformers.AutoModelForCausalLM
        if expected == STOCK:
            assert any("reloads this child exactly" in n for n in report.notes), report.notes
            reloaded = auto.from_pretrained(tmp_path, dtype=parent.dtype).eval()
        else:
            assert any("cannot describe" in n for n in report.notes), report.notes
            with pytest.raises(ValueError, match="does not recognize this architecture"):
                auto.from_pretrained(tmp_path)
            reloaded = load_grown(tmp_path)
        torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=1e-5 if f32 else 1e-9)
    after = parent.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def table() -> str:
    """The markdown family × operation table of :data:`OUTCOMES`."""
    return doc_tables.table(
        "families", "test_torch_transformer_families.py", "family", FAMILIES, OPS, OUTCOMES
    )


def test_supported_table_matches() -> None:
    """docs/supported.md holds the table these tests assert, unchanged."""
    doc_tables.check("families", "test_torch_transformer_families.py", table())


def test_every_case_has_an_outcome() -> None:
    assert set(OUTCOMES) == {(f, op) for f in FAMILIES for op in OPS}


if __name__ == "__main__":
    print(table())


@pytest.mark.parametrize(
    ("family", "grow", "message"),
    [
        ("Falcon (multi-query)", dict(kv_heads=2), "holds one key/value head"),
        ("GPT-NeoX", dict(kv_heads=4), "records no key/value head count"),
        ("Bloom", dict(layers=0), "ALiBi slopes are one set for every block"),
    ],
)
def test_heads_the_layout_cannot_hold_are_refused(family: str, grow: dict, message: str) -> None:
    wide, _ = grow_width(_parent(family), 64)
    with pytest.raises(MorphError, match=message):
        add_heads(wide, 8, **grow)


def test_alibi_heads_keep_their_slopes() -> None:
    """Bloom 4 → 8 heads: the parent's heads move to the positions of their slopes."""
    wide, _ = grow_width(_parent("Bloom"), 64)
    child, report = add_heads(wide, 8)
    assert any("ALiBi" in n for n in report.notes), report.notes
    q = wide.transformer.h[0].self_attention.query_key_value.weight.view(4, 3, 8, 64)
    q_child = child.transformer.h[0].self_attention.query_key_value.weight.view(8, 3, 8, 64)
    assert torch.equal(q_child[1::2], q)
    torch.testing.assert_close(_logits(child), _logits(wide), rtol=0, atol=1e-9)


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 5, 6, 8, 12, 16, 20, 24])
def test_alibi_slopes_are_the_ones_bloom_derives(heads: int) -> None:
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    mask = torch.ones(1, 2, dtype=torch.int64)
    theirs = build_alibi_tensor(mask, heads, torch.float64)[:, 0, 1]  # slope·position 1
    torch.testing.assert_close(torch.tensor(alibi_slopes(heads), dtype=torch.float64), theirs)


class _Attention(nn.Module):
    """Multi-head attention with one fused layer of rows [q_h; k_h; v_h] per head."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, d // heads
        self.mixer_in = nn.Linear(d, 3 * d)
        self.mixer_out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.mixer_in(x).view(b, t, self.num_heads, 3, self.head_dim).transpose(1, 2)
        q, k, v = qkv.unbind(3)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.mixer_out(y.transpose(1, 2).reshape(b, t, -1))


class _Block(nn.Module):
    """A parallel block: x + attn(n(x)) + ffn(n(x)) (``scale``: a layer scale on attn)."""

    def __init__(self, d: int, heads: int, twice: bool = False, scale: bool = False) -> None:
        super().__init__()
        self.n = nn.LayerNorm(d)
        self.mix = _Attention(d, heads)
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.twice = twice
        self.gamma = nn.Parameter(torch.full((d,), 0.5)) if scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.n(x)
        a = self.mix(h)
        if self.gamma is not None:
            a = self.gamma * a
        f = self.down(torch.tanh(self.up(h)))
        if self.twice:
            f = f + self.down(torch.tanh(self.up(h)))
        return x + a + f


class _Decoder(nn.Module):
    """A decoder with names no table knows: tok → stack → out_norm → lm_head."""

    def __init__(self, **block: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tok = nn.Embedding(50, 16)
        self.stack = nn.ModuleList(_Block(16, 2, **block) for _ in range(2))
        self.out_norm = nn.LayerNorm(16)
        self.lm_head = nn.Linear(16, 50)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids)
        for block in self.stack:
            x = block(x)
        return self.lm_head(self.out_norm(x))


NEW_FAMILY_OPS: dict[str, Callable[[nn.Module], tuple[nn.Module, object]]] = {
    "grow_ffn": lambda m: grow_ffn(m, 40),
    "add_heads": lambda m: add_heads(m, 5),
    "grow_width": lambda m: grow_width(m, 21),
    "add_block": lambda m: add_block(m, 2),
    "deepen_projection": lambda m: deepen_projection(m, "stack.0.mix.mixer_out"),
}


@pytest.mark.parametrize("op", NEW_FAMILY_OPS)
def test_a_new_family_following_a_known_pattern(op: str) -> None:
    """Names no table holds, a fused per-head q/k/v layer, a parallel block: every operation
    is exact (float64) without a line of family-specific code."""
    parent = _Decoder().double().eval()
    layout = describe(parent)
    assert (layout.family.qkv_layout, layout.family.parallel) == ("grouped", True)
    assert layout.family.final_norm == "out_norm"
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, _ = NEW_FAMILY_OPS[op](parent)
    with torch.no_grad():
        torch.testing.assert_close(child(ids), parent(ids), rtol=0, atol=1e-12)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (dict(scale=True), "layer scale"),
        (dict(twice=True), "runs 2 times"),
    ],
)
def test_a_block_not_understood_is_refused_by_name(block: dict, message: str) -> None:
    parent = _Decoder(**block).double().eval()
    with pytest.raises(MorphError, match=message) as err:
        grow_ffn(parent, 40)
    assert "stack.0" in str(err.value)


class _NeedsTwoInputs(_Decoder):
    """A stack that does not run on token ids alone (an encoder–decoder needs both sides)."""

    def forward(self, ids: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) + other


def test_a_model_that_does_not_run_on_token_ids_is_refused() -> None:
    parent = _NeedsTwoInputs().double().eval()
    with pytest.raises(MorphError, match=r"does not run on token ids.*cannot be traced"):
        grow_ffn(parent, 40)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("op", ["grow_width → add_heads", "add_block"])
def test_family_operation_measured_one_module_at_a_time(
    family: str, op: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-module float64 measurement (every model above the whole-copy limit) accepts
    the same exact children: block regions run on their captured inputs, ALiBi models whole."""
    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    parent = _parent(family)
    child, report = OPS[op](parent, FAMILIES[family][3])
    assert report.measured_by == pipeline.STREAMED
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-9)
