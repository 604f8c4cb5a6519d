"""Figures: patching heatmaps with token and role labels, bar charts of component
sets, and attention patterns.  Every function returns the matplotlib ``Figure``."""
from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from helpers.base.fmt import head_name, num
from helpers.base.validate import as_count, check_finite
from helpers.methods.sweeps import PatchResult
from helpers.results.metrics import Metric

__all__ = ["plot_patching", "plot_head_positions", "plot_sets", "plot_attention", "ROLE_COLOURS"]

ROLE_COLOURS = {"IO": "tab:green", "S1": "tab:orange", "S2": "tab:red", "END": "tab:purple",
                "X": "tab:red"}  # X: the decisive word of a binary behaviour (helpers.data.behaviours)
CMAP = "RdBu"  # blue = towards the clean behaviour, red = away from it; white = 0


ANNOT_PT = 8      # numbers in cells: at least 8 pt, or none at all
MAX_ANNOT = 160  # cells above which a heatmap shows colours only (numbers would not fit)
MARK_GID = "interval-contains-0"  # the dots of plot_patching(mark=...), found by this id


def _values(result: PatchResult, metric: str | None, normalise: bool) -> tuple[np.ndarray, str]:
    """The plotted grid: ``result.grid(normalise)`` (importance, read the same way in both
    directions) and its colour-bar label."""
    m = metric or result.metric
    if m not in result.values:
        raise ValueError(f"this result has no metric {m!r}; it has {sorted(result.values)}")
    data = result.grid(normalise, m)
    check_finite(data, f"the {m} values to plot")
    return data.double().numpy(), (result.importance_label(m) if normalise else f"mean {m}")


def _scale(data: np.ndarray, normalise: bool) -> tuple[float, str]:
    """Symmetric colour limit and the colour bar's ``extend``: normalised maps keep the range
    -1 .. 1 so that colours mean the same in every figure; a value beyond it shows as an
    arrow on the colour bar (and its number in the cell)."""
    if not normalise:
        return (float(np.abs(data).max()) or 1.0), "neither"
    over, under = bool((data > 1).any()), bool((data < -1).any())
    return 1.0, {(True, True): "both", (True, False): "max", (False, True): "min"}.get(
        (over, under), "neither")


def _annotations(data: np.ndarray) -> np.ndarray:
    """Cell texts with two decimals and never "-0.00"."""
    return np.vectorize(num)(data)


def _heatmap(data: np.ndarray, ax: Any, normalise: bool, what: str, annotate: bool,
             **kw: Any) -> None:
    limit, extend = _scale(data, normalise)
    annot = _annotations(data) if annotate else False
    sns.heatmap(data, ax=ax, cmap=CMAP, center=0, vmin=-limit, vmax=limit, annot=annot, fmt="",
                annot_kws={"fontsize": ANNOT_PT}, cbar_kws={"label": what, "extend": extend},
                linewidths=0.3, linecolor="white", **kw)


def _mark_roles(ax: Any, labels: Sequence[str], axis: str = "x") -> None:
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    for t in ticks:
        for role, colour in ROLE_COLOURS.items():
            if t.get_text().endswith(f"({role})"):
                t.set_color(colour)
                t.set_fontweight("bold")


def _interval_contains_zero(result: PatchResult, metric: str, mark: Any) -> tuple[np.ndarray, str]:
    """Which cells of a two-axis result have a bootstrap interval of the effect that contains
    0, ``[rows, cols]`` bool, from ``mark``: ``True`` (``result.stats(metric)``) or a
    ``result.stats(...)`` table; and what the mark means, for the x-axis label."""
    table = result.stats(metric) if mark is True else mark
    if not hasattr(table, "columns") or not {"ci_low", "ci_high", "metric"} <= set(table.columns):
        raise ValueError("mark must be True or a table from result.stats(...), got "
                         f"{type(mark).__name__}")
    if set(table["metric"]) != {metric}:
        raise ValueError(f"mark holds statistics of {sorted(set(table['metric']))}, but the "
                         f"figure shows {metric!r}: pass result.stats({metric!r}, ...)")
    found = np.zeros(result.shape, dtype=bool)
    rows, cols = (table[f"{d}_index"].to_numpy() for d in result.dims)
    found[rows, cols] = ((table["ci_low"] <= 0) & (table["ci_high"] >= 0)).to_numpy()
    level = 100 * (1 - float(table["alpha"].iloc[0]))
    return found, f"{level:g}% bootstrap interval of the effect contains 0"


def plot_patching(result: PatchResult, metric: Metric | None = None, normalise: bool = True,
                  ax: Any = None, annotate: bool | None = None, title: str | None = None,
                  mark: Any = False) -> Any:
    """Heatmap of a two-axis result (layer x position, or layer x head).

    ``normalise=True`` plots ``result.importance()``: the share of the clean behaviour a
    patch restores (denoising) or destroys (noising), so 1 reads "this component carries all
    of it" in both directions; the range is -1 .. 1 and a value beyond shows as an arrow on
    the colour bar.  ``False`` plots the raw prompt-mean metric (for models that cannot do
    the task), centred on 0.  Cells carry their value (8 pt) up to 160 cells.  Positions are
    labelled with their tokens; role positions (IO, S1, S2, END) are coloured.

    ``mark=True`` puts a small dot in the corner of every cell whose bootstrap interval of the
    per-prompt effect contains 0 (no clear effect; ``result.stats()``, explained under the
    x axis); pass a ``result.stats(...)`` table instead for other settings.  The
    interval is the effect's in both directions and with ``normalise=False``: importance is 0
    exactly where the effect is.  Off by default.
    """
    if len(result.dims) != 2:
        raise ValueError(f"plot_patching draws two-axis results; this one has dims {result.dims}: "
                         "use plot_head_positions or plot_sets")
    data, what = _values(result, metric, normalise)
    rows, cols = (result.labels[d] for d in result.dims)
    if ax is None:
        width = min(16.0, 3.0 + 0.62 * len(cols))
        fig, ax = plt.subplots(figsize=(width, 1.4 + 0.45 * len(rows)))
    fig = ax.figure
    if annotate is None:
        annotate = data.size <= MAX_ANNOT
    found = None
    if mark is not None and mark is not False:
        found, meaning = _interval_contains_zero(result, metric or result.metric, mark)
    _heatmap(data, ax, normalise, what, annotate, xticklabels=cols, yticklabels=rows)
    if found is not None:
        ys, xs = np.nonzero(found)  # cell (i, j) spans x j .. j+1, y i .. i+1 (row 0 on top)
        ax.scatter(xs + 0.84, ys + 0.2, s=9, marker="o", facecolor="black", edgecolor="white",
                   linewidths=0.5, zorder=3, gid=MARK_GID, clip_on=False)
    ax.set_xlabel(result.dims[1] + ("" if found is None else f"\n\u2022 = {meaning}"))
    ax.set_ylabel("residual stream after" if result.site == "resid" else result.dims[0])
    ax.tick_params(axis="x", rotation=60)
    ax.tick_params(axis="y", rotation=0)
    _mark_roles(ax, cols)
    ax.set_title(title or result.title(metric, normalise), fontsize=10)
    fig.tight_layout()
    return fig


def plot_head_positions(result: PatchResult, top: int = 8, metric: Metric | None = None,
                        normalise: bool = True, title: str | None = None) -> Any:
    """Head x position results: the ``top`` heads by largest |effect|, one row each,
    named ``L<block>H<head>``."""
    if result.dims != ("layer", "head", "position"):
        raise ValueError(f"expects a head x position result (patch_heads(..., by_position=True)), "
                         f"got dims {result.dims}")
    top = as_count(top, "top")
    data, what = _values(result, metric, normalise)
    n_l, n_h, n_p = data.shape
    flat = data.reshape(n_l * n_h, n_p)
    order = np.argsort(-np.abs(flat).max(1), kind="stable")[: min(top, n_l * n_h)]
    names = [head_name(l, h) for l in range(n_l) for h in range(n_h)]
    fig, ax = plt.subplots(figsize=(min(16.0, 3.0 + 0.62 * n_p), 1.4 + 0.45 * len(order)))
    _heatmap(flat[order], ax, normalise, what, flat[order].size <= MAX_ANNOT,
             xticklabels=result.labels["position"], yticklabels=[names[i] for i in order])
    ax.set_ylabel("head")
    ax.set_xlabel("position")
    ax.tick_params(axis="x", rotation=60)
    ax.tick_params(axis="y", rotation=0)
    _mark_roles(ax, result.labels["position"])
    ax.set_title(title or result.title(metric, normalise), fontsize=10)
    fig.tight_layout()
    return fig


def plot_sets(result: PatchResult, metric: Metric | None = None, normalise: bool = True,
              title: str | None = None) -> Any:
    """Horizontal bars, one per patched component set (``patch_components`` results), each
    with its value; blue bars help the clean behaviour, red bars oppose it."""
    data, what = _values(result, metric, normalise)
    data = data.reshape(-1)
    labels = [lab for d in result.dims for lab in result.labels[d]][: len(data)]
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.35 * len(data)))
    colours = ["tab:blue" if v >= 0 else "tab:red" for v in data]
    bars = ax.barh(range(len(data)), data, color=colours)
    ax.bar_label(bars, labels=[num(v) for v in data], padding=3, fontsize=ANNOT_PT)
    ax.margins(x=0.15)  # room for the value labels
    ax.set_yticks(range(len(data)), labels)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    if normalise:
        ax.axvline(1, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(what)
    ax.set_title(title or result.title(metric, normalise), fontsize=10)
    fig.tight_layout()
    return fig


def plot_attention(pattern: torch.Tensor, tokens: Sequence[str], title: str = "",
                   ax: Any = None) -> Any:
    """One head's attention pattern ``[seq_q, seq_k]``: row = query position, column =
    the key position it reads from.  ``tokens`` label both axes (roles coloured)."""
    data = check_finite(pattern.detach(), "the attention pattern").double().cpu().numpy()
    if data.ndim != 2 or data.shape[0] != data.shape[1] or data.shape[0] != len(tokens):
        raise ValueError(f"expects a [seq, seq] pattern and {data.shape[0] if data.ndim else '?'} "
                         f"token labels, got pattern {tuple(data.shape)} and {len(tokens)} tokens")
    if ax is None:
        size = 2.5 + 0.38 * len(tokens)
        fig, ax = plt.subplots(figsize=(size + 1, size))
    fig = ax.figure
    mask = np.triu(np.ones_like(data, dtype=bool), k=1)
    sns.heatmap(data, ax=ax, mask=mask, cmap="Blues", vmin=0, vmax=1, xticklabels=tokens,
                yticklabels=tokens, cbar_kws={"label": "attention weight"}, square=True)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.tick_params(axis="x", rotation=60)
    _mark_roles(ax, tokens, "x")
    _mark_roles(ax, tokens, "y")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
