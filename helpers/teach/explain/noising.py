"""Chapter 5 (noising): what denoising and noising maps mean side by side, in words.

Both directions are read as *importance* (``PatchResult.importance``): denoising, the share of
the clean behaviour a clean activation restores (sufficiency); noising, the share a corrupted
activation destroys, ``1 - score`` (necessity).  1 = "this component carries all of it" in both
directions, so an additive model gives two *identical* maps and every difference between them
is an interaction.  With ``normalise=False`` (a model that cannot do the task) the same
quantities are raw metric changes: gain when denoising, loss when noising.

Every function reads the numbers it is given and nothing else; the numbers it states are
computed here from those results.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from IPython.display import Markdown

from helpers.base.fmt import bullets, join, md_table, num, signed
from helpers.results.patch_result import PatchResult
from helpers.teach.explain._markdown import markdown
from helpers.results.metrics import Metric

__all__ = ["cell_name", "matters", "mirror_points", "tolerance", "JointSum", "joint_vs_sum",
           "residual_both_ways", "heads_both_ways", "mirror_summary", "joint_verdicts",
           "corruption_table", "name_positions", "corruption_contrast", "diagonal_counts", "TOL"]

TOL = 0.05  # differences below this (of the gap, or of the largest raw value) count as "equal"
Sweeps = Mapping[str, Mapping[str, PatchResult]]   # {site: {"denoise": result, "noise": result}}


def cell_name(result: PatchResult, i: int, j: int) -> str:
    """Cell ``(i, j)`` of a two-axis result in the naming scheme: ``L0H3`` (head), ``L1 at
    Laura (S2)`` (residual stream after block 1), ``attn0 at ...``, ``mlp0 at ...``."""
    row = result.labels[result.dims[0]][i]
    if result.site == "head":
        return row + result.labels["head"][j]
    pos = result.labels["position"][j]
    if result.site == "resid":
        return f"{row} at {pos}"
    return f"{result.site}{row[1:]} at {pos}"


def matters(result: PatchResult, normalise: bool = True, metric: Metric | None = None,
            per_prompt: bool = False) -> torch.Tensor:
    """How much each patched component matters, positive = towards "carries the behaviour":
    denoising gain (sufficiency) or noising damage (necessity).  ``normalise``: in units of the
    clean - corrupted gap (equals ``importance()``); else raw metric change.  ``[*shape]``, or
    ``[n_prompts, *shape]`` with ``per_prompt`` (each prompt's change against its own
    baseline, divided by the mean gap, so the prompt mean equals the ``[*shape]`` value)."""
    m = metric or result.metric
    if not per_prompt:
        return result.importance(m) if normalise else (
            result.effect(m) if result.direction == "denoise" else -result.effect(m))
    base = result.corrupted[m] if result.direction == "denoise" else result.clean[m]
    change = result.values[m] - base.reshape(-1, *[1] * (result.values[m].dim() - 1))
    if result.direction == "noise":
        change = -change
    if normalise:
        change = change / (result.baseline("clean", m) - result.baseline("corrupted", m))
    return change


def tolerance(values: Sequence[torch.Tensor], normalise: bool = True) -> float:
    """What counts as "equal": ``TOL`` of the gap, or ``TOL`` of the largest raw |value|."""
    return TOL if normalise else TOL * max(float(v.abs().max()) for v in values)


def mirror_points(sweeps: Sweeps, normalise: bool = True,
                  metric: Metric | None = None) -> list[dict[str, Any]]:
    """Every cell of every site as ``{site, name, suff, nec}``: sufficiency (denoising gain)
    and necessity (noising damage), the two values the maps show."""
    pts = []
    for site, rs in sweeps.items():
        s, n = matters(rs["denoise"], normalise, metric), matters(rs["noise"], normalise, metric)
        for i in range(s.shape[0]):
            for j in range(s.shape[1]):
                pts.append(dict(site=site, name=cell_name(rs["denoise"], i, j),
                                suff=float(s[i, j]), nec=float(n[i, j])))
    return pts


def _unit(normalise: bool, metric: str) -> str:
    return "of the gap" if normalise else f"({metric})"


def residual_both_ways(resid: Mapping[str, PatchResult], normalise: bool = True,
                       metric: Metric | None = None, top: int = 6) -> Markdown:
    """Section 1: the ``top`` residual cells by importance, their value on both maps, and the
    largest disagreement between the maps."""
    pts = mirror_points({"residual": resid}, normalise, metric)
    m = metric or resid["denoise"].metric
    best = sorted(pts, key=lambda p: -max(abs(p["suff"]), abs(p["nec"])))[:top]
    worst = max(pts, key=lambda p: abs(p["suff"] - p["nec"]))
    gap = abs(worst["suff"] - worst["nec"])
    tol = tolerance([torch.tensor([p["suff"], p["nec"]]) for p in pts], normalise)
    verdict = ("The two maps nearly agree: where the information passes through a single residual "
               "vector, restoring that vector and destroying it are two views of one fact. "
               "Components *inside* the layers need not behave so simply (sections 3-5)."
               if gap < tol else
               "Even on the residual stream the maps disagree here: section 3 says what that means.")
    return markdown(
        "**What it means.** The cells that matter most, with their value on each map "
        "(denoising: share restored; noising: share destroyed):",
        bullets([f"{p['name']}: denoising {num(p['suff'])}, noising {num(p['nec'])}" for p in best]),
        f"Both maps light up at the same cells. Sufficiency (denoising) and necessity (noising) "
        f"differ by at most {num(gap)} {_unit(normalise, m)} on this grid (at {worst['name']}). "
        + verdict)


def heads_both_ways(heads: Mapping[str, PatchResult], normalise: bool = True,
                    metric: Metric | None = None) -> Markdown:
    """Section 2: the strongest head by denoising, and per block the range of single-head
    sufficiency and the largest single-head necessity."""
    m = metric or heads["denoise"].metric
    s, n = matters(heads["denoise"], normalise, m), matters(heads["noise"], normalise, m)
    layer, head = divmod(int(s.argmax()), s.shape[1])
    name = cell_name(heads["denoise"], layer, head)
    rows = [f"{heads['denoise'].labels['layer'][l]}: single heads restore {num(s[l].min())} to "
            f"{num(s[l].max())} when denoised; noising any one of them destroys at most "
            f"{num(n[l].max())} {_unit(normalise, m)}" for l in range(s.shape[0])]
    return markdown(
        f"**What it means.** The strongest head by denoising is **{name}**: denoising it restores "
        f"{num(s[layer, head])}, noising it destroys {num(n[layer, head])}. Block by block:",
        bullets(rows),
        "A block whose heads all sit at similar small values on both maps is a block whose work is "
        "spread out. One head at a time, it looks unimportant in *both* directions; section 4 "
        "patches the whole block at once.")


def _counts(pts: list[dict[str, Any]], tol: float) -> tuple[int, int]:
    n_or = sum(p["suff"] - p["nec"] > tol for p in pts)
    n_and = sum(p["nec"] - p["suff"] > tol for p in pts)
    return n_or, n_and


def mirror_summary(sweeps: Sweeps, corruption: str, normalise: bool = True,
                   metric: Metric | None = None, k: int = 3) -> Markdown:
    """Section 3: the ``k`` largest departures from the diagonal of the sufficiency-vs-
    necessity scatter, and how many components lie below (OR-like) / above (AND-like) it."""
    pts = mirror_points(sweeps, normalise, metric)
    tol = tolerance([torch.tensor([p["suff"], p["nec"]]) for p in pts], normalise)
    off = sorted(pts, key=lambda p: -abs(p["suff"] - p["nec"]))[:k]
    n_or, n_and = _counts(pts, tol)
    if n_or + n_and == 0:
        meaning = (f"With the {corruption} corruption every component sits on the diagonal: as far as "
                   "single components go, this model and this corruption behave additively, and the "
                   "noising maps carry the same information as the denoising maps. That is a property "
                   "of this model and corruption, not a law: section 4 finds interactions that single "
                   "components hide, and section 5 changes the corruption.")
    else:
        meaning = ("Some components are off the diagonal: for them the two maps tell different "
                   "stories, and only the two together say whether a component acts alone, with "
                   "backups (OR) or with partners (AND).")
    return markdown(
        "Largest departures from the diagonal (sufficiency / necessity):",
        bullets([f"{p['name']}: {num(p['suff'])} / {num(p['nec'])}" for p in off]),
        f"{len(pts)} components: {n_or} more sufficient than necessary (below the diagonal by more "
        f"than {num(tol)}), {n_and} more necessary than sufficient (above it).",
        "**What it means.** " + meaning)


@dataclass
class JointSum:
    """Joint patch against the sum of single patches, per group and direction.  ``sums[d]``,
    ``joints[d]``, ``diff[d]`` (joint - sum) and ``sem[d]`` (standard error of that
    difference over prompts) are lists with one entry per group; values are "matters"
    (gain when denoising, damage when noising)."""

    groups: list[str]
    sums: dict[str, list[float]]
    joints: dict[str, list[float]]
    diff: dict[str, list[float]]
    sem: dict[str, list[float]]
    tol: float
    unit: str
    n_prompts: int

    def pattern(self, i: int) -> str:
        """OR / AND / in series / spread out / additive, from the signs of joint - sum in both
        directions; a difference under 2 standard errors or under ``tol`` counts as equal."""
        den, noi = self.sign("denoise", i), self.sign("noise", i)
        if "~" in (den, noi) and {den, noi} <= {"~", "="}:
            return "additive within noise"
        den, noi = den.replace("~", "="), noi.replace("~", "=")
        return {("=", "="): "additive", ("<", ">"): "OR-like (redundant)",
                (">", "<"): "AND-like (partners)", ("<", "<"): "overlapping / in series",
                (">", ">"): "spread out, threshold-like read-out"}.get((den, noi), "mixed")

    def to_dict(self) -> dict:
        """JSON-ready, per group: ``{"sum", "joint", "sem"}`` (each per direction) and ``"pattern"``."""
        dirs = list(self.sums)
        return {g: {"sum": {d: self.sums[d][i] for d in dirs}, "joint": {d: self.joints[d][i] for d in dirs},
                    "sem": {d: self.sem[d][i] for d in dirs}, "pattern": self.pattern(i)}
                for i, g in enumerate(self.groups)}

    def sign(self, d: str, i: int) -> str:
        """``~`` within noise (< 2 s.e.m.), ``=`` below ``tol``, else ``>`` / ``<``."""
        v = self.diff[d][i]
        if abs(v) < 2 * self.sem[d][i]:
            return "~"
        if abs(v) < self.tol:
            return "="
        return ">" if v > 0 else "<"


def joint_vs_sum(heads: Mapping[str, PatchResult], joint: Mapping[str, PatchResult],
                 pair_name: str, normalise: bool = True, metric: Metric | None = None) -> JointSum:
    """Compare joint and summed patches.  ``heads[d]``: layer x head sweeps; ``joint[d]``: a
    ``patch_components`` result over ``n_layers + 3`` sets in this order: every block's heads
    (one set per block), then a pair's two members alone, then the pair jointly.  Groups: one
    per block (``L0 heads`` ...) and ``pair_name``."""
    m = metric or heads["denoise"].metric
    n_layers = heads["denoise"].shape[0]
    out: dict[str, dict[str, list[float]]] = {k: {} for k in ("sums", "joints", "diff", "sem")}
    for d in ("denoise", "noise"):
        single = matters(heads[d], normalise, m, per_prompt=True).sum(-1)     # [n, n_layers]
        sets = matters(joint[d], normalise, m, per_prompt=True)             # [n, n_layers + 3]
        sums = torch.cat([single, (sets[:, -3] + sets[:, -2])[:, None]], 1)
        joints = torch.cat([sets[:, :n_layers], sets[:, -1:]], 1)
        diff = joints - sums
        n = diff.shape[0]
        sem = diff.std(0) / math.sqrt(n) if n > 1 else torch.zeros(diff.shape[1])
        for key, v in (("sums", sums.mean(0)), ("joints", joints.mean(0)),
                       ("diff", diff.mean(0)), ("sem", sem)):
            out[key][d] = [float(x) for x in v]
    tol = tolerance([torch.tensor(out["sums"][d]) for d in out["sums"]], normalise)
    groups = [f"{lab} heads" for lab in heads["denoise"].labels["layer"]] + [pair_name]
    return JointSum(groups, out["sums"], out["joints"], out["diff"], out["sem"], tol,
                    _unit(normalise, m), len(heads["denoise"].prompts))


def _summary_line(js: JointSum, i: int) -> str:
    parts = []
    for d, what in (("denoise", "denoising gains"), ("noise", "noising destroys")):
        diff = js.diff[d][i]
        noise = " (within noise)" if abs(diff) < 2 * js.sem[d][i] else ""
        parts.append(f"{what} {num(js.sums[d][i])} summed vs {num(js.joints[d][i])} jointly, "
                     f"difference {signed(diff)} ± {num(js.sem[d][i])}{noise}")
    return f"**{js.groups[i]}**: " + "; ".join(parts) + f" → {js.pattern(i)}"


def joint_verdicts(js: JointSum, layer: int) -> Markdown:
    """Section 4: block ``layer``'s heads and the pair in detail (difference ± standard error
    over prompts), then the pattern of every block."""
    n_layers = len(js.groups) - 1
    return markdown(
        "**What it means.** (± is the standard error of joint − sum over the "
        f"{js.n_prompts} prompts; a difference smaller than two of them is *within noise* and "
        "is not read as an interaction.)",
        bullets([_summary_line(js, layer), _summary_line(js, n_layers)]),
        "Every block:",
        bullets([f"{js.groups[i]}: {js.pattern(i)}" for i in range(n_layers)]),
        "A single-component map cannot show any of this: it only ever patches one thing. When a "
        "block is *spread out*, every head looks negligible alone in both directions, yet together "
        "they matter more than their sum; when two components are *in series*, adding up their "
        "single effects counts the same signal twice.")


def corruption_table(named: Mapping[str, PatchResult]) -> Markdown:
    """Section 5: baselines (logit difference) and differing positions for each corruption;
    ``named`` maps a corruption name to one of its results."""
    rows: dict[str, list[str]] = {}
    for name, r in named.items():
        p = r.prompts
        c, k = r.baseline("clean", "logit_diff"), r.baseline("corrupted", "logit_diff")
        differ = (p.clean_ids != p.corrupted_ids).any(0).nonzero().flatten().tolist()
        rows[name] = [num(c), num(k), num(c - k), join([p.position_labels[q] for q in differ])]
    what = ["clean logit diff", "corrupted logit diff", "gap (clean − corrupted)",
            "positions that differ"]
    table = md_table([""] + list(rows), [[w] + [rows[n][i] for n in rows] for i, w in enumerate(what)])
    cleans = [r.prompts.clean for r in named.values()]
    note = ("(Same seed, but the ABC corruption draws extra random names, so after the first pair "
            "the clean prompts differ too and the clean baseline moves with them.)"
            if any(c != cleans[0] for c in cleans) else "")
    return markdown(table, note)


def name_positions(resid: Mapping[str, PatchResult], normalise: bool = True,
                   metric: Metric | None = None) -> dict[str, tuple[float, float]]:
    """``{role: (sufficiency, necessity)}`` of the embedding row at IO, S1 and S2."""
    s, n = matters(resid["denoise"], normalise, metric), matters(resid["noise"], normalise, metric)
    return {role: (float(s[0, q]), float(n[0, q]))
            for role, q in resid["denoise"].prompts.positions.items() if role != "END"}


def corruption_contrast(main: Mapping[str, PatchResult], other: Mapping[str, PatchResult],
                        corruption: str, other_name: str, normalise: bool = True,
                        metric: Metric | None = None) -> Markdown:
    """Section 5: the embedding row at the name positions under both corruptions (both maps),
    and what each name position is under the second corruption."""
    a, b = name_positions(main, normalise, metric), name_positions(other, normalise, metric)
    tol = tolerance([matters(r, normalise, metric) for r in other.values()], normalise)
    big = 0.5 if normalise else 0.5 * max(abs(v) for row in b.values() for v in row)
    table = md_table(["position", corruption, other_name],
                     [[role, f"{num(a[role][0])} / {num(a[role][1])}",
                       f"{num(b[role][0])} / {num(b[role][1])}"] for role in a])
    lines = []
    for role, (s, n) in b.items():
        suff = ("sufficient" if s >= big else "pushes *away* from the clean answer when restored alone"
                if s < -2 * tol else "partly sufficient" if s > tol else "not sufficient")
        nec = "necessary" if n >= big else "partly necessary" if n > tol else "not necessary"
        tag = (" (AND-like: it needs a partner)" if n >= big > s else
               " (OR-like: something else can stand in)" if s >= big > n else "")
        lines.append(f"{role}: sufficiency {num(s)}, necessity {num(n)}: {suff}, {nec}{tag}")
    return markdown(
        "**What it means.** The token embeddings at the three name positions (the row where the "
        "two corruptions differ most), value on the denoising / noising map:", table,
        f"Under {other_name}:", bullets(lines))


def diagonal_counts(sweeps_main: Sweeps, sweeps_other: Sweeps, corruption: str,
                    other_name: str, normalise: bool = True,
                    metric: Metric | None = None) -> Markdown:
    """Section 5, last: the largest departures under the second corruption, and how many
    components lie below / above the diagonal under each corruption (same sites)."""
    head = mirror_summary(sweeps_other, other_name, normalise, metric).data.split(
        "**What it means.**")[0]
    counts = {}
    for name, sw in ((corruption, {s: sweeps_main[s] for s in sweeps_other}),
                     (other_name, sweeps_other)):
        pts = mirror_points(sw, normalise, metric)
        counts[name] = _counts(pts, tolerance([torch.tensor([p["suff"], p["nec"]]) for p in pts],
                                              normalise))
    (a_or, a_and), (b_or, b_and) = counts[corruption], counts[other_name]
    return markdown(head.strip(),
                    f"On the same sites under {corruption}: {a_or} below and {a_and} above the "
                    f"diagonal; under {other_name}: {b_or} below and {b_and} above. The same model, "
                    "the same components; whether the two maps agree depends on the question the "
                    "corruption asks.")



from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
