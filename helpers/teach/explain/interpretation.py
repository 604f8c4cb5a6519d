"""Chapter 6 (interpretation): from patching maps to a circuit, in words.

Every map value here is what the heatmaps show, ``result.grid(normalise)``: with ``normalise``
the importance (denoising: share of the clean behaviour restored; noising: share destroyed,
``1 - score``), else the raw prompt-mean metric.  ``att`` is the prompt-mean attention of every
head, ``[n_layers, n_heads, seq_q, seq_k]``; positions come from ``pairs.positions`` (IO, S1,
S2, END).  Heads are written ``L0H3``.  A *mover* is a head at END that moves the answer-name
information into END (from wherever it sits: S2 in the bundled model, IO in GPT-2 small).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from IPython.display import Markdown

from helpers.base.fmt import bullets, head_name, join, md_table, num, signed
from helpers.results.patch_result import PatchResult
from helpers.teach.explain._markdown import markdown
from helpers.teach.explain.noising import matters
from helpers.results.metrics import Metric

__all__ = ["threshold", "strong_cells", "evidence", "edge_table", "end_heads", "circuit_tests",
           "knockout", "negatives", "metrics", "templates", "census_hits", "census",
           "PUBLISHED", "published_heads"]

METRICS = ("logit_diff", "answer_prob", "kl_to_clean")


def threshold(frac: float, values: Sequence[torch.Tensor], normalise: bool = True) -> float:
    """``frac`` of the gap when normalising, else ``frac`` of the largest raw |value|."""
    return frac if normalise else frac * max(float(v.abs().max()) for v in values)


def _late(heads: torch.Tensor) -> list[tuple[int, int]]:
    return [(l, h) for l in range(1, heads.shape[0]) for h in range(heads.shape[1])]


def strong_cells(r: PatchResult, normalise: bool = True, frac: float = 0.2, most: int = 12) -> str:
    """The cells of a layer x position map with |value| >= ``frac`` (of the gap, or of the
    largest raw change), at most ``most``, as ``L1 at Laura (S2) (0.68)``."""
    g, ch = r.grid(normalise), r.change(normalise)
    cut = threshold(frac, [ch], normalise)
    found = [(i, j) for i in range(g.shape[0]) for j in range(g.shape[1]) if abs(ch[i, j]) >= cut]
    found = sorted(sorted(found, key=lambda ij: -abs(float(ch[ij])))[:most])
    site = "" if r.site == "resid" else r.site
    return ", ".join(f"{site + r.labels['layer'][i][1:] if site else r.labels['layer'][i]} at "
                     f"{r.labels['position'][j]} ({num(g[i, j])})" for i, j in found) or "none"


def evidence(maps: Mapping[str, PatchResult], heads: PatchResult, att: torch.Tensor,
             top0: int, layer: int, top_late: int, normalise: bool = True) -> Markdown:
    """Section 1: the strong cells of each denoising map, and the two chosen heads' denoising
    importance and attention (``L0H<top0>`` at S2; ``L<layer>H<top_late>`` at END)."""
    pos, hs = heads.prompts.positions, heads.grid(normalise)
    IO, S1, S2, END = (pos[k] for k in ("IO", "S1", "S2", "END"))
    scale = "of the gap" if normalise else "of the largest change"
    return markdown(
        f"**What the maps say** (cells whose patch moves the output by at least 0.2 {scale}):",
        bullets([f"{name}: {strong_cells(r, normalise)}" for name, r in maps.items()] + [
            f"strongest head of block 0: {head_name(0, top0)} ({num(hs[0, top0])}); at S2 it "
            f"attends {num(att[0, top0, S2, IO])} to IO and {num(att[0, top0, S2, S1])} to S1",
            f"strongest head of block {layer}: {head_name(layer, top_late)} "
            f"({num(hs[layer, top_late])}); at END it attends {num(att[layer, top_late, END, S2])} "
            f"to S2 and {num(att[layer, top_late, END, IO])} to IO"]))


def edge_table(maps: Mapping[str, PatchResult], heads: Mapping[str, PatchResult],
               att: torch.Tensor, top0: int, normalise: bool = True) -> Markdown:
    """Section 3: one row of evidence per edge of the diagram (denoising importance unless
    noted), from the residual, attention and MLP maps, the head sweeps and ``att``."""
    res, att_out, mlp_out = (maps[k].grid(normalise) for k in ("residual", "attention", "MLP"))
    r = maps["residual"]
    pos = r.prompts.positions
    IO, S1, S2, END = (pos[k] for k in ("IO", "S1", "S2", "END"))
    hs, hn = heads["denoise"].grid(normalise), heads["noise"].grid(normalise)
    late = _late(hs)
    to_s2 = torch.tensor([float(att[l, h, END, S2]) for l, h in late] or [float("nan")])
    to_io = torch.tensor([float(att[l, h, END, IO]) for l, h in late] or [float("nan")])
    scores = torch.tensor([float(hs[l, h]) for l, h in late] or [float("nan")])
    seq = lambda xs: ", ".join(num(x) for x in xs)  # noqa: E731
    L0, Ln = r.index("layer", 0), r.index("layer", -1)
    top = head_name(0, top0)
    n = res.shape[0] - 1  # blocks
    rows = [
        ("S2 carries the difference", "residual at S2: embed, L0", seq([res[0, S2], res[L0, S2]])),
        ("block-0 heads at S2 read IO", "attn0 at S2", num(att_out[0, S2])),
        ("", f"strongest block-0 head {top}: denoising / noising importance",
         f"{num(hs[0, top0])} / {num(hn[0, top0])}"),
        ("", f"{top} attention at S2: to IO / to S1",
         f"{num(att[0, top0, S2, IO])} / {num(att[0, top0, S2, S1])}"),
        ("mlp0 at S2", "mlp0 at S2", num(mlp_out[0, S2])),
        ("S2 holds the answer, then hands it on", f"residual at S2, L0 … L{n - 1}",
         seq(res[L0:Ln + 1, S2])),
        ("movers at END read S2", f"attn1 … attn{n - 1} at END", seq(att_out[1:, END])),
        ("", "heads of blocks ≥ 1: attention END → S2, mean (min – max)",
         f"{num(to_s2.mean())} ({num(to_s2.min())} – {num(to_s2.max())})"),
        ("", "the same heads: attention END → IO, mean (max)",
         f"{num(to_io.mean())} ({num(to_io.max())})"),
        ("", "the same heads: single-head denoising (min – max)",
         f"{num(scores.min())} – {num(scores.max())}"),
        ("END → logits", f"residual at END, L1 … L{n - 1}", seq(res[L0 + 1:Ln + 1, END])),
    ]
    value = "importance" if normalise else f"mean {maps['residual'].metric}"
    return markdown(md_table(["edge", "evidence", f"this run ({value})"], rows))


def end_heads(heads: PatchResult, att: torch.Tensor, normalise: bool = True,
              most: int = 12) -> Markdown:
    """Section 3: the ``most`` strongest heads above block 0 (denoising importance, attention
    END → S2 and END → IO), then what END's attention says about the route of the answer."""
    hs = heads.grid(normalise)
    pos = heads.prompts.positions
    IO, S2, END = pos["IO"], pos["S2"], pos["END"]
    late = _late(hs)
    order = sorted(late, key=lambda lh: -float(hs[lh]))[:most]
    value = "denoising importance" if normalise else f"denoising (mean {heads.metric})"
    table = md_table(["head", value, "attention END → S2", "attention END → IO"],
                     [[head_name(l, h), num(hs[l, h]), num(att[l, h, END, S2]), num(att[l, h, END, IO])]
                      for l, h in order])
    to_s2 = torch.tensor([float(att[l, h, END, S2]) for l, h in late] or [float("nan")])
    to_io = torch.tensor([float(att[l, h, END, IO]) for l, h in late] or [float("nan")])
    text = (f"**What it means.** The heads above block 0 put on average {num(to_io.mean())} of "
            f"END's attention on IO (at most {num(to_io.max())}) and {num(to_s2.mean())} on S2. ")
    if float(to_io.max()) < 0.2 and float(to_s2.mean()) > 0.5:
        text += ("The answer is the IO name, yet END barely looks at IO: the name has to reach END "
                 "through S2. That is why the S2 residual stream, which the block-0 heads fill by "
                 "reading IO, is the hub of the diagram, and why the movers here read S2.")
    else:
        text += ("This model's END heads do not follow the bundled model's pattern (little attention "
                 "to IO, most to S2): read its circuit from the tables, not from the diagram.")
    which = "all heads above block 0" if len(late) <= most else f"the {most} strongest heads above block 0"
    return markdown(f"The heads at END ({which}):", table, text)


def circuit_tests(tests: Mapping[str, PatchResult], maps: Mapping[str, PatchResult],
                  inside: set[tuple[str, int, int]], normalise: bool = True,
                  metric: Metric | None = None) -> Markdown:
    """Section 4: ``tests[d]`` patches four sets (S2 part, END part, whole circuit, complement);
    ``inside`` holds the circuit's ``(site, layer, position)`` for attention/MLP outputs."""
    m = metric or tests["denoise"].metric
    if not normalise:
        return markdown("**What it means.** Raw mean values (no normalisation for this model): " +
                        "; ".join(f"{n}: denoised {num(tests['denoise'].mean(m)[i], 3)}, noised "
                                  f"{num(tests['noise'].mean(m)[i], 3)}"
                                  for i, n in enumerate(tests["denoise"].labels["set"])) +
                        f". Compare them with the clean ({num(tests['denoise'].baseline('clean', m), 3)}) "
                        f"and corrupted ({num(tests['denoise'].baseline('corrupted', m), 3)}) runs.")
    sd, sn = tests["denoise"].grid(True, m), tests["noise"].grid(True, m)
    outside = [(f"{site}{l} at {maps[name].labels['position'][q]}", float(maps[name].grid(True, m)[l, q]))
               for site, name in (("attn", "attention"), ("mlp", "MLP"))
               for l in range(maps[name].shape[0]) for q in range(maps[name].shape[1])
               if (site, l, q) not in inside]
    big = max(outside, key=lambda x: abs(x[1]))
    leaks = abs(float(sd[3])) > 0.1 or float(sn[3]) > 0.1
    end = (f"So part of the behaviour travels outside the diagram; the largest single component "
           f"outside it is {big[0]} ({num(big[1])} on its own). A diagram is a summary, and this "
           "number says how much it leaves out." if leaks
           else "Almost nothing travels outside the diagram.")
    return markdown(
        f"**What it means.** Denoising the whole circuit restores **{num(sd[2])}** of the gap; "
        f"noising it (knocking it out) destroys **{num(sn[2])}**.",
        f"But each half alone does about as much: the S2 part restores {num(sd[0])} / destroys "
        f"{num(sn[0])}, the END part {num(sd[1])} / {num(sn[1])}. The halves are *in series*: "
        "restoring either end of the chain restores the output, breaking either breaks it. So the "
        "whole-circuit test alone is weak; it would pass for the last link by itself.",
        f"The complement is the sharper test. Denoising everything outside the circuit restores "
        f"{num(sd[3])}, and noising everything outside it destroys {num(sn[3])}. " + end)


def knockout(heads_noise: PatchResult, joint: PatchResult, normalise: bool = True) -> Markdown:
    """Section 5: largest single-head noising damage above block 0, their sum, and the damage of
    noising all of them at once (``joint``: one set)."""
    dmg = matters(heads_noise, normalise)[1:]
    l, h = divmod(int(dmg.argmax()), dmg.shape[1])
    one, total, together = float(dmg.max()), float(dmg.sum()), float(matters(joint, normalise)[0])
    if together < one:
        msg = (f"Knocking them out together destroys {num(together)}, *less* than the strongest one "
               f"alone ({num(one)}): their effects partly cancel.")
    elif together > 3 * one:
        msg = (f"No single head above block 0 looks necessary (at most {num(one)}), yet knocking them "
               f"out together destroys {num(together)}. A noising map of single heads would have "
               "called every one of them unimportant. Always knock out the candidates *together* "
               "before calling a part of the model irrelevant.")
    else:
        msg = (f"Here the largest single head already destroys {num(one)} of the {num(together)} "
               "that all of them destroy together: little redundancy among these heads.")
    if together > one:  # backups or a spread-out job? the sum of the single damages tells
        if together > 1.5 * total:
            msg += (f" Together they destroy far more than the sum of their single damages "
                    f"({num(total)}): heads that cover for each other (backups) look unnecessary one "
                    "at a time.")
        else:
            msg += (f" Together they destroy about what their single damages add up to ({num(total)}), "
                    f"{'a little more' if together > total else 'no more'}: no head covers for another "
                    "(backups would make the joint damage far exceed the sum). The job is *spread* "
                    "over many heads that each do a small part — chapter 5, section 4, reads the same "
                    "heads in both directions.")
    return markdown(bullets([
        f"largest single-head damage above block 0: {num(one)} ({head_name(l + 1, h)})",
        f"sum of the {dmg.numel()} single-head damages: {num(total)}",
        f"all {dmg.numel()} heads noised at once: damage {num(together)}"]),
        "**What it means.** " + msg)


def negatives(heads: Mapping[str, PatchResult], maps: Mapping[str, PatchResult],
              normalise: bool = True, k: int = 3) -> Markdown:
    """Section 5: the ``k`` most negative importances among heads (both directions) and the
    attention/MLP outputs (denoising); negative = the patch pushes away from the answer."""
    cands = []
    for d, word in (("denoise", "denoised"), ("noise", "noised")):
        g = matters(heads[d], normalise)
        cands += [(f"{head_name(l, h)} ({word})", float(g[l, h]))
                  for l in range(g.shape[0]) for h in range(g.shape[1])]
    for name, site in (("attention", "attn"), ("MLP", "mlp")):
        g, r = matters(maps[name], normalise), maps[name]
        cands += [(f"{site}{l} at {r.labels['position'][q]}", float(g[l, q]))
                  for l in range(g.shape[0]) for q in range(g.shape[1])]
    neg = sorted(cands, key=lambda c: round(c[1], 4))[:k]   # rounded: float noise never reorders
    cut = threshold(0.05, [torch.tensor([abs(v) for _, v in cands])], normalise)
    if neg[0][1] >= -cut:   # nothing to list: the ranking of values near 0 is float noise
        return markdown(f"**What it means.** No component pushes clearly against the answer: every "
                        f"importance in this run is above −{num(cut)}. Absence of negative "
                        "components is a property of this model and this metric, not of patching.")
    return markdown("Most negative importance (gain when denoised, damage when noised):",
                    bullets([f"{n}: {signed(v)}" for n, v in neg if v < -cut]),
                    f"**What it means.** The most negative component, {neg[0][0]}, scores "
                    f"{num(neg[0][1])}: it works against the answer. Its effect is hidden in any sum "
                    "over a block, and in probability.")


def metrics(heads: Mapping[str, PatchResult], normalise: bool = True) -> Markdown:
    """Section 5: per metric, the strongest head, the strongest above block 0 (denoising) and
    the largest noising damage above block 0; whether probability hides the later heads."""
    late_max, late_dmg, lines = {}, {}, []
    for m in METRICS:
        g, gn = heads["denoise"].grid(normalise, m), matters(heads["noise"], normalise, m)
        late_max[m] = float(g[1:].max()) if g.shape[0] > 1 else float("nan")
        late_dmg[m] = float(gn[1:].max()) if g.shape[0] > 1 else float("nan")
        lines.append(f"{m}: {num(g.max())} / {num(late_max[m])}; noising damage up to {num(late_dmg[m])}")
    parts = ["**What it means.** Denoising, strongest head / strongest head above block 0; "
             "noising, largest damage of a head above block 0:", bullets(lines)]
    if normalise and late_max["answer_prob"] < 0.5 * late_max["logit_diff"]:
        text = (f"Probability hides the heads above block 0: they move the logit difference by up to "
                f"{num(late_max['logit_diff'])} of the gap but the probability by at most "
                f"{num(late_max['answer_prob'])}, because the corrupted run's probability sits deep "
                "in the flat part of the softmax. Prefer the logit difference, and report a second "
                "metric where it changes the story.")
        if late_dmg["answer_prob"] < 0.5 * late_dmg["logit_diff"]:
            text += (" Noising saturates at the other end: the clean run's probability is so close "
                     "to 1 that removing one head barely dents it, and the KL divergence, quadratic "
                     "near the clean run, flattens small damage even more.")
        parts.append(text)
    else:
        parts.append("Here the three metrics rank the heads alike; that is not guaranteed (see the "
                     "saturation argument above).")
    return markdown(*parts)


def templates(a: PatchResult, b: PatchResult, names: Sequence[str] = ("the first template", "the second"),
              normalise: bool = True) -> Markdown:
    """Section 5: head denoising on two templates (``a``, ``b``: layer x head results, named
    ``names``)."""
    g1, g2 = a.change(normalise), b.change(normalise)
    diff = float((g1 - g2).abs().max())
    t1, t2 = divmod(int(g1.argmax()), g1.shape[1]), divmod(int(g2.argmax()), g2.shape[1])
    same = t1 == t2 and diff < threshold(0.1, [g1, g2], normalise)
    ld = lambda r, run: num(r.baseline(run, "logit_diff"), 3)  # noqa: E731
    return markdown(
        f"**What it means.** Clean / corrupted logit difference: {ld(a, 'clean')} / "
        f"{ld(a, 'corrupted')} on {names[0]}, {ld(b, 'clean')} / {ld(b, 'corrupted')} on "
        f"{names[1]}. The heads' denoising importances differ by at most {num(diff)}; the strongest "
        f"head is {head_name(*t1)} on one and {head_name(*t2)} on the other. " +
        ("Same mechanism on both templates, as far as heads go." if same else
         "The mechanism shifts with the template: a circuit found on one template is a claim "
         "about that template.") +
        " One template is still a narrow distribution: the held-out templates (`H.TEMPLATES[12:]`) "
        "and the BABA name order (`H.ioi_pairs(..., order=\"BABA\")`) are the next checks.")


ATTN_CUT = 0.3
ROLES = {  # role by attention: (query role, key role, which patching map tests it)
    "name mover (END → IO)": ("END", "IO", "END"),
    "reads S2 at END: a mover here, S-inhibition-like in GPT-2 (END → S2)": ("END", "S2", "END"),
    "duplicate token (S2 → S1)": ("S2", "S1", "S2"),
    "reads the other name (S2 → IO)": ("S2", "IO", "S2"),
    "previous token (S1+1 → S1)": ("S1+1", "S1", None),
}


def census_hits(att: torch.Tensor, at_role: Mapping[str, torch.Tensor],
                positions: Mapping[str, int], normalise: bool = True) -> dict[str, dict[str, list]]:
    """For every role in ``ROLES``: ``{"attend": [(l, h, attention, score or None)], "matter":
    [(l, h)]}``; a head attends when its mean attention > 0.3 and matters when |importance at
    that position| >= 0.03 of the gap (``at_role[role]``: ``[n_layers, n_heads]``)."""
    pos = dict(positions, **{"S1+1": positions["S1"] + 1})
    cut = threshold(0.03, list(at_role.values()), normalise)
    out = {}
    for role, (q, k, where) in ROLES.items():
        scores = at_role[where] if where else None
        hits = [(l, h, float(att[l, h, pos[q], pos[k]]), None if scores is None else float(scores[l, h]))
                for l in range(att.shape[0]) for h in range(att.shape[1])
                if att[l, h, pos[q], pos[k]] > ATTN_CUT]
        out[role] = {"attend": hits,
                     "matter": [(l, h) for l, h, _, s in hits if s is not None and abs(s) >= cut]}
    return out


def census(att: torch.Tensor, at_role: Mapping[str, torch.Tensor], positions: Mapping[str, int],
           model_label: str, normalise: bool = True) -> Markdown:
    """Section 7: the attention census of this run's model (heads as ``L0H3``) and what it says
    about the model's division of labour compared with GPT-2 small's."""
    found = census_hits(att, at_role, positions, normalise)
    names = lambda hs: join([head_name(l, h) for l, h in hs]) or "none"  # noqa: E731
    rows = []
    for role, f in found.items():
        cells = ", ".join(f"{head_name(l, h)} ({num(a)}, {'untested' if s is None else num(s)})"
                          for l, h, a, s in f["attend"]) or "none"
        untested = ROLES[role][2] is None
        rows.append([role, cells, names(f["matter"]) if not untested else "cannot tell"])
    nm, mv = found["name mover (END → IO)"]["matter"], found[list(ROLES)[1]]["matter"]
    dup, reader = found["duplicate token (S2 → S1)"]["matter"], found["reads the other name (S2 → IO)"]["matter"]
    text = (f"**What it means.** In {model_label}: name movers that matter: {names(nm)}; heads at END "
            f"that read S2 and matter: {names(mv)}; duplicate-token heads that matter: {names(dup)}; "
            f"heads at S2 that read IO and matter: {names(reader)}.")
    if not nm and not dup and mv and reader:
        more = ("This model solves IOI without GPT-2's division of labour. GPT-2 small detects the "
                "repeated name at S2 (duplicate-token and induction heads), tells END which name to "
                "avoid (S-inhibition heads, which attend END → S2), and its movers copy the answer "
                "from IO itself (name movers, END → IO). The bundled model instead copies the answer "
                "*to S2* early (heads reading IO from S2), and its movers then bring it from S2 to "
                "END: by their attention they look like S-inhibition heads, but what they carry is "
                "the answer. Heads that attend END → IO without mattering there show that an "
                "attention pattern alone is not a role.")
    elif nm:
        more = ("This model has name-mover-like heads that matter, as GPT-2 small does: compare their "
                "blocks with the published table above.")
    else:
        more = ("Neither the bundled model's roles nor GPT-2's show up clearly in this model's "
                "attention: with random or untrained weights, attention is spread thin and no head "
                "passes the threshold.")
    return markdown(md_table(["role, by attention", "heads attending > 0.3 (attention, importance "
                              "at that position)", "of which matter"], rows), text, more)


PUBLISHED = {"name mover": [(9, 9), (9, 6), (10, 0)], "negative name mover": [(10, 7), (11, 10)],
             "S-inhibition": [(7, 3), (7, 9), (8, 6), (8, 10)], "induction": [(5, 5), (6, 9)],
             "duplicate token": [(0, 1), (3, 0)], "previous token": [(2, 2), (4, 11)]}


def published_heads(hs: torch.Tensor, at_role: Mapping[str, torch.Tensor], family: str,
                    model_label: str) -> Markdown:
    """Section 7: GPT-2 small's published heads (Wang et al. 2022) in this run, when the model has
    GPT-2 small's shape (12 x 12); otherwise why the table stays empty."""
    if family != "gpt2" or tuple(hs.shape) != (12, 12):
        return markdown(f"The published heads are GPT-2 small's; in this {family} model "
                        f"({hs.shape[0]} blocks x {hs.shape[1]} heads) their names would point at "
                        "other heads, or none. Rerun with model_name = 'openai-community/gpt2' to "
                        "fill this table.")
    rows = [[cls, head_name(l, h), num(hs[l, h]), num(at_role["END"][l, h]), num(at_role["S2"][l, h])]
            for cls, heads_ in PUBLISHED.items() for l, h in heads_]
    return markdown(f"The published heads in this run ({model_label}):",
                    md_table(["class", "head", "denoising, all positions", "at END", "at S2"], rows))



from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
