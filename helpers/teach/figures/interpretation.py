"""Chapter 6 (interpretation) figures: the evidence maps stacked, two heads' attention, the
bundled model's circuit diagram, the circuit tests as bars, the head map under three metrics
and on two templates.  Every function returns the matplotlib ``Figure``."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.lines import Line2D

from helpers.base.fmt import head_name, num
from helpers.results.patch_result import PatchResult
from helpers.teach.diagrams import Edge, Node, draw_diagram
from helpers.teach.figures.noising import short_colourbar
from helpers.teach.plotting import ANNOT_PT, plot_attention, plot_patching
from helpers.results.metrics import Metric

__all__ = ["plot_evidence", "plot_head_attention", "circuit_diagram", "plot_circuit_tests",
           "plot_metrics", "plot_templates"]

NEAR_ZERO = 0.02   # bars shorter than this (share of the full range) get a marker


def plot_evidence(maps: Mapping[str, PatchResult], normalise: bool = True,
                  metric: Metric | None = None) -> Any:
    """The layer x position maps of ``maps`` (e.g. residual, attention, MLP) stacked, one colour
    scale (importance, -1 .. 1, arrows beyond)."""
    first = next(iter(maps.values()))
    cols = first.shape[1]
    heights = [1.5 + 0.45 * r.shape[0] for r in maps.values()]
    fig, axes = plt.subplots(len(maps), 1, figsize=(min(15, 3 + 0.62 * cols), sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    for ax, r in zip(np.atleast_1d(axes), maps.values()):
        plot_patching(r, metric=metric, normalise=normalise, ax=ax)
        short_colourbar(ax, r, normalise)
    fig.tight_layout()
    return fig


def plot_head_attention(patterns: torch.Tensor, heads: Sequence[tuple[int, int]],
                        tokens: Sequence[str], note: str = "first clean prompt") -> Any:
    """Attention of the given ``(layer, head)`` pairs side by side; ``patterns`` is one
    prompt's attention ``[n_layers, n_heads, seq, seq]``."""
    side = min(7.0, 2.5 + 0.3 * len(tokens))
    fig, axes = plt.subplots(1, len(heads), figsize=(len(heads) * side + 1.5, side))
    for ax, (l, h) in zip(np.atleast_1d(axes), heads):
        plot_attention(patterns[l, h], tokens, ax=ax, title=f"{head_name(l, h)}, {note}")
    fig.tight_layout()
    return fig


def circuit_diagram(top0: int, n_layers: int) -> Any:
    """The bundled model's (ioi-tiny's) IOI circuit: block-0 heads (mainly ``L0H<top0>``) at S2
    read IO, ``mlp0`` refines, S2's residual stream holds the answer, movers at END bring it
    to the logits.  The dashed arrow is a hypothesis the S2 swap cannot test."""
    top, last = head_name(0, top0), n_layers - 1
    tok, comp, res, out = "#e8eef7", "#fde3c8", "#dff0d8", "#eeeeee"
    nodes = [
        Node("IO", "IO token\n(Peter)", 0, 0, tok, "token"),
        Node("S1", "S1 token\n(Laura)", 0, 1, tok, "token"),
        Node("S2", "S2 token\n(Laura, repeated)", 0, 2, tok, "token"),
        Node("END", "END token\n('to')", 0, 3.2, tok, "token"),
        Node("H0", f"block-0 heads at S2,\nmainly {top}:\nattend S2 → IO", 1.5, 1, comp,
             "component (patched)"),
        Node("MLP0", "mlp0 at S2", 1.5, 2.2, comp, "component (patched)"),
        Node("R", "residual stream at S2\nnow holds the answer:\nthe name not repeated", 2.6, 1.6,
             res, "residual stream"),
        Node("MOV", f"movers at END, blocks 1-{last}:\nmany heads, each small,\nattend END → S2",
             3.7, 2.6, comp, "component (patched)"),
        Node("OUT", "logits:\nIO over S", 4.8, 2.6, out, "output"),
    ]
    edges = [
        Edge("S2", "H0", "query"), Edge("IO", "H0", "value: IO name"),
        Edge("S1", "H0", "key (untested)", dashed=True),
        Edge("H0", "MLP0"), Edge("H0", "R"), Edge("MLP0", "R"),
        Edge("R", "MOV", "read at END"), Edge("END", "MOV", "query"), Edge("MOV", "OUT"),
    ]
    return draw_diagram(nodes, edges, title="ioi-tiny's IOI circuit (read from the maps)",
                        note="solid arrow: backed by a number in section 3;  dashed arrow: a "
                             "hypothesis the S2 swap cannot test (S1 is the same token in both runs)")


def _bar_labels(ax: Any, bars: Any, values: Sequence[float], span: float) -> None:
    """Value labels on every bar, and a marker on bars too short to see."""
    ax.bar_label(bars, labels=[num(v) for v in values], padding=3, fontsize=ANNOT_PT)
    for bar, v in zip(bars, values):
        if abs(v) < NEAR_ZERO * span:
            y = bar.get_y() + bar.get_height() / 2
            ax.plot(0, y, marker="|", markersize=10, mew=2, color=bar.get_facecolor())


def plot_circuit_tests(tests: Mapping[str, PatchResult], normalise: bool = True,
                       metric: Metric | None = None) -> Any:
    """One pair of horizontal bars per patched set (``patch_components`` results in both
    directions, same sets): share restored when denoised (blue) and share destroyed when
    noised (red), 1 = the set carries all of the behaviour.  Every bar has its value; a bar
    near 0 gets a tick mark so it stays visible; a legend names the colours."""
    den, noi = (tests[d].grid(normalise, metric).reshape(-1).tolist() for d in ("denoise", "noise"))
    labels = tests["denoise"].labels[tests["denoise"].dims[0]]
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.75 * len(labels)))
    values = den + noi
    span = max(max(values + [1.0 if normalise else 0.0]) - min(values + [0.0]), 1e-9)
    b1 = ax.barh(y - 0.2, den, 0.4, color="tab:blue")
    b2 = ax.barh(y + 0.2, noi, 0.4, color="tab:red")
    _bar_labels(ax, b1, den, span)
    _bar_labels(ax, b2, noi, span)
    ax.set_yticks(y, labels, fontsize=9)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    lo, hi = min(values + [0.0]), max(values + [1.0 if normalise else 0.0])
    ax.set_xlim(lo - 0.05 * span, hi + 0.18 * span)
    handles = [Line2D([], [], color="tab:blue", lw=8,
                      label="denoised: share restored" if normalise else "denoised: mean"),
               Line2D([], [], color="tab:red", lw=8,
                      label="noised: share destroyed (1 − score)" if normalise else "noised: mean"),
               ]
    if any(abs(v) < NEAR_ZERO * span for v in values):
        handles.append(Line2D([], [], color="grey", marker="|", ls="", markersize=10, mew=2,
                              label="tick: a bar too short to see"))
    if normalise:
        ax.axvline(1, color="grey", lw=0.8, ls="--")
        handles.append(Line2D([], [], color="grey", ls="--", label="1 = carries all of it"))
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.set_xlabel("importance (share of the clean − corrupted gap)" if normalise
                  else f"mean {metric or tests['denoise'].metric}")
    ax.set_title("the circuit, its halves and its complement, patched jointly", fontsize=10)
    fig.tight_layout()
    return fig


def plot_metrics(heads: Mapping[str, PatchResult], metrics: Sequence[Metric],
                 normalise: bool = True) -> Any:
    """The layer x head map for each direction (rows) and metric (columns)."""
    first = heads["denoise"]
    n_l, n_h = first.shape
    fig, axes = plt.subplots(2, len(metrics), figsize=(min(18, 5.2 * len(metrics)),
                                                       2 * (1.9 + 0.4 * n_l)), squeeze=False)
    for row, d in enumerate(("denoise", "noise")):
        for col, m in enumerate(metrics):
            plot_patching(heads[d], metric=m, normalise=normalise, ax=axes[row, col],
                          annotate=n_l * n_h <= 64, title=f"{d}: {m}")
            short_colourbar(axes[row, col], heads[d], normalise)
    fig.tight_layout()
    return fig


def plot_templates(a: PatchResult, b: PatchResult, names: Sequence[str], normalise: bool = True,
                   metric: Metric | None = None) -> Any:
    """Two layer x head denoising maps (e.g. two templates) stacked, on one colour scale."""
    n_l, n_h = a.shape
    wide = n_h > 6
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, min(15, 3 + 0.62 * n_h)), 2 * (1.6 + 0.45 * n_l)))
    for ax, r, name in zip(axes, (a, b), names):
        plot_patching(r, metric=metric, normalise=normalise, ax=ax, annotate=not wide,
                      title=f"{name}: heads, denoising")
        short_colourbar(ax, r, normalise)
    fig.tight_layout()
    return fig


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
