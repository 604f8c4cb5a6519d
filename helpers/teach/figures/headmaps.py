"""Block x head maps for chapters 9 and 10, drawn one way: a fixed symmetric colour scale in the
unit the prose uses (share of the gap, -1 .. 1; attention 0 .. 1), every block labelled, the
strongest cells carrying their number (every cell in a small map), heads of interest boxed (no
text inside a box, so labels never overlap), and a colour-bar arrow only when a cell lies beyond
the scale (its number is then in the cell)."""
from __future__ import annotations

import textwrap
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np

from helpers.base.fmt import num, parse_head
from helpers.teach.plotting import ANNOT_PT, CMAP

__all__ = ["head_map", "colour_bar", "labelled_cells", "ALL_NUMBERS_UP_TO"]

#: maps with at most this many cells carry every number; larger ones only their strongest cells
ALL_NUMBERS_UP_TO = 64


def labelled_cells(data: np.ndarray, top: int = 12) -> list[tuple[int, int]]:
    """The cells that carry their number: every cell of a small map, else the ``top`` cells by
    size (ties by position), skipping cells that round to 0."""
    cells = [(int(i), int(j)) for i, j in np.ndindex(*data.shape)]
    if data.size <= ALL_NUMBERS_UP_TO:
        return cells
    order = sorted(cells, key=lambda c: (-abs(float(data[c])), c))
    return [c for c in order[:top] if abs(float(data[c])) > 0]


def head_map(ax: Any, data: np.ndarray, title: str, *, limits: tuple[float, float] = (-1.0, 1.0),
             cmap: Any = CMAP, boxes: Sequence[str] = (), top: int = 12, digits: int = 2,
             xlabel: str = "head", ylabel: str = "block", xticks: Sequence[str] | None = None,
             yticks: Sequence[str] | None = None) -> Any:
    """One ``[n_layers, n_heads]`` map on ``ax`` with the scale ``limits``; returns the image.
    Every block has its tick (``L0`` ...; or ``yticks``), every column too (``H0`` ...; or
    ``xticks``, e.g. tokens, rotated), the strongest cells their number (``labelled_cells``),
    ``boxes`` (head names) a black frame."""
    data = np.asarray(data, dtype=float)
    im = ax.imshow(data, cmap=cmap, vmin=limits[0], vmax=limits[1], aspect="auto",
                   interpolation="nearest")
    n_layers, n_heads = data.shape
    small = 8  # every label at least 8 pt: tall maps get tall figures instead
    ax.set_xticks(range(n_heads), list(xticks) if xticks is not None else [f"H{h}" for h in range(n_heads)],
                  fontsize=small, rotation=60 if xticks is not None else 0,
                  ha="right" if xticks is not None else "center")
    ax.set_yticks(range(n_layers), list(yticks) if yticks is not None else [f"L{i}" for i in range(n_layers)],
                  fontsize=small)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(textwrap.fill(title, 38), fontsize=10)
    span = max(abs(limits[0]), abs(limits[1])) or 1.0
    for i, j in labelled_cells(data, top):
        v = float(data[i, j])
        dark = abs(v - (limits[0] + limits[1]) / 2) > 0.55 * span if limits[0] < 0 else v > 0.6 * limits[1]
        ax.text(j, i, num(v, digits), ha="center", va="center", fontsize=ANNOT_PT,
                color="white" if dark else "black")
    for name in boxes:
        layer, head = parse_head(name)
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, lw=1.8, ec="black"))
    return im


def colour_bar(fig: Any, im: Any, axes: Any, label: str, data: Sequence[np.ndarray],
               limits: tuple[float, float] = (-1.0, 1.0)) -> Any:
    """A colour bar for ``axes`` whose arrow shows only when some cell of ``data`` lies beyond
    ``limits`` (on that side)."""
    cells = np.concatenate([np.asarray(d, float).ravel() for d in data])
    over, under = bool((cells > limits[1]).any()), bool((cells < limits[0]).any())
    extend = {(True, True): "both", (True, False): "max", (False, True): "min"}.get((over, under), "neither")
    bar = fig.colorbar(im, ax=axes, shrink=0.85, extend=extend)
    bar.set_label(textwrap.fill(label, 26), fontsize=9)
    return bar


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
