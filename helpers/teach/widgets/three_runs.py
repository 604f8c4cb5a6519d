"""Chapter 2's explorer: pick a block and a position, see the three runs as bars."""
from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

from helpers.data.pairs import PromptPairs
from helpers.engine.runs import Patch
from helpers.methods.sweeps import patch_components
from helpers.models.loaded import handle
from helpers.teach.figures.three_runs import three_runs

__all__ = ["three_run_explorer"]


def three_run_explorer(model: Any, pairs: PromptPairs, layer: int, position: int,
                       normalise: bool = True) -> Any:
    """A block slider and a position menu (start values ``layer``, ``position``); each change
    patches residual row ``L<block>`` (the block's output) at that position with
    ``H.patch_components`` — the chapter's hand-written patched run — and redraws the three
    runs' bars.  Returns the widget (displaying it is the notebook's job)."""
    mh = handle(model)
    import ipywidgets as w

    n_layers = mh.anatomy.n_layers
    block = w.IntSlider(value=layer, min=0, max=n_layers - 1, description="block")
    where = w.Dropdown(options=[(f"{p}: {label}", p) for p, label in enumerate(pairs.position_labels)],
                       value=position, description="position")
    area = w.Output()

    def redraw(*_: Any) -> None:
        area.clear_output(wait=True)
        with area:
            try:
                r = patch_components(mh, pairs, [Patch("resid", block.value, where.value)])
            except (RuntimeError, ValueError, IndexError) as err:
                print(f"{type(err).__name__}: {err}")
                return
            three_runs(r.clean["logit_diff"], r.corrupted["logit_diff"], r.values["logit_diff"][:, 0],
                       f"patching residual row L{block.value} at "
                       f"{pairs.position_labels[where.value]}", normalise)
            plt.show()

    for control in (block, where):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([block, where]), area])


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
