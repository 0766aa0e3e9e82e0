"""Writing results: JSON and CSV files, and mean ± spread over seeds.

The spread is the sample standard deviation (ddof = 1; 0 for a single seed).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std) of ``values``; the std of a single value is 0."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def at_least(a: float, b: float) -> bool:
    """a ≥ b for means of accuracies: equal means that differ only by the rounding of their
    sums count as equal (tolerance 1e-12)."""
    return a >= b - 1e-12


def curve_stats(curves: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    """Per-position mean and std of equally long curves (one per seed)."""
    lengths = {len(c) for c in curves}
    if len(lengths) != 1:
        raise ValueError(f"curves must all have the same length, got lengths {sorted(lengths)}")
    arr = np.asarray(curves, dtype=np.float64)
    std = arr.std(axis=0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1])
    return {"mean": arr.mean(axis=0).tolist(), "std": std.tolist()}


def fmt(mean: float, std: float, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` scaled (percent by default)."""
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _jsonable(obj: object) -> object:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj: object) -> Path:
    """Write ``obj`` as indented JSON (NumPy scalars/arrays converted, NaN/Inf as null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")
    return path


def write_csv(path: Path, rows: Iterable[Mapping[str, object]]) -> Path:
    """Write dict rows as CSV; the columns are the keys in first-seen order."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_results(
    out: Path,
    name: str,
    rows: Iterable[Mapping[str, object]],
    summary: Sequence[Mapping[str, object]],
    record: Mapping[str, object],
) -> None:
    """An experiment's outputs: ``NAME.csv`` (one row per measurement), ``summary.csv`` and
    ``NAME.json`` (``record`` with the experiment name and the summary)."""
    rows = list(rows)
    write_csv(out / f"{name}.csv", rows)
    write_csv(out / "summary.csv", summary)
    write_json(out / f"{name}.json", {"experiment": name, **record, "summary": summary})


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with left-aligned columns."""
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
