"""Language-model growth: does growing a trained small transformer save compute over training
the large one from scratch, and how does netmorph's growth compare with the field's baselines?

Corpus: the Python standard library's sources, byte-level (:mod:`.lm_corpus`; ``--data-dir``:
another directory of ``*.py`` files). Models: :mod:`.lm_models`. FLOPs: :mod:`.lm_flops`.

Protocol per seed. The budget B is ``scratch_steps`` training steps of the large model.

- ``scratch``: the large model trained for B.
- The parent (the small model) trains for ``parent_fraction``·B FLOPs, then grows — width,
  then heads, then feed-forward units, then depth (a new block after each of the first blocks)
  — and the child trains for the rest of B (whole steps; never more than B):

  - ``netmorph``: grow_width, add_heads / grow_ffn / add_block with ``method="netmorph"``
    (dense new weights in cancelling sets); the optimizer state carried by remap_optimizer;
  - ``netmorph-fresh``: the same child, a new optimizer;
  - ``zero``: grow_width, then ``method="zero"`` (zero output projections, LLaMA-Pro-like);
    the optimizer state carried by remap_optimizer;
  - ``copy``: the baseline of :mod:`.lm_copy` (Net2Net/HyperCloning units, LLaMA-Pro copied
    blocks), a new optimizer (its parameters have no morph report to carry state with).

- ``small``: the reference without growth, the parent trained on for all of B.

Every run uses AdamW with one schedule over the fraction f of B spent: linear warm-up to
``lr`` over ``warmup``, then cosine decay to ``min_lr``·``lr`` at f = 1. The batches of
global step t are the same for every method of a seed. Validation loss (nats per byte) is
measured at every ``1/evals`` of B, at the end, and after each of the first
``spike_steps`` steps of the child.

Reported per method (mean ± std over seeds): the final validation loss; the loss right after
growth minus the parent's (it must be ~0: the run stops with RuntimeError otherwise); the
loss spike (highest loss in the first steps minus the loss at growth); and the percentage of
B at which the method's validation loss first reaches the scratch model's final loss
(linear interpolation between evaluations; "not reached" within B).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..torch import add_block, add_heads, grow_ffn, grow_width, remap_optimizer
from ..torch.models import LlamaStyle
from .lm_copy import copy_blocks, copy_ffn, copy_heads, copy_width
from .lm_corpus import VOCAB, Corpus, load_corpus, train_batch, val_windows
from .lm_flops import train_step_flops
from .lm_models import LMShape, new_lm
from .options import RunOptions
from .plots import Panel, Series, line_panels
from .results import curve_stats, mean_std, table, write_results
from .train import exact_float32, resolve_device

NAME = "lm-growth"
GROWN = ("netmorph", "netmorph-fresh", "zero", "copy")
METHODS = ("scratch", "small", *GROWN)
LABELS = {
    "scratch": "scratch (large model from the start)",
    "small": "reference: the parent trained on, no growth",
    "netmorph": "netmorph, optimizer carried",
    "netmorph-fresh": "netmorph, fresh optimizer",
    "zero": 'zero-init (method="zero"), optimizer carried',
    "copy": "baseline: copied units/blocks, fresh optimizer",
}
#: One colour per method in both panels of the plot.
COLORS = dict(
    zip(METHODS, ("tab:blue", "tab:gray", "tab:orange", "tab:green", "tab:red", "tab:purple"))
)
#: |loss(child) − loss(parent)| allowed right after growth (float32 losses of a few nats).
LOSS_TOL = 1e-4
EVAL_CHUNK = 16
CLIP = 1.0
BETAS = (0.9, 0.95)


@dataclass(frozen=True)
class LMGrowthConfig:
    """Shapes, the budget (``scratch_steps`` steps of the child on ``batch`` × ``seq_len``
    bytes), the parent's share of it, the schedule and the measurement points; ``noise``: the
    copy baseline's symmetry-breaking noise (relative, as grow_width's default)."""

    parent: LMShape
    child: LMShape
    seq_len: int
    batch: int
    scratch_steps: int
    parent_fraction: float
    lr: float
    warmup: float
    min_lr: float
    weight_decay: float
    evals: int
    spike_steps: int
    val_windows: int
    train_bytes: int
    val_bytes: int
    noise: float = 0.01


def config_for(quick: bool) -> LMGrowthConfig:
    """The full or the quick configuration: d 32 × 2 blocks × 1 head × 96 hidden units grows
    to d 64 × 4 blocks × 2 heads × 192 units (head_dim 32), each dimension doubled."""
    parent = LMShape(dim=32, layers=2, heads=1, head_dim=32, hidden=96)
    child = LMShape(dim=64, layers=4, heads=2, head_dim=32, hidden=192)
    if quick:
        return LMGrowthConfig(
            parent, child, 64, 8, 300, 0.25, 3e-3, 0.05, 0.1, 0.01, 12, 5, 32, 1_000_000, 100_000
        )
    return LMGrowthConfig(
        parent, child, 128, 16, 600, 0.25, 3e-3, 0.05, 0.1, 0.01, 24, 10, 64, 3_000_000, 200_000
    )


def lr_at(cfg: LMGrowthConfig, fraction: float) -> float:
    """The learning rate when ``fraction`` of the budget is spent (the warm-up starts at
    lr/(warmup·scratch_steps), not 0)."""
    if fraction < cfg.warmup:
        return cfg.lr * min(1.0, (fraction + 1.0 / cfg.scratch_steps) / cfg.warmup)
    progress = min(1.0, (fraction - cfg.warmup) / (1.0 - cfg.warmup))
    cosine = 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * progress)).item())
    return cfg.lr * (cfg.min_lr + (1.0 - cfg.min_lr) * cosine)


def make_optimizer(model: nn.Module, cfg: LMGrowthConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=BETAS, weight_decay=cfg.weight_decay
    )


def lm_loss(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy of ``windows`` (N, L + 1)."""
    logits = model(windows[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), windows[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, val: torch.Tensor) -> float:
    """Validation loss (nats per byte) over every window, eval mode; RuntimeError if not
    finite."""
    was_training = model.training
    model.eval()
    try:
        total = sum(
            float(lm_loss(model, val[i : i + EVAL_CHUNK])) * len(val[i : i + EVAL_CHUNK])
            for i in range(0, len(val), EVAL_CHUNK)
        )
    finally:
        model.train(was_training)
    loss = total / len(val)
    if not loss == loss or loss in (float("inf"), float("-inf")):
        raise RuntimeError(f"validation loss is not finite ({loss})")
    return loss


@dataclass
class Run:
    """One training run's progress: global step, FLOPs spent (int), and its evaluations."""

    budget: int
    evals: int
    step: int = 0
    spent: int = 0
    flops: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    spike: list[float] = field(default_factory=list)

    def record(self, loss: float) -> None:
        self.flops.append(self.spent)
        self.loss.append(loss)

    def due(self) -> bool:
        """Whether the next of the ``evals`` evenly spaced points of the budget is passed."""
        k = len(self.flops)
        return self.spent * self.evals >= k * self.budget


@dataclass(frozen=True)
class Context:
    """What every training phase of one seed shares."""

    cfg: LMGrowthConfig
    corpus: Corpus
    val: torch.Tensor
    seed: int
    device: torch.device
    quiet: bool


def train_phase(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    run: Run,
    steps: int,
    step_flops: int,
    ctx: Context,
    desc: str,
    spike_steps: int = 0,
) -> None:
    """``steps`` AdamW steps of ``model``, evaluating when due, after each of the first
    ``spike_steps`` steps (into ``run.spike``) and at the end."""
    cfg = ctx.cfg
    bar = tqdm(range(steps), desc=desc, disable=ctx.quiet, leave=False, unit="step")
    for i in bar:
        lr = lr_at(cfg, run.spent / run.budget)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = train_batch(ctx.corpus.train, ctx.seed, run.step, cfg.batch, cfg.seq_len)
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = lm_loss(model, batch.to(ctx.device))
        if not torch.isfinite(loss):
            raise RuntimeError(f"{desc}: training loss is not finite at step {run.step}")
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        run.step += 1
        run.spent += step_flops
        if i < spike_steps:
            run.spike.append(evaluate(model, ctx.val))
        if run.due():
            run.record(evaluate(model, ctx.val))
            bar.set_postfix(val=f"{run.loss[-1]:.3f}")
    bar.close()
    if run.flops[-1] != run.spent:
        run.record(evaluate(model, ctx.val))


Growth = Callable[[LlamaStyle, torch.optim.Optimizer, LMGrowthConfig, int], tuple]


def _netmorph_ops(cfg: LMGrowthConfig, method: str, seed: int) -> list[Callable]:
    c = cfg.child
    ops: list[Callable] = [
        lambda m: grow_width(m, c.dim, seed=seed),
        lambda m: add_heads(m, c.heads, method=method, seed=seed),
        lambda m: grow_ffn(m, c.hidden, method=method, seed=seed),
    ]
    for i in range(c.layers - cfg.parent.layers):
        ops.append(lambda m, at=2 * i + 1: add_block(m, at, method=method, seed=seed))
    return ops


def grow_library(
    method: str, carry: bool
) -> Callable[[LlamaStyle, torch.optim.Optimizer, LMGrowthConfig, int], tuple]:
    """netmorph's own operations with ``method``; the optimizer carried by remap_optimizer
    through every step when ``carry``, else a fresh one. Returns (child, optimizer, per-step
    records)."""

    def grow(parent: LlamaStyle, opt: torch.optim.Optimizer, cfg: LMGrowthConfig, seed: int):
        model, steps = parent, []
        for op in _netmorph_ops(cfg, method, seed):
            child, report = op(model)
            if carry:
                opt = remap_optimizer(opt, model, child, report=report)
            steps.append(
                {
                    "operation": report.operation,
                    "rel_dev_f64": report.rel_dev_f64,
                    "rel_dev": report.rel_dev,
                    "new_nonzero_ratio": report.new_nonzero_ratio,
                    "params_after": report.params_after,
                    "notes": list(report.notes),
                }
            )
            model = child
        return model, opt if carry else make_optimizer(model, cfg), steps

    return grow


def grow_copy(parent: LlamaStyle, opt: torch.optim.Optimizer, cfg: LMGrowthConfig, seed: int):
    """The copy baseline (:mod:`.lm_copy`) with a fresh optimizer."""
    c = cfg.child
    model = copy_width(parent, c.dim, noise=cfg.noise, seed=seed)
    model = copy_heads(model, c.heads, noise=cfg.noise, seed=seed + 1)
    model = copy_ffn(model, c.hidden, noise=cfg.noise, seed=seed + 2)
    model = copy_blocks(model, c.layers)
    steps = [{"operation": op} for op in ("copy_width", "copy_heads", "copy_ffn", "copy_blocks")]
    return model, make_optimizer(model, cfg), steps


GROWTHS: dict[str, Growth] = {
    "netmorph": grow_library("netmorph", carry=True),
    "netmorph-fresh": grow_library("netmorph", carry=False),
    "zero": grow_library("zero", carry=True),
    "copy": grow_copy,
}


def parent_phase(ctx: Context, budget: int) -> tuple[LlamaStyle, torch.optim.Optimizer, Run]:
    """The parent of seed ``ctx.seed`` trained for ``parent_fraction`` of ``budget``: (parent,
    its optimizer, its run)."""
    cfg = ctx.cfg
    parent = new_lm(cfg.parent, ctx.seed).to(ctx.device)
    parent_flops = train_step_flops(parent, cfg.batch, cfg.seq_len)
    parent_steps = max(1, round(cfg.parent_fraction * budget / parent_flops))
    prun = Run(budget, cfg.evals)
    prun.record(evaluate(parent, ctx.val))
    popt = make_optimizer(parent, cfg)
    desc = f"seed {ctx.seed} parent"
    train_phase(parent, popt, prun, parent_steps, parent_flops, ctx, desc)
    return parent, popt, prun


def small_tail(parent: LlamaStyle, popt: torch.optim.Optimizer, prun: Run, ctx: Context) -> dict:
    """The reference without growth: the parent trained on (same optimizer, schedule and
    batches) until the budget is spent. Trains ``parent`` in place."""
    run = copy.deepcopy(prun)
    step_flops = train_step_flops(parent, ctx.cfg.batch, ctx.cfg.seq_len)
    steps = (run.budget - run.spent) // step_flops
    train_phase(parent, popt, run, steps, step_flops, ctx, f"seed {ctx.seed} small")
    return {"flops": run.flops, "loss": run.loss}


def run_seed(seed: int, ctx: Context) -> dict:
    """Scratch, the parent, every growth method from that parent, and the parent trained on
    without growth ("small"), for one seed."""
    cfg = ctx.cfg
    scratch = new_lm(cfg.child, seed).to(ctx.device)
    child_flops = train_step_flops(scratch, cfg.batch, cfg.seq_len)
    budget = cfg.scratch_steps * child_flops
    run = Run(budget, cfg.evals)
    run.record(evaluate(scratch, ctx.val))
    opt = make_optimizer(scratch, cfg)
    train_phase(scratch, opt, run, cfg.scratch_steps, child_flops, ctx, f"seed {seed} scratch")
    out: dict = {"scratch": {"flops": run.flops, "loss": run.loss}}

    parent, popt, prun = parent_phase(ctx, budget)
    child_steps = (budget - prun.spent) // child_flops
    if child_steps < 1:
        raise ValueError(f"parent_fraction={cfg.parent_fraction} leaves no step for the child")
    parent_loss = prun.loss[-1]
    out["parent"] = {"steps": prun.step, "flops": prun.spent, "loss": parent_loss}
    for method in GROWN:
        child, opt, steps = GROWTHS[method](parent, popt, cfg, seed)
        child = child.to(ctx.device)
        at_growth = evaluate(child, ctx.val)
        if abs(at_growth - parent_loss) > LOSS_TOL:
            raise RuntimeError(
                f"{method}: validation loss right after growth {at_growth:.6f} differs from the "
                f"parent's {parent_loss:.6f} by more than {LOSS_TOL}: the child is not exact"
            )
        run = copy.deepcopy(prun)
        run.spike.append(at_growth)
        desc = f"seed {seed} {method}"
        train_phase(child, opt, run, child_steps, child_flops, ctx, desc, cfg.spike_steps)
        out[method] = {
            "flops": run.flops,
            "loss": run.loss,
            "growth_steps": steps,
            "parent_loss": parent_loss,
            "loss_after_growth": at_growth,
            "after_growth_delta": at_growth - parent_loss,
            "first_steps": run.spike,
            "spike": max(run.spike[1:]) - run.spike[0] if len(run.spike) > 1 else 0.0,
            "child_steps": child_steps,
        }
    out["small"] = small_tail(parent, popt, prun, ctx)
    out["budget"] = budget
    out["step_flops"] = {"parent": train_step_flops(parent, cfg.batch, cfg.seq_len)}
    out["step_flops"]["child"] = child_flops
    return out


def flops_to_reach(flops: list[int], loss: list[float], target: float) -> float | None:
    """The FLOPs at which ``loss`` first reaches ``target`` (linear between evaluations), or
    None."""
    for i, value in enumerate(loss):
        if value <= target:
            if i == 0:
                return float(flops[0])
            f0, f1, l0 = flops[i - 1], flops[i], loss[i - 1]
            return f0 + (f1 - f0) * (l0 - target) / (l0 - value)
    return None


def summarise(per_seed: list[dict]) -> list[dict]:
    """One row per method over the seeds."""
    rows = []
    for method in METHODS:
        finals, gaps, percents = [], [], []
        for r in per_seed:
            rec = r[method]
            finals.append(rec["loss"][-1])
            gaps.append(rec["loss"][-1] - r["scratch"]["loss"][-1])
            reach = flops_to_reach(rec["flops"], rec["loss"], r["scratch"]["loss"][-1])
            percents.append(None if reach is None else 100.0 * reach / r["budget"])
        reached = [p for p in percents if p is not None]
        row: dict = {"method": method, "label": LABELS[method]}
        row["final_val_loss_mean"], row["final_val_loss_std"] = mean_std(finals)
        row["gap_to_scratch_mean"], row["gap_to_scratch_std"] = mean_std(gaps)
        row["reached_seeds"] = len(reached)
        row["percent_scratch_flops_mean"], row["percent_scratch_flops_std"] = (
            mean_std(reached) if reached else (None, None)
        )
        if method in GROWN:
            recs = [r[method] for r in per_seed]
            row["max_abs_after_growth_delta"] = max(abs(x["after_growth_delta"]) for x in recs)
            row["spike_mean"], row["spike_std"] = mean_std([x["spike"] for x in recs])
        rows.append(row)
    return rows


def _reach_text(row: dict, seeds: int) -> str:
    if row["reached_seeds"] == 0:
        return "not reached"
    text = f"{row['percent_scratch_flops_mean']:.1f} ± {row['percent_scratch_flops_std']:.1f}"
    return text if row["reached_seeds"] == seeds else f"{text} ({row['reached_seeds']}/{seeds})"


def summary_table(summary: list[dict], seeds: int) -> str:
    """The plain-text table the run prints (and the docs show)."""
    lines = []
    for r in summary:
        grown = r["method"] in GROWN
        lines.append(
            [
                r["method"],
                f"{r['final_val_loss_mean']:.4f} ± {r['final_val_loss_std']:.4f}",
                f"{r['gap_to_scratch_mean']:+.4f} ± {r['gap_to_scratch_std']:.4f}",
                f"{r['max_abs_after_growth_delta']:.1e}" if grown else "-",
                f"{r['spike_mean']:.4f} ± {r['spike_std']:.4f}" if grown else "-",
                _reach_text(r, seeds),
            ]
        )
    headers = [
        "method",
        "final val loss",
        "vs scratch",
        "|Δ| at growth",
        "spike",
        "% scratch FLOPs to reach",
    ]
    return table(headers, lines)


def save(
    out: Path, options: RunOptions, cfg: LMGrowthConfig, corpus: Corpus, per_seed: list[dict]
) -> tuple[list[dict], dict]:
    """Write JSON, CSV and PNG for the seeds done so far (``complete`` says whether that is
    every seed asked for); returns (summary, claims)."""
    seeds = options.seed_list[: len(per_seed)]
    summary = summarise(per_seed)
    claims = {
        "preserved_at_every_morph": all(
            abs(r[m]["after_growth_delta"]) <= LOSS_TOL for r in per_seed for m in GROWN
        ),
    }
    rows = [
        {
            "seed": seed,
            "method": method,
            "flops": f,
            "fraction_of_budget": f / r["budget"],
            "val_loss": loss,
        }
        for seed, r in zip(seeds, per_seed)
        for method in METHODS
        for f, loss in zip(r[method]["flops"], r[method]["loss"])
    ]
    dataset = f"python stdlib sources ({corpus.root}), bytes"
    record = {
        **options.run_record(dataset, cfg),
        "seeds_completed": seeds,
        "complete": len(seeds) == options.seeds,
        "corpus": corpus.record(),
        "claims": claims,
        "per_seed": per_seed,
    }
    write_results(out, NAME, rows, summary, record)
    plot(out / f"{NAME}.png", per_seed)
    return summary, claims


def run(options: RunOptions, config: LMGrowthConfig | None = None) -> dict:
    """Every seed, the results rewritten after each (JSON, CSV and PNG in the output
    directory). ``config`` overrides :func:`config_for` (tests use tiny ones)."""
    device = resolve_device(options.device)
    out = options.out_dir(NAME)
    cfg = config_for(options.quick) if config is None else config
    corpus = load_corpus(cfg.train_bytes, cfg.val_bytes, options.data_dir)
    val = val_windows(corpus.val, cfg.val_windows, cfg.seq_len).to(device)
    per_seed: list[dict] = []
    with exact_float32(1):
        for seed in options.seed_list:
            start = time.perf_counter()
            per_seed.append(run_seed(seed, Context(cfg, corpus, val, seed, device, options.quiet)))
            per_seed[-1]["seconds"] = time.perf_counter() - start
            summary, claims = save(out, options, cfg, corpus, per_seed)
    options.say(summary_table(summary, options.seeds))
    return {"experiment": NAME, "out": out, "summary": summary, "claims": claims}


def plot(path: Path, per_seed: list[dict]) -> None:
    """Validation loss vs cumulative training FLOPs, and the first steps after growth."""
    grown_at = per_seed[0]["parent"]["flops"] / 1e12
    curves = []
    for method in METHODS:
        st = curve_stats([r[method]["loss"] for r in per_seed])
        x = [f / 1e12 for f in per_seed[0][method]["flops"]]
        curves.append(Series(method, x[1:], st["mean"][1:], st["std"][1:], color=COLORS[method]))
    first = []
    for method in GROWN:
        st = curve_stats(
            [[v - r[method]["first_steps"][0] for v in r[method]["first_steps"]] for r in per_seed]
        )
        steps = range(len(st["mean"]))
        first.append(Series(method, steps, st["mean"], st["std"], color=COLORS[method]))
    line_panels(
        path,
        [
            Panel(
                "validation loss vs training compute",
                "cumulative training FLOPs (10¹²)",
                "validation loss (nats/byte)",
                curves,
                vlines=[grown_at],
            ),
            Panel(
                "first steps after growth",
                "steps after growth",
                "loss − loss at growth",
                first,
                vlines=[0],
            ),
        ],
        suptitle="growing a byte-level LM on the Python standard library (mean ± std)",
    )
