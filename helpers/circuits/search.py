"""A minimal circuit by greedy search over jointly patched components.

Components are attention heads (``L0H3``) and MLP outputs (``mlp1``), named as in
``helpers.base.fmt``, each patched at every position (denoising by default).  Forward: add the component that most raises the
normalised score of the jointly patched set, until it reaches the threshold.
Backward: drop any member whose removal keeps the score at or above the
threshold.  Both phases are capped in steps.  Every candidate set of a step is
patched in one sweep (``helpers.sweep``): ``method="fast"`` (default; GPT-2 and Llama-style
models, local) starts each set's rows at its first patched block from the cached base run,
``"batched"`` runs whole traced forwards; the result's ``method`` records which ran.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

from helpers.base.fmt import head_name, num, parse_head
from helpers.base.validate import as_count
from helpers.data.prompts import PromptPairs
from helpers.engine.runs import (all_components, check_pairs, component_patch, component_place,
                                 normalise_patch)
from helpers.methods.observe import attention_patterns
from helpers.methods.sweeps import Direction, patch_components
from helpers.models.loaded import ModelHandle, handle
from helpers.results.metrics import logit_diff

__all__ = ["CircuitSearch", "minimal_circuit", "decisive_heads", "attention_from", "FaithfulSearch",
           "greedy_faithful", "kept_metric", "faithfulness_table"]


@dataclass
class CircuitSearch:
    """The outcome: ``members`` (in the order added), their joint ``score``, the score
    without each member (``without``), and every step taken (``history``)."""

    members: list[str]
    score: float
    without: dict[str, float]
    threshold: float
    reached: bool
    history: list[dict] = field(default_factory=list)
    method: str = "fast"  # what ran the sweeps: "fast" or "batched"

    def drops(self) -> dict[str, float]:
        """How much the joint score falls when each member is removed."""
        return {m: self.score - s for m, s in self.without.items()}

    def to_dict(self) -> dict:
        """JSON-ready (a score that could not be computed, NaN, is None)."""
        score = self.score if math.isfinite(self.score) else None
        return {"members": self.members, "score": score, "threshold": self.threshold,
                "reached": self.reached, "without": self.without, "drops": self.drops(),
                "history": self.history, "method": self.method}

    def by_block(self) -> dict[int, list[str]]:
        """The members grouped by block, blocks in order."""
        groups: dict[int, list[str]] = {}
        for m in self.members:
            groups.setdefault(component_place(m)[0], []).append(m)
        return dict(sorted(groups.items()))

    def mermaid(self, sink: str = "logits") -> str:
        """A mermaid flowchart: members grouped by layer, feeding the output."""
        lines = ["flowchart LR"]
        by_layer = self.by_block()
        previous: list[str] = ["IN"]
        lines.append('    IN(["prompt tokens"])')
        for layer in sorted(by_layer):
            for m in by_layer[layer]:
                label = f"{m}<br/>drop {num(self.drops()[m])}"
                lines.append(f'    {m}["{label}"]')
                for p in previous:
                    lines.append(f"    {p} --> {m}")
            previous = by_layer[layer]
        lines.append(f'    OUT(["{sink}: joint score {self.score:.2f}"])')
        for p in previous:
            lines.append(f"    {p} --> OUT")
        return "\n".join(lines)


def decisive_heads(result: Any, normalise: bool = True, share: float = 0.25, most: int = 4
                   ) -> list[str]:
    """The heads of a layer x head sweep that matter, strongest first: up to ``most`` heads
    whose change (``result.change(normalise)``, ``[n_layers, n_heads]``) is at least ``share``
    of the strongest head's.  Names as ``"L0H3"``."""
    change = result.change(normalise).abs()
    order = change.flatten().argsort(descending=True, stable=True)
    n_heads = change.shape[1]
    ranked = [divmod(int(i), n_heads) for i in order[:most]]
    top = change[ranked[0]]
    return [head_name(l, h) for l, h in ranked if change[l, h] >= share * top]


def attention_from(model: Any, ids: Any, heads: Sequence[str], query: int) -> Any:
    """Where each head (``"L0H3"``) looks from position ``query``: its attention row there,
    averaged over the prompts ``ids`` (``[batch, seq]``, roles at the same positions);
    returns ``[len(heads), seq]``."""
    mh = handle(model)

    places = [parse_head(h) for h in heads]
    patterns = {l: attention_patterns(mh, ids, l).mean(0) for l in {l for l, _ in places}}
    return torch.stack([patterns[l][h, query] for l, h in places])


def _scores(mh: ModelHandle, pairs: PromptPairs, sets: list[list[str]], direction: Direction,
            min_gap: float | None, ran: list[str], method: str) -> list[float]:
    result = patch_components(mh, pairs, [[component_patch(c) for c in s] for s in sets],
                              direction, progress=False, metrics=("logit_diff",), method=method)
    ran.append(result.method)
    return result.score(min_gap=min_gap).tolist()


def minimal_circuit(model: Any, pairs: PromptPairs, threshold: float = 0.8,
                    candidates: str | Sequence[str] | None = None, direction: Direction = "denoise",
                    max_steps: int = 30, min_gap: float | None = None,
                    method: Literal["fast", "batched"] = "fast") -> CircuitSearch:
    """Greedy forward selection then backward pruning (see the module docstring).

    ``threshold``: the normalised score (of the prompt-mean logit difference) the
    joint patch must reach.  ``candidates``: component names (default: every head
    and MLP).  The returned ``reached`` is False if the cap stopped the search
    first.  Scores are normalised, so a model that barely tells the clean and
    corrupted prompts apart raises ``GapTooSmallError`` (``min_gap`` overrides the
    limit, see ``helpers.results.metrics.normalised``).  ``method``: ``"fast"`` or ``"batched"``
    (module docstring).
    """
    mh = handle(model)
    check_pairs(mh, pairs)
    if method not in ("fast", "batched"):
        raise ValueError(f"method must be 'fast' or 'batched', got {method!r}")
    ran: list[str] = []
    if isinstance(candidates, str):
        candidates = [candidates]
    pool = list(candidates or all_components(mh))
    f = mh.anatomy
    for c in pool:  # parse and range-check every name before any forward pass
        normalise_patch(component_patch(c), f, pairs.seq_len)
    if len(set(pool)) != len(pool):
        raise ValueError(f"candidates repeat a component: {sorted(c for c in set(pool) if pool.count(c) > 1)}")
    threshold = float(threshold)
    max_steps = as_count(max_steps, "max_steps")
    members: list[str] = []
    score, history = float("-inf"), []
    for _ in range(max_steps):
        if score >= threshold or not pool:
            break
        trial = _scores(mh, pairs, [members + [c] for c in pool], direction, min_gap, ran, method)
        best = max(range(len(pool)), key=lambda i: trial[i])
        members.append(pool.pop(best))
        score = trial[best]
        history.append({"step": "add", "component": members[-1], "score": score})
    for _ in range(max_steps):
        if len(members) < 2:
            break
        trial = _scores(mh, pairs, [[m for m in members if m != c] for c in members], direction,
                        min_gap, ran, method)
        removable = [i for i, s in enumerate(trial) if s >= threshold]
        if not removable:
            break
        drop = max(removable, key=lambda i: trial[i])
        history.append({"step": "remove", "component": members[drop], "score": trial[drop]})
        score = trial[drop]
        members.pop(drop)
    without = {}
    if members:
        alone = _scores(mh, pairs, [[m for m in members if m != c] for c in members] + [members],
                        direction, min_gap, ran, method)
        without = dict(zip(members, alone[:-1]))
        score = alone[-1]
    return CircuitSearch(members=members, score=score, without=without, threshold=threshold,
                         reached=score >= threshold, history=history,
                         method=ran[-1] if ran else method)



@dataclass
class FaithfulSearch:
    """What ``greedy_faithful`` returns: the heads kept, in the order added, the faithfulness of
    the final set under each ablation, whether every one reached ``target``, and each step."""

    members: list[str]
    faithfulness: dict[str, float]
    reached: bool
    target: float
    max_size: int
    history: list[dict] = field(default_factory=list)
    pool: int = 0  # how many heads the search could choose from

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {"members": self.members, "faithfulness": self.faithfulness, "reached": self.reached,
                "target": self.target, "max_size": self.max_size, "pool": self.pool,
                "history": self.history}


def kept_metric(model: Any, pairs: Any, kept_sets: Sequence[Sequence[str]], universe: Sequence[str],
                kind: str, seed: int = 0) -> list[float]:
    """``M(S)`` for every kept set S: the mean logit difference over the clean prompts (of every
    group of a ``helpers.circuits.pooled.PairGroups``) with every head of ``universe`` outside S
    ablated (``helpers.ablate``, ``kind``; each group's own mean or donors)."""
    return _kept(handle(model), pairs, kept_sets, universe, (kind,), seed)[kind]


def _kept(mh: ModelHandle, pairs: Any, kept_sets: Sequence[Sequence[str]], universe: Sequence[str],
          kinds: Sequence[str], seed: int, keeps: dict | None = None) -> dict[str, list[float]]:
    """``kept_metric`` under every kind in ``kinds``, each group's clean run made once and kept in
    ``keeps`` (``{group index: clean_run's keep}``, the caller's, across calls) when given.  Only
    the answer and distractor logits of the ablated runs are computed."""
    from helpers.methods.ablations import (ablation_source, clean_run, component_patches, pick_method,
                                           run_sets)

    groups = list(pairs) if not isinstance(pairs, PromptPairs) else [pairs]
    sets = [[u for u in universe if u not in set(k)] for k in kept_sets]
    todo = [s for s in sets if s]  # kept = universe: nothing ablated, the clean run itself
    total = {k: torch.zeros(len(sets), dtype=torch.float64) for k in kinds}
    for gi, g in enumerate(groups):
        keep = {} if keeps is None else keeps.setdefault(gi, {})
        method = pick_method(mh, "fast", g.seq_len)
        cache, clean_logits = clean_run(mh, g, method, keep)
        clean = logit_diff(clean_logits, g.answer_ids, g.distractor_ids).double().cpu()
        patch_sets = [component_patches(mh, s, g.seq_len) for s in todo]
        every = list({p for s in patch_sets for p in s})
        for kind in kinds:
            values = None
            if todo:
                source = ablation_source(mh, g, every, kind, None, seed if kind == "resample" else 0, cache)
                values = run_sets(mh, g, source, patch_sets, None, method, ("logit_diff",),
                                  keep=keep)[0]["logit_diff"].double()
            col = 0
            for i, s in enumerate(sets):
                total[kind][i] += values[:, col].sum() if s else clean.sum()
                col += bool(s)
    count = sum(len(g) for g in groups)
    return {k: (v / count).tolist() for k, v in total.items()}


def greedy_faithful(model: Any, pairs: Any, pool: Sequence[str], target: float = 0.8,
                    ablations: Sequence[str] = ("mean", "resample"), max_size: int = 16,
                    universe: Sequence[str] | None = None, seed: int = 0) -> FaithfulSearch:
    """The smallest head set found greedily whose faithfulness reaches ``target`` under every
    ablation in ``ablations``: start empty; at each step add the head of ``pool`` that raises the
    *smaller* of the faithfulnesses most; stop when both reach ``target`` or at ``max_size``
    heads.  Faithfulness ``F(S) = (M(S) - M({})) / (M(U) - M({}))`` with ``M`` from
    ``kept_metric`` (``universe`` U: every head by default; MLPs are never ablated).  ``pairs``: a
    ``PromptPairs`` or ``PairGroups`` (every pair of every group pooled)."""
    mh = handle(model)
    f = mh.anatomy
    universe = list(universe or [head_name(L, h) for L in range(f.n_layers) for h in range(f.n_heads)])
    pool = list(dict.fromkeys(pool))
    outside = [h for h in pool if h not in universe]
    if outside:
        raise ValueError(f"pool heads {outside} are not in the universe")
    max_size = as_count(max_size, "max_size")
    keeps: dict = {}  # each group's clean run, made once for the whole search
    ends = _kept(mh, pairs, [universe, []], universe, ablations, seed, keeps)
    members: list[str] = []
    history: list[dict] = []
    current = {k: 0.0 for k in ablations}
    while len(members) < min(max_size, len(pool)):
        rest = [h for h in pool if h not in members]
        got = _kept(mh, pairs, [members + [h] for h in rest], universe, ablations, seed, keeps)
        faith = {k: [(m - ends[k][1]) / (ends[k][0] - ends[k][1]) for m in got[k]] for k in ablations}
        best = max(range(len(rest)), key=lambda i: (min(faith[k][i] for k in ablations), -i))
        members.append(rest[best])
        current = {k: faith[k][best] for k in ablations}
        history.append({"size": len(members), "added": rest[best], **current})
        if all(v >= target for v in current.values()):
            break
    return FaithfulSearch(members, current, all(v >= target for v in current.values()),
                          float(target), max_size, history, len(pool))


def faithfulness_table(model: Any, pairs: Any, circuits: dict[str, Sequence[str]],
                       ablations: Sequence[str] = ("mean", "resample"),
                       universe: Sequence[str] | None = None, seed: int = 0) -> Any:
    """``F(C) = (M(C) - M({})) / (M(U) - M({}))`` of each named circuit (heads kept; every other
    head of ``universe``, default every head, ablated; MLPs never) under each ablation, on
    ``pairs`` (a ``PromptPairs`` or every group of a ``PairGroups``, pooled): a ``pandas.DataFrame``
    with one row per circuit (its size, then one column per ablation)."""
    import pandas as pd

    mh = handle(model)
    f = mh.anatomy
    universe = list(universe or [head_name(L, h) for L in range(f.n_layers) for h in range(f.n_heads)])
    names = list(circuits)
    rows = {n: {"heads": len(circuits[n])} for n in names}
    got = _kept(mh, pairs, [universe, [], *[list(circuits[n]) for n in names]], universe, ablations, seed)
    for kind in ablations:
        full, empty, *kept = got[kind]
        for n, m in zip(names, kept):
            rows[n][kind] = (m - empty) / (full - empty)
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "circuit"
    return frame


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
