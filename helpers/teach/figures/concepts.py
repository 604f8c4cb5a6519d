"""Chapter 1's figures: the three runs as a diagram, every pair's logit difference, the spread
over many prompts, and probability against the logit difference.  Every function returns the
matplotlib ``Figure`` (clean runs blue, corrupted runs red, explained in a legend)."""
from __future__ import annotations

from typing import Any, Mapping

import matplotlib.pyplot as plt
import numpy as np
import torch

from helpers.results.metrics import mean_and_sem
from helpers.teach.diagrams import Edge, Node, draw_diagram

__all__ = ["three_runs_diagram", "pair_logit_diffs", "logit_diff_histogram",
           "probability_vs_logit_diff", "RUN_COLOURS"]

RUN_COLOURS = {"clean": "tab:blue", "corrupted": "tab:red", "patched": "tab:purple"}
LEGEND_PT = 9


def _wrap(text: str, width: int = 30) -> str:
    """Break a prompt into lines of at most ``width`` characters, at spaces."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def three_runs_diagram(clean: str, corrupted: str) -> Any:
    """The three runs of activation patching as boxes and arrows, with a ``clean`` and a
    ``corrupted`` prompt (strings) written in their boxes."""
    nodes = [
        Node("clean", "clean prompt\n" + _wrap(clean), 0, 0, "#dbe9f6", "prompt"),
        Node("corrupted", "corrupted prompt\n" + _wrap(corrupted), 0, 1.9, "#f8dcdc", "prompt"),
        Node("cleanrun", "clean run", 1, 0, "#eeeeee", "run of the model"),
        Node("cache", "cache of the clean\nrun's activations", 1, 1, "#fff2cc", "stored values"),
        Node("corruptedrun", "corrupted run\n(the baseline)", 1, 2.2, "#eeeeee", "run of the model"),
        Node("patchedrun", "patched run:\ncorrupted prompt, one\nactivation from the cache",
             2.3, 1.1, "#eeeeee", "run of the model"),
        Node("metric", "metric\nlogit difference IO − S", 3.5, 1.1, "#e2f0d9", "measurement"),
    ]
    edges = [Edge("clean", "cleanrun"), Edge("cleanrun", "cache", "save"),
             Edge("corrupted", "corruptedrun"), Edge("corrupted", "patchedrun"),
             Edge("cache", "patchedrun", "one layer,\none position"),
             Edge("cleanrun", "metric"), Edge("corruptedrun", "metric"),
             Edge("patchedrun", "metric")]
    return draw_diagram(nodes, edges, title="The three runs of activation patching (denoising)")


def pair_logit_diffs(clean_ld: torch.Tensor, corrupted_ld: torch.Tensor) -> Any:
    """Every pair's logit difference (``[n_pairs]`` each), clean and corrupted joined by a grey
    line, with each run's mean (line) and ± SEM (band)."""
    n = len(clean_ld)
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    x = np.arange(n)
    ax.vlines(x, corrupted_ld.double().numpy(), clean_ld.double().numpy(), color="lightgrey",
              zorder=1, label="one pair")
    for run, values in (("clean", clean_ld), ("corrupted", corrupted_ld)):
        mean, sem = mean_and_sem(values)
        colour = RUN_COLOURS[run]
        ax.scatter(x, values.double().numpy(), color=colour, s=18, zorder=2, label=f"{run} run")
        ax.axhline(mean, color=colour, lw=1)
        ax.axhspan(mean - sem, mean + sem, color=colour, alpha=0.15)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("prompt pair")
    ax.set_ylabel("logit difference IO − S")
    ax.set_title(f"each pair's logit difference; lines and bands: mean ± SEM ({n} pairs)",
                 fontsize=10)
    ax.legend(fontsize=LEGEND_PT, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def logit_diff_histogram(clean_ld: torch.Tensor, corrupted_ld: torch.Tensor, title: str = "") -> Any:
    """Histograms of the clean and corrupted logit differences (``[n]`` each) on shared bins."""
    both = torch.cat([clean_ld, corrupted_ld]).double()
    bins = np.linspace(both.min().item(), both.max().item(), 41)
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    for run, values in (("corrupted", corrupted_ld), ("clean", clean_ld)):
        ax.hist(values.double().numpy(), bins=bins, color=RUN_COLOURS[run], alpha=0.6,
                label=f"{run} run")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("logit difference IO − S")
    ax.set_ylabel("prompts")
    ax.set_title(title or f"{len(clean_ld)} prompt pairs", fontsize=10)
    ax.legend(fontsize=LEGEND_PT)
    fig.tight_layout()
    return fig


def probability_vs_logit_diff(base: Mapping[str, Mapping[str, torch.Tensor]]) -> Any:
    """Each prompt's p(IO) against its logit difference, for ``base`` as ``H.baselines``
    returns it (``{"clean" | "corrupted": {"logit_diff" | "answer_prob": [n]}}``), with the
    two-name S-curve ``1 / (1 + e^(−LD))`` dashed."""
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    for run in ("corrupted", "clean"):
        ax.scatter(base[run]["logit_diff"].double().numpy(), base[run]["answer_prob"].double().numpy(),
                   s=10, color=RUN_COLOURS[run], alpha=0.6, label=f"{run} run")
    low, high = ax.get_xlim()
    grid = torch.linspace(low, high, 200, dtype=torch.float64)
    ax.plot(grid.numpy(), torch.sigmoid(grid).numpy(), color="grey", ls="--", lw=1,
            label="two names only: 1 / (1 + e^(−LD))")
    ax.set_xlabel("logit difference IO − S")
    ax.set_ylabel("p(IO), softmax over\nthe whole vocabulary")
    n = len(base["clean"]["logit_diff"])
    ax.set_title(f"probability of the right answer against the logit difference ({n} pairs)",
                 fontsize=10)
    ax.legend(fontsize=LEGEND_PT, loc="center right")
    fig.tight_layout()
    return fig


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
