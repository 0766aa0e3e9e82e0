"""grow_kernel and widen of weight-normed layers (torch's ``parametrizations.weight_norm``,
W = g·v/‖v‖) keep the weight norm on the child (same dim, g and v shaped for the new layer).

Tiny models: a Conv1d stack whose middle convolutions are weight-normed (dim 0, 1 or 2; groups
1 or 4) before a weight-normed Linear head, and a weight-normed two-layer MLP. Checked: float64
children within 1e-9 of the parent on real forward passes, float32 children within twice the
parent's own float32 rounding (``noise_ratio``), the parent unchanged, every weight-normed
layer of the child still weight-normed with the parent's dim, new kernel taps exactly zero,
the report's parameter sources usable by remap_optimizer; Wav2Vec2's position convolution
(Conv1d, groups 4, dim=2) grows its kernel exactly and is refused by widen naming the
residual sum it writes.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils import parametrizations, parametrize  # noqa: E402
from torch_exactness import rel_dev  # noqa: E402

from netmorph_core.torch import MorphError, grow_kernel, remap_optimizer, widen  # noqa: E402
from netmorph_core.torch.weight_normed import is_weight_normed, norm_axis  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64_TOL = 1e-9
G, V = "parametrizations.weight.original0", "parametrizations.weight.original1"


class ConvNet(nn.Module):
    """pre → conv → post → mean over time → fc; conv, post and fc weight-normed."""

    def __init__(self, dim: int, conv_groups: int = 1, post_groups: int = 1) -> None:
        super().__init__()
        self.pre = nn.Conv1d(3, 8, 1)
        self.conv = nn.Conv1d(8, 8, 3, padding=1, groups=conv_groups)
        self.post = nn.Conv1d(8, 8, 3, padding=1, groups=post_groups)
        self.fc = nn.Linear(8, 5)
        for layer in (self.conv, self.post):
            parametrizations.weight_norm(layer, dim=dim)
        parametrizations.weight_norm(self.fc, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.post(torch.tanh(self.conv(torch.tanh(self.pre(x))))))
        return self.fc(h.mean(-1))


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 4)
        parametrizations.weight_norm(self.a, dim=dim)
        parametrizations.weight_norm(self.b, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in now)


def _check(parent: nn.Module, child: nn.Module, report: object, x: torch.Tensor) -> None:
    """Exact in float64 (on x and in the report), float32 within twice the parent's rounding;
    every weight-normed layer of the parent still is one in the child, same dim, g and v
    shaped for it; the report's sources carry an optimizer over."""
    if x.dtype == torch.float64:
        assert rel_dev(parent, child, x) <= F64_TOL and report.rel_dev_f64 <= F64_TOL
    else:
        assert report.noise_ratio <= 2, report
    for name, layer in parent.named_modules():
        if is_weight_normed(layer):
            new = child.get_submodule(name)
            assert parametrize.is_parametrized(new) and is_weight_normed(new)
            dim = norm_axis(layer)
            assert norm_axis(new) == dim
            v, g = new.get_parameter(V), new.get_parameter(G)
            assert v.shape == new.weight.shape
            shape = (
                () if dim is None else tuple(n if i == dim else 1 for i, n in enumerate(v.shape))
            )
            assert g.shape == shape
    optimizer = torch.optim.Adam(parent.parameters())
    parent(x).sum().backward()
    optimizer.step()
    remap_optimizer(optimizer, parent, child, report=report)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_grow_kernel_keeps_the_weight_norm(dim: int, groups: int, dtype: torch.dtype) -> None:
    """New taps are zero in W: v padded with zeros and g kept (dim 0, 1), or a new slice of
    the norm with g = 0 and v = 1 (dim 2, one norm per tap), whose old taps are bitwise W's."""
    torch.manual_seed(dim + groups)
    parent = ConvNet(dim, conv_groups=groups).to(dtype)
    x = torch.randn(8, 3, 32, dtype=dtype)
    before = _state(parent)
    child, report = grow_kernel(parent, "conv", 5, probe=x)
    assert _unchanged(parent, before)
    conv = child.conv
    assert conv.kernel_size == (5,) and conv.padding == (2,) and conv.groups == groups
    old, new = parent.conv.weight.detach(), conv.weight.detach()
    assert torch.equal(new[..., [0, 4]], torch.zeros_like(new[..., [0, 4]]))
    if dim == 2:
        assert torch.equal(new[..., 1:4], old)
        g, v = conv.get_parameter(G).detach(), conv.get_parameter(V).detach()
        assert torch.equal(g[..., [0, 4]], torch.zeros_like(g[..., [0, 4]]))
        assert torch.equal(v[..., [0, 4]], torch.ones_like(v[..., [0, 4]]))
    else:  # torch sums the longer slices in another order: the last bits may move
        eps = torch.finfo(dtype).eps
        assert ((new[..., 1:4] - old).abs() <= 4 * eps * old.abs()).all()
    assert {f"conv.{G}", f"conv.{V}"} <= set(report.param_sources)
    assert report.param_sources[f"conv.{V}"].parent == f"conv.{V}"
    assert any("conv: weight norm kept" in n for n in report.notes), report.notes
    _check(parent, child, report, x)
    child(x).sum().backward()  # training goes on through g and v
    assert conv.get_parameter(G).grad is not None and conv.get_parameter(V).grad is not None


@pytest.mark.parametrize("dim", [None, 2, 3])
def test_grow_kernel_of_a_conv2d_normed_along_a_kernel_axis(dim: int | None) -> None:
    """3×3 → 5×3 → 5×5 under one norm per kernel row (2) or column (3): the new rows (or
    columns) are new zero slices, the other axis's new taps zeros inside old slices; dim=None,
    one norm over the whole weight (g a scalar), keeps g."""
    torch.manual_seed(7)
    parent = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 2, 1))
    parametrizations.weight_norm(parent[0], dim=dim)
    parent = parent.double()
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    mid, _ = grow_kernel(parent, "0", (5, 3), probe=x)
    child, report = grow_kernel(mid, "0", 5, probe=x)
    assert child[0].kernel_size == (5, 5) and rel_dev(parent, child, x) <= F64_TOL
    new = child[0].weight.detach()
    assert torch.equal(new[:, :, [0, 4]], torch.zeros_like(new[:, :, [0, 4]]))
    assert torch.equal(new[..., [0, 4]], torch.zeros_like(new[..., [0, 4]]))
    _check(mid, child, report, x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_widen_weight_normed_producer(dim: int, groups: int, dtype: torch.dtype) -> None:
    """New output rows of post (groups 1 or 4) and new zero columns of the weight-normed
    Linear head: new slices (dim 0) or slices recomputing g around random rows (dim 1, 2)."""
    torch.manual_seed(10 + dim)
    parent = ConvNet(dim, post_groups=groups).to(dtype)
    x = torch.randn(8, 3, 32, dtype=dtype)
    before = _state(parent)
    child, report = widen(parent, "post", 16, probe=x, seed=0)
    assert _unchanged(parent, before)
    assert child.post.out_channels == 16 and child.fc.in_features == 16
    assert child.post.get_parameter(V).shape[0] == 16
    if dim == 0:  # the other dims recompute g on either side: "auto" counts parameters
        assert "the weight norm of 'fc' keeps its norms with zero columns" in report.notes[-1]
    _check(parent, child, report, x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("side", ["auto", "inner", "outer"])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_widen_into_weight_normed_consumer(
    dim: int, groups: int, side: str, dtype: torch.dtype
) -> None:
    """conv's new channels reach post, weight-normed, plain or grouped (whole new groups):
    zero or random new columns, new random filters of new groups."""
    torch.manual_seed(20 + dim)
    parent = ConvNet(dim, post_groups=groups).to(dtype)
    x = torch.randn(8, 3, 32, dtype=dtype)
    before = _state(parent)
    child, report = widen(parent, "conv", 16, probe=x, seed=0, zero_side=side)
    assert _unchanged(parent, before)
    post = child.post
    assert post.in_channels == 16 and post.groups == (1 if groups == 1 else 2 * groups)
    _check(parent, child, report, x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("dim", [0, 1])
def test_widen_weight_normed_linear(dim: int, dtype: torch.dtype) -> None:
    torch.manual_seed(30 + dim)
    parent = MLP(dim).to(dtype)
    x = torch.randn(32, 6, dtype=dtype)
    before = _state(parent)
    child, report = widen(parent, "a", 12, probe=x, seed=0)
    assert _unchanged(parent, before)
    assert child.a.get_parameter(V).shape == (12, 6) and child.b.get_parameter(V).shape == (4, 12)
    _check(parent, child, report, x)


def test_new_entries_in_a_slice_of_zero_gain_stay_zero() -> None:
    """g = 0 makes W zero on its slice: any non-zero new entry there would need g ≠ 0, which
    would move the old ones; the new entries stay zero (named in the notes), still exact."""
    torch.manual_seed(40)
    parent = MLP(1).double()  # a: one norm per input column: new rows land in every slice
    with torch.no_grad():
        parent.a.get_parameter(G)[0, 2] = 0.0
    x = torch.randn(5, 6, dtype=torch.float64)
    child, report = widen(parent, "a", 12, probe=x, seed=0, zero_side="outer")
    new_rows = report.param_sources[f"a.{V}"].index[0] < 0
    assert torch.equal(child.a.weight[new_rows, 2], torch.zeros(4, dtype=torch.float64))
    assert child.a.weight[new_rows][:, [0, 1, 3, 4, 5]].abs().min() > 0
    assert any("1 slices with gain 0" in n for n in report.notes), report.notes
    _check(parent, child, report, x)


class SizeBranch(MLP):
    """torch.fx cannot trace a branch on an input size: widen walks the torch.export graph,
    where a weight-normed layer reads ``aten._weight_norm(v, g, dim)`` as its weight."""

    def __init__(self, read: bool) -> None:
        super().__init__(0)
        self.read = read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(-1) > 5:
            x = 2 * x
        out = super().forward(x)
        return out + self.b.weight.sum() if self.read else out


def test_widen_in_an_exported_graph() -> None:
    """a and b found through their weight norms; a forward that reads b's weight outside its
    call is refused naming the read."""
    torch.manual_seed(50)
    parent = SizeBranch(read=False).double()
    x = torch.randn(32, 6, dtype=torch.float64)
    child, report = widen(parent, "a", 12, probe=x, seed=0)
    _check(parent, child, report, x)
    reads = SizeBranch(read=True).double()
    with pytest.raises(MorphError, match=r"reads 'b\.parametrizations\.weight\.original0' out"):
        widen(reads, "a", 12, probe=x, seed=0)


AUDIO = dict(  # bench/acceptance_speech.py's tiny config
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
    mask_time_length=2,
)
POS_CONV = "wav2vec2.encoder.pos_conv_embed.conv"


@pytest.fixture(scope="module")
def wav2vec2() -> nn.Module:
    from thirdparty import import_transformers

    try:
        transformers = import_transformers()
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.skip("transformers is not installed")
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(**AUDIO)
    return transformers.Wav2Vec2ForCTC(config).eval().double()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_wav2vec2_position_convolution(wav2vec2: nn.Module) -> None:
    """grow_kernel 16 → 18 of the grouped position convolution (one norm per tap, dim=2):
    exact, weight norm kept; widen of it is refused: it adds to the residual stream."""
    x = torch.randn(2, 90, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    before = _state(wav2vec2)
    child, report = grow_kernel(wav2vec2, POS_CONV, 18, probe=x)
    with torch.no_grad():
        want = wav2vec2(x).logits
        torch.testing.assert_close(child(x).logits, want, rtol=0, atol=1e-9)
    assert report.rel_dev_f64 <= F64_TOL
    assert _unchanged(wav2vec2, before)
    conv = child.get_submodule(POS_CONV)
    assert is_weight_normed(conv) and norm_axis(conv) == 2 and conv.kernel_size == (18,)
    assert conv.get_parameter(G).shape == (1, 1, 18) and conv.groups == 4
    with pytest.raises(MorphError, match=r"adds the widened channels to a tensor from "):
        widen(wav2vec2, POS_CONV, 48, probe=x)
    with pytest.raises(MorphError, match=r"residual stream grows with grow_width"):
        widen(wav2vec2, POS_CONV, 48, probe=x)
    assert _unchanged(wav2vec2, before)
