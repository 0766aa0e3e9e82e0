"""Paper §4.1 / Fig. 7: softmax regression morphed into an MLP with one hidden layer.

Per seed: the parent (softmax regression) is trained; its layer G (classes × features) is
morphed into F1 (h × features) → P-activation (a = 1) → F2 (classes × h) with h = 50, and the
child continues training:

- ``netmorph``: :func:`netmorph_core.torch.deepen` (Algorithm 1, every entry non-zero);
- ``net2net``: IdMorph (F1 = G, F2 = I) then Net2WiderNet to h units — PReLU only: IdMorph
  needs an idempotent activation (φ∘φ = φ), which tanh is not, so the paper has no Net2Net
  curve for PTanh and neither do we;
- ``scratch``: the same MLP trained from random weights (P-activation starting at a = 0.25)
  for the parent's and the child's epochs together.

Data: the bundled 8×8 digits, or MNIST from ``--data-dir`` (the paper's setting).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..torch import deepen
from .data import Dataset, experiment_dataset
from .models import mlp, seeded, softmax_regression
from .net2net import net2net_deepen
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

NAME = "mlp"
HIDDEN = 50
#: label → P-activation base
ACTIVATIONS = {"prelu": "relu", "ptanh": "tanh"}
SCRATCH_A = 0.25


@dataclass(frozen=True)
class MLPConfig:
    """Training schedule of one run (the parent's, then the children's)."""

    parent: TrainConfig
    child: TrainConfig
    hidden: int = HIDDEN
    train_subset: int | None = None


def config_for(dataset: str, quick: bool) -> MLPConfig:
    """The schedule for ``dataset`` ("digits" or "mnist"), full or quick.

    Children continue at a fifth of the parent's learning rate (fine-tuning a preserved
    function); at the parent's rate every child first loses several points of accuracy.
    """
    if dataset == "digits":
        if quick:
            return MLPConfig(TrainConfig(3, 0.05, 32), TrainConfig(5, 0.01, 32))
        return MLPConfig(TrainConfig(10, 0.05, 32), TrainConfig(30, 0.01, 32))
    if quick:
        return MLPConfig(TrainConfig(1, 0.05, 128), TrainConfig(1, 0.01, 128), train_subset=2000)
    return MLPConfig(TrainConfig(5, 0.05, 128), TrainConfig(15, 0.01, 128))


def distinct_units(model: torch.nn.Module, rtol: float = 1e-4) -> int:
    """Distinct hidden units of a trained MLP child: rows of [F1 | b1] that differ by more than
    ``rtol`` × the largest entry (units closer than that count as one).

    Net2WiderNet's copies receive identical gradients, so they stay copies up to rounding:
    the count stays near the parent's number of classes however long the child trains.
    """
    f1 = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    rows = torch.cat([f1.weight.detach(), f1.bias.detach()[:, None]], dim=1).double()
    close = torch.cdist(rows, rows, p=float("inf")) <= rtol * float(rows.abs().max())
    representative = close.int().argmax(dim=1)  # the first row each row is close to
    return int(torch.unique(representative).numel())


def run_seed(seed: int, data: Dataset, cfg: MLPConfig, device: torch.device, quiet: bool) -> dict:
    """Parent, then each activation's children; every curve is test accuracy per epoch."""
    tensors = DeviceData.from_dataset(data, device)
    parent = seeded(seed, softmax_regression, data.features, data.classes).to(device)
    p_epochs = cfg.parent.epochs
    out: dict = {
        "parent": train(
            parent, tensors, cfg.parent, seed=seed, quiet=quiet, desc=f"seed {seed} parent"
        )
    }
    for label, base in ACTIVATIONS.items():
        children = {
            "netmorph": deepen(
                parent, "fc", width=cfg.hidden, activation=base, method="general", seed=seed
            )[0]
        }
        if label == "prelu":
            children["net2net"] = net2net_deepen(
                parent,
                "fc",
                [(cfg.hidden, None), (data.classes, None)],
                activation=base,
                seed=seed,
            )
        runs: dict = {}
        for method, child in children.items():
            kept = check_preservation(parent, child, tensors.test_x, tensors.test_y)
            curve = train(
                child,
                tensors,
                cfg.child,
                seed=seed,
                quiet=quiet,
                first_epoch=p_epochs,
                desc=f"seed {seed} {label} {method}",
            )
            runs[method] = {
                "curve": curve,
                "at_morph": kept.as_dict(),
                "distinct_hidden_units": distinct_units(child),
            }
        scratch = seeded(seed, mlp, data.features, cfg.hidden, data.classes, base, SCRATCH_A).to(
            device
        )
        total = TrainConfig(**{**asdict(cfg.child), "epochs": p_epochs + cfg.child.epochs})
        runs["scratch"] = {
            "curve": train(
                scratch, tensors, total, seed=seed, quiet=quiet, desc=f"seed {seed} {label} scratch"
            )
        }
        out[label] = runs
    return out


def summarise(per_seed: list[dict]) -> list[dict]:
    """One row per (activation, method): final accuracy, accuracy right after the morph."""
    rows = []
    m, s = mean_std([r["parent"][-1] for r in per_seed])
    rows.append({"activation": "-", "method": "parent", "final_mean": m, "final_std": s})
    for label in ACTIVATIONS:
        for method in per_seed[0][label]:
            runs = [r[label][method] for r in per_seed]
            m, s = mean_std([run["curve"][-1] for run in runs])
            row = {"activation": label, "method": method, "final_mean": m, "final_std": s}
            if "at_morph" in runs[0]:
                am, astd = mean_std([run["at_morph"]["child_accuracy"] for run in runs])
                row |= {
                    "after_morph_mean": am,
                    "after_morph_std": astd,
                    "preserved_all_seeds": all(
                        run["at_morph"]["identical_predictions"] for run in runs
                    ),
                    "max_abs_dev": max(run["at_morph"]["max_abs_dev"] for run in runs),
                    "distinct_hidden_units": [run["distinct_hidden_units"] for run in runs],
                }
            rows.append(row)
    return rows


def run(options: RunOptions) -> dict:
    """Every seed; JSON, CSV and the Fig. 7 plot in the output directory."""
    device = resolve_device(options.device)
    out = options.out_dir(NAME)
    dataset, cfg, data = experiment_dataset(options.data_dir, "mnist", options.quick, config_for)
    with exact_float32(1):
        per_seed = [run_seed(s, data, cfg, device, options.quiet) for s in options.seed_list]
    summary = summarise(per_seed)
    by_key = {(r["activation"], r["method"]): r for r in summary}
    nm, n2n = by_key[("prelu", "netmorph")], by_key[("prelu", "net2net")]
    gap = mean_std(
        [r["prelu"]["netmorph"]["curve"][-1] - r["prelu"]["net2net"]["curve"][-1] for r in per_seed]
    )
    claims = {
        "preserved_at_every_morph": all(r.get("preserved_all_seeds", True) for r in summary),
        "prelu_netmorph_final_mean": nm["final_mean"],
        "prelu_net2net_final_mean": n2n["final_mean"],
        "prelu_netmorph_ge_net2net": at_least(nm["final_mean"], n2n["final_mean"]),
        "prelu_paired_gap_mean": gap[0],
        "prelu_paired_gap_std": gap[1],
        "ptanh_net2net": "not applicable: IdMorph needs an idempotent activation "
        "(tanh∘tanh ≠ tanh)",
    }
    rows = [
        {
            "seed": seed,
            "activation": label,
            "method": method,
            "epoch": e + 1 + offset,
            "accuracy": a,
        }
        for seed, r in zip(options.seed_list, per_seed)
        for label, method, curve, offset in [
            ("-", "parent", r["parent"], 0),
            *(
                (label, method, run["curve"], 0 if method == "scratch" else cfg.parent.epochs)
                for label in ACTIVATIONS
                for method, run in r[label].items()
            ),
        ]
        for e, a in enumerate(curve)
    ]
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
            ["activation", "method", "after morph (%)", "final (%)", "preserved"],
            [
                [
                    r["activation"],
                    r["method"],
                    fmt(r["after_morph_mean"], r["after_morph_std"])
                    if "after_morph_mean" in r
                    else "",
                    fmt(r["final_mean"], r["final_std"]),
                    {True: "yes", False: "NO"}.get(r.get("preserved_all_seeds"), ""),
                ]
                for r in summary
            ],
        )
        + f"\nPReLU: NetMorph {'≥' if claims['prelu_netmorph_ge_net2net'] else '<'} Net2Net "
        f"({nm['final_mean'] * 100:.2f}% vs {n2n['final_mean'] * 100:.2f}%; paired gap "
        f"{fmt(*gap)} points over {len(per_seed)} seeds); distinct hidden units after training: "
        f"NetMorph {nm['distinct_hidden_units']}, Net2Net {n2n['distinct_hidden_units']}\n"
        f"PTanh: Net2Net {claims['ptanh_net2net']}"
    )
    return {"experiment": NAME, "out": out, "summary": summary, "claims": claims}


def plot(path: Path, per_seed: list[dict], cfg: MLPConfig) -> None:
    """Fig. 7: accuracy per epoch, one panel per activation; the morph at the dotted line."""
    p = cfg.parent.epochs
    parent = curve_stats([r["parent"] for r in per_seed])
    panels = []
    for label in ACTIVATIONS:
        series = [Series("parent", range(1, p + 1), parent["mean"], parent["std"], style="k-")]
        for method in per_seed[0][label]:
            runs = [r[label][method] for r in per_seed]
            if method == "scratch":
                st = curve_stats([run["curve"] for run in runs])
                x = list(range(1, len(st["mean"]) + 1))
            else:
                st = curve_stats(
                    [[run["at_morph"]["child_accuracy"], *run["curve"]] for run in runs]
                )
                x = list(range(p, p + len(st["mean"])))
            series.append(Series(method, x, st["mean"], st["std"]))
        panels.append(Panel(label, "epoch", "test accuracy", series, vlines=[p]))
    line_panels(path, panels, suptitle="softmax regression → MLP (mean ± std over seeds)")
