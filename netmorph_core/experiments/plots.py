"""PNG plots with matplotlib's Agg canvas (no pyplot, no display, no global backend change)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120
MARKERS = "o.s^vx+*dD"


@dataclass(frozen=True)
class Series:
    """One line: y = ``mean`` over ``x``, with a shaded band of ± ``std`` when given;
    ``color``: a matplotlib colour (None: the axes' next colour)."""

    label: str
    x: Sequence[float]
    mean: Sequence[float]
    std: Sequence[float] | None = None
    style: str = "-"
    color: str | None = None


@dataclass(frozen=True)
class Panel:
    """One set of axes: several series, optional vertical markers (e.g. morph points)."""

    title: str
    xlabel: str
    ylabel: str
    series: Sequence[Series]
    vlines: Sequence[float] = field(default=())
    yscale: str = "linear"
    xscale: str = "linear"


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def line_panels(path: Path, panels: Sequence[Panel], suptitle: str | None = None) -> Path:
    """Draw ``panels`` side by side and save a PNG to ``path``."""
    fig = Figure(figsize=(5.2 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for s in panel.series:
            x = np.asarray(s.x, dtype=float)
            m = np.asarray(s.mean, dtype=float)
            extra = {} if any(c in s.style for c in MARKERS) or len(x) >= 40 else {"marker": "."}
            if s.color is not None:
                extra["color"] = s.color
            (line,) = ax.plot(x, m, s.style, label=s.label, **extra)
            if s.std is not None:
                sd = np.asarray(s.std, dtype=float)
                ax.fill_between(x, m - sd, m + sd, color=line.get_color(), alpha=0.2, lw=0)
        for v in panel.vlines:
            ax.axvline(v, color="grey", ls=":", lw=1)
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        ax.set_yscale(panel.yscale)
        ax.set_xscale(panel.xscale)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, path)


def histograms(path: Path, samples: Mapping[str, np.ndarray], title: str, bins: int = 80) -> Path:
    """One histogram per entry of ``samples`` (label → values), each on its own axes."""
    fig = Figure(figsize=(5.2 * len(samples), 4.0), layout="constrained")
    axes = fig.subplots(1, len(samples), squeeze=False)[0]
    for ax, (label, values) in zip(axes, samples.items()):
        ax.hist(np.asarray(values, dtype=float).ravel(), bins=bins, color="tab:blue")
        ax.set(title=label, xlabel="filter value", ylabel="count")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)
