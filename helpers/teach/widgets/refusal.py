"""Chapter 7's explorer: the residual-stream map of the refusal task for another template,
another harmful word and either direction.  Core widgets only (ipywidgets 7 and 8)."""
from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

from helpers.data.behaviours import BinaryTask, binary_pairs
from helpers.data.prompts import PromptError
from helpers.methods.sweeps import PatchResult, patch_residual
from helpers.models.loaded import handle
from helpers.teach.plotting import plot_patching

__all__ = ["residual_explorer"]


def residual_explorer(model: Any, task: BinaryTask, n_pairs: int = 8, seed: int = 0,
                      template: int = 0, normalise: bool = True) -> Any:
    """Pick a template (held-out ones marked), a harmful word for the clean prompts (the
    harmless partners still vary) and the direction; the residual stream map (``[rows, seq]``)
    is recomputed on ``n_pairs`` pairs and cached.  Errors are printed, not raised."""
    mh = handle(model)
    import ipywidgets as w

    n_train = len(task.templates)
    pick_template = w.Dropdown(
        options=[(f"{t}{'' if t < n_train else ' (held out)'}: {text}", t)
                 for t, text in enumerate(task.every_template)],
        value=template, description="template", layout=w.Layout(width="95%"))
    pick_word = w.Dropdown(options=list(task.positive), value=task.positive[0], description="harmful X")
    pick_direction = w.ToggleButtons(options=["denoise", "noise"], value="denoise", description="direction")
    view = w.Output()
    cache: dict[tuple, PatchResult] = {}

    def redraw(*_: Any) -> None:
        view.clear_output(wait=True)
        with view:
            key = (pick_template.value, pick_word.value, pick_direction.value)
            try:
                if key not in cache:
                    pairs = binary_pairs(mh.tokenizer, task, n=n_pairs, seed=seed, template=key[0],
                                         positive=[key[1]])
                    cache[key] = patch_residual(mh, pairs, key[2], progress=False)
                plot_patching(cache[key], normalise=normalise)
                plt.show()
            except (PromptError, ValueError) as err:
                print(f"{type(err).__name__}: {err}")

    for control in (pick_template, pick_word, pick_direction):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([pick_template, w.HBox([pick_word, pick_direction]), view])


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
