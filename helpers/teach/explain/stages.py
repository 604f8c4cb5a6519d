"""Chapter 10's staged search in words: the decision rule as a table, each stage's decision (the
members with their intervals and stability, the heads that meet only one criterion), the group
test of a class no single head carries, what a head the classes leave open does, the backup
template by template, how a path share depends on its definition, and the circuit's
faithfulness with the greedy search.

Every number comes from the tables given (``helpers.circuits.stages.decide``,
``helpers.circuits.roles``), written with ``helpers.base.fmt`` as the chapter prints it.
"""
from __future__ import annotations

from typing import Any, Sequence

from IPython.display import Markdown

from helpers.base.fmt import bullets, join, md_table, num, plural, signed
from helpers.teach.explain._markdown import markdown

OWN = "movers' direct contribution"

__all__ = ["open_inputs", "criteria", "decision", "group_test", "head_roles", "ablations", "backup_templates",
           "share_definitions", "evidence", "faithful_search", "headline"]


def criteria(classes: Sequence[Any], min_attention: float, min_share: float, alpha: float = 0.05,
             n_boot: int = 10_000) -> Markdown:
    """The classes and their two criteria as a Markdown table (never truncated), then the rule."""
    rows = [(c.name, c.query, c.key, c.effect, f"{'≤ −' if c.sign < 0 else '≥ '}{min_share}")
            for c in classes]
    table = md_table(["class", "writes at", f"attends (≥ {min_attention})", "effect through",
                      "effect (share of the gap)"], rows)
    return markdown(table, (
        f"**Decision rule.** A criterion is met when its bootstrap interval clears the threshold: "
        f"over {n_boot:,} resamples of the pooled pairs (drawn within each template), the share of "
        f"resamples on the wrong side of the threshold is the one-sided p-value, Holm-corrected "
        f"across the heads the stage tests, and it must be below {alpha} — equivalently, the "
        f"Holm-adjusted lower bound is at least the threshold (for a negative class the upper bound "
        f"at most −threshold). A head is a member when both criteria are met."))


def _row(r: Any) -> str:
    return (f"{r['head']} (attention {num(r['attention'])}, share {signed(r['share'])} "
            f"[{signed(r['share_low'])}, {signed(r['share_high'])}], selected on "
            f"{r['templates'].replace('/', ' of ')} templates alone)")


def decision(tables: Sequence[Any], min_attention: float = 0.3) -> Markdown:
    """For each class's ``decide`` table: its members with attention, share, interval and
    stability, or "none"; then the heads that meet one criterion only, with the one they fail
    (a head whose mean attention is at least ``min_attention`` but fails the interval test is
    called a possible member)."""
    lines = []
    for t in tables:
        if t.empty:
            continue
        name, tested = t["class"].iloc[0], int(t["tested"].iloc[0])
        found, near = t[t["member"]], t[~t["member"]]
        head = (f"**{name}** ({plural(tested, 'head')} tested): "
                + (join(_row(r) for _, r in found.iterrows()) if len(found) else "**none**") + ".")
        one = [f"{r['head']} fails the {r['fails']} criterion (attention {num(r['attention'])}, share "
               f"{signed(r['share'])} [{signed(r['share_low'])}, {signed(r['share_high'])}])"
               + (" — its mean attention clears the threshold, its interval does not: a possible member"
                  if r["fails"] == "attention" and r["attention"] >= min_attention else "")
               if r["fails"] != "excluded" else f"{r['head']} meets both but is already in another class"
               for _, r in near.iterrows()]
        lines.append(head + (" Closest: " + "; ".join(one) + "." if one else ""))
    return markdown(bullets(lines))


def group_test(table: Any, group: Sequence[str], route: str, min_share: float = 0.05) -> Markdown:
    """What a group of heads does as one joint sender next to random groups of the same size
    from the same blocks (``stages.group_paths(...).table()``: first row the group, then the
    random groups; columns estimate / low / high), or that no head met the attention criterion
    (``table`` None)."""
    if table is None or not len(group):
        return markdown(f"No head before the receivers meets the {route} attention criterion: there is "
                        "no candidate group to test, so the class is absent here.")
    est, low, high = (table.iloc[:, i].to_numpy() for i in range(3))
    rnd = est[1:]
    jointly = low[0] >= min_share and low[0] > max(high[1:].max(initial=0.0), 0.0)
    verdict = (f"**present as a group**: together they carry at least {num(min_share)} of the gap "
               "through the class's route, more than any random group, though no single one does"
               if jointly else "not shown to act as a group: the class is absent here")
    return markdown(
        f"The {plural(len(group), 'head')} that meet the {route} attention criterion ({join(group)}), "
        f"as one joint sender: **{signed(est[0])}** of the gap [{signed(low[0])}, {signed(high[0])}]. "
        f"{plural(len(rnd), 'random set')} of as many heads from the same blocks: {signed(rnd.min())} "
        f"to {signed(rnd.max())}. So the candidates are {verdict}.")


def head_roles(table: Any, heads: Sequence[str]) -> Markdown:
    """For each of ``heads`` (rows of ``roles.head_roles``): its direct logit attribution split
    into IO's and S's logit, with intervals, and where it looks from END."""
    if not len(heads):
        return markdown("Every head whose direct path meets the effect criterion belongs to a class: "
                        "no head is left open.")
    lines = []
    for h in heads:
        r = table.loc[h]
        att = max(("IO", "S1", "S2"), key=lambda k: r[f"attention END->{k}"])
        io, s_part = float(r["DLA IO"]), float(r["DLA S"])
        if abs(io) >= abs(s_part):  # which name's logit carries its effect on IO - S
            acts = f"{'raises' if io > 0 else 'lowers'} IO's logit"
        else:
            acts = f"{'lowers' if s_part < 0 else 'raises'} S's logit"
        every = (f"IO {num(r['attention END->IO'])}, S1 {num(r['attention END->S1'])}, "
                 f"S2 {num(r['attention END->S2'])}")
        looks = (f"From END it attends {att} most ({num(r[f'attention END->{att}'])}; {every})."
                 if r[f"attention END->{att}"] >= 0.1 else
                 f"From END it attends none of the names ({every}).")
        lines.append(
            f"**{h}** writes {signed(r['DLA IO - S'])} logits to IO − S "
            f"[{signed(r['DLA IO - S low'])}, {signed(r['DLA IO - S high'])}]: {signed(io)} to IO's "
            f"logit, {signed(s_part)} to S's — it mostly {acts}. {looks}")
    return markdown(bullets(lines))


def ablations(table: Any) -> Markdown:
    """Each row of ``roles.ablation_table``: the logit difference with and without the set."""
    if not len(table):
        return markdown("Nothing to ablate.")
    lines = [f"**{name}**{'' if r['heads'] == name else ' (' + r['heads'] + ')'} mean-ablated: logit difference {num(r['logit diff'])} → "
             f"{num(r['logit diff ablated'])}, a drop of {signed(r['drop (share of gap)'])} of the gap "
             f"[{signed(r['low'])}, {signed(r['high'])}]." for name, r in table.iterrows()]
    return markdown(bullets(lines))


def backup_templates(table: Any, movers: Sequence[str]) -> Markdown:
    """``roles.BackupTest.table()``: per template and pooled, what mean-ablating the movers does."""
    if not movers:
        return markdown("No name mover was found, so there is nothing to ablate: backup behaviour "
                        "cannot be tested here.")
    rows = [(t, num(r["logit diff"]), num(r["movers ablated"]), signed(r["change"]),
             num(r["movers' direct contribution"]), signed(r["made up by the rest"]))
            for t, r in table.iterrows()]
    pooled = table.loc["pooled"]
    per = table.drop(index="pooled")
    up, down = int((per["change"] > 0).sum()), int((per["change"] < 0).sum())
    return markdown(
        md_table(["template", "logit diff", f"{join(movers)} ablated", "change",
                  "their direct contribution", "made up by the rest"], rows),
        f"Pooled, mean-ablating {join(movers)} changes the logit difference by "
        f"**{signed(pooled['change'])}** although they write {num(pooled[OWN])} "
        f"directly; the change is positive on {plural(up, 'template')} and negative on "
        f"{plural(down, 'template')} of {len(per)}.")


def share_definitions(frame: Any, receivers: Sequence[str]) -> Markdown:
    """``roles.share_definitions``: per sender, the four definitions side by side."""
    rows = [(s, *[num(v, 3) for v in r]) for s, r in frame.iterrows()]
    top = frame.index[0]
    r = frame.loc[top]
    spread = float(r.max() - r.min())
    return markdown(
        md_table(["sender", *frame.columns], rows),
        f"Into {join(receivers)}: {top}'s share ranges from {num(r.min(), 3)} to {num(r.max(), 3)} "
        f"({num(spread, 3)} apart) depending on the definition.")


def evidence(tables: Sequence[Any]) -> Markdown:
    """Every class's members and closest non-members as one Markdown table (never truncated)."""
    rows = []
    for t in tables:
        for _, r in t.iterrows():
            rows.append((r["class"], r["head"], num(r["attention"]), num(r["attention_low"]),
                         signed(r["share"]), f"[{signed(r['share_low'])}, {signed(r['share_high'])}]",
                         "yes" if r["member"] else f"no ({r['fails']})", r["templates"]))
    return markdown(md_table(["class", "head", "attention", "lower bound (95 %)", "share",
                              "interval", "member", "templates alone"], rows))


def faithful_search(result: Any, ablations: Sequence[str]) -> Markdown:
    """``helpers.circuits.search.greedy_faithful``: the steps and the outcome."""
    rows = [(h["size"], h["added"], *[num(h[k]) for k in ablations]) for h in result.history]
    end = (f"**{plural(len(result.members), 'head')} reach faithfulness {num(result.target)} under "
           f"both ablations**: {join(result.members)}." if result.reached else
           f"**No set of up to {plural(min(result.max_size, result.pool), 'head')} from the pool of "
           f"{result.pool} reaches {num(result.target)} under both ablations**: the best found keeps "
           + join(f"{num(v)} ({k})" for k, v in result.faithfulness.items()) + ".")
    return markdown(md_table(["size", "added", *[f"F ({k})" for k in ablations]], rows), end)


def headline(faith: Any, search: Any, model_label: str) -> Markdown:
    """The chapter's finding in one paragraph, from ``search.faithfulness_table`` on the pooled
    pairs (rows ``"classes"``, ``"classes + open heads"``, ``"greedy"``; a column per ablation)
    and the greedy search (``FaithfulSearch``, run on the maps' pairs): the class circuit's
    faithfulness under each ablation; the greedy set, or that none reached the target."""
    kinds = [c for c in faith.columns if c != "heads"]
    say = lambda row: join(f"{num(faith.loc[row, k])} ({k})" for k in kinds)  # noqa: E731
    own = join(f"{num(v)} ({k})" for k, v in search.faithfulness.items())
    if search.reached:
        found = (f"The smallest head set the greedy search found on the maps' pairs that keeps at least "
                 f"{num(search.target)} under both ablations has {plural(len(search.members), 'head')}: "
                 f"{join(search.members)} ({own} there; {say('greedy')} on every pooled pair).")
    else:
        found = (f"No head set of up to {min(search.max_size, search.pool)} heads from the pool of "
                 f"{search.pool} keeps {num(search.target)} under both ablations on the maps' pairs "
                 f"(best: {own}; {say('greedy')} on every pooled pair).")
    extra = (f" With the heads section 10 left open, the class circuit keeps {say('classes + open heads')}."
             if "classes + open heads" in faith.index else "")
    return markdown(f"**What the numbers say about {model_label}.** Over every pooled pair the heads of "
                    f"Wang et al.'s classes keep {say('classes')} of the behaviour: they are part of the "
                    f"circuit, not all of it.{extra} {found}")


def open_inputs(paths: dict, head: str, facts: Any) -> Markdown:
    """``stages.pooled_path_table`` into one head's inputs (name -> ``Pooled`` over joint senders):
    a table of every sender's share into each input, with intervals, then which input carries
    the most.  With grouped-query attention its keys and values are its key/value head's, which
    the other query heads of the group read too: they are named."""
    if not paths:
        return markdown(f"No class was found upstream of {head}: no sender to test its inputs with.")
    inputs = list(paths)
    senders = paths[inputs[0]].labels
    rows = []
    for i, s in enumerate(senders):
        cells = []
        for k in inputs:
            est, (low, high) = paths[k].estimate(), paths[k].interval()
            cells.append(f"{signed(est[i], 3)} [{signed(low[i], 3)}, {signed(high[i], 3)}]")
        rows.append((s.replace("+", " + "), *cells))
    totals = {k: float(max(paths[k].estimate(), key=abs)) for k in inputs}
    best = max(totals, key=lambda k: abs(totals[k]))
    layer, h = (int(x) for x in head[1:].split("H"))
    group = facts.n_heads // facts.n_kv_heads
    kv = h // group
    shared = ("" if group == 1 else
              f" Its keys and values are key/value head L{layer}KV{kv}'s, also read by "
              + join(f"L{layer}H{x}" for x in range(kv * group, (kv + 1) * group) if x != h) + ".")
    return markdown(md_table(["sender (joint)", *[f"into {k}" for k in inputs]], rows),
                    f"Share of the clean logit difference destroyed through each input of {head}: the "
                    f"largest single path goes into its **{best}** ({signed(totals[best], 3)})." + shared)


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
