"""A minimal circuit by greedy search over jointly patched components.

Components are attention heads (``L0H3``) and MLP outputs (``mlp1``), named as in
``helpers.fmt``, each patched at every position (denoising by default).  Forward: add the component that most raises the
normalised score of the jointly patched set, until it reaches the threshold.
Backward: drop any member whose removal keeps the score at or above the
threshold.  Both phases are capped in steps.  Every candidate set of a step is
patched in one batched sweep.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


from helpers.fmt import head_name, num
from helpers.models import model_facts
from helpers.patching import Direction, Patch, patch_components
from helpers.prompts import PromptPairs
from helpers.runs import check_pairs, normalise_patch
from helpers.validate import as_count

__all__ = ["CircuitSearch", "minimal_circuit", "component_patch", "all_components",
           "component_place", "decisive_heads", "attention_from"]


def all_components(model: Any) -> list[str]:
    """Names of every head (``"L1H2"``) and MLP output (``"mlp1"``) of the model."""
    f = model_facts(model)
    return [head_name(l, h) for l in range(f.n_layers) for h in range(f.n_heads)] + \
           [f"mlp{l}" for l in range(f.n_layers)]


_COMPONENT = re.compile(r"L(-?\d+)H(-?\d+)|(?:mlp|MLP)(-?\d+)")


def component_place(name: str) -> tuple[int, int | None]:
    """``"L1H2"`` -> ``(1, 2)``; ``"mlp1"`` -> ``(1, None)``: the block and the head (None = MLP)."""
    p = component_patch(name)
    return p.layer, p.head


def component_patch(name: str) -> Patch:
    """``"L1H2"`` -> head 2 of block 1, ``"mlp1"`` (or ``"MLP1"``) -> block 1's MLP output;
    all positions."""
    m = _COMPONENT.fullmatch(name.strip()) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"unknown component {name!r}: write a head as 'L<block>H<head>' (e.g. "
                         "'L0H3') and an MLP output as 'mlp<block>' (e.g. 'mlp0'); "
                         "all_components(model) lists every one")
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
        """JSON-ready (a score that could not be computed, NaN, is None)."""
        score = self.score if math.isfinite(self.score) else None
        return {"members": self.members, "score": score, "threshold": self.threshold,
                "reached": self.reached, "without": self.without, "drops": self.drops(),
                "history": self.history}

    def by_block(self) -> dict[int, list[str]]:
        """The members grouped by block, blocks in order."""
        groups: dict[int, list[str]] = {}
        for m in self.members:
            groups.setdefault(component_place(m)[0], []).append(m)
        return dict(sorted(groups.items()))

    def diagram(self, sink: str = "logits") -> Any:
        """The circuit as an image (``helpers.diagrams``): prompt tokens -> the members, block
        by block, each with the drop in joint score without it -> the output.  Returns the
        ``Figure``; ``mermaid()`` is the same chart as text."""
        from helpers.diagrams import Edge, Node, draw_diagram

        colour = {True: ("#c6dbef", "attention head"), False: ("#fdd0a2", "MLP output")}
        blocks = self.by_block()
        tallest = max((len(m) for m in blocks.values()), default=1)
        middle = (tallest - 1) / 2          # the input and output boxes sit mid-height
        nodes, edges, previous = [Node("IN", "prompt tokens", 0, middle, "wheat")], [], ["IN"]
        for col, members in enumerate(blocks.values(), start=1):
            for row, m in enumerate(members):
                fill, group = colour[component_place(m)[1] is not None]
                nodes.append(Node(m, f"{m}\ndrop {num(self.drops()[m])}", col,
                                  row + (tallest - len(members)) / 2, fill, group))
                edges += [Edge(p, m) for p in previous]
            previous = members
        nodes.append(Node("OUT", f"{sink}\njoint score {num(self.score)}", len(blocks) + 1, middle,
                          "wheat"))
        edges += [Edge(p, "OUT") for p in previous]
        return draw_diagram(nodes, edges, title="the circuit the search found",
                            note="drop = how much the joint score falls without that member")

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
    from helpers.fmt import parse_head
    from helpers.observe import attention_patterns

    places = [parse_head(h) for h in heads]
    patterns = {l: attention_patterns(model, ids, l).mean(0) for l in {l for l, _ in places}}
    return torch.stack([patterns[l][h, query] for l, h in places])


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
