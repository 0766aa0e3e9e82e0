"""The morphing algorithms of the papers, on NumPy filters (PyTorch weight layout)."""

from .result import MorphResult

__all__ = ["MorphResult"]
