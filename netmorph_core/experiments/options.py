"""The options every experiment takes (the ``netmorph experiment`` flags)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_RESULTS = Path("results")


@dataclass(frozen=True)
class RunOptions:
    """``seeds``: how many seeds (0 … seeds − 1); ``device``: "cpu" or "cuda"; ``out``: the
    output directory (None: ``results/<experiment>``); ``data_dir``: where MNIST / CIFAR-10
    files are (None: the bundled 8×8 digits); ``quick``: the short form; ``quiet``: no
    progress bars or tables."""

    seeds: int = 3
    device: str = "cpu"
    out: Path | None = None
    data_dir: Path | None = None
    quick: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"seeds must be a positive int, got {self.seeds!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        for name in ("out", "data_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, Path)):
                raise TypeError(f"{name} must be a path or None, got {value!r}")
            if value is not None:
                object.__setattr__(self, name, Path(value))

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

    def out_dir(self, experiment: str) -> Path:
        """The output directory of ``experiment`` (created)."""
        path = self.out if self.out is not None else DEFAULT_RESULTS / experiment
        path.mkdir(parents=True, exist_ok=True)
        return path

    def say(self, text: str) -> None:
        """Print ``text`` unless quiet."""
        if not self.quiet:
            print(text, flush=True)

    def run_record(self, dataset: str, config: Any) -> dict[str, object]:
        """What every training experiment's JSON records about the run: the data set, the
        device, the seeds and the configuration dataclass ``config``."""
        return {
            "dataset": dataset,
            "device": self.device,
            "seeds": self.seed_list,
            "config": asdict(config),
        }
