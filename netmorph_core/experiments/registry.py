"""Experiment names → runners, imported lazily (torch loads only when one runs)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .options import RunOptions

#: What every training experiment imports.
TRAINING = ("torch", "matplotlib", "tqdm")


@dataclass(frozen=True)
class Experiment:
    """A runnable experiment: ``module`` exposes ``run(options) -> dict``; ``requires``: the
    optional dependencies it imports (keys of :data:`netmorph_core.extras.OPTIONAL`);
    ``bundled_data``: whether it trains on scikit-learn's digits when no data directory is
    given."""

    name: str
    module: str
    description: str
    requires: tuple[str, ...] = TRAINING
    bundled_data: bool = True


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "mlp",
            "exp_mlp",
            "§4.1 / Fig. 7: softmax regression → MLP (PReLU, PTanh); "
            "NetMorph vs Net2Net vs scratch (MNIST with --data-dir)",
        ),
        Experiment(
            "cnn",
            "exp_cnn",
            "§4.2–4.3: a small CNN through depth → subnet → kernel → "
            "width; NetMorph vs Net2Net vs scratch (CIFAR-10 with --data-dir)",
        ),
        Experiment(
            "histograms",
            "exp_histograms",
            "§4.2: values of the embedded filters, NetMorph vs Net2Net",
        ),
        Experiment(
            "stable",
            "exp_stable",
            "Stable morphing: accuracy drop and loss jump in the first steps after a "
            "depth morph; practical vs stable vs Net2Net",
        ),
        Experiment(
            "condition",
            "exp_condition",
            "Condition (7) / Fig. 3: residual after one "
            "solve and non-zero ratio over C and K (NumPy only)",
            requires=("matplotlib", "tqdm"),
            bundled_data=False,
        ),
        Experiment(
            "lm-growth",
            "exp_lm_growth",
            "Grow a byte-level decoder LM (width, heads, FFN, depth) trained on the Python "
            "standard library; netmorph vs zero-init vs copied units vs scratch at equal FLOPs",
            bundled_data=False,
        ),
    )
}


def requirements(name: str, options: RunOptions) -> tuple[str, ...]:
    """The optional dependencies experiment ``name`` needs with ``options``."""
    experiment = EXPERIMENTS[name]
    sklearn = ("sklearn",) if experiment.bundled_data and options.data_dir is None else ()
    return experiment.requires + sklearn


def run_experiment(name: str, options: RunOptions) -> dict:
    """Run the experiment ``name`` (a key of :data:`EXPERIMENTS`) and return its summary."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; expected one of {', '.join(EXPERIMENTS)}")
    if not isinstance(options, RunOptions):
        raise TypeError(f"options must be a RunOptions, got {type(options).__name__}")
    module = importlib.import_module(f"{__package__}.{EXPERIMENTS[name].module}")
    return module.run(options)
