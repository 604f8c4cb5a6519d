"""Figures made for one chapter topic (the general ones — heatmaps, bars, attention patterns —
are in ``helpers.teach.plotting``; diagrams in ``helpers.teach.diagrams``).  One module per topic; every
function returns the matplotlib ``Figure`` and follows the figure rules: numbers at least
8 pt (``helpers.teach.plotting.ANNOT_PT``) or none, written with ``helpers.base.fmt.num`` (never
"-0.00"), every colour explained, panels that are compared share their axis limits.

Modules load on first use: ``helpers.teach.figures.three_runs`` (chapter 2), …
"""
from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"helpers.teach.figures has no module {name!r}") from None
