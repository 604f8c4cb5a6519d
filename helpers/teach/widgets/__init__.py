"""ipywidgets explorers: one module per chapter topic.  ``helpers.teach.widgets.ioi`` holds the IOI
explorers of chapters 3-4 (``position_explorer``, ``head_explorer``, also importable from
here); other modules load on first use, e.g. ``helpers.teach.widgets.concepts``.

Only core widgets (``Text``, ``Dropdown``, ``ToggleButtons``, ``IntSlider``,
``SelectionSlider``, ``Output``, boxes) so they work on ipywidgets 7 (Colab) and 8.  Each
explorer returns the widget; displaying it is the notebook's job.
"""
from __future__ import annotations

import importlib
from typing import Any

from helpers.teach.widgets.ioi import head_explorer, position_explorer

__all__ = ["position_explorer", "head_explorer"]


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"helpers.teach.widgets has no module {name!r}") from None
