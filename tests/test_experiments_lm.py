"""Experiment ``lm-growth``: corpus, FLOP accounting, growth exactness, and a tiny CLI run."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from netmorph_core.experiments import exp_lm_growth as lm  # noqa: E402
from netmorph_core.experiments.cli_commands import add_experiment_parser  # noqa: E402
from netmorph_core.experiments.lm_copy import (  # noqa: E402
    copy_blocks,
    copy_ffn,
    copy_heads,
    copy_width,
)
from netmorph_core.experiments.lm_corpus import (  # noqa: E402
    SEPARATOR,
    load_corpus,
    split_files,
    train_batch,
    val_windows,
)
from netmorph_core.experiments.lm_flops import train_step_flops  # noqa: E402
from netmorph_core.experiments.lm_models import LMShape, new_lm, shape_of  # noqa: E402
from netmorph_core.experiments.registry import EXPERIMENTS  # noqa: E402
from netmorph_core.torch.models import LlamaStyle  # noqa: E402

PARENT = LMShape(dim=16, layers=1, heads=1, head_dim=16, hidden=32)
CHILD = LMShape(dim=32, layers=2, heads=2, head_dim=16, hidden=64)
TINY = lm.LMGrowthConfig(
    PARENT, CHILD, 16, 4, 24, 0.25, 3e-3, 0.05, 0.1, 0.01, 4, 3, 8, 40_000, 4_000
)


def _loss_and_logits(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return lm.evaluate(model, x), model(x[:, :-1])


def _trained_like(shape: LMShape, seed: int) -> LlamaStyle:
    """A float64 model whose weights are far from the initialisation (not a trivial function)."""
    model = new_lm(shape, seed).double()
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.2)
    return model


# ---------------------------------------------------------------------------------------------
# Corpus


def _write_files(root: Path, sizes: dict[str, int]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        (root / name).write_bytes(bytes([ord(name[0])]) * size)


def test_split_is_by_sorted_file_name() -> None:
    names = [f"m{i:02d}.py" for i in range(17)][::-1]
    train, val = split_files(names)
    assert val == ["m07.py", "m15.py"]
    assert train == sorted(set(names) - set(val))


def test_corpus_streams_are_the_sorted_files_cut_at_the_budget(tmp_path: Path) -> None:
    sizes = {f"{c}.py": 10 for c in "abcdefghij"}
    _write_files(tmp_path, sizes)
    (tmp_path / "zz.txt").write_bytes(b"ignored")
    (tmp_path / "pkg.py").mkdir()
    corpus = load_corpus(25, 5, tmp_path)
    assert corpus.train_files == ("a.py", "b.py", "c.py")
    assert corpus.val_files == ("h.py",)
    expected = (b"a" * 10 + SEPARATOR + b"b" * 10 + SEPARATOR + b"c" * 10)[:25]
    assert bytes(corpus.train.numpy()) == expected
    assert bytes(corpus.val.numpy()) == b"h" * 5
    again = load_corpus(25, 5, tmp_path)
    assert torch.equal(again.train, corpus.train) and torch.equal(again.val, corpus.val)
    assert again.record()["sha256"] == corpus.record()["sha256"]


def test_corpus_refuses_a_budget_it_cannot_fill(tmp_path: Path) -> None:
    _write_files(tmp_path, {f"{c}.py": 10 for c in "abcdefgh"})
    with pytest.raises(RuntimeError, match="fewer than the 1000"):
        load_corpus(1000, 5, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(10, 5, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="train_bytes"):
        load_corpus(0, 5, tmp_path)


def test_stdlib_split_is_deterministic_and_disjoint() -> None:
    a = load_corpus(30_000, 5_000)
    b = load_corpus(30_000, 5_000)
    assert a.train_files == b.train_files and a.val_files == b.val_files
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert not set(a.train_files) & set(a.val_files)
    assert a.train.numel() == 30_000 and a.val.numel() == 5_000


def test_batches_depend_on_seed_and_step_only() -> None:
    stream = torch.arange(1000)  # each token is its offset
    one = train_batch(stream, 0, 3, 4, 8)
    assert one.shape == (4, 9) and one.dtype == torch.int64
    assert torch.equal(one, train_batch(stream, 0, 3, 4, 8))
    assert not torch.equal(one, train_batch(stream, 0, 4, 4, 8))
    assert ((one[:, 1:] - one[:, :-1]) == 1).all()
    val = val_windows(stream, 5, 9)
    assert val.shape == (5, 10)
    assert val[:, 0].tolist() == [0, 200, 400, 600, 800]
    with pytest.raises(ValueError, match="fewer than the 200"):
        val_windows(stream, 200, 9)


# ---------------------------------------------------------------------------------------------
# FLOPs


def test_step_flops_on_a_known_case() -> None:
    model = LlamaStyle(256, 32, 2, 2, 2, hidden=64)
    linear = 2 * (4 * 32 * 32 + 3 * 32 * 64) + 256 * 32
    attention = 2 * 4 * 16 * 2 * 16
    assert train_step_flops(model, 3, 16) == 3 * 3 * 16 * (2 * linear + attention)
    assert train_step_flops(model, 3, 16) == 8_847_360
    with pytest.raises(ValueError, match="batch"):
        train_step_flops(model, 0, 16)


def test_step_flops_match_torch_flop_counter() -> None:
    model = new_lm(CHILD, 0)
    x = torch.randint(0, 256, (3, 11))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        lm.lm_loss(model, x).backward()
    assert counter.get_total_flops() == train_step_flops(model, 3, 10)


# ---------------------------------------------------------------------------------------------
# Growth: every method is exact; the copy baseline is function-preserving and not trivial


@pytest.mark.parametrize("method", lm.GROWN)
def test_every_growth_method_keeps_the_parents_loss(method: str) -> None:
    parent = _trained_like(PARENT, 0)
    opt = lm.make_optimizer(parent, TINY)
    x = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(1))
    lm.lm_loss(parent, x).backward()
    opt.step()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    parent_loss, parent_logits = _loss_and_logits(parent, x)
    child, child_opt, steps = lm.GROWTHS[method](parent, opt, TINY, 0)
    assert shape_of(child) == CHILD
    assert sum(p.numel() for p in child.parameters()) == sum(
        p.numel() for p in new_lm(CHILD, 0).parameters()
    )
    child_loss, child_logits = _loss_and_logits(child, x)
    assert abs(child_loss - parent_loss) < 1e-12
    assert torch.allclose(child_logits, parent_logits, rtol=0, atol=1e-10)
    assert {id(p) for g in child_opt.param_groups for p in g["params"]} == {
        id(p) for p in child.parameters()
    }
    carried = any(child_opt.state.get(p) for p in child.parameters())
    assert carried == (method in ("netmorph", "zero")), method
    assert len(steps) == 4 if method == "copy" else 3 + CHILD.layers - PARENT.layers
    for k, v in parent.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_copy_steps_preserve_the_function_one_by_one() -> None:
    model = _trained_like(LMShape(16, 2, 2, 8, 24), 3)
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
        steps = [
            lambda m: copy_width(m, 48, noise=0.01, seed=0),
            lambda m: copy_heads(m, 5, noise=0.01, seed=0),
            lambda m: copy_ffn(m, 40, noise=0.01, seed=0),
            lambda m: copy_blocks(m, 3),
        ]
        for step in steps:
            model = step(model)
            assert torch.allclose(model(x), ref, rtol=0, atol=1e-11)
    assert shape_of(model) == LMShape(48, 3, 5, 8, 40)
    assert torch.count_nonzero(model.layers[1].self_attn.o_proj.weight) == 0
    assert torch.equal(model.layers[1].mlp.gate_proj.weight, model.layers[0].mlp.gate_proj.weight)


def test_copy_noise_breaks_the_symmetry_but_cancels() -> None:
    parent = _trained_like(PARENT, 1)
    child = copy_ffn(parent, 64, noise=0.01, seed=0)
    down_p, down_c = parent.layers[0].mlp.down_proj.weight, child.layers[0].mlp.down_proj.weight
    assert not torch.allclose(down_c[:, :32], down_c[:, 32:])
    assert torch.allclose(down_c[:, :32] + down_c[:, 32:], down_p, rtol=0, atol=1e-14)
    plain = copy_ffn(parent, 64, noise=0.0, seed=0)
    assert torch.equal(plain.layers[0].mlp.down_proj.weight[:, :32], down_p / 2)


def test_copy_steps_refuse_shapes_they_cannot_build() -> None:
    parent = new_lm(PARENT, 0)
    with pytest.raises(ValueError, match="multiple of the current width 16"):
        copy_width(parent, 24, noise=0.01, seed=0)
    with pytest.raises(ValueError, match="heads=1 must be an int above"):
        copy_heads(parent, 1, noise=0.01, seed=0)
    with pytest.raises(ValueError, match=r"layers=3 must be an int in \(1, 2\]"):
        copy_blocks(parent, 3)


# ---------------------------------------------------------------------------------------------
# Schedule and the compute-to-reach measure


def test_schedule_warms_up_then_decays_to_min_lr() -> None:
    assert lm.lr_at(TINY, 0.0) < lm.lr_at(TINY, 0.005) < TINY.lr
    assert lm.lr_at(TINY, TINY.warmup) == pytest.approx(TINY.lr)
    assert lm.lr_at(TINY, 1.0) == pytest.approx(TINY.lr * TINY.min_lr)


def test_flops_to_reach_interpolates_or_says_none() -> None:
    flops, loss = [0, 10, 20, 30], [5.0, 4.0, 3.0, 2.5]
    assert lm.flops_to_reach(flops, loss, 3.5) == pytest.approx(15.0)
    assert lm.flops_to_reach(flops, loss, 6.0) == 0.0
    assert lm.flops_to_reach(flops, loss, 2.0) is None


# ---------------------------------------------------------------------------------------------
# The whole experiment through the CLI, tiny


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lm")
    patch = pytest.MonkeyPatch()
    patch.setattr(lm, "config_for", lambda quick: TINY)
    parser = argparse.ArgumentParser()
    add_experiment_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["experiment", "lm-growth", "--seeds", "2", "--quick", "--quiet", "--out", str(out)]
    )
    try:
        assert args.func(args) == 0
    finally:
        patch.undo()
    return out


def test_registered() -> None:
    assert EXPERIMENTS["lm-growth"].module == "exp_lm_growth"
    assert not EXPERIMENTS["lm-growth"].bundled_data


def test_cli_writes_json_csv_png(cli_run: Path) -> None:
    for name in ("lm-growth.json", "lm-growth.csv", "summary.csv", "lm-growth.png"):
        assert (cli_run / name).stat().st_size > 0, name


def test_run_records_exact_growth_and_equal_compute(cli_run: Path) -> None:
    saved = json.loads((cli_run / "lm-growth.json").read_text())
    assert saved["claims"]["preserved_at_every_morph"]
    assert len(saved["per_seed"]) == 2
    for run in saved["per_seed"]:
        budget, child = run["budget"], run["step_flops"]["child"]
        assert budget == TINY.scratch_steps * child
        assert run["scratch"]["flops"][-1] == budget
        for method in lm.GROWN:
            rec = run[method]
            assert abs(rec["after_growth_delta"]) <= lm.LOSS_TOL
            assert rec["parent_loss"] == run["parent"]["loss"]
            assert budget - child < rec["flops"][-1] <= budget
            assert len(rec["first_steps"]) == TINY.spike_steps + 1
            assert rec["first_steps"][0] == rec["loss_after_growth"]
            assert rec["spike"] == max(rec["first_steps"][1:]) - rec["first_steps"][0]
            assert all(math.isfinite(v) for v in rec["loss"])
        small, grown = run["small"], run["netmorph"]
        before = grown["flops"].index(run["parent"]["flops"]) + 1
        assert small["flops"][:before] == grown["flops"][:before]
        assert small["loss"][:before] == grown["loss"][:before]
        assert budget - run["step_flops"]["parent"] < small["flops"][-1] <= budget
    rows = {r["method"]: r for r in saved["summary"]}
    assert set(rows) == set(lm.METHODS)
    assert rows["scratch"]["gap_to_scratch_mean"] == 0.0
