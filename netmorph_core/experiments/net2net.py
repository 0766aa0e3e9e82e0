"""The Net2Net baselines (Chen et al. 2015) on torch models, in NetMorph's child architectures.

- :func:`net2net_deepen`: IdMorph. The layer G (C2, C0, *K) becomes the chain F_0 = G
  (zero-padded to K_0 ≥ K, bias b), then δ identities (1 at the centre tap), so
  F_P ⊛ … ⊛ F_0 = G~ exactly; every inner blob is then widened to its target width by
  Net2WiderNet (copies of random units, outgoing weights divided by the copy count).
  The architecture (layer shapes, padding, the P-activations at a = 1 between the new layers)
  is built by the same code as :func:`netmorph_core.torch.morph_subnet` for the same
  ``layers``, so the two children differ only in the values of the embedded filters.
- :func:`net2net_widen`: Net2WiderNet on a model: the new output channels of layer ``at`` copy
  random existing ones and every consumer's columns are divided by the copy counts.

Both preserve the function exactly (no symmetry-breaking noise), so copied units stay copies
under training: that is Net2Net's exact form, the one compared in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..morph.baselines import identity_filter
from ..morph.baselines import net2net_widen as net2net_widen_filters
from ..morph.kernel import morph_kernel
from ..torch import widen
from ..torch.depth import replace_with_chain
from ..torch.pipeline import Request, run
from ..torch.report import Outcome
from ..torch.surgery import LAYER_TYPES, find_layer, to_numpy64, to_tensor

Layers = Sequence[tuple[int | None, int | None]]


def idmorph_chain(
    g: np.ndarray,
    bias: np.ndarray | None,
    layers: Layers,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """IdMorph filters (and biases) for the chain ``layers`` = [(w_0, K_0), …, (C2, K_P)].

    F_0 = G zero-padded centred to K_0 (K_0 ≥ K), bias b; F_p (p ≥ 1) the δ identity of
    kernel K_p (odd) with zero bias. Each inner blob p < P is then widened from C2 to w_p
    with Net2WiderNet. Linear G (C2, C0): kernels are None.
    """
    c2 = g.shape[0]
    kernels = [() if k is None else (k,) * (g.ndim - 2) for _, k in layers]
    widths = [c2 if w is None else int(w) for w, _ in layers]
    if widths[-1] != c2:
        raise ValueError(f"the last layer must have G's {c2} output channels, got {widths[-1]}")
    if any(w < c2 for w in widths[:-1]):
        raise ValueError(
            f"IdMorph needs every inner width to be at least G's {c2} output channels "
            f"(units are copied, never removed), got {widths[:-1]}"
        )
    first = g if g.ndim == 2 or kernels[0] == g.shape[2:] else morph_kernel(g, kernels[0]).filter
    filters = [first] + [identity_filter(c2, k, g.dtype) for k in kernels[1:]]
    biases: list[np.ndarray | None] = [bias] + [
        None if bias is None else np.zeros(c2, dtype=g.dtype) for _ in kernels[1:]
    ]
    for p in range(len(filters) - 1):
        res = net2net_widen_filters(filters[p], filters[p + 1], widths[p], b1=biases[p], seed=rng)
        filters[p], filters[p + 1], biases[p] = res.f1, res.f2, res.b1
    return filters, biases


def chain_layers(module: nn.Module) -> list[nn.Module]:
    """The Conv/Linear layers inside ``module`` in registration (data-flow) order."""
    return [m for m in module.modules() if isinstance(m, LAYER_TYPES)]


def net2net_deepen(
    model: nn.Module,
    at: str,
    layers: Layers,
    *,
    activation: object = "prelu",
    seed: int | None = None,
) -> nn.Module:
    """IdMorph of layer ``at`` into the chain ``layers`` (as for ``morph_subnet``), the inner
    blobs widened by Net2WiderNet; a new model (``model`` is not modified).

    The chain is laid out by the adapter's own builder (the one behind ``deepen`` and
    ``morph_subnet``), given the IdMorph filters instead of solved ones; the biases are then
    set the Net2Net way (b on F_0, copied with its units; zero after).
    """
    parent_layer = find_layer(model, at)
    bias = None if parent_layer.bias is None else to_numpy64(parent_layer.bias)
    rng = np.random.default_rng(seed)
    biases: list[np.ndarray | None] = []

    def solve(g: np.ndarray) -> tuple[list[np.ndarray], float, bool, int]:
        filters, chain_biases = idmorph_chain(g, bias, layers, rng)
        biases.extend(chain_biases)
        return filters, 0.0, True, 0

    def build(child: nn.Module) -> Outcome:
        outcome = replace_with_chain(child, at, solve, activation=activation, batch_norm=False)
        with torch.no_grad():
            for layer, b in zip(chain_layers(child.get_submodule(at)), biases, strict=True):
                if layer.bias is not None:
                    layer.bias.copy_(to_tensor(b, layer.bias) if b is not None else 0.0)
        return outcome

    child, _ = run(Request("net2net_deepen", model, (at,), build, edits=(at,)))
    return child


def net2net_widen(model: nn.Module, at: str, width: int, *, seed: int | None = None) -> nn.Module:
    """Net2WiderNet on layer ``at``: a new model whose layer ``at`` has ``width`` outputs.

    The child architecture and channel order come from :func:`netmorph_core.torch.widen`; new
    channel j copies parent channel m(j) (drawn uniformly), and every consumer's input column j
    is the parent's column m(j) divided by |{j': m(j') = m(j)}|. Consumers must take the
    channels directly (Conv/Linear, through element-wise modules); ValueError otherwise.
    """
    child, report = widen(model, at, width, seed=seed)
    src = report.param_sources[f"{at}.weight"].index[0]
    rng = np.random.default_rng(seed)
    parent_channels = int(src.max()) + 1
    mapping = np.where(src >= 0, src, rng.integers(0, parent_channels, size=src.size))
    counts = np.bincount(mapping, minlength=parent_channels)
    parent = dict(model.named_parameters())
    producer = {f"{at}.weight", f"{at}.bias"}
    with torch.no_grad():
        for name, p in child.named_parameters():
            source = report.param_sources[name]
            if source.index is None or (name in producer and source.parent is None):
                continue
            old = to_numpy64(parent[source.parent])
            if name in producer:
                p.copy_(to_tensor(old[mapping], p))
            elif len(source.index) >= 2 and source.index[0] is None and source.index[1] is not None:
                cols = source.index[1]
                if cols.size != src.size:
                    raise ValueError(
                        f"{name} takes the widened channels through a reshape; Net2WiderNet is "
                        "implemented for consumers that take the channels directly"
                    )
                shape = (1, -1) + (1,) * (old.ndim - 2)
                p.copy_(to_tensor(old[:, mapping] / counts[mapping].reshape(shape), p))
            else:
                raise ValueError(
                    f"{name} is a per-channel parameter between {at!r} and its consumers; "
                    "Net2WiderNet here supports element-wise modules without parameters only"
                )
    return child
