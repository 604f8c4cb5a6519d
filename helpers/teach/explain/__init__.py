"""What a result means, in words: one module per chapter topic, each turning results into the
"What it means" Markdown a chapter shows (one call per place).  Every function reads the
numbers it is given and nothing else, and returns ``IPython.display.Markdown`` (its ``.data``
is the text), so a chapter cell ends with the call and the prose appears.

Modules load on first use: ``helpers.teach.explain.positions`` (chapter 3), ``.heads`` (4), …
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
        raise AttributeError(f"helpers.teach.explain has no module {name!r}") from None
