"""Diagrams drawn as images (matplotlib), so they show wherever the notebook is read —
JupyterLab, Colab, GitHub, nbviewer, a PDF — unlike a mermaid block, which shows as raw code
where mermaid is not rendered.  One helper for every flow chart and circuit diagram.

A diagram is a set of boxes on a grid (``col`` left to right, ``row`` top to bottom) and
arrows between them::

    nodes = [Node("clean", "clean run", col=0, row=0), Node("metric", "metric", col=2, row=1)]
    edges = [Edge("clean", "metric", "logits")]
    draw_diagram(nodes, edges, title="The three runs")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.patches import Patch as LegendPatch

__all__ = ["Node", "Edge", "draw_diagram"]

FONT_PT = 9          # box text; never below 8 pt
COL_W, ROW_H = 3.4, 1.7   # inches per grid column / row
BOX_W, BOX_H = 2.4, 1.05  # box size in the same units


@dataclass(frozen=True)
class Node:
    """A box: ``key`` names it for edges, ``text`` is shown (newlines allowed), ``col``/``row``
    place it (floats allowed), ``colour`` fills it, ``group`` names its colour in the legend;
    ``dashed`` draws it with a dashed grey outline and grey text (something looked for and not
    found)."""

    key: str
    text: str
    col: float
    row: float
    colour: str = "white"
    group: str | None = None
    dashed: bool = False


@dataclass(frozen=True)
class Edge:
    """An arrow ``src`` -> ``dst`` with an optional ``label``; ``dashed`` for a hypothesis
    (an edge the evidence does not test); ``width`` scales the line (e.g. by effect size)."""

    src: str
    dst: str
    label: str = ""
    dashed: bool = False
    width: float = 1.5


def draw_diagram(nodes: Sequence[Node], edges: Sequence[Edge] = (), title: str = "",
                 note: str = "") -> Any:
    """Draw boxes and arrows; returns the matplotlib ``Figure``.  Colours with a ``group``
    are explained in a legend; ``note`` is printed under the diagram (e.g. what a dashed
    arrow means)."""
    by_key = {n.key: n for n in nodes}
    if len(by_key) != len(nodes):
        raise ValueError("two nodes share a key: every node needs its own key")
    for e in edges:
        for end in (e.src, e.dst):
            if end not in by_key:
                raise ValueError(f"edge {e.src!r} -> {e.dst!r} names no node {end!r}; "
                                 f"nodes are {sorted(by_key)}")
    cols = max(n.col for n in nodes) + 1
    rows = max(n.row for n in nodes) + 1
    fig, ax = plt.subplots(figsize=(max(4.0, cols * COL_W), max(1.8, rows * ROW_H + 0.6)))
    ax.set_xlim(-0.1 * COL_W, cols * COL_W)
    ax.set_ylim(rows * ROW_H, -0.35 * ROW_H)   # row 0 at the top
    ax.axis("off")
    centre = {n.key: ((n.col + 0.45) * COL_W, (n.row + 0.4) * ROW_H) for n in nodes}
    for n in nodes:
        x, y = centre[n.key]
        ax.add_patch(FancyBboxPatch((x - BOX_W / 2, y - BOX_H / 2), BOX_W, BOX_H,
                                    boxstyle="round,pad=0.05", facecolor=n.colour,
                                    edgecolor="0.55" if n.dashed else "black", lw=1.0,
                                    ls="--" if n.dashed else "-", zorder=2))
        ax.text(x, y, n.text, ha="center", va="center", fontsize=FONT_PT, zorder=3, wrap=True,
                color="0.45" if n.dashed else "black")
    for e in edges:
        (x0, y0), (x1, y1) = centre[e.src], centre[e.dst]
        (ax0, ay0), (ax1, ay1) = _edge_point(x0, y0, x1, y1), _edge_point(x1, y1, x0, y0)
        arrow = FancyArrowPatch((ax0, ay0), (ax1, ay1), arrowstyle="-|>", mutation_scale=14,
                                lw=e.width, ls="--" if e.dashed else "-", color="0.25",
                                shrinkA=0, shrinkB=0, zorder=1)
        ax.add_patch(arrow)
        if e.label:
            ax.text((ax0 + ax1) / 2, (ay0 + ay1) / 2, e.label, ha="center", va="center",
                    fontsize=FONT_PT - 1, zorder=4, style="italic",
                    bbox=dict(facecolor="white", edgecolor="none", pad=1.0))
    groups = {n.group: n.colour for n in nodes if n.group}
    if groups:
        ax.legend(handles=[LegendPatch(facecolor=c, edgecolor="black", label=g)
                           for g, c in groups.items()], loc="upper center",
                  bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(groups)), fontsize=FONT_PT,
                  frameon=False)
    if title:
        ax.set_title(title, fontsize=11)
    if note:
        fig.text(0.5, 0.01, note, ha="center", va="bottom", fontsize=FONT_PT - 1, style="italic")
    fig.tight_layout()
    return fig


def _edge_point(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float]:
    """Where the line from the box centred at (x0, y0) towards (x1, y1) leaves that box
    (a small gap added), so that arrows start and end at box edges."""
    dx, dy = x1 - x0, y1 - y0
    if dx == 0 and dy == 0:
        return x0, y0
    half_w, half_h = BOX_W / 2 + 0.1, BOX_H / 2 + 0.1
    t = min(half_w / abs(dx) if dx else float("inf"), half_h / abs(dy) if dy else float("inf"))
    return x0 + t * dx, y0 + t * dy


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
