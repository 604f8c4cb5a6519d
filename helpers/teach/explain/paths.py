"""Chapter 9 (path patching) in words: which heads write to the logits directly, which input
of a late head carries the signal, and what the per-cell statistics allow us to say.

Heads are named ``L2H5`` (``helpers.base.fmt.head_name``).  Every number is computed from the results
given and written with ``helpers.base.fmt.num`` exactly as stated, so prose numbers equal printed
numbers.  Two selection functions (``late_head``, ``qkv_receivers``) are public so that the
notebook and the prose make the same choice.
"""
from __future__ import annotations

from typing import Any, Mapping

from IPython.display import Markdown

from helpers.base.fmt import bullets, head_name, join, num, plural, signed
from helpers.results.patch_result import PatchResult
from helpers.teach.explain._markdown import markdown

__all__ = ["late_head", "qkv_receivers", "direct_vs_total", "qkv", "stats", "ablations",
           "by_hand", "gqa_table", "gqa_edges"]

Head = tuple[int, int]
INPUTS = {"q": "query", "k": "key", "v": "value"}


def _check(result: PatchResult) -> None:
    if result.dims != ("layer", "head"):
        raise ValueError(f"expects a layer x head result (every head to one receiver), got dims "
                         f"{result.dims}")


def _top(ch: Any, first: int = 0) -> Head:
    part = ch[first:]
    i = int(part.flatten().argmax())
    return first + i // part.shape[1], i % part.shape[1]


def late_head(direct: PatchResult, layer: int | None = None, normalise: bool = True) -> Head:
    """The late head to look into: the head of block ``layer`` with the largest direct path to
    the logits (``direct.change(normalise)``), or with ``layer=None`` the largest of blocks 1 and
    later (block 0 has no earlier head to send to it).  Returns ``(layer, head)``."""
    _check(direct)
    ch = direct.change(normalise)
    if ch.shape[0] < 2 and layer is None:
        raise ValueError("a late head needs a block after block 0: this model has one block")
    if layer is None:
        return _top(ch, 1)
    if not 1 <= layer < ch.shape[0]:
        raise ValueError(f"layer must be a block from 1 to {ch.shape[0] - 1} (its heads need "
                         f"earlier heads as senders), got {layer}")
    return layer, int(ch[layer].argmax())


def qkv_receivers(facts: Any, layer: int, head: int, query_at: str = "END") -> dict[str, str]:
    """The receiver names of a head's three inputs for ``helpers.path_patch``: its query at
    ``query_at`` (where the head writes what we measure), its keys and values at every position
    (what it can read from).  With grouped-query attention the key and value inputs belong to the
    shared key/value head (``"L3KV0.k"``)."""
    kv = head * facts.n_kv_heads // facts.n_heads
    name = f"L{layer}KV{kv}" if facts.n_kv_heads < facts.n_heads else f"L{layer}H{head}"
    return {"q": f"L{layer}H{head}.q@{query_at}", "k": f"{name}.k", "v": f"{name}.v"}


def direct_vs_total(direct: PatchResult, heads: PatchResult, normalise: bool = True) -> Markdown:
    """What the direct-path map says next to ordinary head patching (``heads``): the strongest
    direct head, the head with the largest total effect and how much of it is direct, and the
    last block, where the two maps nearly agree."""
    _check(direct)
    _check(heads)
    d, t = direct.change(normalise), heads.change(normalise)
    n_layers = d.shape[0]
    unit = "" if normalise else f" ({direct.metric})"
    (dl, dh), (tl, th) = _top(d), _top(t)
    lines = [f"**Straight to the logits, {head_name(dl, dh)} sends the most**{unit}: "
             f"{num(d[dl, dh])} (its ordinary patching score: {num(t[dl, dh])})."]
    if (tl, th) != (dl, dh):
        lines.append(
            f"**Ordinary patching's top head, {head_name(tl, th)}, scores {num(t[tl, th])} but sends "
            f"{num(d[tl, th])} directly.** Its effect reaches the logits through later components: "
            "patching it changes what they compute, the path patch freezes them.")
    gap = float((t[-1] - d[-1]).abs().max())
    agree = gap <= 0.1 * float(t[-1].abs().max())
    lines.append(
        f"**In the last block (L{n_layers - 1}) the maps {'nearly agree' if agree else 'differ'}** "
        f"(largest difference {num(gap)}): after a last-block head only its own block's MLP stands "
        "between it and the logits, and the path patch freezes that MLP"
        + ("." if agree else ", so here that MLP passes on a good part of the heads' effect."))
    first = d[0].abs().max()
    if n_layers > 1:
        lines.append(f"**Block 0's direct paths are at most {num(first)} in size**; what block 0 "
                     f"does (total up to {num(t[0].max())}) goes through later blocks.")
    return markdown(bullets(lines))


def qkv(results: Mapping[str, PatchResult], receiver: Head, normalise: bool = True) -> Markdown:
    """Which input of the ``receiver`` head carries the signal: for each of ``results`` (``"q"``,
    ``"k"``, ``"v"``: every earlier head to that input) the largest cell and the sum over senders,
    then the input with the largest sum."""
    for r in results.values():
        _check(r)
    name, metric = head_name(*receiver), next(iter(results.values())).metric
    say = lambda x: num(x, 3)  # noqa: E731  (as qkv_maps writes them)
    sums, lines = {}, []
    for kind, r in results.items():
        ch = r.change(normalise)
        (l, h), sums[kind] = _top(ch), float(ch.sum())
        lines.append(f"**{INPUTS[kind]}**: largest {head_name(l, h)} ({say(ch[l, h])}), sum over "
                     f"{plural(ch.numel(), 'sender')} {say(sums[kind])}.")
    unit = (f"Share of the clean − corrupted {metric} gap each path restores:" if normalise
            else f"Change in mean {metric} each path makes:")
    best = max(sums, key=lambda k: abs(sums[k]))
    rest = [k for k in sums if k != best]
    small = all(abs(sums[k]) < 0.25 * abs(sums[best]) for k in rest)
    verdict = (f"**The {INPUTS[best]} input carries the signal into {name}**: the "
               f"{join(INPUTS[k] for k in rest)} paths add up to less than a quarter of it."
               if small and sums[best] != 0 else
               f"**No single input of {name} dominates**: the largest sum is the {INPUTS[best]}'s.")
    why = {"v": " A head that *moves* information changes what it writes through its values, "
                "not where it looks: the earlier heads change what the tokens it attends to hold.",
           "q": " The earlier heads change *what the head looks for* at its query position.",
           "k": " The earlier heads change *which tokens the head finds*: its attention moves."}
    return markdown(unit, bullets(lines), verdict + (why[best] if small else ""))


def stats(table: Any, alpha: float = 0.05) -> Markdown:
    """What ``result.stats()`` of a layer x head map says: how many cells survive the Holm
    correction at ``alpha``, which cells have an interval that contains 0, and the smallest
    p-value the test could give."""
    keep = table[table["p_adjusted"] < alpha]
    zero = table[(table["ci_low"] <= 0) & (table["ci_high"] >= 0)]
    name = lambda row: f"{row['layer']}{row['head']}"  # noqa: E731
    n, row0 = len(table), table.iloc[0]
    floor = (f"With {row0['n_prompts']} prompts the exact sign-flip test cannot give less than "
             f"2 / 2^{row0['n_prompts']} = {num(2 / 2 ** row0['n_prompts'], 6)}, so a cell survives "
             f"Holm only if its p times the number of cells still in the running stays below {alpha}."
             if row0["exact"] else "")
    zero_text = ("No cell's interval contains 0." if zero.empty else
                 f"**{plural(len(zero), 'cell')} {'has' if len(zero) == 1 else 'have'} an interval that contains 0** "
                 f"({join(name(r) for _, r in zero.iterrows())}): their effect could be 0 — the data do "
                 "not tell us its sign, which is *not* the same as showing that it is 0.")
    return markdown(
        f"**{len(keep)} of {plural(n, 'cell')} survive the Holm correction at {alpha}** "
        f"({join(name(r) for _, r in keep.iterrows()) or 'none'}).", zero_text, floor)


def ablations(frame: Any) -> Markdown:
    """What ``helpers.circuits.evaluation.compare_ablations`` says about a circuit, one line per
    ablation kind: faithfulness, the completeness gap with the worst K the greedy search found,
    the smallest minimality share, the verdict; then whether the kinds agree, and what a
    negative minimality means where one occurs."""
    lines = []
    for kind, row in frame.iterrows():
        worst = f" (worst K found: {row['worst_K']})" if "worst_K" in row and row["worst_K"] != "(none)" else ""
        least = (f", least minimality {num(row['least_minimality'])}" if "least_minimality" in row
                 else "")
        lines.append(f"**{kind} ablation**: faithfulness {num(row['faithfulness'])}, completeness gap "
                     f"{num(row['completeness_gap'])}{worst}{least}: {row['verdict']}.")
    spread = float(frame["faithfulness"].max() - frame["faithfulness"].min())
    same = len({v.split(",")[0] for v in frame["verdict"]}) == 1
    end = (f"The ablations {'agree on the verdict' if same else 'disagree'} (faithfulness differs by "
           f"{num(spread)}): what \"removing\" a component means is part of the claim, so report "
           "the ablation with the number.")
    negative = [k for k, r in frame.iterrows()  # negative as shown (2 decimals), not -0.001
                if "least_minimality" in r and float(num(r["least_minimality"])) < 0]
    if negative:
        end += (f" Under {join(negative)} ablation some member has a *negative* minimality: removing "
                "it raises the circuit's logit difference.")
    return markdown(bullets(lines), end)


def by_hand(receivers: Mapping[str, str], by_hand_values: Mapping[str, float], helper: PatchResult,
            metric: str = "logit_diff") -> Any:
    """The hand-written path patches beside ``H.path_patch``'s, one row per receiver:
    a ``pandas.DataFrame`` (receiver, by hand, H.path_patch, difference) with the mean ``metric``
    to 4 decimals (``helper``: one sender, these receivers in this order)."""
    import pandas as pd

    got = helper.mean(metric)
    got = got.reshape(-1) if got.dim() > 1 else got
    rows = [{"input": INPUTS.get(k, k), "receiver": name, "by hand": round(float(by_hand_values[k]), 4),
             "H.path_patch": round(float(got[i]), 4),
             "same (1e-3)": abs(float(by_hand_values[k]) - float(got[i])) < 1e-3}
            for i, (k, name) in enumerate(receivers.items())]
    return pd.DataFrame(rows).set_index("input")


def gqa_table(result: PatchResult, group: int, metric: str = "logit_diff") -> Any:
    """Senders x receivers of a grouped-query model (``group`` query heads per key/value head),
    each cell the change in mean ``metric`` a path makes (patched - corrupted run), 4 decimals: a
    ``pandas.DataFrame`` with the senders as rows and, for every shared receiver in
    ``result`` (``L1KV0.k``), its column, the columns of the same input as read by each query head
    of its group (``L1H0.k``, ``L1H1.k``, when given) and their sum.  ``frame.attrs["groups"]``
    lists (shared column, query-head columns, sum column)."""
    import re

    import pandas as pd

    eff = (result.mean(metric) - result.baseline("corrupted", metric)).double()
    labels = result.labels["receiver"]
    col = {name: eff[:, j] for j, name in enumerate(labels)}
    cols: dict[str, Any] = {}
    groups = []
    for name in labels:
        m = re.fullmatch(r"L(\d+)KV(\d+)\.([kv])(@.*)?", name)
        if not m:
            continue
        layer, g, kind, at = int(m[1]), int(m[2]), m[3], m[4] or ""
        readers = [f"L{layer}H{h}.{kind}{at}" for h in range(g * group, (g + 1) * group)
                   if f"L{layer}H{h}.{kind}{at}" in col]
        total = f"sum of {', '.join(readers)}"
        cols[name] = col[name]
        cols.update({r: col[r] for r in readers})
        cols[total] = sum(col[r] for r in readers) if readers else eff.new_zeros(eff.shape[0])
        groups.append((name, readers, total))
    frame = pd.DataFrame({k: [round(float(x), 4) for x in v] for k, v in cols.items()},
                         index=result.labels["sender"])
    frame.index.name = "sender"
    frame.attrs["groups"] = groups
    return frame


def gqa_edges(table: Any) -> Markdown:
    """What ``gqa_table`` shows: for each shared key/value input, the sender with the largest
    shared edge and that sender's per-query-head edges; for how many senders the query heads'
    edges have opposite signs; the largest gap between the shared edge and their sum."""
    lines = []
    for shared, readers, total in table.attrs["groups"]:
        if not readers:
            continue
        top = table[shared].abs().idxmax()
        each = ", ".join(f"{r} {signed(table.loc[top, r], 4)}" for r in readers)
        opposite = int(((table[readers].max(axis=1) > 0) & (table[readers].min(axis=1) < 0)).sum())
        gap = float((table[shared] - table[total]).abs().max())
        lines.append(f"**{shared}**: the largest shared edge is {top}'s ({signed(table.loc[top, shared], 4)}); "
                     f"read by one query head at a time it is {each}. The query heads' edges have "
                     f"opposite signs for {opposite} of {len(table)} senders; the shared edge and their "
                     f"sum differ by up to {num(gap, 4)}.")
    return markdown(bullets(lines) if lines else "No key/value input read by single query heads was given.")


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
