"""Chapter 5 (noising) figures: a denoising and a noising map side by side, the
sufficiency-vs-necessity scatter, and joint patches against the sum of single patches.
Every function returns the matplotlib ``Figure``."""
from __future__ import annotations

from typing import Any, Mapping

import matplotlib.pyplot as plt
import numpy as np

from helpers.base.fmt import num
from helpers.results.patch_result import PatchResult
from helpers.teach.explain.noising import JointSum, Sweeps, mirror_points
from helpers.teach.plotting import ANNOT_PT, plot_patching
from helpers.results.metrics import Metric

__all__ = ["plot_pair", "plot_mirror", "plot_joint_vs_sum", "short_colourbar"]

MARKERS = "osD^v"


def short_colourbar(ax: Any, result: PatchResult, normalise: bool = True) -> None:
    """Shorten the colour-bar label of a ``plot_patching`` axis to what fits beside a stacked
    map: "share restored" (denoising) or "share destroyed (1 − score)" (noising); the title
    keeps the full description."""
    bar = ax.collections[0].colorbar
    if bar is not None and normalise:
        bar.set_label("share restored\n(score)" if result.direction == "denoise"
                      else "share destroyed\n(1 − score)", fontsize=9)


def plot_pair(pair: Mapping[str, PatchResult], normalise: bool = True,
              metric: Metric | None = None) -> Any:
    """``pair["denoise"]`` and ``pair["noise"]`` (two-axis results of one shape ``[rows,
    cols]``) as two heatmaps on one colour scale, both showing importance (share restored /
    share destroyed); stacked, so the long titles and colour-bar labels never collide."""
    rows, cols = pair["denoise"].shape
    fig, axes = plt.subplots(2, 1, figsize=(min(15, max(8.0, 3 + 0.62 * cols)),
                                            2 * (1.5 + 0.45 * rows)))
    for ax, d in zip(axes, ("denoise", "noise")):
        plot_patching(pair[d], metric=metric, normalise=normalise, ax=ax)
        short_colourbar(ax, pair[d], normalise)
    fig.tight_layout()
    return fig


OFFSETS = [(7, 5), (-7, 5), (7, -7), (-7, -7), (0, 10), (0, -12), (12, 0), (-12, 0)]  # points


def _place(ax: Any, spots: list[tuple[float, float]]) -> list[tuple[int, int]]:
    """For each labelled point, the text offset (in points, from ``OFFSETS``) that keeps its
    number inside the axes and farthest from the other numbers and labelled points."""
    to_px = ax.transData.transform
    dpi_scale = ax.figure.dpi / 72
    box = ax.get_window_extent()
    points = [to_px(xy) for xy in spots]
    placed: list[np.ndarray] = []
    chosen = []
    for i, p in enumerate(points):
        best, best_d = OFFSETS[0], -1.0
        for off in OFFSETS:
            q = p + np.array(off) * dpi_scale
            if not (box.x0 + 8 < q[0] < box.x1 - 8 and box.y0 + 8 < q[1] < box.y1 - 8):
                continue
            others = placed + [pt for j, pt in enumerate(points) if j != i]
            d = min([float(np.hypot(*(q - o))) for o in others] or [1e9])
            if d > best_d:
                best, best_d = off, d
        chosen.append(best)
        placed.append(p + np.array(best) * dpi_scale)
    return chosen


def plot_mirror(sweeps: Sweeps, title: str, normalise: bool = True, metric: Metric | None = None,
                n_labels: int = 4) -> Any:
    """Sufficiency (x: denoising gain) against necessity (y: noising damage) for every cell of
    ``sweeps`` (``{site: {"denoise": result, "noise": result}}``), one marker per site.  The
    ``n_labels`` most important points and the ``n_labels`` largest departures from the
    diagonal get a number next to them (kept inside the axes); the numbers are named in a key
    beside the plot, so labels never overlap.  Axis limits include every point (values beyond
    0 .. 1 stay visible)."""
    pts = mirror_points(sweeps, normalise, metric)
    unit = "of the gap" if normalise else "raw change"
    fig, (ax, key_ax) = plt.subplots(1, 2, figsize=(10, 6), gridspec_kw={"width_ratios": [3, 1.3]})
    for site, marker in zip(sweeps, MARKERS):
        mine = [p for p in pts if p["site"] == site]
        ax.scatter([p["suff"] for p in mine], [p["nec"] for p in mine], marker=marker, alpha=0.6,
                   label=site)
    values = [v for p in pts for v in (p["suff"], p["nec"])]
    lo, hi = min(values + [0.0]), max(values + [1.0 if normalise else 0.0])
    pad = 0.08 * (hi - lo or 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", lw=0.8, ls="--",
            label="diagonal: additive (maps agree)")
    chosen = sorted(pts, key=lambda p: -max(abs(p["suff"]), abs(p["nec"])))[:n_labels]
    chosen += sorted(pts, key=lambda p: -abs(p["suff"] - p["nec"]))[:n_labels]
    spots: dict[tuple[int, int], list] = {}   # one number per spot; coincident points share it
    for p in chosen:
        k = (round(p["suff"] / (0.04 * (hi - lo or 1))), round(p["nec"] / (0.04 * (hi - lo or 1))))
        spot = spots.setdefault(k, [p["suff"], p["nec"], []])
        if p["name"] not in spot[2]:
            spot[2].append(p["name"])
    xy = [(x, y) for x, y, _ in spots.values()]
    for number, ((x, y), off) in enumerate(zip(xy, _place(ax, xy)), 1):
        ax.annotate(str(number), (x, y), xytext=off, textcoords="offset points", fontsize=9,
                    fontweight="bold", ha="center", va="center")
    key_ax.axis("off")
    key = [f"{i}: " + ", ".join(names) for i, (_, _, names) in enumerate(spots.values(), 1)]
    key_ax.text(0, 1, "labelled points\n" + "\n".join(key), va="top", ha="left", fontsize=8,
                transform=key_ax.transAxes, wrap=True)
    ax.set_xlabel(f"sufficiency: denoising gain ({unit})")
    ax.set_ylabel(f"necessity: noising damage ({unit})")
    ax.text(0.98, 0.02, "sufficient, not necessary\n(OR-like)", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=8, color="grey")
    ax.text(0.02, 0.98, "necessary, not sufficient\n(AND-like)", transform=ax.transAxes,
            ha="left", va="top", fontsize=8, color="grey")
    ax.legend(loc="lower right", bbox_to_anchor=(1, 0.12), fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_joint_vs_sum(js: JointSum) -> Any:
    """Two panels (denoising gain, noising damage) sharing one y axis: per group, the sum of
    the single patches (grey) and the joint patch (colour) with an error bar of ±2 standard
    errors of joint − sum over prompts; every bar carries its value."""
    x = np.arange(len(js.groups))
    fig, axes = plt.subplots(1, 2, figsize=(min(16, 4 + 1.5 * len(js.groups)), 4.6), sharey=True)
    for ax, d in zip(axes, ("denoise", "noise")):
        sums = ax.bar(x - 0.2, js.sums[d], 0.4, label="sum of single patches", color="tab:grey")
        joints = ax.bar(x + 0.2, js.joints[d], 0.4,
                        yerr=[2 * s for s in js.sem[d]], capsize=3, ecolor="black",
                        label="patched jointly (±2 s.e.m. of joint − sum)",
                        color="tab:blue" if d == "denoise" else "tab:red")
        for bars, vals in ((sums, js.sums[d]), (joints, js.joints[d])):
            ax.bar_label(bars, labels=[num(v) for v in vals], padding=2, fontsize=ANNOT_PT)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, js.groups, rotation=25, ha="right", fontsize=9)
        ax.set_title("denoising: gain (sufficiency)" if d == "denoise"
                     else "noising: damage (necessity)", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    top = max(max(js.sums[d] + js.joints[d]) for d in js.sums)
    bottom = min(min(js.sums[d] + js.joints[d]) for d in js.sums)
    axes[0].set_ylim(min(0.0, bottom) - 0.1 * abs(top or 1), top + 0.35 * abs(top or 1))
    axes[0].set_ylabel(f"gain or damage ({js.unit})")
    fig.tight_layout()
    return fig


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
