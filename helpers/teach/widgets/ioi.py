"""ipywidgets explorers built on the sweeps and plots.

Only core widgets (``Text``, ``Dropdown``, ``ToggleButtons``, ``IntSlider``,
``SelectionSlider``, ``Output``, boxes) so they work on ipywidgets 7 (Colab) and 8.  Each explorer
returns the widget; displaying it is the notebook's job.  Results are cached
per (prompt, site, direction), so moving a slider only redraws.
"""
from __future__ import annotations

from typing import Any, Callable

import matplotlib.pyplot as plt

from helpers.base.fmt import head_name, num
from helpers.data.prompts import PromptError, pairs_from_prompt
from helpers.methods.observe import attention_patterns
from helpers.methods.sweeps import (PatchResult, patch_attn_out, patch_heads, patch_mlp_out,
                                    patch_residual)
from helpers.models.loaded import handle
from helpers.teach.plotting import ANNOT_PT, plot_attention, plot_patching

__all__ = ["position_explorer", "head_explorer"]

_SWEEPS: dict[str, Callable[..., PatchResult]] = {
    "residual stream": patch_residual, "attention output": patch_attn_out, "MLP output": patch_mlp_out}


def position_explorer(model: Any, prompt: str, normalise: bool = True) -> Any:
    """Type a prompt, pick the site and the direction, slide through the rows.

    The top figure is the layer x position heatmap (the selected row boxed),
    the bottom one that row as bars.  Errors in the prompt (unknown words, no
    IOI roles) are printed, not raised.
    """
    mh = handle(model)
    import ipywidgets as w

    f = mh.anatomy
    text = w.Text(value=prompt, description="prompt", layout=w.Layout(width="95%"))
    site = w.Dropdown(options=list(_SWEEPS), value="residual stream", description="site")
    direction = w.ToggleButtons(options=["denoise", "noise"], value="denoise", description="direction")
    rows = ["embed"] + [f"L{i}" for i in range(f.n_layers)]
    layer = w.SelectionSlider(options=rows, value=rows[0], description="layer row",
                              continuous_update=False)
    out = w.Output()
    cache: dict[tuple, Any] = {}
    state = {"updating": False}

    def result() -> PatchResult:
        key = (text.value, site.value, direction.value)
        if key not in cache:
            pairs = pairs_from_prompt(mh.tokenizer, text.value)
            cache[key] = _SWEEPS[site.value](mh, pairs, direction.value, progress=False)
        return cache[key]

    def draw(*_: Any) -> None:
        if state["updating"]:
            return
        out.clear_output(wait=True)
        with out:
            try:
                r = result()
            except (PromptError, ValueError) as err:
                print(f"Cannot patch this prompt: {err}")
                return
            labels = r.labels["layer"]
            if list(layer.options) != labels:  # the residual stream has one more row
                state["updating"] = True
                keep = layer.value if layer.value in labels else labels[0]
                layer.options, layer.value = labels, keep
                state["updating"] = False
            row = labels.index(layer.value)
            fig, (top, bottom) = plt.subplots(2, 1, figsize=(min(14, 3 + 0.6 * r.shape[1]), 6.5),
                                              gridspec_kw={"height_ratios": [3, 1.4]})
            try:
                plot_patching(r, ax=top, normalise=normalise)
                values = r.grid(normalise)[row]   # what the heatmap shows
            except ValueError:  # too small a gap to normalise: raw values
                top.clear()
                plot_patching(r, ax=top, normalise=False)
                values = r.mean()[row]
            top.add_patch(plt.Rectangle((0, row), r.shape[1], 1, fill=False, lw=2, ec="black"))
            x = [i + 0.5 for i in range(r.shape[1])]   # the heatmap's column centres
            data = values.double().numpy()
            bars = bottom.bar(x, data, color=["tab:blue" if v >= 0 else "tab:red" for v in data])
            bottom.bar_label(bars, labels=[num(v) for v in data], fontsize=ANNOT_PT, padding=2)
            bottom.margins(y=0.25)  # room for the value labels
            bottom.set_xlim(0, r.shape[1])
            bottom.set_xticks(x, r.labels["position"], rotation=60, fontsize=8)
            bottom.axhline(0, color="black", lw=0.8)
            bottom.set_title(f"row {labels[row]}: the boxed row above as bars (blue >= 0, red < 0)",
                             fontsize=9)
            fig.tight_layout()
            a, b = top.get_position(), bottom.get_position()   # bars under their columns
            bottom.set_position([a.x0, b.y0, a.width, b.height])
            plt.show()

    for control in (text, site, direction, layer):
        control.observe(draw, names="value")
    draw()
    return w.VBox([text, w.HBox([site, direction]), layer, out])


def head_explorer(model: Any, prompt: str) -> Any:
    """Pick a layer and a head: its attention pattern on the prompt, next to the
    head-patching scores of that layer (denoising, all positions)."""
    mh = handle(model)
    import ipywidgets as w

    f = mh.anatomy
    text = w.Text(value=prompt, description="prompt", layout=w.Layout(width="95%"))
    layer = w.IntSlider(value=f.n_layers - 1, min=0, max=f.n_layers - 1, description="block")
    head = w.Dropdown(options=list(range(f.n_heads)), value=0, description="head")
    out = w.Output()
    cache: dict[str, Any] = {}

    def redraw(*_: Any) -> None:
        out.clear_output(wait=True)
        with out:
            try:
                if text.value not in cache:
                    pairs = pairs_from_prompt(mh.tokenizer, text.value)
                    cache[text.value] = (pairs, patch_heads(mh, pairs, progress=False))
                pairs, heads = cache[text.value]
            except (PromptError, ValueError) as err:
                print(f"Cannot patch this prompt: {err}")
                return
            pattern = attention_patterns(mh, pairs.clean_ids, layer.value)[0, head.value]
            fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5),
                                              gridspec_kw={"width_ratios": [1, 1.6]})
            try:
                scores, label = heads.grid()[layer.value], heads.importance_label()
            except ValueError:
                scores, label = heads.mean()[layer.value], "mean logit_diff"
            colours = ["tab:orange" if h == head.value else "tab:blue" for h in range(f.n_heads)]
            bars = left.bar(range(f.n_heads), scores.double().numpy(), color=colours)
            left.bar_label(bars, labels=[num(v) for v in scores], fontsize=ANNOT_PT, padding=2)
            left.margins(y=0.15)  # room for the value labels
            left.set_xticks(range(f.n_heads), [head_name(layer.value, h) for h in range(f.n_heads)])
            left.axhline(0, color="black", lw=0.8)
            left.set_ylabel(label)
            left.set_title(f"denoising each head of block {layer.value} "
                           f"(orange: {head_name(layer.value, head.value)})", fontsize=10)
            plot_attention(pattern, pairs.position_labels, ax=right,
                           title=f"head {head_name(layer.value, head.value)} attention (clean prompt)")
            plt.show()

    for control in (text, layer, head):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([text, w.HBox([layer, head]), out])


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
