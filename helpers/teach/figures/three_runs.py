"""Chapter 2's figures: the three runs as bars, and the residual stream at two positions,
block by block (hand-written loop against ``H.patch_residual``).  Every function returns the
matplotlib ``Figure``."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import torch

from helpers.base.fmt import num, signed
from helpers.results.metrics import mean_and_sem, normalised
from helpers.results.patch_result import PatchResult

__all__ = ["three_runs", "layer_curves", "RUN_COLOURS", "ROLE_LINE_COLOURS"]

RUN_COLOURS = {"clean": "tab:blue", "corrupted": "tab:red", "patched": "tab:purple"}
ROLE_LINE_COLOURS = {"S2": "tab:red", "END": "tab:purple", "IO": "tab:green", "S1": "tab:orange"}
LABEL_PT = 9


def three_runs(clean_ld: torch.Tensor, corrupted_ld: torch.Tensor, patched_ld: torch.Tensor,
               title: str, normalise: bool = True) -> Any:
    """Bars of the mean logit difference (± SEM) of the clean, corrupted and patched runs
    (per-pair values, ``[n_pairs]`` each), each bar labelled with its mean; with ``normalise``
    the patched bar's name carries its normalised score."""
    stats = {run: mean_and_sem(v) for run, v in
             (("clean", clean_ld), ("corrupted", corrupted_ld), ("patched", patched_ld))}
    names = [f"{run} run" for run in stats]
    if normalise:
        score = ((stats["patched"][0] - stats["corrupted"][0])
                 / (stats["clean"][0] - stats["corrupted"][0]))
        names[2] += f"\n(score {num(score)})"
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bars = ax.bar(names, [m for m, _ in stats.values()], yerr=[s for _, s in stats.values()],
                  capsize=4, color=[RUN_COLOURS[r] for r in stats])
    for bar, (m, s) in zip(bars, stats.values()):   # each mean just beyond its error bar
        ax.annotate(signed(m), (bar.get_x() + bar.get_width() / 2, m + (s if m >= 0 else -s)),
                    xytext=(0, 3 if m >= 0 else -3), textcoords="offset points", ha="center",
                    va="bottom" if m >= 0 else "top", fontsize=LABEL_PT)
    ax.margins(y=0.15)  # room for the labels
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("mean logit difference IO − S\n(error bars: ± SEM)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def layer_curves(resid: PatchResult, by_hand: Mapping[str, Sequence[float]],
                 normalise: bool = True) -> Any:
    """Denoising the residual stream at each role of ``by_hand`` (role -> mean patched logit
    difference of block 0, 1, …, from a hand-written loop): ``H.patch_residual``'s rows
    (``resid``, layer x position, embed included) as dashed lines, the loop as dots on the
    block rows.  ``normalise``: normalised scores (0 = corrupted, 1 = clean), else raw means."""
    labels = resid.labels["layer"]
    rows = range(len(labels))
    clean, corrupted = resid.baseline("clean"), resid.baseline("corrupted")
    grid = resid.grid(normalise)                              # [rows, positions]
    fig, ax = plt.subplots(figsize=(max(7.5, 4 + 0.45 * len(labels)), 3.6))
    for role, loop in by_hand.items():
        colour = ROLE_LINE_COLOURS.get(role, "tab:grey")
        column = grid[:, resid.index("position", role)]
        ax.plot(rows, column.double().numpy(), "--", color=colour, lw=1, alpha=0.7,
                label=f"{role}: H.patch_residual")
        loop_t = torch.tensor(list(loop), dtype=torch.float64)
        shown = normalised(loop_t, clean, corrupted) if normalise else loop_t
        at = [resid.index("layer", i) for i in range(len(loop_t))]
        ax.plot(at, shown.numpy(), "o", color=colour, ms=7, label=f"{role}: textbook loop (by hand)")
    if normalise:
        ax.axhline(1, color="tab:blue", ls=":", lw=1, label="clean run (score 1)")
        ax.axhline(0, color="black", lw=0.8, label="corrupted run (score 0)")
    else:
        ax.axhline(clean, color="tab:blue", ls=":", lw=1, label="clean run")
        ax.axhline(corrupted, color="black", ls=":", lw=1, label="corrupted run")
    ax.set_xticks(list(rows), labels, rotation=45 if len(labels) > 9 else 0)
    ax.set_xlabel("patched: residual stream after block (embed = before block 0)")
    ax.set_ylabel("normalised score" if normalise else "mean logit difference")
    ax.set_title(f"denoising the residual stream at {' and '.join(by_hand)} "
                 f"({len(resid.prompts)} pairs)", fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
