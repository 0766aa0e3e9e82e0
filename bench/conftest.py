"""Configuration of the benchmark suite (pytest-benchmark): ``pytest bench`` or ``bench/run.py``.

Files named ``bench_*.py`` are collected from this folder only; the plain test run looks in
``tests/`` alone. ``--quick`` leaves out the largest sizes (marked ``full_only``).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--quick", action="store_true", help="benchmarks: leave out the largest sizes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "full_only: a size run only without --quick")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--quick"):
        return
    kept = [item for item in items if item.get_closest_marker("full_only") is None]
    deselected = [item for item in items if item.get_closest_marker("full_only") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
