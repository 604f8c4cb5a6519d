"""Chapter 7's figures (the toy refusal task): sweep panels in both directions, what the
decisive heads read from ``END``, and the circuit map.  Every function returns the ``Figure``;
numbers are at least 8 pt and written with ``helpers.base.fmt.num``; every colour is explained by a
colour bar or a legend; role colours are an argument, never a patched module constant."""
from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import Normalize

from helpers.base.fmt import head_name, num
from helpers.circuits.search import CircuitSearch
from helpers.engine.runs import component_place
from helpers.results.patch_result import PatchResult
from helpers.teach.diagrams import Edge, Node, draw_diagram
from helpers.teach.plotting import ANNOT_PT, ROLE_COLOURS, plot_attention, plot_patching

__all__ = ["sweep_panels", "attention_rows", "head_pattern", "circuit_map", "circuit_diagram"]


def sweep_panels(results: Sequence[PatchResult], normalise: bool = True, ncols: int = 1,
                 panel: tuple[float, float] = (9.0, 4.2)) -> Any:
    """One ``plot_patching`` heatmap per result, ``ncols`` per row (``panel``: inches per panel).
    Normalised maps share the fixed -1 .. 1 scale; raw maps are given one shared limit here."""
    nrows = -(-len(results) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False)
    for ax, r in zip(axes.flat, results):
        plot_patching(r, normalise=normalise, ax=ax)
        bar = ax.collections[0].colorbar          # long labels wrapped to the panel's height
        bar.set_label(textwrap.fill(bar.ax.get_ylabel(), 26), fontsize=9)
    if not normalise:
        limit = max(float(r.grid(False).abs().max()) for r in results) or 1.0
        for ax in axes.flat[: len(results)]:
            ax.collections[0].set_clim(-limit, limit)
    for ax in axes.flat[len(results):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _colour_roles(labels: Sequence[Any], colours: Mapping[str, str]) -> None:
    for tick in labels:
        for role, colour in colours.items():
            if tick.get_text().endswith(f"({role})"):
                tick.set_color(colour)
                tick.set_fontweight("bold")


def attention_rows(rows: torch.Tensor, heads: Sequence[str], labels: Sequence[str],
                   title: str = "", colours: Mapping[str, str] | None = None) -> Any:
    """Where each head looks from one query position: ``rows`` is ``[len(heads), seq]``
    (attention weights, 0 .. 1), ``labels`` the key positions; role labels coloured by
    ``colours`` (default ``helpers.teach.plotting.ROLE_COLOURS``, which has ``X``)."""
    data = rows.detach().double().cpu().numpy()
    fig, ax = plt.subplots(figsize=(min(16.0, 3.0 + 0.62 * data.shape[1]), 1.5 + 0.45 * len(heads)))
    im = ax.imshow(data, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    if data.size <= 160:
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, num(v), ha="center", va="center", fontsize=ANNOT_PT,
                    color="white" if v > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(heads)), heads)
    _colour_roles(ax.get_xticklabels(), ROLE_COLOURS if colours is None else colours)
    ax.set_xlabel("key position (what the head reads)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="attention weight")
    fig.tight_layout()
    return fig


def head_pattern(pattern: torch.Tensor, labels: Sequence[str], head: str, query: int) -> Any:
    """One head's full attention pattern ``[seq, seq]`` with the ``query`` row boxed."""
    fig = plot_attention(pattern, labels, title=f"{head}: full attention pattern "
                         f"(the boxed row is the query {labels[query]})")
    fig.axes[0].add_patch(plt.Rectangle((0, query), query + 1, 1, fill=False, edgecolor="black",
                                        linewidth=1.5))
    return fig


def circuit_map(found: CircuitSearch, n_layers: int, n_heads: int, cmap: str = "Blues") -> Any:
    """Left: every head and MLP output of the model as a dot (x = block, y = head, the MLP
    below), the circuit's members large, coloured by the drop in joint score without them
    (colour bar).  Right: the joint score of the set without each member, with the threshold."""
    drops = found.drops()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, min(7.0, 2.2 + 0.5 * (n_heads + 1))),
                                      gridspec_kw={"width_ratios": [1.6, 1]})
    colour_scale = Normalize(0, 1)
    names = [head_name(l, h) for l in range(n_layers) for h in range(n_heads)] + \
        [f"mlp{l}" for l in range(n_layers)]
    dot = 900 if n_layers * (n_heads + 1) <= 60 else 120
    for name in names:
        layer, head = component_place(name)
        y = n_heads if head is None else head
        if name in found.members:
            left.scatter(layer, y, s=dot, c=[drops[name]], cmap=cmap, norm=colour_scale,
                         edgecolor="black", zorder=3)
            left.annotate(name, (layer, y), xytext=(0, 0.6 * dot ** 0.5 + 4), textcoords="offset points",
                          ha="center", va="bottom", fontsize=ANNOT_PT, zorder=4,
                          bbox=dict(facecolor="white", edgecolor="none", pad=0.5))
        else:
            left.scatter(layer, y, s=dot / 4, color="lightgrey", zorder=2)
    mappable = plt.cm.ScalarMappable(norm=colour_scale, cmap=cmap)
    extend = "max" if drops and max(drops.values()) > 1 else "neither"
    fig.colorbar(mappable, ax=left, label="drop in joint score without this member", extend=extend)
    step = 1 if n_layers <= 16 else 5
    left.set_xticks(range(0, n_layers, step), [f"L{l}" for l in range(0, n_layers, step)])
    left.set_yticks(range(n_heads + 1), [f"H{h}" for h in range(n_heads)] + ["mlp"])
    left.set_xlim(-0.6, n_layers - 0.4)
    left.set_ylim(n_heads + 0.6, -0.9)
    left.set_xlabel("block")
    left.set_title(f"circuit members (large, coloured) among all {len(names)} components; grey: "
                   "not in the circuit", fontsize=10)
    _without_bars(right, found)
    fig.tight_layout()
    return fig


def _without_bars(ax: Any, found: CircuitSearch) -> None:
    if not found.members:
        ax.text(0.5, 0.5, "no members", ha="center", va="center", transform=ax.transAxes,
                fontsize=10)
        ax.axis("off")
        return
    values = [found.without[m] for m in found.members]
    bars = ax.barh(range(len(values)), values, color="tab:blue")
    ax.bar_label(bars, labels=[num(v) for v in values], padding=3, fontsize=ANNOT_PT)
    ax.set_yticks(range(len(values)), found.members)
    ax.invert_yaxis()
    ax.axvline(found.threshold, color="tab:red", ls="--", label=f"threshold {num(found.threshold)}")
    ax.axvline(found.score, color="black", label=f"all members {num(found.score)}")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlim(min(0.0, *values) - 0.05, max(1.1, found.score + 0.15))
    ax.legend(fontsize=ANNOT_PT, loc="lower right")
    ax.set_xlabel("normalised score of the set without this member")
    ax.set_title("take one member out", fontsize=10)


def circuit_diagram(found: CircuitSearch, sink: str = "logits") -> Any:
    """The circuit ``minimal_circuit`` found, as an image (``helpers.teach.diagrams``): prompt
    tokens -> the members, block by block, each with the drop in joint score without it -> the
    output.  Returns the ``Figure``; ``found.mermaid()`` is the same chart as text."""
    colour = {True: ("#c6dbef", "attention head"), False: ("#fdd0a2", "MLP output")}
    blocks = found.by_block()
    tallest = max((len(m) for m in blocks.values()), default=1)
    middle = (tallest - 1) / 2          # the input and output boxes sit mid-height
    nodes, edges, previous = [Node("IN", "prompt tokens", 0, middle, "wheat")], [], ["IN"]
    for col, members in enumerate(blocks.values(), start=1):
        for row, m in enumerate(members):
            fill, group = colour[component_place(m)[1] is not None]
            nodes.append(Node(m, f"{m}\ndrop {num(found.drops()[m])}", col,
                              row + (tallest - len(members)) / 2, fill, group))
            edges += [Edge(p, m) for p in previous]
        previous = members
    nodes.append(Node("OUT", f"{sink}\njoint score {num(found.score)}", len(blocks) + 1, middle,
                      "wheat"))
    edges += [Edge(p, "OUT") for p in previous]
    return draw_diagram(nodes, edges, title="the circuit the search found",
                        note="drop = how much the joint score falls without that member")


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
