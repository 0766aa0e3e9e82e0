"""WavLM (post-LN and stable-LN): its attention hands the q/k/v/out weights to
``F.multi_head_attention_forward`` and gates a relative position bias per head
(:mod:`netmorph_core.torch.speech_wavlm`).

A tiny random float64 WavLMForCTC (d_model 32, 4 heads of 8, 2 blocks, 16 buckets; norm
gains, biases and the gate constants redrawn so that they matter) is grown and the child
computes the parent's logits (1e-9) on audio, the parent untouched, and the stock
``from_pretrained`` reloads the saved child exactly. grow_ffn, add_block (at 0: the new block
0 computes the position bias from a copy of the table; at 1, at the end) and grow_width to
2·d (the copies in blocks of one head's 8 coordinates) and 3·d (k = 3 coprime to the 4 heads:
the plain copies) are exact; add_heads, grow_width by 2 where the position convolution's
groups span two heads, and deepen_projection of the attention's output layer (whose weight
the attention reads) are refused by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from thirdparty import import_transformers

from netmorph_core.torch import (
    MorphError,
    add_block,
    add_heads,
    deepen_projection,
    grow_ffn,
    grow_width,
)
from netmorph_core.torch.speech_wavlm import MHA_METHOD
from netmorph_core.torch.transformer_layout import describe

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16, 16),
    conv_stride=(5, 2),
    conv_kernel=(10, 3),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    vocab_size=12,
    initializer_range=0.2,
    num_buckets=16,
    max_bucket_distance=20,
)
VARIANTS = {"post-LN": {}, "stable-LN": dict(do_stable_layer_norm=True)}
AUDIO_IN = torch.randn(2, 90, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
Op = Callable[[torch.nn.Module], tuple[torch.nn.Module, object]]
EXACT: dict[str, Op] = {
    "grow_ffn": lambda m: grow_ffn(m, 80),
    "add_block at 0": lambda m: add_block(m, 0),
    "add_block at 1": lambda m: add_block(m, 1),
    "add_block at the end": lambda m: add_block(m, 2),
    "grow_width x2": lambda m: grow_width(m, 64),
    "grow_width x3": lambda m: grow_width(m, 96),
}
REFUSED: dict[str, tuple[Op, str]] = {
    "add_heads": (
        lambda m: add_heads(m, 8),
        "computes its attention with F.multi_head_attention_forward, whose q/k/v weights are "
        "embed_dim × embed_dim (32 × 32)",
    ),
    "deepen_projection (out_proj)": (
        lambda m: deepen_projection(m, "wavlm.encoder.layers.0.attention.out_proj"),
        "reads out_proj.bias, out_proj.weight directly in its forward",
    ),
}


def _parent(variant: str, model: str = "WavLMForCTC") -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.WavLMConfig(**CONFIG | VARIANTS[variant])
    built = getattr(transformers, model)(config).eval().double()
    with torch.no_grad():
        for name, p in built.named_parameters():
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1 and name != "masked_spec_embed":
                p.uniform_(-0.2, 0.2)
            elif name.endswith("gru_rel_pos_const"):  # ones by default: one per head
                p.uniform_(0.5, 1.5)
    return built


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(AUDIO_IN).logits


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    after = model.state_dict()
    return set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("op", EXACT)
def test_exact_and_stock_reload(variant: str, op: str, tmp_path: Path) -> None:
    parent = _parent(variant)
    before, want = _state(parent), _logits(parent)
    child, report = EXACT[op](parent)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    assert _unchanged(before, parent)
    assert any("reloads this child exactly" in n for n in report.notes), report.notes
    child.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCTC.from_pretrained(tmp_path, dtype=torch.float64)
    assert type(reloaded) is type(parent)
    torch.testing.assert_close(_logits(reloaded.eval()), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("op", REFUSED)
def test_refused_by_name(variant: str, op: str) -> None:
    parent = _parent(variant)
    before = _state(parent)
    run, message = REFUSED[op]
    with pytest.raises(MorphError, match=re.escape(message)) as info:
        run(parent)
    assert "'wavlm.encoder.layers.0.attention' (WavLMAttention)" in str(info.value)
    assert _unchanged(before, parent)


def test_layout_is_traced_through_the_layers() -> None:
    """q/k/v/out_proj are found as the attention's layers (the gate layer left out); the trace
    leaves no replaced method behind."""
    parent = _parent("post-LN")
    layout = describe(parent)
    fam = layout.family
    assert layout.owner == "wavlm" and layout.d_model == 32 and layout.head == "lm_head"
    assert fam.qkv == tuple(f"attention.{n}_proj" for n in "qkv") and fam.o == "attention.out_proj"
    assert fam.ffn_in == ("feed_forward.intermediate_dense",) and fam.post_ln
    assert fam.stream_convs == ("encoder.pos_conv_embed.conv",)
    assert [(b.heads, b.head_dim) for b in layout.blocks] == [(4, 8), (4, 8)]
    assert all(MHA_METHOD not in vars(m) for m in parent.modules())


def test_width_places_heads_by_the_gate_slices() -> None:
    """k = 3: child head h plays parent head 3h mod 4 (the slice its gate reads first): the
    bias table and gate constants take columns [0, 3, 2, 1], the gate layer reads 24
    coordinates (zero after the first 8), embed_dim and head_dim follow, and the config
    describes the child (hidden 96, 4 heads, 12 position-convolution groups)."""
    parent = _parent("post-LN")
    child, _ = grow_width(parent, 96)
    old, new = (m.wavlm.encoder.layers[0].attention for m in (parent, child))
    order = [0, 3, 2, 1]
    assert torch.equal(new.rel_attn_embed.weight, old.rel_attn_embed.weight[:, order])
    assert torch.equal(new.gru_rel_pos_const, old.gru_rel_pos_const[:, order])
    gate = new.gru_rel_pos_linear.weight
    assert gate.shape == (8, 24) and torch.equal(gate[:, :8], old.gru_rel_pos_linear.weight)
    assert not gate[:, 8:].any()
    assert (new.embed_dim, new.head_dim, new.num_heads) == (96, 24, 4)
    config = child.config
    assert (config.hidden_size, config.num_attention_heads) == (96, 4)
    assert config.num_conv_pos_embedding_groups == 12


def test_width_by_two_repeats_head_blocks() -> None:
    """k = 2 shares a factor with the 4 heads: the stream holds each head's 8 coordinates
    twice in a row ([x₀; x₀; x₁; x₁; …]), so child head h reads two copies of parent head h's
    slice; the position convolution's 8 groups of 8 channels stay copies of the parent's."""
    parent = _parent("stable-LN")
    child, _ = grow_width(parent, 64)

    def blocks(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(4, 8, *t.shape[1:]).repeat_interleave(2, 0).reshape(64, *t.shape[1:])

    old, new = parent.wavlm, child.wavlm
    assert torch.equal(new.masked_spec_embed, blocks(old.masked_spec_embed))
    conv = new.encoder.pos_conv_embed.conv
    assert conv.groups == 8
    torch.testing.assert_close(conv.weight, blocks(old.encoder.pos_conv_embed.conv.weight))
    table = old.encoder.layers[0].attention.rel_attn_embed.weight
    assert torch.equal(new.encoder.layers[0].attention.rel_attn_embed.weight, table)
    norm = new.encoder.layers[1].final_layer_norm.weight
    assert torch.equal(norm, blocks(old.encoder.layers[1].final_layer_norm.weight))


def test_width_refused_where_groups_span_heads() -> None:
    """d 48, 4 heads of 12, 2 position-convolution groups of 24: blocks of 24 or 48
    coordinates hold 2 or 4 head slices, and k = 2 shares a factor with both; refused by name,
    the parent unchanged. k = 3 is exact."""
    torch.manual_seed(0)
    config = transformers.WavLMConfig(
        **CONFIG | dict(hidden_size=48, num_conv_pos_embedding_groups=2)
    )
    parent = transformers.WavLMForCTC(config).eval().double()
    before, want = _state(parent), _logits(parent)
    with pytest.raises(MorphError, match=re.escape("groups of 24 channels) dividing 48")):
        grow_width(parent, 96)
    assert _unchanged(before, parent)
    child, _ = grow_width(parent, 144)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)


def test_new_first_block_holds_the_only_table() -> None:
    """add_block at 0: the new block 0 computes the position bias from a copy of the table; the
    old block 0 (now 1) receives it and its own table is dropped, as the config builds it."""
    parent = _parent("stable-LN")
    child, _ = add_block(parent, 0)
    layers = child.wavlm.encoder.layers
    table = parent.wavlm.encoder.layers[0].attention.rel_attn_embed.weight
    assert torch.equal(layers[0].attention.rel_attn_embed.weight, table)
    assert [hasattr(b.attention, "rel_attn_embed") for b in layers] == [True, False, False]


def test_base_model() -> None:
    """WavLMModel: grow_ffn and add_block are exact on its last hidden state; grow_width
    returns the stream itself wider, [y; y; y]."""
    parent = _parent("post-LN", "WavLMModel")
    with torch.no_grad():
        want = parent(AUDIO_IN).last_hidden_state
        for op in (lambda m: grow_ffn(m, 80), lambda m: add_block(m, 0)):
            child, _ = op(parent)
            torch.testing.assert_close(child(AUDIO_IN).last_hidden_state, want, rtol=0, atol=1e-9)
        child, _ = grow_width(parent, 96)
        got = child(AUDIO_IN).last_hidden_state
    torch.testing.assert_close(got, torch.cat([want] * 3, dim=-1), rtol=0, atol=1e-9)
