"""State-space (Mamba) language models: every growth operation on a tiny float64 config.

Each case grows a tiny random MambaForCausalLM, FalconMambaForCausalLM or Mamba2ForCausalLM
(d 32, 2 blocks, N = 4 states, vocabulary 100; norm gains, D and biases redrawn so that they
matter), checks
that the child computes the parent's logits (float64, 1e-9; float32 parents: within the
adapter's bound and twice the parent's own rounding), that the parent is untouched, and that
``save_pretrained`` reloads it: with the stock ``from_pretrained`` where the child's config
describes it, else the stock load refuses the marked model_type and ``load_grown`` rebuilds
it exactly. :data:`OUTCOMES` is the state-space table of ``docs/supported.md``
(``test_ssm_table_matches``; ``python tests/test_torch_ssm.py`` prints it).
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
    deepen,
    grow_ffn,
    grow_kernel,
    grow_width,
    load_grown,
    widen,
)
from netmorph_core.torch.ssm_layout import find_ssm

try:
    transformers = import_transformers()
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("transformers is not installed", allow_module_level=True)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

TINY = dict(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=100, expand=2)
#: model → (model class, config class, config arguments).
MODELS: dict[str, tuple[str, str, dict]] = {
    "Mamba": ("MambaForCausalLM", "MambaConfig", TINY),
    "Mamba (biases, untied head)": (
        "MambaForCausalLM",
        "MambaConfig",
        dict(TINY, use_bias=True, tie_word_embeddings=False, residual_in_fp32=False),
    ),
    "FalconMamba": ("FalconMambaForCausalLM", "FalconMambaConfig", TINY),
    "Mamba-2 (8 heads, 2 groups)": (
        "Mamba2ForCausalLM",
        "Mamba2Config",
        dict(TINY, num_heads=8, head_dim=8, n_groups=2, use_bias=True),
    ),
}
MAMBA2 = "Mamba-2 (8 heads, 2 groups)"
CONV = "backbone.layers.0.mixer.conv1d"


def _every_kernel(model: nn.Module, size: int) -> tuple[nn.Module, object]:
    child, _ = grow_kernel(model, CONV, size)
    return grow_kernel(child, "backbone.layers.1.mixer.conv1d", size)


Op = Callable[[nn.Module], tuple[nn.Module, object]]
OPS: dict[str, Op] = {
    "grow_ffn": lambda m: grow_ffn(m, 96),
    "grow_ffn (odd)": lambda m: grow_ffn(m, 67),
    "grow_ffn (one block)": lambda m: grow_ffn(m, 96, layers=0, method="zero"),
    "grow_width x2": lambda m: grow_width(m, 64),
    "grow_width": lambda m: grow_width(m, 48),
    "add_block": lambda m: add_block(m, 1),
    "add_block (float32)": lambda m: add_block(m, 1),
    "add_block (end, zero)": lambda m: add_block(m, 2, method="zero"),
    "grow_kernel": lambda m: grow_kernel(m, CONV, 6),
    "grow_kernel (every block)": lambda m: _every_kernel(m, 5),
    "widen in_proj": lambda m: widen(m, "backbone.layers.1.mixer.in_proj", 228),
    "widen conv1d (outer)": lambda m: widen(m, CONV, 120, zero_side="outer"),
    "add_heads": lambda m: add_heads(m, 12),
    "add_heads (float32)": lambda m: add_heads(m, 16),
    "add_heads (one block, zero)": lambda m: add_heads(m, 16, layers=1, method="zero"),
}
STOCK = "exact, stock reload"
MARKED = "exact, load_grown"
SAVE_WHOLE = "exact, save whole (torch.save)"
#: Cases run on a float32 parent (¹): Mamba's RMSNorm computes in float32 even in a float64
#: model, so a float64 child of a width that is not a multiple deviates by float32 rounding.
FLOAT32 = {(m, op) for m in MODELS for op in ("grow_width", "add_block (float32)")} | {
    (MAMBA2, "add_heads (float32)")
}
#: Models whose blocks round the stream to float32 (``residual_in_fp32``): a new block of a
#: float64 model does not (²), and its config cannot say so.
ROUNDING = ("Mamba", "FalconMamba", MAMBA2)
#: Operations that grow one block's inner width: the config has one value for every block.
ONE_BLOCK = ("grow_ffn (one block)", "widen in_proj", "widen conv1d (outer)")
HEADS = ("add_heads", "add_heads (float32)", "add_heads (one block, zero)")
OUTCOMES: dict[tuple[str, str], str] = {
    **{(m, op): STOCK for m in MODELS for op in OPS},
    **{(m, op): STOCK + " ¹" for m, op in FLOAT32},
    **{(m, op): MARKED + " ²" for m in ROUNDING for op in ("add_block", "add_block (end, zero)")},
    **{(m, op): MARKED for m in MODELS for op in ONE_BLOCK},
    **{(m, "grow_kernel"): MARKED for m in MODELS},
    **{(m, op): "refused: have no attention heads" for m in MODELS for op in HEADS},
    # FalconMamba's unused per-channel norm weights are unsaved buffers the config sizes
    **{("FalconMamba", op): SAVE_WHOLE for op in ONE_BLOCK},
    # Mamba-2 grows by whole groups of 32 channels (4 heads): 67 channels are not
    (MAMBA2, "grow_ffn (odd)"): "refused: grows exactly by whole groups only",
    (MAMBA2, "add_heads"): STOCK,
    (MAMBA2, "add_heads (float32)"): STOCK + " ¹",
    (MAMBA2, "add_heads (one block, zero)"): MARKED,
    # its config derives the inner width from hidden_size·expand = num_heads·head_dim
    (MAMBA2, "grow_width"): MARKED + " ¹",
}


def _parent(model: str, dtype: torch.dtype = torch.float64) -> nn.Module:
    model_name, config_name, args = MODELS[model]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**args)
    parent = getattr(transformers, model_name)(config).eval().to(dtype)
    with torch.no_grad():  # non-trivial norms, skips and biases
        for name, p in parent.named_parameters():
            if p.dim() == 1 and (name.endswith(".D") or "norm" in name):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1 and "dt_proj" not in name:
                p.uniform_(-0.2, 0.2)
    return parent


def _logits(model: nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


def _reload(expected: str, notes: tuple, path: Path, dtype: torch.dtype) -> nn.Module | None:
    """The saved child reloaded as ``expected`` says (None: the reload refuses it)."""
    if expected == SAVE_WHOLE:
        assert any("save it whole" in n for n in notes), notes
        with pytest.raises(MorphError, match="no config describes"):
            load_grown(path)
        return None
    if expected == STOCK:
        assert any("reloads this child exactly" in n for n in notes), notes
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    assert any("cannot describe" in n for n in notes), notes
    with pytest.raises(ValueError, match="does not recognize this architecture"):
        transformers.AutoModelForCausalLM.from_pretrained(path)
    return load_grown(path).to(dtype)


CASES = [pytest.param(m, op, id=f"{m}-{op}") for m in MODELS for op in OPS]


@pytest.mark.parametrize(("model", "op"), CASES)
def test_ssm_operation(model: str, op: str, tmp_path: Path) -> None:
    f32 = (model, op) in FLOAT32
    parent = _parent(model, torch.float32 if f32 else torch.float64)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    expected = OUTCOMES[model, op].removesuffix(" ¹").removesuffix(" ²")
    atol = 1e-5 if f32 else 1e-9
    if expected.startswith("refused: "):
        with pytest.raises(MorphError, match=re.escape(expected.removeprefix("refused: "))):
            OPS[op](parent)
    else:
        child, report = OPS[op](parent)
        want = _logits(parent)
        torch.testing.assert_close(_logits(child), want, rtol=0, atol=atol)
        if f32:  # within twice the parent's own float32 rounding
            assert report.noise_ratio <= 2.0, report
        child.save_pretrained(tmp_path)
        reloaded = _reload(expected, report.notes, tmp_path, parent.dtype)
        if reloaded is not None:
            torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=atol)
    after = parent.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def table() -> str:
    """The markdown model × operation table of :data:`OUTCOMES`."""
    return doc_tables.table("state-space", "test_torch_ssm.py", "model", MODELS, OPS, OUTCOMES)


def test_ssm_table_matches() -> None:
    """docs/supported.md holds the table these tests assert, unchanged."""
    doc_tables.check("state-space", "test_torch_ssm.py", table())


if __name__ == "__main__":
    print(table())


def test_new_channels_are_dense_and_cancel() -> None:
    """grow_ffn's new channels: equal input rows in pairs, out_proj columns C and −C, the
    parent's channels unchanged, the kernel's new taps at the past end zero."""
    parent = _parent("Mamba")
    child, report = grow_ffn(parent, 68)
    old, new = parent.backbone.layers[0].mixer, child.backbone.layers[0].mixer
    assert new.conv1d.weight.shape == (68, 1, 4) and new.conv1d.groups == 68
    assert torch.equal(new.in_proj.weight[:64], old.in_proj.weight[:64])  # x half
    assert torch.equal(new.in_proj.weight[68:132], old.in_proj.weight[64:])  # gate half
    assert torch.equal(new.in_proj.weight[64], new.in_proj.weight[65])
    assert torch.equal(new.out_proj.weight[:, 64], -new.out_proj.weight[:, 65])
    assert torch.equal(new.x_proj.weight[:, 66], -new.x_proj.weight[:, 67])
    assert bool(new.out_proj.weight[:, 64:].ne(0).all()) and report.new_nonzero_ratio > 0.9
    grown, _ = grow_kernel(parent, CONV, 7)
    conv = grown.get_submodule(CONV)
    assert conv.padding == (6,) and not bool(conv.weight[..., :3].any())
    assert torch.equal(conv.weight[..., 3:], parent.get_submodule(CONV).weight)


def test_added_block_renumbers_the_cache_layers() -> None:
    """The blocks after a new one move up one layer index (the cache is indexed by it), and
    generation with the cache gives the parent's tokens."""
    parent = _parent("Mamba")
    child, _ = add_block(parent, 0)
    assert [b.mixer.layer_idx for b in child.backbone.layers] == [0, 1, 2]
    ids = torch.randint(0, 100, (1, 5), generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(child.generate(ids, **kw), parent.generate(ids, **kw))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: grow_ffn(m, 64), ValueError, "must exceed the inner width 64"),
        (lambda m: grow_ffn(m, 80, layers=[0, 0]), ValueError, "distinct block indices"),
        (lambda m: grow_ffn(m, 80, method="copy"), ValueError, "method must be one of"),
        (lambda m: grow_width(m, 32), ValueError, "must exceed the current width 32"),
        (lambda m: add_block(m, 3), ValueError, "at must be a block index in [0, 2]"),
        (lambda m: grow_kernel(m, CONV, 4), ValueError, "must exceed the causal kernel's 4"),
        (lambda m: grow_kernel(m, CONV, 6, input_shape=(2, 8)), ValueError, "reads token ids"),
        (lambda m: widen(m, CONV.replace("conv1d", "in_proj"), 131), ValueError, "an even width"),
        (lambda m: widen(m, CONV, 80, zero_side="inner"), MorphError, "use 'auto' or 'outer'"),
        (lambda m: grow_ffn(m, 80, shared_width=8), ValueError, "no shared expert"),
        (
            lambda m: grow_width(m.backbone, 64, inplace=True),
            MorphError,
            "returns the residual stream itself, which the child returns wider",
        ),
        (lambda m: deepen(m, CONV), MorphError, "reads conv1d.weight in its forward"),
    ],
)
def test_bad_requests_are_refused_before_any_work(
    call: Op, error: type[Exception], message: str
) -> None:
    parent = _parent("Mamba")
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(error, match=re.escape(message)):
        call(parent)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


@pytest.mark.parametrize("width", [64, 45])
def test_a_backbone_returns_its_wider_stream(width: int, tmp_path: Path) -> None:
    """MambaModel returns the stream: the child returns [y; …; y; 0] (k copies, r zeros),
    and reloads so."""
    parent = _parent("Mamba").backbone
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    child, report = grow_width(parent, width)
    with torch.no_grad():
        y, got = parent(ids).last_hidden_state, child(ids).last_hidden_state
    copies, extra = divmod(width, y.shape[-1])
    want = torch.cat([y] * copies + [y.new_zeros((*y.shape[:-1], extra))], dim=-1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * y.abs().max())
    assert type(child) is type(parent) and child.config.hidden_size == width
    assert any("the child's is" in n for n in report.notes)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    child.save_pretrained(tmp_path)
    stock = any("reloads this child exactly" in n for n in report.notes)
    reloaded = type(parent).from_pretrained(tmp_path) if stock else load_grown(tmp_path)
    with torch.no_grad():
        again = reloaded.double().eval()(ids).last_hidden_state
    torch.testing.assert_close(again, want, rtol=0, atol=1e-6 * y.abs().max())


class _Hybrid(nn.Module):
    """A stack whose block 1 is an MLP block, not a state-space one."""

    def __init__(self) -> None:
        super().__init__()
        mamba = transformers.MambaForCausalLM(transformers.MambaConfig(**TINY))
        self.embed = mamba.backbone.embeddings
        self.layers = nn.ModuleList([mamba.backbone.layers[0], nn.Sequential(nn.Linear(32, 32))])
        self.lm_head = mamba.lm_head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for layer in self.layers:
            x = x + layer(x)
        return self.lm_head(x)


def test_a_hybrid_stack_goes_to_the_general_operations() -> None:
    """The state-space layout refuses a stack with other blocks by name; the operations then
    run the general implementation, which refuses it by its own rule."""
    with pytest.raises(MorphError, match=r"'layers\.1' holds 0 \(Linear\).*hybrid stack"):
        find_ssm(_Hybrid())
    with pytest.raises(MorphError, match="not a recognised transformer"):
        add_block(_Hybrid(), 1)


def test_inplace_grows_the_parent_itself() -> None:
    """inplace=True builds the child in the parent object (measured one block at a time)."""
    parent = _parent("Mamba")
    want = _logits(parent)
    child, report = grow_ffn(parent, 72, inplace=True)
    assert child is parent and report.measured_by == "float64 per module"
    assert parent.backbone.layers[1].mixer.conv1d.weight.shape == (72, 1, 4)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)


def test_a_per_channel_buffer_it_cannot_grow_is_refused_before_any_work() -> None:
    parent = _parent("Mamba")
    parent.backbone.layers[0].mixer.register_buffer("scale", torch.full((64,), 2.0))
    with pytest.raises(MorphError, match=r"mixer\.scale' is a buffer of one value per channel"):
        grow_ffn(parent, 80)


def test_new_groups_are_whole_and_cancel() -> None:
    """Mamba-2 grow_ffn 64 → 96 adds one whole group: the parent's z, x, B, C and Δ rows keep
    their places in their blocks, the new group's x rows are equal in pairs inside a head with
    out_proj columns C and −C, its B and C rows are new and dense, the norm's group size stays
    32, and the config describes the child."""
    parent = _parent(MAMBA2)
    child, report = grow_ffn(parent, 96)
    old, new = parent.backbone.layers[0].mixer, child.backbone.layers[0].mixer
    assert (new.n_groups, new.num_heads, new.head_dim, new.intermediate_size) == (3, 12, 8, 96)
    assert new.norm.group_size == 32 and new.conv1d.weight.shape == (120, 1, 4)
    assert new.in_proj.weight.shape == (96 + 120 + 12, 32)
    w, w0 = new.in_proj.weight, old.in_proj.weight
    # parent rows [z 0:64; x 64:128; B 128:136; C 136:144; Δ 144:152] → child blocks of 96, 96,
    # 12, 12, 12
    for start, parent_start, size in ((0, 0, 64), (96, 64, 64), (192, 128, 8), (204, 136, 8)):
        assert torch.equal(w[start : start + size], w0[parent_start : parent_start + size])
    assert torch.equal(w[216:224], w0[144:152])
    assert torch.equal(w[160], w[161]) and torch.equal(w[64], w[65])  # x and z of one set
    assert not torch.equal(w[160], w[162])
    assert bool(w[200:204].ne(0).all()) and bool(w[212:216].ne(0).all())  # new B, C rows
    assert torch.equal(new.out_proj.weight[:, 64], -new.out_proj.weight[:, 65])
    assert torch.equal(new.out_proj.weight[:, :64], old.out_proj.weight)
    assert bool(new.out_proj.weight[:, 64:].ne(0).all()) and report.new_nonzero_ratio > 0.9
    assert torch.equal(new.A_log[:8], old.A_log) and new.A_log.shape == (12,)
    config = child.config
    assert (config.n_groups, config.num_heads, config.expand) == (3, 12, 3)


def test_mamba2_groups_generate_the_parents_tokens_with_the_cache() -> None:
    """Generation runs the mixer's cached path (the convolution and scan states, sized from
    the grown tensors): a child with a new group in one block gives the parent's logits at
    every step."""
    parent = _parent(MAMBA2)
    child, _ = add_heads(parent, 16, layers=0)
    ids = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(2))
    kw = dict(
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        got, want = child.generate(ids, **kw), parent.generate(ids, **kw)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.logits, want.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_mamba2_width_the_config_cannot_describe_reloads_with_load_grown(
    tmp_path: Path,
) -> None:
    """Groups of 16 channels on a stream of 32: inner width 64 → 80 is not hidden_size·expand
    for an integer expand, so the config stays the parent's and is marked; load_grown rebuilds
    the child exactly."""
    torch.manual_seed(0)
    config = transformers.Mamba2Config(**dict(MODELS[MAMBA2][2], n_groups=4))
    parent = transformers.Mamba2ForCausalLM(config).eval().to(torch.float64)
    child, report = grow_ffn(parent, 80)
    assert child.backbone.layers[1].mixer.n_groups == 5
    assert any("expand (an integer) cannot describe it" in n for n in report.notes), report
    want = _logits(parent)
    torch.testing.assert_close(_logits(child), want, rtol=0, atol=1e-9)
    child.save_pretrained(tmp_path)
    reloaded = _reload(MARKED, report.notes, tmp_path, torch.float64)
    assert reloaded is not None and reloaded.backbone.layers[0].mixer.num_heads == 10
    torch.testing.assert_close(_logits(reloaded), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: grow_ffn(m, 64), ValueError, "width=64 must exceed the inner width 64"),
        (lambda m: grow_ffn(m, 112), MorphError, "nearest valid values are 96 (1 new group)"),
        (lambda m: grow_ffn(m, 80), MorphError, "nearest valid value is 96 (1 new group)"),
        (lambda m: add_heads(m, 8), ValueError, "heads=8 must exceed the head count 8"),
        (lambda m: add_heads(m, 10), MorphError, "each adding 4 heads"),
        (lambda m: add_heads(m, 12, kv_heads=4), ValueError, "leave kv_heads None"),
        (lambda m: add_heads(m, 12, method="copy"), ValueError, "method must be one of"),
        (lambda m: widen(m, CONV, 100), MorphError, "each adding 40 conv1d channels"),
        (
            lambda m: widen(m, CONV.replace("conv1d", "in_proj"), 156),
            MorphError,
            "nearest valid value is 228 (1 new group)",
        ),
        (lambda m: widen(m, CONV, 120, zero_side="inner"), MorphError, "use 'auto' or 'outer'"),
        (
            lambda m: widen(m, CONV.replace("conv1d", "dt_proj"), 80),
            MorphError,
            "a Mamba-2 mixer has no dt_proj",
        ),
    ],
)
def test_mamba2_requests_between_whole_groups_are_refused_before_any_work(
    call: Op, error: type[Exception], message: str
) -> None:
    parent = _parent(MAMBA2)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    with pytest.raises(error, match=re.escape(message)):
        call(parent)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def test_mamba2_groups_other_than_the_norms_are_refused() -> None:
    """A mixer whose n_groups (its B/C groups) differs from its norm's groups: whole groups of
    the norm are not whole B/C groups, so the request is refused by name before any work."""
    parent = _parent(MAMBA2)
    parent.backbone.layers[1].mixer.n_groups = 1
    with pytest.raises(MorphError, match=r"layers\.1\.mixer\.n_groups' is 1, not 2"):
        grow_ffn(parent, 96)


@pytest.mark.parametrize("op", ["grow_ffn", "grow_width", "add_block"])
def test_float32_mamba_measured_one_module_at_a_time(
    op: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Mamba past the whole-copy limit is measured in float64 one module at a time; its
    mixer reads ``dt_proj.weight`` directly, which computes in float64 with the mixer."""
    from netmorph_core.torch import pipeline

    monkeypatch.setattr(pipeline, "WHOLE_COPY_LIMIT", 0)
    parent = _parent("Mamba", torch.float32)
    grow = {
        "grow_ffn": lambda m: grow_ffn(m, 80),
        "grow_width": lambda m: grow_width(m, 64),
        "add_block": lambda m: add_block(m, 1),
    }[op]
    child, report = grow(parent)
    assert report.measured_by == "float64 per module" and report.noise_ratio <= 2.0
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = parent(ids).logits
        torch.testing.assert_close(child(ids).logits, want, rtol=0, atol=1e-5 * want.abs().max())


def test_only_children_whose_values_are_read_swap_with_their_parent() -> None:
    """The mixer computes with ``dt_proj.weight`` itself; the model only reads its head's
    dtype, so the head is not held in float64 for the whole forward."""
    from netmorph_core.torch.streamed import read_children

    parent = _parent("Mamba", torch.float32)
    mixer = parent.backbone.layers[0].mixer
    assert mixer.dt_proj in read_children(mixer) and mixer.out_proj in read_children(mixer)
    assert read_children(parent) == []
