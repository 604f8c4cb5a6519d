"""Chapter 4's own figures: the layer x head map at a readable size, and the attention
patterns of the heads that matter with the row that matters (where each head acts) boxed."""
from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import torch

from helpers.base.fmt import head_name
from helpers.data.pairs import PromptPairs
from helpers.results.patch_result import PatchResult
from helpers.teach.figures.positions import wrap_colourbar_label
from helpers.teach.plotting import plot_attention, plot_patching

__all__ = ["head_map", "attention_rows"]


def head_map(heads: PatchResult, normalise: bool = True, title: str | None = None) -> Any:
    """``plot_patching`` of a layer x head result (``[n_layers, n_heads]``) in a figure wide
    enough for its title, with heads labelled ``L<block>H<head>`` in every cell's column
    (``H3`` under the axis name "head") and the colour-bar label wrapped.  Returns the Figure."""
    if heads.dims != ("layer", "head"):
        raise ValueError(f"expects a layer x head result (patch_heads), got dims {heads.dims}")
    n_layers, n_heads = heads.shape
    fig, ax = plt.subplots(figsize=(max(6.5, 2.5 + 0.8 * n_heads), 1.8 + 0.45 * n_layers))
    plot_patching(heads, normalise=normalise, ax=ax, title=title)
    ax.set_xlabel("head (column H3 of row L0 is head L0H3)")
    ax.tick_params(axis="x", rotation=0)
    wrap_colourbar_label(ax, max(20, int(5 * (1.8 + 0.45 * n_layers))))
    fig.tight_layout()
    return fig


def attention_rows(patterns: dict[int, torch.Tensor], chosen: list[tuple[int, int]],
                   where: dict[tuple[int, int], int], pairs: PromptPairs) -> Any:
    """One attention pattern per chosen head ``(layer, head)``, stacked: ``patterns[layer]``
    is that block's prompt-mean attention ``[n_heads, seq_q, seq_k]``; ``where[(layer,
    head)]`` the query position where the head acts (boxed).  Returns the Figure."""
    if not chosen:
        raise ValueError("no heads to draw: give at least one (layer, head)")
    role_at = {p: r for r, p in pairs.positions.items()}
    size = 2.2 + 0.3 * pairs.seq_len
    fig, axes = plt.subplots(len(chosen), 1, figsize=(size + 1.2, size * len(chosen)), squeeze=False)
    for ax, (layer, head) in zip(axes[:, 0], chosen):
        q = where[layer, head]
        at = role_at.get(q, repr(pairs.tokens[q].strip()))
        plot_attention(patterns[layer][head], pairs.position_labels, ax=ax,
                       title=f"{head_name(layer, head)}: acts at {at} (row boxed)")
        ax.add_patch(plt.Rectangle((0, q), q + 1, 1, fill=False, edgecolor="black", linewidth=1.5))
    fig.tight_layout()
    return fig


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
