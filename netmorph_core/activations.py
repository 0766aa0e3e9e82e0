"""Parametric activations (NetMorph §3.3): φ^a = (1 − a)·φ + a·x.

φ^0 = φ and φ^1 is the identity, so a new layer can be inserted with a = 1 (linear, the morph is
exact) and grow non-linear as a is learned. For ReLU, φ^a is PReLU with slope a.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import numpy as np
from scipy.special import erf, expit

from . import _validation as v

Activation = Callable[[np.ndarray], np.ndarray]

LEAKY_RELU_SLOPE = 0.01  # PyTorch's default negative slope
ELU_ALPHA = 1.0  # PyTorch's default alpha
SQRT2 = math.sqrt(2.0)  # a Python float, so float32 inputs stay float32


def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0)."""
    return np.maximum(x, 0)


def leaky_relu(x: np.ndarray) -> np.ndarray:
    """x for x ≥ 0, 0.01·x otherwise."""
    return np.where(x >= 0, x, LEAKY_RELU_SLOPE * x)


def elu(x: np.ndarray) -> np.ndarray:
    """x for x > 0, exp(x) − 1 otherwise (alpha = 1)."""
    return np.where(x > 0, x, ELU_ALPHA * np.expm1(np.minimum(x, 0)))


def tanh(x: np.ndarray) -> np.ndarray:
    """tanh(x)."""
    return np.tanh(x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(−x)), overflow-free."""
    return expit(x)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU: x·Φ(x) = x·(1 + erf(x/√2))/2."""
    return 0.5 * x * (1.0 + erf(x / SQRT2))


def silu(x: np.ndarray) -> np.ndarray:
    """x·sigmoid(x)."""
    return x * expit(x)


ACTIVATIONS: Mapping[str, Activation] = MappingProxyType(
    {
        "relu": relu,
        "leaky_relu": leaky_relu,
        "elu": elu,
        "tanh": tanh,
        "sigmoid": sigmoid,
        "gelu": gelu,
        "silu": silu,
    }
)


#: The paper's spelling of each base; its parametric form is "P" + this (PReLU, PTanh, ...).
DISPLAY_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "relu": "ReLU",
        "leaky_relu": "LeakyReLU",
        "elu": "ELU",
        "tanh": "Tanh",
        "sigmoid": "Sigmoid",
        "gelu": "GELU",
        "silu": "SiLU",
    }
)


def _folded(name: str) -> str:
    return name.strip().lower().replace("_", "").replace("-", "")


_BY_FOLDED = {_folded(n): n for n in ACTIVATIONS}


def accepted_names() -> str:
    """The activation names every ``base``/``activation`` argument accepts, for messages."""
    bases = ", ".join(ACTIVATIONS)
    paper = ", ".join(f"P{d}" for d in DISPLAY_NAMES.values())
    return f"{bases} or the parametric names {paper} (any case)"


def canonical_name(name: str) -> str:
    """The key of :data:`ACTIVATIONS` that ``name`` means: a base name ("relu", "LeakyReLU")
    or the paper's parametric name of one ("PReLU", "ptanh", "PSigmoid"), case-insensitive,
    ``_``/``-`` ignored. ValueError listing the accepted names otherwise."""
    folded = _folded(name)
    if folded in _BY_FOLDED:
        return _BY_FOLDED[folded]
    if folded.startswith("p") and folded[1:] in _BY_FOLDED:
        return _BY_FOLDED[folded[1:]]
    raise ValueError(
        f"unknown activation {name!r}; expected one of {accepted_names()}, or a callable"
    )


def resolve(base: str | Activation) -> Activation:
    """The activation named ``base`` (see :func:`canonical_name`), or ``base`` if callable."""
    if isinstance(base, str):
        return ACTIVATIONS[canonical_name(base)]
    if not callable(base):
        raise TypeError(f"base must be an activation name or a callable, got {type(base).__name__}")
    return base


def _on_a_copy(phi: Activation) -> Activation:
    """``phi`` applied to a copy of its argument (a caller's φ may write into it)."""

    def copied(x: np.ndarray) -> np.ndarray:
        return phi(np.array(x, copy=True))

    copied.__name__ = getattr(phi, "__name__", "activation")
    return copied


def p_activation(base: str | Activation, a: float) -> Activation:
    """The P-activation φ^a(x) = (1 − a)·φ(x) + a·x of ``base`` (a name or a callable).

    The paper takes a ∈ [0, 1]; any finite real a is accepted since a learned a may leave it.
    φ^1(x) == x and φ^0(x) == φ(x) exactly. The result keeps x's floating dtype. A callable
    ``base`` is given a copy of x, so one that writes into its argument cannot change x.
    """
    phi = resolve(base) if isinstance(base, str) else _on_a_copy(resolve(base))
    a = v.real_number(a, "a")

    def phi_a(x: np.ndarray) -> np.ndarray:
        return (1.0 - a) * phi(x) + a * x

    phi_a.__name__ = f"p_{getattr(phi, '__name__', 'activation')}"
    phi_a.__doc__ = f"(1 − {a})·{phi_a.__name__[2:]}(x) + {a}·x"
    return phi_a


def zero_preserving(base: str | Activation) -> bool:
    """Whether φ(0) == 0 (a zero pre-activation stays zero), evaluated on a float64 zero.

    True for relu, leaky_relu, elu, tanh, gelu and silu; False for sigmoid (φ(0) = 1/2).
    """
    phi = resolve(base)
    out = np.asarray(phi(np.zeros(1)))
    if out.size != 1:
        raise ValueError(
            f"base must map an array of shape (1,) to one value, got shape {out.shape}"
        )
    return bool(out.reshape(()) == 0.0)
