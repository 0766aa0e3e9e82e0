"""Stable morphing: what happens in the first training steps after a depth morph.

The parent is :func:`.models.small_cnn` trained on digits (or CIFAR-10 with ``--data-dir``).
Its ``conv2`` (C×C, K×K) is deepened into (K: 2C) → PActivation(a = 1) → (1: C) three ways,
all exact at the morph:

- ``practical``: the adapter's ``deepen(method="practical")`` (zero-padded, sparse factors);
- ``stable``: :func:`netmorph_core.morph.stable.stable_depth` (every entry at least
  0.05·std of its filter, both filters on one scale), put in place by the adapter's chain
  builder (``deepen`` takes "general"/"practical" only);
- ``net2net``: IdMorph + Net2WiderNet in the same architecture.

Each child then trains with SGD for a few steps; after every step the test loss and accuracy
are measured. Reported per method over the seeds: the accuracy drop (accuracy at the morph
minus the lowest accuracy in the first steps) and the loss jump (highest test loss in the first
steps minus the loss at the morph).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..morph.stable import stable_depth
from ..torch import deepen
from ..torch.depth import replace_with_chain
from ..torch.pipeline import Request
from ..torch.pipeline import run as run_request
from ..torch.report import Outcome
from .data import experiment_dataset
from .models import seeded, small_cnn
from .net2net import net2net_deepen
from .options import RunOptions
from .plots import Panel, Series, line_panels
from .results import curve_stats, fmt, mean_std, table, write_results
from .train import (
    DeviceData,
    TrainConfig,
    accuracy,
    check_preservation,
    epoch_order,
    exact_float32,
    predict,
    resolve_device,
    train,
)

NAME = "stable"
METHODS = ("practical", "stable", "net2net")
AT = "conv2"


@dataclass(frozen=True)
class StableConfig:
    """The parent's architecture and training; ``steps`` SGD steps after the morph at ``lr``
    with mini-batches of ``batch_size``."""

    widths: tuple[int, int, int]
    kernel: int
    parent: TrainConfig
    steps: int
    lr: float
    batch_size: int
    expand: int = 2
    train_subset: int | None = None


def config_for(dataset: str, quick: bool) -> StableConfig:
    """The configuration for ``dataset`` ("digits" or "cifar10"), full or quick."""
    if quick:
        return StableConfig(
            (4, 4, 8),
            3,
            TrainConfig(3, 0.05, 32),
            8,
            0.05,
            32,
            train_subset=1000 if dataset == "cifar10" else None,
        )
    if dataset == "digits":
        return StableConfig((8, 8, 16), 3, TrainConfig(10, 0.05, 32), 50, 0.05, 32)
    return StableConfig((16, 16, 32), 3, TrainConfig(10, 0.05, 64), 100, 0.05, 64)


Morph = Callable[[nn.Module, StableConfig, int], nn.Module]


def _layers(cfg: StableConfig) -> list[tuple[int, int]]:
    c = cfg.widths[1]
    return [(cfg.expand * c, cfg.kernel), (c, 1)]


def morph_practical(model: nn.Module, cfg: StableConfig, seed: int) -> nn.Module:
    width = cfg.expand * cfg.widths[1]
    kernels = (cfg.kernel, 1)
    return deepen(model, AT, width=width, kernel_size=kernels, method="practical", seed=seed)[0]


def morph_stable(model: nn.Module, cfg: StableConfig, seed: int) -> nn.Module:
    """Deepen ``conv2`` with the stable filters through the adapter's chain builder."""
    width = cfg.expand * cfg.widths[1]

    def solve(g: np.ndarray) -> tuple[list[np.ndarray], float, bool, int]:
        res = stable_depth(g, width, cfg.kernel, 1, seed=seed)
        return list(res.filters), res.residual, res.exact, res.iterations

    def build(child: nn.Module) -> Outcome:
        return replace_with_chain(child, AT, solve, activation="prelu", batch_norm=False)

    return run_request(Request("deepen_stable", model, (AT,), build, edits=(AT,)))[0]


def morph_net2net(model: nn.Module, cfg: StableConfig, seed: int) -> nn.Module:
    return net2net_deepen(model, AT, _layers(cfg), seed=seed)


MORPHS: dict[str, Morph] = {
    "practical": morph_practical,
    "stable": morph_stable,
    "net2net": morph_net2net,
}


@torch.no_grad()
def eval_metrics(model: nn.Module, data: DeviceData) -> tuple[float, float]:
    """(cross-entropy loss, accuracy) on the test set, eval mode."""
    logits = predict(model, data.test_x)
    loss = float(nn.functional.cross_entropy(logits, data.test_y))
    return loss, accuracy(logits, data.test_y)


def first_steps(
    model: nn.Module, data: DeviceData, cfg: StableConfig, seed: int
) -> tuple[list[float], list[float]]:
    """Test loss and accuracy at the morph and after each of ``cfg.steps`` SGD steps (the same
    mini-batches for every method of a seed)."""
    opt = TrainConfig(1, cfg.lr, cfg.batch_size).optimizer(model)
    loss_fn = nn.CrossEntropyLoss()
    order = epoch_order(len(data.train_y), seed, 10_000).to(data.train_x.device)
    losses, accs = [], []
    loss, acc = eval_metrics(model, data)
    losses.append(loss)
    accs.append(acc)
    for step in range(cfg.steps):
        start = (step * cfg.batch_size) % len(order)
        idx = order[start : start + cfg.batch_size]
        model.train()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(data.train_x[idx]), data.train_y[idx]).backward()
        opt.step()
        loss, acc = eval_metrics(model, data)
        losses.append(loss)
        accs.append(acc)
    return losses, accs


def run_seed(
    seed: int,
    data: DeviceData,
    cfg: StableConfig,
    shape: tuple,
    classes: int,
    device: torch.device,
    quiet: bool,
) -> dict:
    """Train the parent, then morph it every way and follow the first steps."""
    parent = seeded(seed, small_cnn, shape[0], classes, cfg.widths, cfg.kernel).to(device)
    curve = train(parent, data, cfg.parent, seed=seed, quiet=quiet, desc=f"seed {seed} parent")
    out: dict = {"parent": curve}
    for method in METHODS:
        child = MORPHS[method](parent, cfg, seed)
        kept = check_preservation(parent, child, data.test_x, data.test_y)
        weights = [m.weight for m in child.get_submodule(AT).modules() if isinstance(m, nn.Conv2d)]
        ratio = sum(int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)
        losses, accs = first_steps(child, data, cfg, seed)
        out[method] = {
            "at_morph": kept.as_dict(),
            "new_nonzero_ratio": ratio,
            "loss": losses,
            "accuracy": accs,
            "accuracy_drop": accs[0] - min(accs[1:]),
            "loss_jump": max(losses[1:]) - losses[0],
        }
    return out


def summarise(per_seed: list[dict]) -> list[dict]:
    """One row per method: drop and jump (mean, std over seeds), preservation, sparsity."""
    rows = []
    for method in METHODS:
        runs = [r[method] for r in per_seed]
        dm, ds = mean_std([run["accuracy_drop"] for run in runs])
        jm, js = mean_std([run["loss_jump"] for run in runs])
        fm, fs = mean_std([run["accuracy"][-1] for run in runs])
        rows.append(
            {
                "method": method,
                "accuracy_drop_mean": dm,
                "accuracy_drop_std": ds,
                "loss_jump_mean": jm,
                "loss_jump_std": js,
                "final_accuracy_mean": fm,
                "final_accuracy_std": fs,
                "preserved_all_seeds": all(r["at_morph"]["identical_predictions"] for r in runs),
                "new_nonzero_ratio": mean_std([r["new_nonzero_ratio"] for r in runs])[0],
            }
        )
    return rows


def run(options: RunOptions) -> dict:
    """Every seed; JSON, CSV and a plot of the first steps in the output directory."""
    device = resolve_device(options.device)
    out = options.out_dir(NAME)
    dataset, cfg, raw = experiment_dataset(options.data_dir, "cifar10", options.quick, config_for)
    data = DeviceData.from_dataset(raw, device)
    with exact_float32(1):
        per_seed = [
            run_seed(s, data, cfg, raw.input_shape, raw.classes, device, options.quiet)
            for s in options.seed_list
        ]
    summary = summarise(per_seed)
    by = {r["method"]: r for r in summary}
    claims = {
        "preserved_at_every_morph": all(r["preserved_all_seeds"] for r in summary),
        "stable_all_nonzero": by["stable"]["new_nonzero_ratio"] == 1.0,
        "stable_loss_jump_le_practical": by["stable"]["loss_jump_mean"]
        <= by["practical"]["loss_jump_mean"],
        "stable_loss_jump_le_net2net": by["stable"]["loss_jump_mean"]
        <= by["net2net"]["loss_jump_mean"],
    }
    rows = [
        {"seed": seed, "method": method, "step": step, "test_loss": loss, "test_accuracy": acc}
        for seed, r in zip(options.seed_list, per_seed)
        for method in METHODS
        for step, (loss, acc) in enumerate(zip(r[method]["loss"], r[method]["accuracy"]))
    ]
    write_results(
        out,
        NAME,
        rows,
        summary,
        {**options.run_record(dataset, cfg), "claims": claims, "per_seed": per_seed},
    )
    plot(out / f"{NAME}.png", per_seed)
    options.say(
        table(
            ["method", "accuracy drop (%)", "loss jump", "final (%)", "preserved", "non-zero"],
            [
                [
                    r["method"],
                    fmt(r["accuracy_drop_mean"], r["accuracy_drop_std"]),
                    fmt(r["loss_jump_mean"], r["loss_jump_std"], scale=1.0, digits=4),
                    fmt(r["final_accuracy_mean"], r["final_accuracy_std"]),
                    "yes" if r["preserved_all_seeds"] else "NO",
                    f"{r['new_nonzero_ratio']:.3f}",
                ]
                for r in summary
            ],
        )
    )
    return {"experiment": NAME, "out": out, "summary": summary, "claims": claims}


def plot(path: Path, per_seed: list[dict]) -> None:
    """Test loss and accuracy over the first steps after the morph (mean ± std over seeds)."""
    panels = []
    for key, label in (("loss", "test loss"), ("accuracy", "test accuracy")):
        series = []
        for method in METHODS:
            st = curve_stats([r[method][key] for r in per_seed])
            series.append(Series(method, range(len(st["mean"])), st["mean"], st["std"]))
        panels.append(Panel(f"{label} after the morph", "SGD step", label, series, vlines=[0]))
    line_panels(path, panels, suptitle="practical vs stable vs Net2Net: first steps after a morph")
