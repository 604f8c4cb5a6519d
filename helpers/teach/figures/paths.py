"""Chapter 9's own figures: the three runs of path patching as a diagram, the direct-path map
beside ordinary head patching, and every earlier head to a late head's query, key and value."""
from __future__ import annotations

from typing import Any, Mapping

import matplotlib.pyplot as plt
import numpy as np

from helpers.base.fmt import head_name
from helpers.results.patch_result import PatchResult
from helpers.teach.diagrams import Edge, Node, draw_diagram
from helpers.teach.figures.positions import wrap_colourbar_label
from helpers.results.metrics import Metric
from helpers.teach.figures.headmaps import colour_bar, head_map
from helpers.teach.plotting import plot_patching

__all__ = ["three_runs", "direct_vs_total", "qkv_maps"]

CLEAN, CORRUPT, PATCHED = "#cfe2f3", "#f4cccc", "#fff2cc"


def three_runs(sender: str = "L0H3", receiver: str = "L3H0.v") -> Any:
    """The three runs of path patching ``sender`` -> ``receiver`` (denoising), as a diagram:
    two cached runs, the sender run (sender clean, every other head and MLP frozen at the
    corrupted run, layer norms recomputed) and the receiver run.  Returns the Figure."""
    nodes = [
        Node("clean", f"clean run\n(cache {sender})", 0, 0, CLEAN, "clean prompt"),
        Node("corrupt", "corrupted run\n(cache every head\nand every MLP)", 0, 1.3, CORRUPT,
             "corrupted prompt"),
        Node("sender", f"sender run (corrupted prompt):\n{sender} clean, every other\nhead and MLP "
             "frozen;\nlayer norms recomputed", 1.25, 0.65, PATCHED, "patched run"),
        Node("receiver", f"receiver run (corrupted prompt):\nonly {receiver}'s input\nreplaced, "
             "the rest runs", 2.5, 0.65, PATCHED),
        Node("metric", "metric\n(logit difference)", 2.5, 1.9),
    ]
    edges = [Edge("clean", "sender", "clean output"), Edge("corrupt", "sender", "frozen values"),
             Edge("sender", "receiver", "recorded input"), Edge("receiver", "metric")]
    note = ("Receiver 'logits': the sender run's own logits are the result (no receiver run). "
            "Noising swaps the two prompts.")
    return draw_diagram(nodes, edges, title=f"Path patching {sender} -> {receiver}", note=note)


def direct_vs_total(direct: PatchResult, heads: PatchResult, normalise: bool = True,
                    metric: Metric | None = None) -> Any:
    """Two layer x head maps side by side, on one colour scale: every head's direct path to the
    logits (``path_patch(..., "heads", "logits")``) and ordinary head patching (``patch_heads``),
    each with the cells whose bootstrap interval contains 0 dotted.  Returns the Figure."""
    for r in (direct, heads):
        if r.dims != ("layer", "head"):
            raise ValueError(f"expects layer x head results, got dims {r.dims}")
    n_layers, n_heads = heads.shape
    fig, axes = plt.subplots(1, 2, figsize=(2 * max(5.0, 2.4 + 0.8 * n_heads), 2.2 + 0.45 * n_layers))
    titles = ("direct path to the logits\n(every other head and MLP frozen)",
              "ordinary head patching\n(everything downstream recomputed)")
    for ax, r, title in zip(axes, (direct, heads), titles):
        plot_patching(r, metric=metric, normalise=normalise, ax=ax, title=title, mark=True)
        ax.set_xlabel(ax.get_xlabel().replace("head\n", "head (H3 of row L0 is L0H3)\n"))
        ax.tick_params(axis="x", rotation=0)
        wrap_colourbar_label(ax, 24)
    if not normalise:  # raw means: one colour scale for both panels
        limit = max(float(np.abs(r.grid(False, metric).numpy()).max()) for r in (direct, heads)) or 1.0
        for ax in axes:
            ax.collections[0].set_clim(-limit, limit)
    fig.tight_layout()
    return fig


def qkv_maps(results: Mapping[str, PatchResult], receiver: tuple[int, int],
             normalise: bool = True) -> Any:
    """One map per input of the ``receiver`` head (``results``: ``"q"``, ``"k"``, ``"v"``, each
    every earlier head to that input), on one fixed scale: share of the clean - corrupted gap,
    -1 .. 1, as every map (``normalise``; raw: the change in the metric, symmetric around 0 at
    the largest size).  Single paths into one head are small, so cells carry three decimals; the
    strongest cells (every cell of a small map) carry their number.  Returns the Figure."""
    names = {"q": "query", "k": "key", "v": "value"}
    first = next(iter(results.values()))
    data = {k: r.change(normalise).double().numpy() for k, r in results.items()}
    limit = 1.0 if normalise else (max(float(np.abs(d).max()) for d in data.values()) or 1.0)
    rows, _ = first.shape
    fig, axes = plt.subplots(1, len(results), figsize=(1.6 + 3.1 * len(results), 2.3 + 0.5 * rows),
                             squeeze=False, layout="constrained")
    for ax, (kind, d) in zip(axes[0], data.items()):
        im = head_map(ax, d, f"-> {head_name(*receiver)}'s {names[kind]}", limits=(-limit, limit),
                      digits=3, xlabel="sender head", ylabel="sender block")
        ax.set_yticks(range(rows), first.labels["layer"])
    what = (f"share of the clean - corrupted {first.metric} gap restored" if normalise
            else f"change in mean {first.metric}")
    colour_bar(fig, im, list(axes[0]), what, list(data.values()), (-limit, limit))
    fig.suptitle(f"Every earlier head -> {head_name(*receiver)}'s inputs "
                 f"({first.labels['layer'][0]}-{first.labels['layer'][-1]})", fontsize=11)
    return fig


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
