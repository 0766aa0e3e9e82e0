"""``python -m netmorph_core`` runs the ``netmorph`` command line."""

from .cli import main

raise SystemExit(main())
