"""Figures: patching heatmaps with token and role labels, bar charts of component
sets, and attention patterns.  Every function returns the matplotlib ``Figure``."""
from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from helpers.patching import PatchResult
from helpers.validate import as_count, check_finite

__all__ = ["plot_patching", "plot_head_positions", "plot_sets", "plot_attention", "ROLE_COLOURS"]

ROLE_COLOURS = {"IO": "tab:green", "S1": "tab:orange", "S2": "tab:red", "END": "tab:purple",
                "X": "tab:red"}  # X: the decisive word of a binary behaviour (helpers.behaviours)
CMAP = "RdBu"  # blue = towards the clean behaviour, red = away from it; white = 0


def _values(result: PatchResult, metric: str | None, normalise: bool) -> tuple[np.ndarray, str]:
    m = metric or result.metric
    if m not in result.values:
        raise ValueError(f"this result has no metric {m!r}; it has {sorted(result.values)}")
    data = result.score(m) if normalise else result.mean(m)
    check_finite(data, f"the {m} values to plot")
    return data.double().numpy(), (f"normalised {m}" if normalise else f"mean {m}")


def _mark_roles(ax: Any, labels: Sequence[str], axis: str = "x") -> None:
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    for t in ticks:
        for role, colour in ROLE_COLOURS.items():
            if t.get_text().endswith(f"({role})"):
                t.set_color(colour)
                t.set_fontweight("bold")


def plot_patching(result: PatchResult, metric: str | None = None, normalise: bool = True,
                  ax: Any = None, annotate: bool | None = None, title: str | None = None) -> Any:
    """Heatmap of a two-axis result (layer x position, or layer x head).

    ``normalise=True`` plots the normalised score (1 = clean, 0 = corrupted);
    ``False`` the raw prompt-mean metric (use it on models that cannot do the
    task).  The colour scale is centred on 0 and symmetric.  Positions are
    labelled with their tokens; role positions (IO, S1, S2, END) are coloured.
    """
    if len(result.dims) != 2:
        raise ValueError(f"plot_patching draws two-axis results; this one has dims {result.dims}: "
                         "use plot_head_positions or plot_sets")
    data, what = _values(result, metric, normalise)
    rows, cols = (result.labels[d] for d in result.dims)
    if ax is None:
        width = min(16.0, 2.5 + 0.55 * len(cols))
        fig, ax = plt.subplots(figsize=(width, 1.2 + 0.42 * len(rows)))
    fig = ax.figure
    limit = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
    limit = max(limit, 1.0) if normalise else (limit or 1.0)
    if annotate is None:
        annotate = data.size <= 220
    sns.heatmap(data, ax=ax, cmap=CMAP, center=0, vmin=-limit, vmax=limit, annot=annotate,
                fmt=".2f", annot_kws={"fontsize": 7}, xticklabels=cols, yticklabels=rows,
                cbar_kws={"label": what}, linewidths=0.3, linecolor="white")
    ax.set_xlabel(result.dims[1])
    ax.set_ylabel("residual stream after" if result.site == "resid" else result.dims[0])
    ax.tick_params(axis="x", rotation=60)
    ax.tick_params(axis="y", rotation=0)
    _mark_roles(ax, cols)
    ax.set_title(title or result.title(metric, normalise), fontsize=10)
    fig.tight_layout()
    return fig


def plot_head_positions(result: PatchResult, top: int = 8, metric: str | None = None,
                        normalise: bool = True, title: str | None = None) -> Any:
    """Head x position results: the ``top`` heads by largest |effect|, one row each."""
    if result.dims != ("layer", "head", "position"):
        raise ValueError(f"expects a head x position result (patch_heads(..., by_position=True)), "
                         f"got dims {result.dims}")
    top = as_count(top, "top")
    data, what = _values(result, metric, normalise)
    n_l, n_h, n_p = data.shape
    flat = data.reshape(n_l * n_h, n_p)
    order = np.argsort(-np.abs(flat).max(1))[: min(top, n_l * n_h)]
    names = [f"{l}.{h}" for l in range(n_l) for h in range(n_h)]
    fig, ax = plt.subplots(figsize=(min(16.0, 2.5 + 0.55 * n_p), 1.2 + 0.42 * len(order)))
    limit = max(float(np.abs(flat[order]).max()), 1.0 if normalise else 1e-9)
    sns.heatmap(flat[order], ax=ax, cmap=CMAP, center=0, vmin=-limit, vmax=limit, annot=True,
                fmt=".2f", annot_kws={"fontsize": 7}, xticklabels=result.labels["position"],
                yticklabels=[names[i] for i in order], cbar_kws={"label": what})
    ax.set_ylabel("head (layer.head)")
    ax.set_xlabel("position")
    ax.tick_params(axis="x", rotation=60)
    _mark_roles(ax, result.labels["position"])
    ax.set_title(title or result.title(metric, normalise), fontsize=10)
    fig.tight_layout()
    return fig


def plot_sets(result: PatchResult, metric: str | None = None, normalise: bool = True,
              title: str | None = None) -> Any:
    """Horizontal bars, one per patched component set (``patch_components`` results)."""
    data, what = _values(result, metric, normalise)
    data = data.reshape(-1)
    labels = [lab for d in result.dims for lab in result.labels[d]][: len(data)]
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.35 * len(data)))
    colours = ["tab:blue" if v >= 0 else "tab:red" for v in data]
    ax.barh(range(len(data)), data, color=colours)
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
