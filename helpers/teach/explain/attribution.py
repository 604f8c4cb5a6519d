"""Chapter 8 (attribution patching): how the estimate compares with exact patching, in
tables and words.

The tables (``agreement``, ``worst``) are the numbers the prose states, computed once from
the exact sweeps and the attribution estimates (``helpers.attribution_patching``) and also
saved; every other function returns ``IPython.display.Markdown`` and states only
numbers it computes from what it is given.

Units: every comparison uses ``PatchResult.change(normalise)``, so 0 always means "the patch
does nothing": with ``normalise`` the share of the clean logit difference a patch restores
(denoising; destroys, noising), else the raw change of the mean logit difference.
Positions before the first token where the prompts differ are left out of the comparisons:
both methods give exactly 0 there.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd
import torch
from IPython.display import Markdown

from helpers.base.fmt import bullets, component_name, head_name, join, md_table, num, pct, signed
from helpers.results.patch_result import PatchResult
from helpers.teach.explain._markdown import markdown

__all__ = ["SITE_NAMES", "units", "components", "agreement", "worst", "residual",
           "agreement_text", "worst_text", "tangents", "saturation", "mlp_hold", "speed"]

SITE_NAMES = {"resid": "residual stream", "attn": "attention output", "mlp": "MLP output",
              "heads": "attention heads"}


def units(result: PatchResult, normalise: bool = True) -> str:
    """What ``change(normalise)`` is measured in, for labels and prose."""
    if not normalise:
        return f"change of mean {result.metric}"
    return "share restored" if result.direction == "denoise" else "share destroyed"


def _names(result: PatchResult, first: int) -> list[str]:
    """Component names of ``components``' cells, in their order (``helpers.base.fmt`` scheme)."""
    if result.dims == ("layer", "head"):
        return [head_name(l, h) for l in range(len(result.labels["layer"]))
                for h in range(len(result.labels["head"]))]
    positions = result.labels["position"][first:]
    names = []
    for row in result.labels["layer"]:
        layer = None if row == "embed" else int(row[1:])
        site = "embed" if row == "embed" else result.site
        names += [f"{component_name(site, layer)} @ {p}" for p in positions]
    return names


def components(result: PatchResult, normalise: bool = True) -> tuple[torch.Tensor, list[str], list[str]]:
    """The cells of a layer x position or layer x head result that a patch can change:
    ``(values [n], names [n], layer labels [n])`` with values from ``change(normalise)``;
    positions before ``prompts.first_difference`` are left out."""
    values = result.change(normalise)
    first = result.prompts.first_difference if "position" in result.dims else 0
    if "position" in result.dims:
        values = values[..., first:]
    rows = [lab for lab in result.labels["layer"] for _ in range(values.shape[-1])]
    return values.flatten().double(), _names(result, first), rows


def agreement(exact: Mapping[str, PatchResult], attr: Mapping[str, PatchResult],
              normalise: bool = True) -> pd.DataFrame:
    """One row per site of ``exact`` (keys of ``SITE_NAMES``): ``components`` (cells compared),
    ``pearson_r`` (does the estimate rank them like exact patching?), ``slope`` of the best line
    through the origin, estimate against exact (1 = the right size), ``largest_error`` (largest
    |estimate - exact|).  ``r``/``slope`` are NaN when undefined (no variation)."""
    rows = {}
    for site in exact:
        x, _, _ = components(exact[site], normalise)
        y, _, _ = components(attr[site], normalise)
        defined = len(x) > 1 and x.std() > 0 and y.std() > 0
        r = torch.corrcoef(torch.stack([x, y]))[0, 1].item() if defined else math.nan
        slope = (x @ y / (x @ x)).item() if (x @ x) > 0 else math.nan
        rows[site] = {"site": SITE_NAMES.get(site, site), "components": len(x), "pearson_r": r,
                      "slope": slope, "largest_error": (y - x).abs().max().item()}
    return pd.DataFrame.from_dict(rows, orient="index")


def worst(exact: Mapping[str, PatchResult], attr: Mapping[str, PatchResult],
          normalise: bool = True, top: int = 8) -> pd.DataFrame:
    """The ``top`` components with the largest |estimate - exact| over all sites: columns
    ``component`` (e.g. ``embed @ Laura (S2)``, ``attn0 @ to (END)``, ``L0H3``), ``site``,
    ``layer`` (row label: ``embed``, ``L0``…), ``exact``, ``estimate``, ``error``."""
    rows = []
    for site in exact:
        x, names, layers = components(exact[site], normalise)
        y, _, _ = components(attr[site], normalise)
        rows += [{"component": n, "site": site, "layer": lab, "exact": e, "estimate": a,
                  "error": a - e} for n, lab, e, a in zip(names, layers, x.tolist(), y.tolist())]
    frame = pd.DataFrame(rows)
    order = frame["error"].abs().sort_values(ascending=False, kind="stable").index
    return frame.loc[order].head(top).reset_index(drop=True)


def residual(exact: PatchResult, attr: PatchResult, normalise: bool = True) -> Markdown:
    """The residual-stream maps compared: the first rows at S2 (where the information starts),
    the last row at END, and the largest gap anywhere."""
    e, a = exact.change(normalise), attr.change(normalise)
    rows = exact.labels["layer"]
    s2, end = exact.index("position", "S2"), exact.index("position", "END")
    early = rows[:min(3, len(rows))]

    def at(grid: torch.Tensor, pos: int) -> str:
        return ", ".join(f"{r} {num(grid[exact.index('layer', r), pos])}" for r in early)

    return markdown(bullets([
        f"**At S2, first rows**, the exact map shows where the information starts: {at(e, s2)}. "
        f"The estimate there: {at(a, s2)}.",
        f"**At END, last row** ({rows[-1]}): exact {num(e[-1, end])}, estimate {num(a[-1, end])}.",
        f"Largest gap anywhere in this map: {num((a - e).abs().max())} ({units(exact, normalise)}).",
    ]))


def agreement_text(table: pd.DataFrame) -> Markdown:
    """Read ``agreement``'s table: per site, does the estimate rank the components
    (r > 0.9 well, > 0.5 loosely) and is it the right size (slope 0.8 .. 1.25)?"""
    lines = []
    for _, row in table.iterrows():
        r, slope = row["pearson_r"], row["slope"]
        if math.isnan(r) or math.isnan(slope):
            lines.append(f"**{row['site']}**: too few varying components for a correlation.")
            continue
        rank = ("ranks them well" if r > 0.9 else "ranks them only loosely" if r > 0.5
                else "does not rank them")
        size = ("about the right size" if 0.8 <= slope <= 1.25 else
                f"about {num(1 / slope, 1)}× too small" if 0 < slope < 0.8 else
                f"about {num(slope, 1)}× too large" if slope > 1.25 else "of the wrong sign")
        lines.append(f"**{row['site']}**: r = {num(r)}, slope {num(slope)}: the estimate {rank} "
                     f"and is {size}.")
    return markdown(bullets(lines), "A high *r* alone is not agreement: it ignores scale. Read it "
                    "with the slope, and look at the single worst points, which is where a wrong "
                    "conclusion would come from.")


def worst_text(table: pd.DataFrame, unit: str) -> Markdown:
    """Read ``worst``'s table: the worst component, how many are embeddings / layer-0 parts
    or residual-stream cells, and how many estimates fall short of the real effect."""
    first = table.iloc[0]
    n = len(table)
    early = int(table["layer"].isin(["embed", "L0"]).sum())
    resid = int((table["site"] == "resid").sum())
    under = int((table["error"] * table["exact"] < 0).sum())
    return markdown(bullets([
        f"The worst estimate is **{first['component']}**: exact {num(first['exact'])}, estimate "
        f"{num(first['estimate'])} ({unit}).",
        f"{early} of these {n} are the embeddings or layer-0 components; {resid} are "
        "residual-stream cells.",
        f"In {under} of the {n} the estimate is *smaller* than the real effect (or of the other "
        "sign)" + (": here the estimate mostly under-states what a patch does." if under > n / 2
                   else "."),
    ]))


def tangents(walks: Mapping[str, Sequence[float]], estimates: Mapping[str, float]) -> Markdown:
    """Read the walks: ``walks[name]`` is the mean logit difference at each α (first α = 0,
    last α = 1), ``estimates[name]`` the attribution estimate (mean logit difference).  The
    real change is last - first, the tangent's is estimate - first."""
    lines = []
    for name, lds in walks.items():
        real, tangent = lds[-1] - lds[0], estimates[name] - lds[0]
        said = f"**{name}**: the real change is {signed(real)}, the tangent's {signed(tangent)}"
        if abs(real) < 1e-6:
            lines.append(f"**{name}**: the patch changes nothing.")
        elif abs(tangent) < 0.05 * abs(real):
            lines.append(f"{said}: the tangent predicts almost none — flat at α = 0, then it moves.")
        elif real / tangent < 0:
            lines.append(f"{said}: opposite signs.")
        else:
            lines.append(f"{said}: the real change is {num(real / tangent, 1)}× the estimate.")
    return markdown(bullets(lines), "Every estimate is exact *for a small enough patch*; the "
                    "patches of activation patching are not small — they replace one run's "
                    "activation by the other's.")


def saturation(head: str, query: str, looks: Mapping[str, tuple[str, float]],
               alphas: Sequence[float], weights: Sequence[float], lds: Sequence[float],
               key: str) -> Markdown:
    """A head's attention from ``query``: ``looks[run] = (token it looks at most, weight)`` for
    the ``"corrupted"`` and ``"clean"`` runs; along the embedding walk (``alphas``), its weight
    on ``key`` (``weights``) and the mean logit difference (``lds``)."""
    (k_corr, w_corr), (k_clean, w_clean) = looks["corrupted"], looks["clean"]
    saturated = min(w_corr, w_clean) > 0.9
    jump = max(range(1, len(alphas)), key=lambda i: abs(lds[i] - lds[i - 1]))
    flat = abs(lds[1] - lds[0]) < 0.1 * abs(lds[-1] - lds[0])
    return markdown(bullets([
        f"{head} at {query} puts {pct(w_corr, 1)} of its attention on {k_corr} in the corrupted "
        f"run and {pct(w_clean, 1)} on {k_clean} in the clean run: "
        + ("**saturated** in both runs" if saturated else "not saturated")
        + (", and it **flips** from one token to the other." if k_corr != k_clean
           else ", on the same token."),
        f"Along the walk of the embedding at {query}, its attention to {key} goes "
        f"{num(weights[0])} → {num(weights[-1])}, and the logit difference changes most between "
        f"α = {num(alphas[jump - 1], 1)} and {num(alphas[jump], 1)} ({num(lds[jump - 1], 1)} → "
        f"{num(lds[jump], 1)}). At α = 0 the curve is "
        + ("nearly flat: the tangent sees almost nothing." if flat else "already rising."),
    ]))


def mlp_hold(head: str, free: float, held: float, estimate: float, unit: str,
             nothing: float = 0.0) -> Markdown:
    """How much of a head's patch runs through MLP0: its effect with MLP0 free (``free``, the
    exact patch), with MLP0 held at its corrupted value (``held``) and the attribution estimate,
    all in ``unit``; ``nothing`` is the value of "no effect" in that unit."""
    total = free - nothing
    if abs(total) < 1e-9:
        return markdown(f"{head}'s patch changes nothing here, so there is nothing to split.")
    share = (held - nothing) / total
    if share >= 0.5:
        return markdown(f"{pct(share)} of {head}'s effect is left with MLP0 held fixed: on this "
                        "model and these prompts most of it does not depend on MLP0.")
    far_off = abs(estimate - free) > 0.25 * abs(total)
    tail = ("An MLP is a curve, not a line, and this patch moves its input far, so the tangent at "
            f"the corrupted run ({num(estimate)}) misses much of the real effect ({num(free)}). "
            "That is the literature's layer-0 / MLP0 warning, seen from the head's side."
            if far_off else
            f"Here the path through MLP0 is nearly straight: the estimate ({num(estimate)}) is "
            f"close to the real effect ({num(free)}).")
    return markdown(f"Only {pct(share)} of {head}'s effect is left when MLP0 cannot respond: most "
                    f"of it runs **through MLP0**. {tail}")


def speed(seconds: Mapping[str, float], estimate: str) -> Markdown:
    """Measured run times (``seconds[method]``, on this machine, now) as a table: each method's
    time and that time over the time of ``estimate`` (the attribution call).  Timings vary
    between machines and runs: show this in a cell whose output is not regression-checked."""
    t = seconds[estimate]
    rows = [(name, num(s, 2), f"{num(s / t, 1)}×") for name, s in seconds.items()]
    others = [f"{name} took {num(seconds[name] / t, 1)}× as long" for name in seconds
              if name != estimate]
    return markdown(md_table(["method", "time (s)", "time over the attribution call's"], rows),
                    f"On this machine, in this run: {join(others)} as the attribution call, "
                    "which gave every map at once.")


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
