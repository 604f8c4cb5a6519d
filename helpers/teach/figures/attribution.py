"""Chapter 8's figures: exact patching against its attribution estimate.

* ``compare`` - the exact map and the estimate, same axes and the same colour range;
* ``scatter`` - exact (x) against estimate (y) per site, every panel on the same limits, the
  worst-estimated component named inside the axes;
* ``tangents`` - walks from the corrupted to the clean activation (fraction α) and the
  attribution estimate as the tangent at α = 0, every panel on the same y range.

Values are ``PatchResult.change(normalise)`` (0 = the patch does nothing) or, for the maps,
``grid(normalise)`` as ``helpers.plot_patching`` draws them.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt

from helpers.base.fmt import num
from helpers.results.patch_result import PatchResult
from helpers.teach.explain.attribution import SITE_NAMES, agreement, components, units
from helpers.teach.plotting import plot_patching

__all__ = ["compare", "scatter", "tangents"]

LABEL_PT = 9   # point labels and legends: above the 8 pt floor


def compare(exact: PatchResult, estimate: PatchResult, normalise: bool = True) -> Any:
    """The exact map and the attribution estimate of one site (layer x position: one above the
    other; layer x head: side by side) on the same axes and the same colour range (normalised:
    -1 .. 1 with arrows for values beyond; raw: ± the larger of the two maxima)."""
    rows, cols = exact.shape
    if exact.dims == ("layer", "head"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 1.8 + 0.5 * rows))
    else:
        fig, axes = plt.subplots(2, 1, figsize=(min(16.0, 3.0 + 0.62 * cols), 2 * (1.5 + 0.45 * rows)))
    name = SITE_NAMES.get("heads" if exact.site == "head" else exact.site, exact.site)
    for ax, r, how in zip(axes, (exact, estimate), ("exact patching", "attribution estimate")):
        plot_patching(r, normalise=normalise, ax=ax, title=f"{how} · {name}")
        bar = ax.collections[0].colorbar   # the long label on two lines, so that it fits
        bar.set_label(r.importance_label().replace(" (", "\n(") if normalise
                      else f"mean {r.metric}", fontsize=9)
        if normalise:   # the same ticks on both bars, whether or not one has an arrow
            bar.set_ticks([-1, -0.5, 0, 0.5, 1])
    if not normalise:   # plot_patching scales each raw map to its own maximum: use the larger
        limit = max(abs(v) for ax in axes for v in ax.collections[0].get_clim())
        for ax in axes:
            ax.collections[0].set_clim(-limit, limit)
    fig.tight_layout()
    return fig


def _label_inside(ax: Any, x: float, y: float, text: str, lo: float, hi: float) -> None:
    """Write ``text`` next to the point (x, y), towards the middle of the axes, so that it
    stays inside them."""
    mid = (lo + hi) / 2
    right, up = x > mid, y > mid
    ax.annotate(text, (x, y), xytext=(-7 if right else 7, -7 if up else 7),
                textcoords="offset points", ha="right" if right else "left",
                va="top" if up else "bottom", fontsize=LABEL_PT, color="tab:red")


def scatter(exact: Mapping[str, PatchResult], estimate: Mapping[str, PatchResult],
            normalise: bool = True, sites: Sequence[str] | None = None) -> Any:
    """One panel per site (default: every key of ``exact``): each component's exact change
    (x) against its estimate (y), the line y = x, Pearson r in the title and the worst
    estimate (largest |y - x|) circled and named.  All panels share the same limits."""
    sites = list(sites or exact)
    data = {}
    for site in sites:
        x, names, _ = components(exact[site], normalise)
        y, _, _ = components(estimate[site], normalise)
        data[site] = (x, y, names)
    lo = min(min(x.min().item(), y.min().item()) for x, y, _ in data.values())
    hi = max(max(x.max().item(), y.max().item()) for x, y, _ in data.values())
    pad = 0.08 * ((hi - lo) or 1.0)
    lo, hi = lo - pad, hi + pad
    table = agreement({s: exact[s] for s in sites}, {s: estimate[s] for s in sites}, normalise)
    unit = units(exact[sites[0]], normalise)
    fig, axes = plt.subplots(1, len(sites), figsize=(3.6 * len(sites), 4.3), squeeze=False)
    for ax, site in zip(axes[0], sites):
        x, y, names = data[site]
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="y = x (perfect estimate)")
        ax.scatter(x, y, s=18, alpha=0.7, color="tab:blue", label="one component")
        k = int((y - x).abs().argmax())
        ax.scatter([x[k]], [y[k]], s=60, facecolors="none", edgecolors="tab:red",
                   label="worst estimate")
        _label_inside(ax, x[k].item(), y[k].item(), names[k], lo, hi)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        r = table.loc[site, "pearson_r"]
        ax.set_title(SITE_NAMES.get(site, site) + ("" if r != r else f"\nr = {num(r)}"), fontsize=10)
        ax.set_xlabel(f"exact ({unit})", fontsize=9)
    axes[0][0].set_ylabel(f"attribution estimate ({unit})", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=LABEL_PT, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def tangents(alphas: Sequence[float], walks: Mapping[str, Sequence[float]],
             estimates: Mapping[str, float], clean: float, corrupted: float,
             normalise: bool = True) -> Any:
    """One panel per walked component: the mean logit difference with a fraction α of the way
    from the corrupted to the clean activation patched in (``walks[name]``, one value per α,
    α = 0 first), and the attribution estimate (``estimates[name]``, mean logit difference)
    drawn as the straight line from α = 0.  ``normalise``: y in shares of the clean-corrupted
    gap (0 = corrupted run, 1 = clean run), else the mean logit difference.  Panels share y."""
    def to_units(v: float) -> float:
        return (v - corrupted) / (clean - corrupted) if normalise else v

    fig, axes = plt.subplots(1, len(walks), figsize=(4.6 * len(walks), 4.0), sharey=True,
                             squeeze=False)
    for ax, (name, lds) in zip(axes[0], walks.items()):
        ys, est = [to_units(v) for v in lds], to_units(estimates[name])
        ax.plot(alphas, ys, "o-", color="tab:blue", ms=4, label="exact: fraction α patched")
        ax.plot([0, 1], [ys[0], est], "--", color="tab:orange", label="attribution: tangent at α = 0")
        ax.plot([1], [est], "s", color="tab:orange")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(f"{name}\nexact {num(ys[-1])} · estimate {num(est)}", fontsize=10)
        ax.set_xlabel("α (0 = corrupted value, 1 = clean value)", fontsize=9)
    axes[0][0].set_ylabel("share of the clean logit difference" if normalise
                          else "mean logit difference", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=LABEL_PT, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
