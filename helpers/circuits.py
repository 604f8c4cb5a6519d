"""A minimal circuit by greedy search over jointly patched components.

Components are attention heads and MLP layers, each patched at every position
(denoising by default).  Forward: add the component that most raises the
normalised score of the jointly patched set, until it reaches the threshold.
Backward: drop any member whose removal keeps the score at or above the
threshold.  Both phases are capped in steps.  Every candidate set of a step is
patched in one batched sweep.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from helpers.models import model_facts
from helpers.patching import Direction, Patch, patch_components
from helpers.prompts import PromptPairs
from helpers.runs import check_pairs, normalise_patch
from helpers.validate import as_count

__all__ = ["CircuitSearch", "minimal_circuit", "component_patch", "all_components"]


def all_components(model: Any) -> list[str]:
    """Names of every head ("L1H2") and MLP ("MLP1") of the model."""
    f = model_facts(model)
    return [f"L{l}H{h}" for l in range(f.n_layers) for h in range(f.n_heads)] + \
           [f"MLP{l}" for l in range(f.n_layers)]


_COMPONENT = re.compile(r"L(-?\d+)H(-?\d+)|MLP(-?\d+)")


def component_patch(name: str) -> Patch:
    """``"L1H2"`` -> head 2 of layer 1, ``"MLP1"`` -> MLP of layer 1; all positions."""
    m = _COMPONENT.fullmatch(name.strip()) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"unknown component {name!r}: write a head as 'L<layer>H<head>' (e.g. "
                         "'L0H3') and an MLP as 'MLP<layer>' (e.g. 'MLP0'); all_components(model) "
                         "lists every one")
    if m.group(3) is not None:
        return Patch("mlp", int(m.group(3)))
    return Patch("head", int(m.group(1)), None, int(m.group(2)))


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

    def drops(self) -> dict[str, float]:
        """How much the joint score falls when each member is removed."""
        return {m: self.score - s for m, s in self.without.items()}

    def to_dict(self) -> dict:
        return {"members": self.members, "score": self.score, "threshold": self.threshold,
                "reached": self.reached, "without": self.without, "drops": self.drops(),
                "history": self.history}

    def mermaid(self, sink: str = "logits") -> str:
        """A mermaid flowchart: members grouped by layer, feeding the output."""
        lines = ["flowchart LR"]
        by_layer: dict[int, list[str]] = {}
        for m in self.members:
            layer = int(m[3:]) if m.startswith("MLP") else int(m[1:].split("H")[0])
            by_layer.setdefault(layer, []).append(m)
        previous: list[str] = ["IN"]
        lines.append('    IN(["prompt tokens"])')
        for layer in sorted(by_layer):
            for m in by_layer[layer]:
                label = f"{m}<br/>drop {self.drops()[m]:.2f}"
                lines.append(f'    {m}["{label}"]')
                for p in previous:
                    lines.append(f"    {p} --> {m}")
            previous = by_layer[layer]
        lines.append(f'    OUT(["{sink}: joint score {self.score:.2f}"])')
        for p in previous:
            lines.append(f"    {p} --> OUT")
        return "\n".join(lines)


def _scores(model: Any, pairs: PromptPairs, sets: list[list[str]], direction: Direction,
            min_gap: float | None) -> list[float]:
    result = patch_components(model, pairs, [[component_patch(c) for c in s] for s in sets],
                              direction, progress=False, metrics=("logit_diff",))
    return result.score(min_gap=min_gap).tolist()


def minimal_circuit(model: Any, pairs: PromptPairs, threshold: float = 0.8,
                    candidates: Sequence[str] | None = None, direction: Direction = "denoise",
                    max_steps: int = 30, min_gap: float | None = None) -> CircuitSearch:
    """Greedy forward selection then backward pruning (see the module docstring).

    ``threshold``: the normalised score (of the prompt-mean logit difference) the
    joint patch must reach.  ``candidates``: component names (default: every head
    and MLP).  The returned ``reached`` is False if the cap stopped the search
    first.  Scores are normalised, so a model that barely tells the clean and
    corrupted prompts apart raises ``GapTooSmallError`` (``min_gap`` overrides the
    limit, see ``helpers.metrics.normalised``).
    """
    check_pairs(model, pairs)
    if isinstance(candidates, str):
        candidates = [candidates]
    pool = list(candidates or all_components(model))
    f = model_facts(model)
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
        trial = _scores(model, pairs, [members + [c] for c in pool], direction, min_gap)
        best = max(range(len(pool)), key=lambda i: trial[i])
        members.append(pool.pop(best))
        score = trial[best]
        history.append({"step": "add", "component": members[-1], "score": score})
    for _ in range(max_steps):
        if len(members) < 2:
            break
        trial = _scores(model, pairs, [[m for m in members if m != c] for c in members], direction,
                        min_gap)
        removable = [i for i, s in enumerate(trial) if s >= threshold]
        if not removable:
            break
        drop = max(removable, key=lambda i: trial[i])
        history.append({"step": "remove", "component": members[drop], "score": trial[drop]})
        score = trial[drop]
        members.pop(drop)
    without = {}
    if members:
        alone = _scores(model, pairs, [[m for m in members if m != c] for c in members] + [members],
                        direction, min_gap)
        without = dict(zip(members, alone[:-1]))
        score = alone[-1]
    return CircuitSearch(members=members, score=score, without=without, threshold=threshold,
                         reached=score >= threshold, history=history)
