"""Chapter 4 (head patching) in words: which heads matter, where they act, what they read.

Heads are named ``L2H5`` (block 2, head 5; ``helpers.base.fmt.head_name``), never ``2.5``.
Every number is computed from the results given and written with ``helpers.base.fmt.num``
exactly as stated, so prose numbers equal printed numbers.  A few selection functions
(``top_heads``, ``acts_at``, ``head_roles``) are public so the notebook and the prose use
the same choice.
"""
from __future__ import annotations

from typing import Any

import torch
from IPython.display import Markdown

from helpers.base.fmt import bullets, head_name, join, md_table, num, pct, plural
from helpers.data.pairs import PromptPairs
from helpers.results.patch_result import PatchResult
from helpers.teach.explain._markdown import markdown

__all__ = ["top_heads", "acts_at", "position_name", "head_roles", "head_map", "head_positions",
           "roles"]

Head = tuple[int, int]


def _check(result: PatchResult, dims: tuple[str, ...]) -> None:
    if result.dims != dims:
        raise ValueError(f"expects a result with dims {dims}, got {result.dims}")


def top_heads(heads: PatchResult, first: int = 0, last: int | None = None, n: int = 1,
              normalise: bool = True) -> list[Head]:
    """The ``n`` heads of blocks ``first`` … ``last`` (inclusive; default: to the end) with the
    largest change (``heads.change(normalise)``, ``[n_layers, n_heads]``), best first, as
    ``(layer, head)`` pairs."""
    _check(heads, ("layer", "head"))
    ch = heads.change(normalise)
    last = ch.shape[0] - 1 if last is None else last
    part = ch[first:last + 1]
    order = part.flatten().argsort(descending=True, stable=True)[:n]
    return [(first + int(i) // ch.shape[1], int(i) % ch.shape[1]) for i in order]


def acts_at(head_pos: PatchResult) -> dict[Head, int]:
    """For every head of a head x position result (``[n_layers, n_heads, seq]``), the position
    where patching it has the largest |effect|."""
    _check(head_pos, ("layer", "head", "position"))
    eff = head_pos.effect()
    return {(lay, k): int(eff[lay, k].abs().argmax())
            for lay in range(eff.shape[0]) for k in range(eff.shape[1])}


def position_name(pairs: PromptPairs, position: int) -> str:
    """A position by its role (``S2``, ``END``) or, without one, by its token in quotes."""
    role_at = {p: r for r, p in pairs.positions.items()}
    return role_at.get(position, repr(pairs.tokens[position].strip()))


def head_map(heads: PatchResult, layer: int, normalise: bool = True) -> Markdown:
    """What the layer x head map says: the top head against the other heads of its block,
    and the range of the later blocks (``layer`` … last) with their top two heads; when no
    later head reaches half the top head, the move to END is called shared."""
    _check(heads, ("layer", "head"))
    g, ch = heads.grid(normalise), heads.change(normalise)
    n_layers, n_heads = g.shape
    (top_l, top_h), = top_heads(heads, n=1, normalise=normalise)
    same = join(f"{head_name(top_l, k)} ({num(g[top_l, k])})" for k in range(n_heads) if k != top_h)
    later = top_heads(heads, layer, n=2, normalise=normalise)
    verb = "scores" if normalise else "gives a " + heads.metric
    shared = bool(ch[layer:].max() < 0.5 * ch.max())
    lines = [
        f"**The top head is {head_name(top_l, top_h)}** ({num(g[top_l, top_h])}); the other heads "
        f"of block {top_l}: {same}.",
        f"**Later blocks ({layer}–{n_layers - 1}):** every head {verb} between "
        f"{num(g[layer:].min())} and {num(g[layer:].max())}; the top two are "
        + " and ".join(f"{head_name(a, b)} ({num(g[a, b])})" for a, b in later)
        + (". No single late head carries much: the move to END is shared by many heads, each "
           "restoring a little. Redundancy like this is common — GPT-2 small has *backup* heads "
           "that take over when its main ones are knocked out." if shared else "."),
    ]
    return markdown(bullets(lines))


def head_positions(head_pos: PatchResult, heads: PatchResult, pairs: PromptPairs,
                   normalise: bool = True, n: int = 6) -> Markdown:
    """A table of the ``n`` heads with the largest |effect| at one position: their score over
    all positions (``heads``), where they act most and their score there; then the heads
    grouped by where they act."""
    _check(heads, ("layer", "head"))
    gp, gh, where = head_pos.grid(normalise), heads.grid(normalise), acts_at(head_pos)
    eff = head_pos.effect()
    ranked = sorted(where, key=lambda lk: -float(eff[lk].abs().max()))[:n]
    rows = [(head_name(*lk), num(gh[lk]), position_name(pairs, where[lk]), num(gp[lk][where[lk]]))
            for lk in ranked]
    by_place: dict[str, list[str]] = {}
    for lk in ranked:
        by_place.setdefault(position_name(pairs, where[lk]), []).append(head_name(*lk))
    table = md_table(["head", "all positions", "acts most at", "score there" if normalise
                      else f"{heads.metric} there"], rows)
    return markdown(table, "Where they act: " + "; ".join(
        f"at {p}: {join(hs)}" for p, hs in by_place.items()) + ".")


def head_roles(patterns: dict[int, torch.Tensor], chosen: list[Head], head_pos: PatchResult,
               pairs: PromptPairs) -> list[dict[str, Any]]:
    """For each chosen head: where it acts (head x position sweep), the key position its
    attention there puts most weight on, and that weight.  ``patterns[layer]`` is the
    prompt-mean attention of that block, ``[n_heads, seq_q, seq_k]``."""
    where = acts_at(head_pos)
    out = []
    for lay, k in chosen:
        q = where[lay, k]
        key = int(patterns[lay][k, q].argmax())
        out.append({"head": head_name(lay, k), "acts_at": position_name(pairs, q),
                    "attends_to": position_name(pairs, key),
                    "weight": round(float(patterns[lay][k, q, key]), 4)})
    return out


def roles(patterns: dict[int, torch.Tensor], chosen: list[Head], head_pos: PatchResult,
          pairs: PromptPairs) -> Markdown:
    """Each chosen head's role in one line (where it acts, what it reads from there, with
    what share of its attention), then the heads grouped by role."""
    found = head_roles(patterns, chosen, head_pos, pairs)
    groups: dict[tuple[str, str], list[str]] = {}
    for r in found:
        groups.setdefault((r["acts_at"], r["attends_to"]), []).append(r["head"])
    lines = [f"**{r['head']}** acts at {r['acts_at']} and from there puts {pct(r['weight'], 1)} of "
             f"its attention on {r['attends_to']}." for r in found]
    summary = (f"So the heads that matter play **{plural(len(groups), 'role')}**: "
               + "; ".join(f"at {q}, read {k} ({join(hs)})" for (q, k), hs in groups.items()) + ".")
    return markdown(bullets(lines), summary)


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
