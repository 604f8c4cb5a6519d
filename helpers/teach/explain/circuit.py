"""Chapter 10 (a real model's IOI circuit) in words: the behaviour, where the information moves,
what every head looks at, which heads meet each class's two criteria, what takes over when the
name movers are gone, and how the circuit compares with GPT-2 small's.

Every number is computed from the results given and written with ``helpers.base.fmt`` exactly as the
chapter prints it, so prose numbers equal printed numbers.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from IPython.display import Markdown

from helpers.base.fmt import bullets, head_name, join, num, parse_head, pct, signed
from helpers.results.patch_result import PatchResult
from helpers.teach.explain._markdown import markdown

__all__ = ["behaviour", "handover", "components", "heads", "head_positions", "attention", "classes",
           "backup", "knockout", "unclassified", "faithfulness", "comparison"]


def _ci(lo: float, hi: float, fmt: Any = num) -> str:
    return f"95 % interval {fmt(lo)} to {fmt(hi)}"


def behaviour(b: Any, clean_ld: float, corrupted_ld: float) -> Markdown:
    """What ``helpers.circuits.ioi_classes.behaviour`` and the prompt pairs' two baselines say."""
    p1 = lambda x: pct(x, 1)  # noqa: E731
    does = b.io_over_s_ci[0] > 0.5 and b.logit_diff_ci[0] > 0
    per = b.by("template") if getattr(b, "per_prompt", None) else None
    if per is not None and len(per):
        low = per["IO_above_S"].idxmin()
        spread = (f" Template by template ({len(per)} templates, a handful of prompts each, both orders), "
                  f"IO beats S in {p1(per['IO_above_S'].min())} to {p1(per['IO_above_S'].max())} of the "
                  f"prompts (lowest: template {low}) and the mean logit difference runs from "
                  f"{num(per['mean_logit_diff'].min())} to {num(per['mean_logit_diff'].max())}.")
    else:
        spread = ""
    return markdown(
        f"On {b.n} random prompts the model puts **IO first in {p1(b.top1)}** "
        f"({_ci(*b.top1_ci, p1)}) and ranks **IO above S in {p1(b.io_over_s)}** ({_ci(*b.io_over_s_ci, p1)}); "
        f"the mean logit difference IO - S is **{num(b.logit_diff)}** ({_ci(*b.logit_diff_ci)}).{spread}",
        ("It does the task over templates and both name orders: there is a circuit to find"
         + (" — though not equally well on every template." if per is not None and len(per)
            and per["IO_above_S"].min() < 0.9 else ".")
         if does else "Its intervals do not exclude chance: what follows looks for a mechanism the "
         "model may not have (random weights?)."),
        f"On the prompt pairs we patch, the clean run's logit difference is {num(clean_ld)} and the "
        f"corrupted run's {num(corrupted_ld)}: a gap of {num(clean_ld - corrupted_ld)}, the unit of "
        "every share below.")


def _rows(result: PatchResult, role: str, normalise: bool) -> torch.Tensor:
    return result.grid(normalise)[:, result.index("position", role)]


def handover(resid: PatchResult, normalise: bool = True) -> Markdown:
    """Where the residual stream's information moves from S2 to END (``patch_residual``)."""
    s2, end = _rows(resid, "S2", normalise), _rows(resid, "END", normalise)
    labels = resid.labels["layer"]
    clean, bad = resid.baseline("clean"), resid.baseline("corrupted")
    level = 0.5 if normalise else bad + 0.5 * (clean - bad)  # half of the gap, in grid units
    half = next((i for i, v in enumerate(end.tolist()) if v >= level), None)
    s2_last = max((i for i, v in enumerate(s2.tolist()) if v >= level), default=None)
    if half is None or s2_last is None or clean <= bad:
        return markdown("Neither S2 nor END carries half of the clean behaviour at any block here: "
                        "no hand-over to read (a model that cannot do the task?).")
    return markdown(
        f"The clean S2 alone restores at least half of the gap up to **{labels[s2_last]}** "
        f"({num(s2[s2_last])} there); END first restores half after **{labels[half]}** "
        f"({num(end[half])}) and {num(end[-1])} after the last block.",
        "So the information that decides the answer sits at S2 in the early and middle blocks and "
        "is *moved* to END in between: that move is done by attention heads, which we look for next.")


def components(attn: PatchResult, mlp: PatchResult, normalise: bool = True) -> Markdown:
    """The strongest attention-output and MLP-output cells."""
    def top(r: PatchResult, k: int = 3) -> str:
        g = r.grid(normalise)
        idx = torch.argsort(-g.flatten().abs(), stable=True)[:k].tolist()
        n_pos = g.shape[1]
        return join(f"{r.labels['layer'][i // n_pos].replace('L', r.site)} at "
                    f"{r.labels['position'][i % n_pos]} ({num(g.flatten()[i])})" for i in idx)
    return markdown(f"Strongest attention outputs: {top(attn)}. Strongest MLP outputs: {top(mlp)}.",
                    "Attention outputs at END in the late blocks move the answer; the S2 column shows "
                    "where the duplicated name is processed. MLPs matter too, but a circuit of heads "
                    "is what we can trace edge by edge.")


def heads(result: PatchResult, normalise: bool = True, k: int = 6) -> Markdown:
    """The ``k`` heads with the largest |score| in a layer x head map."""
    g = result.grid(normalise)
    idx = torch.argsort(-g.flatten().abs(), stable=True)[:k].tolist()
    n_h = g.shape[1]
    names = [f"{head_name(i // n_h, i % n_h)} ({num(g.flatten()[i])})" for i in idx]
    return markdown(f"The {k} strongest heads: {join(names)}.",
                    "Negative cells push *against* the answer when restored. Node patching cannot say "
                    "how these heads work or which feed which: the attention patterns and path "
                    "patching below can.")


def head_positions(result: PatchResult, normalise: bool = True, k: int = 6) -> Markdown:
    """For the ``k`` heads with the largest |score| at any position (``helpers.circuits.ioi_classes.
    heads_by_position``, ``("head", "position")``), the position where each acts most."""
    g = result.grid(normalise)  # [heads, positions]
    lines = []
    for i in torch.argsort(-g.abs().amax(-1), stable=True)[:k].tolist():
        p = int(g[i].abs().argmax())
        lines.append(f"{result.labels['head'][i]} at {result.labels['position'][p]} ({num(g[i, p])})")
    return markdown(f"Where the strongest heads act: {join(lines)}.",
                    "Heads that act at S2 prepare the information; heads that act at END use it.")


def attention(att: Mapping[str, Any], min_attention: float = 0.3, k: int = 3) -> Markdown:
    """Per route (``[n_layers, n_heads]`` tensors or pooled measurements), how many heads attend
    at least ``min_attention`` (pooled mean) and the strongest ``k``."""
    lines = []
    for route, a in att.items():
        if route.startswith("backup:"):
            continue
        a = torch.as_tensor(a.estimate()) if hasattr(a, "estimate") else a  # pooled: its estimate
        idx = torch.argsort(-a.flatten(), stable=True)[:k].tolist()
        n_h = a.shape[1]
        n = int((a >= min_attention).sum())
        lines.append(f"**{route}**: {n} head(s) at {min_attention} or more (mean over the prompts); strongest "
                     + join(f"{head_name(i // n_h, i % n_h)} ({num(a.flatten()[i])})" for i in idx))
    return markdown(bullets(lines), "Attention alone names candidates, not roles: a head may look "
                    "at IO and do nothing with it. Each class below also needs an effect.")


def classes(table: Any, names: Sequence[str]) -> Markdown:
    """For each class in ``names``: its members with their attention and share, or that none was
    found, with the closest misses (the rows ``helpers.circuits.ioi_classes.classify`` lists)."""
    lines = []
    for name in names:
        rows = table[table["class"] == name]
        found = rows[rows["member"]]
        near = rows[~rows["member"]]
        fmt = lambda r: f"{r['head']} (attention {num(r['attention'])}, share {signed(r['share'])})"  # noqa: E731
        misses = join(fmt(r) for _, r in near.iterrows()) or "none"
        if len(found):
            lines.append(f"**{name}**: {join(fmt(r) for _, r in found.iterrows())}. Closest misses: {misses}.")
        elif len(rows):
            lines.append(f"**{name}: none found.** The closest heads fail a criterion: {misses}.")
        else:
            lines.append(f"**{name}: not tested**: the class it acts through was not found.")
    return markdown(bullets(lines))


def backup(before: torch.Tensor, after: torch.Tensor, ablated: Sequence[str], full_ld: float,
           ablated_ld: float, min_rise: float) -> Markdown:
    """What mean-ablating the name movers does: the logit difference, their own direct
    contributions, and which heads' direct contributions rise (``before`` / ``after``:
    ``[n_layers, n_heads]`` direct logit attributions, prompt means; ``min_rise`` in logits)."""
    if not ablated:
        return markdown("No name mover was found, so there is nothing to ablate: backup behaviour "
                        "cannot be tested here.")

    own = sum(float(before[parse_head(h)]) for h in ablated)
    change = (after - before).double()
    for h in ablated:
        change[parse_head(h)] = 0.0
    n_h = change.shape[1]
    risers = [(head_name(i // n_h, i % n_h), float(change.flatten()[i]))
              for i in torch.argsort(-change.flatten(), stable=True).tolist() if change.flatten()[i] >= min_rise]
    lost = full_ld - ablated_ld
    if lost < 0:
        compensation = (f"The logit difference *rises* by {num(-lost)}, although the name movers "
                        f"wrote {num(own)} directly: the rest of the model more than makes up for them.")
    elif own > lost:
        compensation = (f"The logit difference falls by {num(lost)}, less than the {num(own)} the "
                        f"name movers wrote directly: other heads make up {num(own - lost)}.")
    else:
        compensation = (f"The logit difference falls by {num(lost)}, at least the {num(own)} the "
                        "name movers wrote directly: nothing makes up for them.")
    rise = ("Heads whose direct contribution rises by at least the threshold: "
            + join(f"{h} ({signed(v)})" for h, v in risers) + "." if risers else
            "No head's direct contribution rises by the threshold.")
    return markdown(f"Mean-ablating {join(ablated)} moves the logit difference from {num(full_ld)} to "
                    f"{num(ablated_ld)}. {compensation}", rise)


def comparison(comp: Any) -> Markdown:
    """The classes found here beside GPT-2 small's (``helpers.circuits.ioi_classes.gpt2_comparison``)."""
    grouped = [c for c, r in comp.iterrows() if r["this model"].endswith("(as a group)")]
    found = [c for c, r in comp.iterrows() if r["this model"] != "none found" and c not in grouped]
    absent = [c for c in comp.index if c not in found and c not in grouped]
    return markdown(
        f"Found here: {join(found) or 'no class'}"
        + (f"; present only as a group: {join(grouped)}" if grouped else "")
        + f"; not found: {join(absent) or 'none'}.",
        "Depth is (block + 1) / number of blocks. GPT-2 small's circuit is Wang et al.'s, found with "
        "their own prompts, ablations and thresholds: the comparison says where similar roles sit, "
        "not that the two circuits are the same.")


def knockout(knocked: PatchResult | None, movers: Sequence[str], backup: Any) -> Markdown:
    """What knocking out the name movers' END -> IO attention edges does, beside mean-ablating
    them (``backup``: ``helpers.circuits.ioi_classes.backup_test``)."""
    if knocked is None or not movers:
        return markdown("No name mover was found: there is no edge to knock out.")
    ld = float(knocked.mean("logit_diff")[0])
    more = ("The knockout costs more than removing the heads: with IO hidden they still write, "
            "but from what they now attend to — a head that runs on the wrong input does more harm "
            "than an absent one." if ld < backup.ablated_ld else
            "The knockout costs no more than removing the heads.")
    return markdown(f"With the END -> IO edges of {join(movers)} knocked out the logit difference is "
                    f"{num(ld)} (all heads intact: {num(backup.full_ld)}; the name movers mean-ablated: "
                    f"{num(backup.ablated_ld)}).", more)


def unclassified(others: Sequence[str], attention: Mapping[str, torch.Tensor],
                 direct: torch.Tensor) -> Markdown:
    """The heads with a direct path of at least the threshold that no class explains: for each,
    its direct share and its attention from END (where it writes) to IO, S2 and S1."""

    if not others:
        return markdown("Every head with a direct path of at least the threshold belongs to a class.")
    lines = []
    for h in others:
        lh = parse_head(h)
        seen = ", ".join(f"{r} {num(float(attention[r][lh]))}" for r in ("END->IO", "END->S2", "END->S1"))
        lines.append(f"**{h}**: direct share {signed(float(direct[lh]))}; attention {seen}")
    return markdown(bullets(lines), "A head that matters but fits no class is a finding, not noise: "
                    "the classes are GPT-2 small's roles, and another model may divide the work "
                    "differently. Below, the circuit is judged with and without these heads.")


def faithfulness(frame: Any) -> Markdown:
    """What ``helpers.circuits.ioi_classes.compare_circuits`` says, one line per (circuit, ablation)."""
    lines = [f"**{c}, {kind} ablation**: faithfulness {num(r['faithfulness'])}, completeness gap "
             f"{num(r['completeness_gap'])}: {r['verdict']}." for (c, kind), r in frame.iterrows()]
    spread = {c: float(g["faithfulness"].max() - g["faithfulness"].min())
              for c, g in frame.groupby(level=0, sort=False)}
    return markdown(bullets(lines), "Between the two ablations faithfulness differs by "
                    + join(f"{num(v)} ({c})" for c, v in spread.items())
                    + ": what \"removing\" a component means is part of the claim, so a faithfulness "
                    "number comes with its ablation.")


from helpers.teach.explain.stages import (ablations, backup_templates, criteria, decision, open_inputs,  # noqa: E402
                                          evidence, faithful_search, group_test, head_roles,
                                          headline, share_definitions)

__all__ += ["open_inputs", "criteria", "decision", "group_test", "head_roles", "ablations", "backup_templates",
            "share_definitions", "evidence", "faithful_search", "headline"]

from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
