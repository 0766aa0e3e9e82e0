"""GPTBigCode (StarCoder-1): every transformer operation on tiny float64 configs, multi-query
and multi-head.

Its attention splits the fused ``c_attn`` output at widths it records (``embed_dim`` for the
queries, ``kv_dim`` for the key and the value under multi-query attention, ``num_heads`` under
multi-head attention), so every operation that changes the heads or their head_dim must update
them. Each case checks the child's logits against the parent's (float64, 1e-9), that the
parent is untouched, and the reload: stock ``from_pretrained`` where the config describes the
child, else the stock load refuses the marked model_type and ``load_grown`` rebuilds it.
:data:`OUTCOMES` is the GPTBigCode table of ``docs/supported.md`` (``python
tests/test_torch_gpt_bigcode.py`` prints it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import doc_tables
import pytest
import torch
from thirdparty import import_transformers

from netmorph_core.torch import (
    MorphError,
    add_block,
    add_heads,
    grow_ffn,
    grow_width,
    load_grown,
    widen,
)

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

STOCK = "exact, stock reload"
MARKED = "exact, load_grown"
QKV = "transformer.h.0.attn.c_attn"
#: row of the table → multi_query.
VARIANTS = {"multi-query (StarCoder)": True, "multi-head": False}
Op = Callable[[torch.nn.Module], tuple[torch.nn.Module, object]]
#: operation → what it does to the parent.
OPS: dict[str, Op] = {
    "grow_ffn": lambda m: grow_ffn(m, 160),
    "add_heads": lambda m: add_heads(m, 6),
    "grow_width": lambda m: grow_width(m, 64),
    "grow_width (45)": lambda m: grow_width(m, 45),
    "grow_width → add_heads": lambda m: add_heads(grow_width(m, 64)[0], 8),
    "add_block": lambda m: add_block(m, 1),
    # multi-query: 4 query heads + k + v = 6 row blocks of head_dim 8 → 9; multi-head: 12 → 9
    "widen c_attn": lambda m: widen(m, QKV, 54 if m.config.multi_query else 108),
}
#: (variant, operation) → how the child reloads (every case is exact).
OUTCOMES: dict[tuple[str, str], str] = {
    **{(r, op): MARKED for r in VARIANTS for op in OPS},
    **{(r, op): STOCK for r in VARIANTS for op in ("grow_ffn", "grow_width → add_heads")},
    **{(r, "add_block"): STOCK for r in VARIANTS},
}


def _parent(multi_query: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPTBigCodeConfig(
        n_embd=32, n_layer=2, n_head=4, n_positions=32, vocab_size=100, multi_query=multi_query
    )
    model = transformers.GPTBigCodeForCausalLM(config).eval().double()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5) if ".ln_" in name and name.endswith("weight") else p.uniform_(
                    -0.2, 0.2
                )
    return model


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("op", list(OPS))
def test_operation(op: str, variant: str, tmp_path: Path) -> None:
    parent = _parent(VARIANTS[variant])
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child, report = OPS[op](parent)
    want = _logits(parent)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    child.save_pretrained(tmp_path)
    auto = transformers.AutoModelForCausalLM
    if OUTCOMES[variant, op] == STOCK:
        assert any("reloads this child exactly" in n for n in report.notes), report.notes
        reloaded = auto.from_pretrained(tmp_path, dtype=torch.float64).eval()
    else:
        assert any("cannot describe" in n for n in report.notes), report.notes
        with pytest.raises(ValueError, match="does not recognize this architecture"):
            auto.from_pretrained(tmp_path)
        reloaded = load_grown(tmp_path)
    torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=1e-9)
    after = parent.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def table() -> str:
    """The markdown variant × operation table of :data:`OUTCOMES`."""
    return doc_tables.table(
        "gpt_bigcode", "test_torch_gpt_bigcode.py", "GPTBigCode", VARIANTS, OPS, OUTCOMES
    )


def test_supported_table_matches() -> None:
    """docs/supported.md holds the table these tests assert, unchanged."""
    doc_tables.check("gpt_bigcode", "test_torch_gpt_bigcode.py", table())


def test_attention_records_follow_the_heads() -> None:
    """Multi-query add_heads 4 → 6: the query width grows, the single key/value head stays."""
    child, _ = add_heads(_parent(True), 6)
    attn = child.transformer.h[1].attn
    assert (attn.num_heads, attn.embed_dim, attn.kv_dim, attn.kv_heads) == (6, 48, 8, 1)
    assert attn.c_attn.out_features == 48 + 2 * 8


def test_multi_query_keeps_one_key_value_head() -> None:
    with pytest.raises(MorphError, match="holds one key/value head"):
        add_heads(_parent(True), 8, kv_heads=2)


def test_widen_to_a_width_that_is_not_whole_heads_says_what_to_ask() -> None:
    with pytest.raises(ValueError, match="widen it to a larger multiple of 6"):
        widen(_parent(True), QKV, 52)


if __name__ == "__main__":
    print(table())
