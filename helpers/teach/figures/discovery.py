"""Chapter 11's figures: every method's ROC curve against a planted circuit, where each method
ranks the planted heads, the decoy and the backup, and MIB's faithfulness curves of an
automatically found circuit with a hand-found circuit marked on them."""
from __future__ import annotations

from typing import Any, Mapping

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from helpers.base.fmt import num

__all__ = ["roc_curves", "node_ranks", "faithfulness_curves"]

COLOURS = {"exact": "#1b9e77", "eap": "#d95f02", "eap-ig-inputs": "#7570b3", "eap-ig-activations": "#e7298a",
           "greedy": "#66a61e", "random": "#999999"}


def roc_curves(card: Any, backups: str = "negative") -> Any:
    """Two panels (edges, sender nodes), one ROC curve per method of a ``Scorecard``, its AUROC
    in the legend; ``backups``: how the backup's items count (``"positive"`` / ``"negative"``).
    Returns the Figure."""
    if backups not in ("positive", "negative"):
        raise ValueError(f"backups must be 'positive' or 'negative', got {backups!r}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    for ax, level in zip(axes, ("edge", "node")):
        for row in card.rows:
            ts = row.roc[f"{level}/{backups}"]
            ax.plot(ts.fpr, ts.tpr, drawstyle="steps-post", lw=1.8, color=COLOURS.get(row.method),
                    label=f"{row.method}: {num(ts.roc_auc)}")
        ax.plot([0, 1], [0, 1], ls=":", color="black", lw=1, label="chance: 0.5")
        first = card.rows[0].roc[f"{level}/{backups}"]
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false-positive rate",
               title=f"{level}s: {first.n_positive} planted, {first.n_negative} not")
        ax.legend(title="method: AUROC", fontsize=8, title_fontsize=8, loc="lower right")
    axes[0].set_ylabel("true-positive rate")
    fig.suptitle(f"Ranking by |score| against the planted circuit (backup counted as {backups})")
    fig.tight_layout()
    return fig


def node_ranks(card: Any) -> Any:
    """Per method, the rank of every sender node by |score| (1 = first): the planted nodes, the
    decoy and the backup name mover marked, the number of planted nodes as a dashed line.
    Returns the Figure."""
    planted, watched = card.positives(), card.watched()
    decoys = [n for n in watched if n in card.truth.info.get("nodes", {}) and
              card.truth.info["nodes"][n].get("class") == "decoy"]
    n = len(card.truth.graph.senders)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(card.rows) + 1.6))
    marks = [("other node", lambda x: x not in planted and x not in watched, "o", "#cccccc"),
             ("planted", lambda x: x in planted, "o", "#1b9e77"),
             ("decoy", lambda x: x in decoys, "X", "#d62728"),
             ("backup name mover", lambda x: x in watched and x not in decoys, "s", "#ff7f0e")]
    for y, row in enumerate(card.rows):
        for label, pick, marker, colour in marks:
            xs = [r for node, r in row.node_rank.items() if pick(node)]
            ax.scatter(xs, [y] * len(xs), marker=marker, s=70 if marker != "o" else 40, color=colour,
                       edgecolor="black" if marker != "o" else "none", zorder=3,
                       label=label if y == 0 else None)
    ax.axvline(len(planted) + 0.5, ls="--", color="black", lw=1, label=f"top {len(planted)} (planted count)")
    ax.set(yticks=range(len(card.rows)), yticklabels=[r.method for r in card.rows], xlim=(0.5, n + 0.5),
           xlabel=f"rank by |node score| (1 = first, of {n}; tied nodes share the best rank)")
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("Where each method ranks the planted nodes, the decoy and the backup")
    fig.tight_layout()
    return fig


def faithfulness_curves(curves: Mapping[str, Any], hand: Mapping[str, tuple[float, float]] | None = None,
                        label: str = "", target: float = 0.8) -> Any:
    """MIB's faithfulness curve (absolute ranking) per ablation (``{ablation: FaithfulnessCurve}``),
    x = the fraction of edges asked for (log scale); ``hand``: ``{ablation: (edge fraction, f)}``
    of a hand-found circuit, marked.  Returns the Figure."""
    fig, ax = plt.subplots(figsize=(7.5, 4.3))
    styles = ["#7570b3", "#d95f02", "#1b9e77"]
    for colour, (ablation, c) in zip(styles, curves.items()):
        ax.plot(c.percentages, c.faithfulness["absolute"], marker="o", color=colour,
                label=f"{c.method}, {ablation} ablation (CMD {num(c.cmd)})")
        if hand and ablation in hand:
            x, f = hand[ablation]
            ax.scatter([x], [f], marker="*", s=220, color=colour, edgecolor="black", zorder=4,
                       label=f"hand-found heads, {ablation}: {num(f)}")
    ax.axhline(1, color="black", lw=1)
    ax.axhline(target, color="black", lw=1, ls=":", label=f"target {num(target)}")
    ax.set(xscale="log", xlabel="share of the graph's edges kept (top by |score|)",
           ylabel="faithfulness f (1 = the full model)", title=f"Faithfulness curves on {label}")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
