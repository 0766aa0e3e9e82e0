"""Paper §4.2: histograms of the embedded filters right after morphing, NetMorph vs Net2Net.

The trained small CNN's conv2 (the depth phase of :mod:`.exp_cnn`) is morphed into
(K:4c) → P-activation → (1:c). NetMorph (Algorithm 2) fills the new filters with values on
one consistent, roughly normal scale; Net2Net's inserted layer is the δ identity widened by
unit copies, so its values sit at 0 and at 1/(copies) ≤ 1 — the paper's "two peaks".
Statistics per seed and filter: std, excess kurtosis, the fraction of exact zeros, the
fraction within 0.05 of 0 and the fraction of unit fractions 1/n (n = 1, 2, …: the values of
a δ identity whose input columns were divided by copy counts).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from ..torch import deepen
from .data import experiment_dataset
from .exp_cnn import CNNConfig, config_for
from .models import seeded, small_cnn
from .net2net import chain_layers, net2net_deepen
from .options import RunOptions
from .plots import histograms
from .results import mean_std, table, write_results
from .train import DeviceData, exact_float32, resolve_device, train

NAME = "histograms"
AT = "conv2"
NEAR = 0.05
#: Relative tolerance for "v is 1/n" (float32 rounding of the divided identity).
UNIT_RTOL = 1e-6


def filter_stats(values: np.ndarray) -> dict[str, float]:
    """Std, excess kurtosis, the mass at / near 0 and the mass at unit fractions 1/n."""
    v = values.astype(np.float64).ravel()
    std = float(v.std())
    z = (v - v.mean()) / std if std > 0 else np.zeros_like(v)
    positive = v > 0
    inverse = np.divide(1.0, v, out=np.zeros_like(v), where=positive)
    unit = positive & (v <= 1.0) & (np.abs(inverse - np.round(inverse)) <= UNIT_RTOL * inverse)
    return {
        "n": int(v.size),
        "std": std,
        "excess_kurtosis": float(np.mean(z**4) - 3.0),
        "zero_fraction": float(np.mean(v == 0.0)),
        "near_zero_fraction": float(np.mean(np.abs(v) <= NEAR)),
        "unit_fraction": float(np.mean(unit)),
    }


def embedded(model: torch.nn.Module) -> list[np.ndarray]:
    """The new filters (F1, F2) that replaced layer ``AT``, as float64 arrays."""
    return [m.weight.detach().cpu().double().numpy() for m in chain_layers(model.get_submodule(AT))]


def run_seed(
    seed: int, cfg: CNNConfig, data: DeviceData, shape: tuple[int, int], quiet: bool
) -> dict:
    """Train the parent (``shape``: input channels, classes) on ``data``'s device, morph ``AT``
    both ways, return the new filters of each."""
    parent = seeded(seed, small_cnn, *shape, cfg.widths, cfg.kernel).to(data.train_x.device)
    train(parent, data, cfg.parent, seed=seed, quiet=quiet, desc=f"seed {seed} parent")
    c = cfg.widths[1]
    netmorph = deepen(
        parent, AT, width=cfg.expand * c, kernel_size=(cfg.kernel, 1), method="practical", seed=seed
    )[0]
    net2net = net2net_deepen(parent, AT, [(cfg.expand * c, cfg.kernel), (c, 1)], seed=seed)
    return {"netmorph": embedded(netmorph), "net2net": embedded(net2net)}


def run(options: RunOptions) -> dict:
    """Every seed; JSON, CSV and the histogram PNG in the output directory."""
    device = resolve_device(options.device)
    out = options.out_dir(NAME)
    dataset, cfg, data = experiment_dataset(options.data_dir, "cifar10", options.quick, config_for)
    tensors = DeviceData.from_dataset(data, device)
    with exact_float32(1 if dataset == "digits" or options.quick else torch.get_num_threads()):
        filters = [
            run_seed(s, cfg, tensors, (data.input_shape[0], data.classes), options.quiet)
            for s in options.seed_list
        ]
    rows = [
        {"seed": seed, "method": method, "filter": name, **filter_stats(f)}
        for seed, per in zip(options.seed_list, filters)
        for method, fs in per.items()
        for name, f in zip(("F1", "F2"), fs)
    ]
    summary = []
    for method in ("netmorph", "net2net"):
        for name in ("F1", "F2"):
            group = [r for r in rows if r["method"] == method and r["filter"] == name]
            entry: dict = {
                "method": method,
                "filter": name,
                "shape": list(filters[0][method][("F1", "F2").index(name)].shape),
            }
            for key in (
                "std",
                "excess_kurtosis",
                "zero_fraction",
                "near_zero_fraction",
                "unit_fraction",
            ):
                entry[f"{key}_mean"], entry[f"{key}_std"] = mean_std([r[key] for r in group])
            summary.append(entry)
    write_results(
        out,
        NAME,
        rows,
        summary,
        {
            "dataset": dataset,
            "seeds": options.seed_list,
            "config": asdict(cfg),
            "per_seed": rows,
        },
    )
    samples = {
        f"{method} {name} (all seeds)": np.concatenate([per[method][i].ravel() for per in filters])
        for method in ("netmorph", "net2net")
        for i, name in enumerate(("F1", "F2"))
    }
    histograms(out / f"{NAME}.png", samples, f"embedded filters after morphing {AT}")
    options.say(
        table(
            [
                "method",
                "filter",
                "std",
                "exact zeros",
                f"|v|≤{NEAR}",
                "exactly 1/n",
                "excess kurtosis",
            ],
            [
                [
                    s["method"],
                    s["filter"],
                    f"{s['std_mean']:.3f}",
                    f"{s['zero_fraction_mean']:.3f}",
                    f"{s['near_zero_fraction_mean']:.3f}",
                    f"{s['unit_fraction_mean']:.3f}",
                    f"{s['excess_kurtosis_mean']:.2f}",
                ]
                for s in summary
            ],
        )
    )
    return {"experiment": NAME, "out": out, "summary": summary}
