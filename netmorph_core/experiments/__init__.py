"""Experiments that reproduce the paper's §4 at laptop scale, and the data loaders they use.

``netmorph experiment NAME`` runs one (see :mod:`.registry`); ``netmorph demo`` runs the tour
of :mod:`.demo`. Importing this package imports neither torch nor matplotlib.
"""
