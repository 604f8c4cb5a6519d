"""Chapter 6 (interpretation) explorer: the layer x head map of stored head sweeps, redrawn
for any metric and direction without recomputing.  Core widgets only (ipywidgets 7 and 8)."""
from __future__ import annotations

from typing import Any, Mapping

import matplotlib.pyplot as plt

from helpers.results.metrics import Metric
from helpers.results.patch_result import PatchResult
from helpers.teach.plotting import plot_patching

__all__ = ["metric_explorer"]


def metric_explorer(results: Mapping[str, PatchResult], metric: Metric = "logit_diff",
                    normalise: bool = True) -> Any:
    """A metric dropdown and a direction toggle over ``results`` (``{"denoise": r, "noise": r}``,
    layer x head sweeps, each holding every metric): redraws ``plot_patching`` of the chosen
    pair (importance: share restored / destroyed).  Returns the widget (a ``VBox``)."""
    import ipywidgets as w

    first = next(iter(results.values()))
    pick_metric = w.Dropdown(options=sorted(first.values), value=metric, description="metric")
    pick_direction = w.ToggleButtons(options=list(results), value=next(iter(results)),
                                     description="direction")
    shown = w.Output()

    def redraw(*_: Any) -> None:
        shown.clear_output(wait=True)
        with shown:
            plot_patching(results[pick_direction.value], metric=pick_metric.value,
                          normalise=normalise)
            plt.show()

    for control in (pick_metric, pick_direction):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([pick_metric, pick_direction]), shown])


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
