"""Chapter 7 (a safety behaviour: the toy refusal task): what each result means, in words.

Every function reads only the results it is given and writes every number with
``helpers.base.fmt`` (2 decimals, never "-0.00"), so the prose equals the printed tables.  Maps
are read as ``PatchResult.grid(normalise)``: with ``normalise=True`` that is the importance
(denoising: share of the refusal a patch restores; noising: share it destroys; 1 = this
component carries all of it), with ``False`` the raw mean logit difference.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from IPython.display import Markdown

from helpers.base.fmt import head_name, join, md_table, num, parse_head, pct, plural, signed
from helpers.circuits.search import CircuitSearch, component_place
from helpers.data.behaviours import BinaryTask
from helpers.results.patch_result import PatchResult
from helpers.teach.explain._markdown import markdown

__all__ = ["task_words", "templates", "residual", "sublayers", "heads", "attention",
           "circuit_tables", "circuit"]

_RAW = ("*Raw values (the model does not do the task, or `normalise=False`): the sentences "
        "below describe the numbers, not a mechanism.*")


def _caveat(normalise: bool) -> str:
    return "" if normalise else _RAW


def _block(label: str) -> str:
    """A residual row label as words: ``"embed"`` -> "the embeddings", ``"L2"`` -> "block 2"."""
    return "the embeddings" if label == "embed" else f"block {label[1:]}"


def task_words(task: BinaryTask, full: BinaryTask) -> Markdown:
    """Which words and answers this tokenizer runs (``task``, from ``for_tokenizer``) out of the
    task as written (``full``)."""
    left = [w for w in full.positive + full.negative if w not in task.positive + task.negative]
    first = (full.answers[0], full.answers[1])
    swapped = [f"`{w}` (not `{f}`)" for w, f in zip(task.answers, first) if w != f]
    lines = [f"harmful words (clean prompts): {', '.join(task.positive)}",
             f"harmless words (corrupted prompts): {', '.join(task.negative)}",
             "left out (not one token for this tokenizer): " + (", ".join(left) or "none"),
             f"answers: `{task.answers[0]}` (refuse) vs `{task.answers[1]}` (comply)"
             + (f" — the first single-token candidates: {join(swapped)}" if swapped else "")]
    return markdown("\n".join(f"- {line}" for line in lines))


def templates(rows: Sequence[Mapping[str, Any]], task: BinaryTask, share: float = 0.9) -> Markdown:
    """The per-template check (``behaviours.template_check`` rows) as a table, and the verdict:
    does the model do the task (at least ``share`` right decisions overall)?"""
    table = md_table(["template", "seen in training", "harmful: mean logit diff",
                      "harmless: mean logit diff", "right decisions"],
                     [(f"{r['template']}: *{r['text']}*", "yes" if r["seen"] else "**no**",
                       num(r["clean"]), num(r["corrupted"]), pct(r["right"])) for r in rows])
    right = sum(r["right"] for r in rows) / len(rows)
    sorry, sure = task.answers
    if right >= share:
        held = [r for r in rows if not r["seen"]]
        verdict = (f"The model does the task: {pct(right)} right decisions over all templates"
                   + (f" (the two never seen in training included: at least "
                      f"{pct(min(r['right'] for r in held))})" if held else "") + ". The sections below take it apart.")
    else:
        pos = sum(r["clean"] > 0 for r in rows)
        neg = sum(r["corrupted"] > 0 for r in rows)
        verdict = (f"**This model does not do the task**: only {pct(right)} right decisions. "
                   f"The logit difference `{sorry}` − `{sure}` is positive on harmful requests in "
                   f"{pos} of {len(rows)} templates and on harmless ones in {neg} of {len(rows)}: "
                   "it does not tell the two kinds apart. There is no refusal to locate, so the "
                   "maps below show raw logit differences, and they say where the word `X` "
                   "changes the output, not where a refusal lives.")
    return markdown(table, verdict)


def residual(resid: Mapping[str, PatchResult], normalise: bool = True) -> Markdown:
    """Residual stream in both directions (``{"denoise": r, "noise": r}``, each
    ``[rows, seq]``): where the decision sits, when it moves from ``X`` to ``END``."""
    d, n = resid["denoise"], resid["noise"]
    gd, gn = d.grid(normalise), n.grid(normalise)
    cd, cn = d.change(normalise), n.change(normalise)   # = the grids when normalised; raw: the effect
    x, end = d.index("position", "X"), d.index("position", "END")
    rows, labels = d.labels["layer"], d.labels["position"]
    moved = next((i for i in range(len(rows)) if cd[i, end].abs() > cd[i, x].abs()), None)
    others = [p for p in range(gd.shape[1]) if p not in (x, end)]
    table = md_table(["residual stream after", "X: denoising", "END: denoising", "X: noising",
                      "END: noising"],
                     [(r, num(gd[i, x]), num(gd[i, end]), num(gn[i, x]), num(gn[i, end]))
                      for i, r in enumerate(rows)])
    units = (f"{d.importance_label()} / {n.importance_label()}" if normalise else
             "mean logit difference of the patched run (the changes below are patched minus the run "
             "patched into)")
    say = num if normalise else signed
    lines = [f"- **At `{rows[0]}`** patching `X` gives {say(cd[0, x])} (denoising) and "
             f"{say(cn[0, x])} (noising)."]
    if others:
        both = torch.stack([cd[:, others].abs(), cn[:, others].abs()])     # [2, rows, others]
        k, cell = divmod(int(both.argmax()), both[0].numel())
        i, j = divmod(cell, len(others))
        top = both[k, i, j].item()
        where = f"`{labels[others[j]]}` in row `{rows[i]}`, {'denoising' if k == 0 else 'noising'}"
        if top < 0.1 * max(cd[0, x].abs().item(), 1e-9):
            lines.append(f"- No other position matters: at most {num(top)} ({where}).")
        else:
            lines.append(f"- Other positions matter too: up to {num(top)} ({where}).")
    if moved is not None:
        lines.append(f"- **The decision moves to `END` in {_block(rows[moved])}**: from row "
                     f"`{rows[moved]}` on, patching `END` changes the output more than patching `X` "
                     f"(denoising: END {say(cd[moved, end])}, X {say(cd[moved, x])}).")
    lines.append(f"- **After the last block** (`{rows[-1]}`) `END` alone carries it: {say(cd[-1, end])} "
                 f"denoising, {say(cn[-1, end])} noising. Where the two directions agree, one vector "
                 "is both sufficient and necessary; where they differ, a copy of the decision also "
                 "sits elsewhere (noising one copy leaves the other).")
    return markdown(_caveat(normalise), f"Values: {units}.", table, "\n".join(lines))


def sublayers(sub: Mapping[tuple[str, str], PatchResult], normalise: bool = True) -> Markdown:
    """Attention and MLP outputs (``{("attn", "denoise"): r, ...}``, each ``[n_layers, seq]``):
    the strongest cell of each map and how far the rest stays below it."""
    lines = []
    for (site, direction), r in sub.items():
        change = r.change(normalise)            # = the map when normalised; raw: the effect
        l, p = divmod(int(change.abs().argmax()), change.shape[1])
        rest = change.abs().clone()
        rest[l, p] = 0
        name = {"attn": "attention outputs", "mlp": "MLP outputs"}[site]
        value = num(change[l, p]) if normalise else f"a change of {signed(change[l, p])}"
        lines.append(f"- **{name}, {'denoising' if direction == 'denoise' else 'noising'}**: the "
                     f"strongest cell is `{site}{l}` at `{r.labels['position'][p]}` "
                     f"({value}); no other cell gives more than {num(rest.max())}.")
    attn = sub.get(("attn", "denoise"))
    if attn is not None and normalise:
        end = attn.index("position", "END")
        l = int(attn.grid()[:, end].argmax())
        lines.append(f"- Attention is what moves information between positions: `attn{l}` at `END` "
                     "is where the decision arrives; an MLP works on each position separately and "
                     "can only reshape what is already there.")
    return markdown(_caveat(normalise), "\n".join(lines))


def heads(results: Mapping[str, PatchResult], decisive: Sequence[str], normalise: bool = True,
          top: int = 6) -> Markdown:
    """Every head alone in both directions (``{"denoise": r, "noise": r}``, each
    ``[n_layers, n_heads]``) and the ``decisive`` heads (``circuits.decisive_heads``)."""
    d, n = results["denoise"], results["noise"]
    gd, gn = d.grid(normalise), n.grid(normalise)
    order = d.change(normalise).abs().flatten().argsort(descending=True, stable=True)
    ranked = [divmod(int(i), gd.shape[1]) for i in order[:top]]
    table = md_table(["head", "denoising alone", "noising alone"],
                     [(head_name(l, h), num(gd[l, h]), num(gn[l, h])) for l, h in ranked])
    places = [parse_head(name) for name in decisive]
    blocks = sorted({l for l, _ in places})
    later = [l for l in range(gd.shape[0]) if l not in blocks]
    den = [gd[p].item() for p in places]
    noi = [gn[p].item() for p in places]
    lines = [f"- **The decisive heads** (each at least a quarter of the strongest): {join(decisive)}, "
             f"in block{'s' if len(blocks) > 1 else ''} {join(blocks)}. Denoised one at a time they "
             f"give {num(min(den))} to {num(max(den))}."]
    if later:
        which = (f"block{'s' if len(later) > 1 else ''} {join(later)}" if len(later) <= 4 else
                 f"the other {len(later)} blocks")
        lines.append(f"- Every head in {which} gives "
                     f"between {num(gd[later].min())} and {num(gd[later].max())}.")
    if normalise:
        shared = max(noi) < 0.5
        lines.append(f"- **Noising** one decisive head alone destroys {num(min(noi))} to {num(max(noi))} "
                     "of the refusal: " + ("no single head is the whole story; the work is shared."
                                           if shared else "at least one head is needed on its own."))
    else:
        lines.append(f"- Noising one decisive head alone gives {num(min(noi))} to {num(max(noi))}.")
    return markdown(_caveat(normalise), table, "\n".join(lines))


def attention(from_end: torch.Tensor, decisive: Sequence[str], labels: Sequence[str],
              normalise: bool = True) -> Markdown:
    """What the decisive heads read from ``END``: ``from_end`` is ``[len(decisive), seq]``, each
    head's attention row at the ``END`` query (mean over prompts); ``labels`` the positions."""
    x = next(i for i, lab in enumerate(labels) if lab.endswith("(X)"))
    lines = [f"- **{name}** puts {pct(from_end[i, x])} of its `END` attention on `X`; its largest "
             f"weight is on `{labels[int(from_end[i].argmax())]}`." for i, name in enumerate(decisive)]
    readers = [name for i, name in enumerate(decisive) if from_end[i, x] > 0.5]
    verb = "reads" if len(readers) == 1 else "read"
    summary = f"**{len(readers)} of the {plural(len(decisive), 'decisive head')} {verb} `X` from `END`**"
    if readers and normalise:
        summary += (f": {join(readers)} {'is' if len(readers) == 1 else 'are'} this behaviour's "
                    "**mover heads** — heads at `END` that move the answer-relevant information "
                    "(harmful or not) into `END`, where the answer is made."
                    + (" Several heads doing one job is why noising any one of them costs little."
                       if len(readers) > 1 else ""))
    elif readers:
        summary += (": on a model that does not do the task this only says where these heads look, "
                    "not that they move a decision.")
    else:
        summary += ": on this model the heads that matter do not simply read `X`."
    return markdown(_caveat(normalise), "\n".join(lines), summary)


def circuit_tables(found: CircuitSearch) -> Markdown:
    """The members with the score without each and the drop, then the search history."""
    drops = found.drops()
    members = md_table(["member", "score without it", "drop"],
                       [(m, num(found.without[m]), num(drops[m])) for m in found.members])
    steps = md_table(["step", "action", "component", "joint score after"],
                     [(i + 1, s["step"], s["component"], num(s["score"]))
                      for i, s in enumerate(found.history)])
    return markdown(members if found.members else "*no members*", "**Search history**", steps)


def circuit(found: CircuitSearch, n_components: int, noised: PatchResult | None = None,
            normalise: bool = True) -> Markdown:
    """The circuit search's outcome, and (``noised``: the set noised jointly, one set, metric
    logit difference) whether the set is also necessary."""
    if not found.members:
        return markdown("- The search found no circuit on this model: its clean and corrupted runs "
                        "barely differ, so there is nothing to restore.")
    blocks = sorted({component_place(m)[0] for m in found.members})
    lo, hi = min(found.without.values()), max(found.without.values())
    removed = [s["component"] for s in found.history if s["step"] == "remove"]
    what = "the refusal" if normalise else "the gap between the two runs"
    lines = [f"- The search {'reached' if found.reached else 'did **not** reach'} the threshold "
             f"{num(found.threshold)}: **{plural(len(found.members), 'component')}** "
             f"({join(found.members)}, in block{'s' if len(blocks) > 1 else ''} {join(blocks)}) "
             f"restore{'s' if len(found.members) == 1 else ''} {num(found.score)} of {what}"
             f"{' together' if len(found.members) > 1 else ''}, out of {n_components} components."]
    if len(found.members) > 1:
        lines.append(f"- Without any one member the set scores between {num(lo)} and {num(hi)}"
                     + (f" — all below {num(found.threshold)}: every member is needed."
                        if hi < found.threshold else "."))
    if removed:
        lines.append(f"- Pruning took out {join(removed)}: added early as the best single step, it "
                     "became redundant once the others were in. Forward search alone would have kept it.")
    if noised is not None:
        ld, score = noised.mean("logit_diff").item(), noised.score("logit_diff").item()
        lines.append(f"- Noising the set in the harmful run brings the refusal logit difference to "
                     f"{num(ld)} (from {num(noised.baseline('clean', 'logit_diff'))}; normalised score "
                     f"{num(score)}, so it destroys {num(1 - score)} of {what}): "
                     + ("the model now answers the harmful requests with the compliance word — the set "
                        "is necessary as well as sufficient." if ld < 0 and normalise else
                        "the harmful run now behaves like the harmless one." if score < 0.5 else
                        "the model still leans to refusing — the set is not necessary on its own.")
                     + (" Not all the way to the harmless level: components outside the set carry "
                        "the rest." if score > 1 - found.threshold else ""))
    if not normalise:
        lines.append("- These runs use raw values: on a model that does not do the task the search's "
                     "scores divide by a tiny gap and mean nothing; here it only shows the code runs.")
    return markdown("\n".join(lines))


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
