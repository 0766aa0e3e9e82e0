"""Condition (7) and Fig. 3: residual after one solve, and non-zero occupation, over C and K.

G (C, C, K, K) is random (standard normal, seeded) and is morphed into F1 (C1, C, K, K) and
F2 (C, C1, K, K), so G~ has size 2K − 1. Two widths: C1 = C (the paper's Fig. 3 setting;
condition (7) holds only for K = 1) and the smallest C1 for which condition (7) holds,
C1 = ⌈C·(2K − 1)²/K²⌉. For each, three methods:

- ``idmorph`` (Net2Net): F1 = G (zero-padded), F2 = the δ identity — exact, C of C²K²
  entries of the embedded filter non-zero (Fig. 3a);
- ``practical`` (Algorithm 2): exact, at least O(C²) non-zeros (Fig. 3b);
- ``general`` (Algorithm 1) stopped after one solve: exact when condition (7) holds
  (every entry non-zero, Fig. 3c), a residual left otherwise.

Pure NumPy (the core's ``morph_depth``); no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..morph.baselines import idmorph
from ..morph.depth import morph_depth
from ..morph.result import MorphResult
from ..morph.solvability import solvability
from .options import RunOptions
from .plots import Panel, Series, line_panels
from .results import mean_std, table, write_results

NAME = "condition"
CHANNELS = (4, 8, 16, 32, 64)
KERNELS = (1, 3, 5)
QUICK_CHANNELS = (2, 4, 8)
QUICK_KERNELS = (1, 3)
METHODS = ("idmorph", "practical", "general")
#: Residuals are plotted on a log axis; exact zeros are drawn at this floor.
LOG_FLOOR = 1e-17


def condition7_width(c: int, k: int) -> int:
    """The smallest C1 with min(C1·C·K², C·C1·K²) ≥ C·C·(2K − 1)², i.e. C1·K² ≥ C·(2K − 1)²."""
    return math.ceil(c * (2 * k - 1) ** 2 / k**2)


def morph_once(g: np.ndarray, width: int, k: int, method: str, seed: int) -> MorphResult:
    """One morph of G into (F1, F2) with kernels (k, k); ``general`` stops after one solve."""
    if method == "idmorph":
        return idmorph(g, kernel_size=k)
    if method == "general":
        return morph_depth(
            g, width, k, k, method="general", seed=seed, max_iter=1, allow_approximate=True
        )
    return morph_depth(g, width, k, k, method="practical", seed=seed)


def row(c: int, k: int, width: int, method: str, seed: int, res: MorphResult) -> dict:
    """One CSV row: the morph's residual and its non-zero ratios."""
    info = solvability((c, c, k, k), width, k, k)
    ratios = res.nonzero_ratios
    return {
        "C": c,
        "K": k,
        "C1": width,
        "condition7": info.paper_condition_7,
        "method": method,
        "seed": seed,
        "residual": res.residual,
        "exact": res.residual <= 1e-10,
        "nonzero_ratio": res.nonzero_ratio,
        "nonzero_f1": ratios[0],
        "nonzero_f2": ratios[1],
        "nonzero_embedded": min(ratios),
    }


def run(options: RunOptions) -> dict:
    """Sweep C and K (and the two widths) over the seeds; write JSON, CSV and a PNG."""
    out = options.out_dir(NAME)
    channels = QUICK_CHANNELS if options.quick else CHANNELS
    kernels = QUICK_KERNELS if options.quick else KERNELS
    grid = [
        (c, k, width_mode)
        for c in channels
        for k in kernels
        for width_mode in ("C1=C", "C1 by (7)")
        if not (k == 1 and width_mode == "C1 by (7)")  # identical to C1 = C when K = 1
    ]
    rows = []
    jobs = [(s, *cell) for s in options.seed_list for cell in grid]
    for seed, c, k, width_mode in tqdm(jobs, desc=NAME, disable=options.quiet, leave=False):
        width = c if width_mode == "C1=C" else condition7_width(c, k)
        g = np.random.default_rng([seed, c, k]).standard_normal((c, c, k, k))
        for method in METHODS:
            if method == "idmorph" and width != c:
                continue  # IdMorph's width is C by construction
            res = morph_once(g, width, k, method, seed)
            rows.append({"width_mode": width_mode, **row(c, k, width, method, seed, res)})

    summary = summarise(rows)
    write_results(
        out,
        NAME,
        rows,
        summary,
        {
            "seeds": options.seed_list,
            "channels": channels,
            "kernels": kernels,
            "rows": rows,
        },
    )
    plot(out / f"{NAME}.png", summary, kernels)
    options.say(
        table(
            ["C", "K", "C1", "(7)", "method", "residual (1 solve)", "non-zero", "embedded"],
            [
                [
                    s["C"],
                    s["K"],
                    s["C1"],
                    "yes" if s["condition7"] else "no",
                    s["method"],
                    f"{s['residual_mean']:.2e}",
                    f"{s['nonzero_ratio_mean']:.3f}",
                    f"{s['nonzero_embedded_mean']:.3f}",
                ]
                for s in summary
            ],
        )
    )
    return {"experiment": NAME, "out": out, "summary": summary}


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Mean and std over seeds of each (C, K, C1, method)."""
    keys: dict[tuple, list[dict]] = {}
    for r in rows:
        keys.setdefault((r["C"], r["K"], r["C1"], r["width_mode"], r["method"]), []).append(r)
    out = []
    for (c, k, c1, mode, method), group in keys.items():
        entry = {
            "C": c,
            "K": k,
            "C1": c1,
            "width_mode": mode,
            "condition7": group[0]["condition7"],
            "method": method,
            "n": len(group),
            "all_exact": all(r["exact"] for r in group),
        }
        for metric in ("residual", "nonzero_ratio", "nonzero_embedded"):
            m, s = mean_std([r[metric] for r in group])
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = m, s
        out.append(entry)
    return out


def plot(path: Path, summary: Sequence[dict], kernels: Sequence[int]) -> None:
    """Residual after one solve and non-zero ratio of the embedded filter, against C."""
    residual_series, ratio_series = [], []
    styles = {"idmorph": ":", "practical": "--", "general": "-"}
    for k in kernels:
        for mode in ("C1=C", "C1 by (7)"):
            for method in METHODS:
                pts = [
                    s
                    for s in summary
                    if s["K"] == k and s["method"] == method and s["width_mode"] == mode
                ]
                if not pts:
                    continue
                label = f"{method} K={k}" + (" C1 by (7)" if mode != "C1=C" else "")
                xs = [s["C"] for s in pts]
                residual_series.append(
                    Series(
                        label,
                        xs,
                        [max(s["residual_mean"], LOG_FLOOR) for s in pts],
                        style=styles[method],
                    )
                )
                ratio_series.append(
                    Series(
                        label, xs, [s["nonzero_embedded_mean"] for s in pts], style=styles[method]
                    )
                )
    line_panels(
        path,
        [
            Panel(
                "residual after one solve",
                "C",
                f"relative residual (floor {LOG_FLOOR:g})",
                residual_series,
                yscale="log",
                xscale="log",
            ),
            Panel(
                "non-zero ratio of the sparser new filter",
                "C",
                "non-zero ratio",
                ratio_series,
                yscale="log",
                xscale="log",
            ),
        ],
        suptitle="Condition (7) and Fig. 3",
    )
