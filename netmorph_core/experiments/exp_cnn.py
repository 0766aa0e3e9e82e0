"""Paper §4.2–4.3 / Figs. 8–9 / Table 1, scaled down: a small CNN morphed phase by phase.

The parent is :func:`.models.small_cnn` (three 3×3 conv blocks, a scaled cifar_111; 5×5 convs
of (32, 32, 64) channels on CIFAR-10 as in cifar10_quick). Each phase morphs the previous
phase's trained model, checks that its test predictions are unchanged, and trains it further:

1. ``depth`` (cifar_111 → 211): conv1 → (K:4c)(1:c) — Algorithm 2, as in the paper;
2. ``subnet`` (→ a cifar_3333-style subnet): conv2 → (K:4c)(K:4c)(1:c);
3. ``kernel`` (cifar_ksize): the two 1×1 layers grow to 3×3;
4. ``width`` (cifar_width): the outputs of those two layers double.

Lineages: ``netmorph`` (the adapter's deepen / morph_subnet / grow_kernel / widen),
``net2net`` (IdMorph + Net2WiderNet in the same architectures; kernel growth is the same
zero-padding, Net2Net has no kernel morph), and ``scratch``: each phase's architecture trained
from random weights for as many epochs as the morphed lineage has had in total.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..torch import PActivation, deepen, grow_kernel, morph_subnet, widen
from .data import Dataset, experiment_dataset
from .models import seeded, small_cnn
from .net2net import chain_layers, net2net_deepen, net2net_widen
from .options import RunOptions
from .plots import Panel, Series, line_panels
from .results import at_least, curve_stats, fmt, mean_std, table, write_results
from .train import (
    DeviceData,
    TrainConfig,
    check_preservation,
    exact_float32,
    resolve_device,
    train,
)

NAME = "cnn"
PHASES = ("depth", "subnet", "kernel", "width")
LINEAGES = ("netmorph", "net2net")
SCRATCH_A = 0.25


@dataclass(frozen=True)
class CNNConfig:
    """Architecture and schedule: the parent's training, ``child`` per phase, and ``scratch``
    (its epochs are replaced by the morphed lineage's total at each phase)."""

    widths: tuple[int, int, int]
    kernel: int
    parent: TrainConfig
    child: TrainConfig
    scratch: TrainConfig
    expand: int = 4
    train_subset: int | None = None


def config_for(dataset: str, quick: bool) -> CNNConfig:
    """The configuration for ``dataset`` ("digits" or "cifar10"), full or quick.

    Children continue at a fifth of the parent's learning rate. From scratch, the deepest
    architectures (no normalisation layers) diverge at the parent's rate, so scratch runs
    use 0.4 × that rate (the largest of 1, 0.4 and 0.2 × at which they train on digits).
    """
    if dataset == "digits":
        if quick:
            return CNNConfig(
                (8, 8, 16),
                3,
                TrainConfig(5, 0.05, 32),
                TrainConfig(1, 0.01, 32),
                TrainConfig(0, 0.02, 128),
            )
        return CNNConfig(
            (16, 16, 32),
            3,
            TrainConfig(10, 0.05, 32),
            TrainConfig(5, 0.01, 32),
            TrainConfig(0, 0.02, 32),
        )
    if quick:  # a smoke run: 3×3 kernels keep the solves small
        return CNNConfig(
            (8, 8, 16),
            3,
            TrainConfig(1, 0.05, 64),
            TrainConfig(1, 0.01, 64),
            TrainConfig(0, 0.02, 256),
            train_subset=1000,
        )
    return CNNConfig(
        (32, 32, 64),
        5,
        TrainConfig(15, 0.05, 64),
        TrainConfig(8, 0.01, 64),
        TrainConfig(0, 0.02, 64),
    )


Morph = Callable[[nn.Module, CNNConfig, int], nn.Module]


def _depth_layers(cfg: CNNConfig, channels: int, repeats: int) -> list[tuple[int, int]]:
    wide = cfg.expand * channels
    return [(wide, cfg.kernel)] * repeats + [(channels, 1)]


def netmorph_phase(phase: str) -> Morph:
    """The NetMorph morph of ``phase`` (model, config, seed) → child."""

    def depth(m: nn.Module, cfg: CNNConfig, seed: int) -> nn.Module:
        c = cfg.widths[0]
        return deepen(
            m,
            "conv1",
            width=cfg.expand * c,
            kernel_size=(cfg.kernel, 1),
            method="practical",
            seed=seed,
        )[0]

    def subnet(m: nn.Module, cfg: CNNConfig, seed: int) -> nn.Module:
        layers = _depth_layers(cfg, cfg.widths[1], 2)
        return morph_subnet(m, "conv2", layers, method="practical", seed=seed)[0]

    def kernel(m: nn.Module, cfg: CNNConfig, seed: int) -> nn.Module:
        m = grow_kernel(m, "conv1.2", 3)[0]
        return grow_kernel(m, "conv2.4", 3)[0]

    def width(m: nn.Module, cfg: CNNConfig, seed: int) -> nn.Module:
        m = widen(m, "conv1.2", 2 * cfg.widths[0], seed=seed)[0]
        return widen(m, "conv2.4", 2 * cfg.widths[1], seed=seed + 1)[0]

    return {"depth": depth, "subnet": subnet, "kernel": kernel, "width": width}[phase]


def net2net_phase(phase: str) -> Morph:
    """The Net2Net counterpart of ``phase`` (same architecture as NetMorph's child)."""

    def depth(m: nn.Module, cfg: CNNConfig, seed: int) -> nn.Module:
        return net2net_deepen(m, "conv1", _depth_layers(cfg, cfg.widths[0], 1), seed=seed)

    def subnet(m: nn.Module, cfg: CNNConfig, seed: int) -> nn.Module:
        return net2net_deepen(m, "conv2", _depth_layers(cfg, cfg.widths[1], 2), seed=seed)

    def width(m: nn.Module, cfg: CNNConfig, seed: int) -> nn.Module:
        m = net2net_widen(m, "conv1.2", 2 * cfg.widths[0], seed=seed)
        return net2net_widen(m, "conv2.4", 2 * cfg.widths[1], seed=seed + 1)

    if phase == "kernel":
        return netmorph_phase("kernel")
    return {"depth": depth, "subnet": subnet, "width": width}[phase]


def new_nonzero_ratio(model: nn.Module, phase: str) -> float | None:
    """Non-zero fraction of the weights a depth/subnet phase embedded (None for the others)."""
    at = {"depth": "conv1", "subnet": "conv2"}.get(phase)
    if at is None:
        return None
    weights = [m.weight for m in chain_layers(model.get_submodule(at))]
    return sum(int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """``model``'s architecture with fresh random weights (P-activations at a = 0.25)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, PActivation):
            with torch.no_grad():
                m.a.fill_(SCRATCH_A)
        elif hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model


def run_seed(seed: int, data: Dataset, cfg: CNNConfig, device: torch.device, quiet: bool) -> dict:
    """The parent, then every phase for both lineages and from scratch."""
    tensors = DeviceData.from_dataset(data, device)
    parent = seeded(seed, small_cnn, data.input_shape[0], data.classes, cfg.widths, cfg.kernel)
    parent = parent.to(device)
    out: dict = {
        "parent": train(
            parent, tensors, cfg.parent, seed=seed, quiet=quiet, desc=f"seed {seed} parent"
        ),
        "phases": [],
    }
    models = dict.fromkeys(LINEAGES, parent)
    epochs_so_far = cfg.parent.epochs
    for phase in PHASES:
        record: dict = {"phase": phase}
        for lineage in LINEAGES:
            morph = netmorph_phase(phase) if lineage == "netmorph" else net2net_phase(phase)
            prev = models[lineage]
            child = morph(prev, cfg, seed)
            kept = check_preservation(prev, child, tensors.test_x, tensors.test_y)
            ratio = new_nonzero_ratio(child, phase)
            curve = train(
                child,
                tensors,
                cfg.child,
                seed=seed,
                quiet=quiet,
                first_epoch=epochs_so_far,
                desc=f"seed {seed} {phase} {lineage}",
            )
            record[lineage] = {
                "curve": curve,
                "at_morph": kept.as_dict(),
                "new_nonzero_ratio": ratio,
                "parameters": sum(p.numel() for p in child.parameters()),
            }
            models[lineage] = child
        epochs_so_far += cfg.child.epochs
        scratch = reinitialise(copy.deepcopy(models["netmorph"]), seed)
        total = TrainConfig(**{**asdict(cfg.scratch), "epochs": epochs_so_far})
        record["scratch"] = {
            "curve": train(
                scratch, tensors, total, seed=seed, quiet=quiet, desc=f"seed {seed} {phase} scratch"
            )
        }
        out["phases"].append(record)
    return out


def summarise(per_seed: list[dict]) -> list[dict]:
    """One row per (phase, lineage): accuracy right after the morph and at the phase's end."""
    m, s = mean_std([r["parent"][-1] for r in per_seed])
    rows = [{"phase": "parent", "method": "parent", "final_mean": m, "final_std": s}]
    for i, phase in enumerate(PHASES):
        for method in (*LINEAGES, "scratch"):
            runs = [r["phases"][i][method] for r in per_seed]
            m, s = mean_std([run["curve"][-1] for run in runs])
            row = {"phase": phase, "method": method, "final_mean": m, "final_std": s}
            if method != "scratch":
                am, astd = mean_std([run["at_morph"]["child_accuracy"] for run in runs])
                ratios = [run["new_nonzero_ratio"] for run in runs]
                row |= {
                    "after_morph_mean": am,
                    "after_morph_std": astd,
                    "preserved_all_seeds": all(
                        run["at_morph"]["identical_predictions"] for run in runs
                    ),
                    "max_abs_dev": max(run["at_morph"]["max_abs_dev"] for run in runs),
                    "new_nonzero_ratio": None if ratios[0] is None else mean_std(ratios)[0],
                    "parameters": runs[0]["parameters"],
                }
            rows.append(row)
    return rows


def run(options: RunOptions) -> dict:
    """Every seed; JSON, CSV and the Figs. 8–9 style plot in the output directory."""
    device = resolve_device(options.device)
    out = options.out_dir(NAME)
    dataset, cfg, data = experiment_dataset(options.data_dir, "cifar10", options.quick, config_for)
    with exact_float32(1 if dataset == "digits" or options.quick else torch.get_num_threads()):
        per_seed = [run_seed(s, data, cfg, device, options.quiet) for s in options.seed_list]
    summary = summarise(per_seed)
    final = {(r["phase"], r["method"]): r["final_mean"] for r in summary}
    claims = {
        "preserved_at_every_morph": all(r.get("preserved_all_seeds", True) for r in summary),
        "netmorph_ge_net2net_per_phase": {
            p: at_least(final[(p, "netmorph")], final[(p, "net2net")]) for p in PHASES
        },
        "netmorph_ge_scratch_per_phase": {
            p: at_least(final[(p, "netmorph")], final[(p, "scratch")]) for p in PHASES
        },
    }
    rows = []
    for seed, r in zip(options.seed_list, per_seed):
        rows += [
            {"seed": seed, "phase": "parent", "method": "parent", "epoch": e + 1, "accuracy": a}
            for e, a in enumerate(r["parent"])
        ]
        start = cfg.parent.epochs
        for rec in r["phases"]:
            for method in (*LINEAGES, "scratch"):
                offset = 0 if method == "scratch" else start
                rows += [
                    {
                        "seed": seed,
                        "phase": rec["phase"],
                        "method": method,
                        "epoch": offset + e + 1,
                        "accuracy": a,
                    }
                    for e, a in enumerate(rec[method]["curve"])
                ]
            start += cfg.child.epochs
    write_results(
        out,
        NAME,
        rows,
        summary,
        {**options.run_record(dataset, cfg), "claims": claims, "per_seed": per_seed},
    )
    plot(out / f"{NAME}.png", per_seed, cfg)
    options.say(
        table(
            [
                "phase",
                "method",
                "params",
                "after morph (%)",
                "end of phase (%)",
                "preserved",
                "new non-zero",
            ],
            [
                [
                    r["phase"],
                    r["method"],
                    r.get("parameters", ""),
                    fmt(r["after_morph_mean"], r["after_morph_std"])
                    if "after_morph_mean" in r
                    else "",
                    fmt(r["final_mean"], r["final_std"]),
                    {True: "yes", False: "NO"}.get(r.get("preserved_all_seeds"), ""),
                    "" if r.get("new_nonzero_ratio") is None else f"{r['new_nonzero_ratio']:.3f}",
                ]
                for r in summary
            ],
        )
    )
    return {"experiment": NAME, "out": out, "summary": summary, "claims": claims}


def plot(path: Path, per_seed: list[dict], cfg: CNNConfig) -> None:
    """Accuracy per epoch through the phases, and each lineage's accuracy at each phase's end."""
    p, e = cfg.parent.epochs, cfg.child.epochs
    parent = curve_stats([r["parent"] for r in per_seed])
    series = [Series("parent", range(1, p + 1), parent["mean"], parent["std"], style="k-")]
    for method in LINEAGES:
        curves = [
            [r["parent"][-1]] + [a for rec in r["phases"] for a in rec[method]["curve"]]
            for r in per_seed
        ]
        st = curve_stats(curves)
        series.append(Series(method, range(p, p + len(st["mean"])), st["mean"], st["std"]))
    ends = [p + e * (i + 1) for i in range(len(PHASES))]
    scratch = curve_stats([[rec["scratch"]["curve"][-1] for rec in r["phases"]] for r in per_seed])
    series.append(Series("scratch (same epochs)", ends, scratch["mean"], scratch["std"], "s--"))
    phase_series = []
    for method in (*LINEAGES, "scratch"):
        st = curve_stats([[rec[method]["curve"][-1] for rec in r["phases"]] for r in per_seed])
        phase_series.append(Series(method, range(1, len(PHASES) + 1), st["mean"], st["std"]))
    line_panels(
        path,
        [
            Panel(
                "through the phases (" + " → ".join(PHASES) + ")",
                "epoch",
                "test accuracy",
                series,
                vlines=[p, *ends[:-1]],
            ),
            Panel(
                "end of each phase (1 = depth … 4 = width)", "phase", "test accuracy", phase_series
            ),
        ],
        suptitle="small CNN morphed phase by phase (mean ± std over seeds)",
    )
