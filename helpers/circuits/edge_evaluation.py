"""Evaluating circuits of edges: edge-level ablation, and MIB's faithfulness curve, CPR and CMD.

**Edge-level ablation** (``evaluate_edges``; MIB's ``evaluate_graph``, Mueller et al. 2025): the
clean prompt runs with every edge *outside* the circuit carrying its sender's ablated value to
its receiver (``"counterfactual"``: the corrupted prompt's; ``"mean"``, ``"zero"``:
``helpers.methods.edge_values``), every edge inside carrying the sender's value in this same run;
each receiver's input is built separately (``helpers.engine.edge_runs.DenseAblation``), exactly,
rows of (circuit, prompt) batched.  ``m`` is the logit difference, averaged over prompts.

**Faithfulness** of a circuit C: ``f(C) = (m(C) - m(empty)) / (m(full) - m(empty))``, ``m(full)``
the unablated model and ``m(empty)`` every edge ablated (for counterfactual ablation: the
corrupted run).  A ratio of prompt means.

**MIB's curve** (``hannamw/MIB-circuit-track``, ``MIB_circuit_track/evaluation.py``,
``evaluate_area_under_curve``; read 2026-12): at each fraction ``p`` of
``PERCENTAGES = (.001, .002, .005, .01, .02, .05, .1, .2, .5, 1)`` the circuit is the top
``int(p * n_edges)`` edges, pruned (``top_edges``), and ``f`` is measured.  With ``x`` = those
fractions (not log-scaled, not the edges left after pruning) and trapezoids between consecutive
points (none from 0 to 0.001):

* ``area_under = sum (x2 - x1) (f1 + f2) / 2`` and ``area_from_1 = sum (x2 - x1) (|1 - f1| +
  |1 - f2|) / 2``;
* **CPR** (circuit performance ratio, higher is better, may exceed 1) is ``area_under`` of the
  curve whose circuits rank edges by **signed** score (``absolute=False``), **CMD** (circuit-model
  difference, 0 is best) is ``area_from_1`` of the curve ranking by ``|score|``
  (``print_results.py`` picks the ``abs-False`` run for CPR and ``abs-True`` for CMD).

Node level (``level="node"``): fractions of the sender nodes, circuits from ``top_nodes``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from helpers.base.validate import check_finite
from helpers.data.prompts import PromptPairs
from helpers.engine.edge_runs import DenseAblation
from helpers.methods.edge_values import EdgeSetup, edge_setup, row_chunks
from helpers.results.edge_scores import EdgeScores
from helpers.results.metrics import GapTooSmallError
from helpers.circuits.edge_circuits import as_edge_masks, top_edges, top_nodes

__all__ = ["PERCENTAGES", "EdgeEvaluation", "evaluate_edges", "FaithfulnessCurve", "faithfulness_curve",
           "area_under", "area_from_1", "faithfulness"]

PERCENTAGES = (.001, .002, .005, .01, .02, .05, .1, .2, .5, 1)


def area_under(percentages: Sequence[float], f: Sequence[float]) -> float:
    """MIB's ``area_under``: trapezoids of ``f`` over ``percentages`` (CPR on the signed curve)."""
    _check_curve(percentages, f)
    return sum((x2 - x1) * ((f1 + f2) / 2) for x1, x2, f1, f2 in
               zip(percentages, percentages[1:], f, f[1:]))


def area_from_1(percentages: Sequence[float], f: Sequence[float]) -> float:
    """MIB's ``area_from_1``: trapezoids of ``|1 - f|`` (CMD on the absolute curve)."""
    _check_curve(percentages, f)
    return sum((x2 - x1) * ((abs(1. - f1) + abs(1. - f2)) / 2) for x1, x2, f1, f2 in
               zip(percentages, percentages[1:], f, f[1:]))


def _check_curve(percentages: Sequence[float], f: Sequence[float]) -> None:
    if len(percentages) != len(f) or len(f) < 2:
        raise ValueError(f"a curve needs as many faithfulness values as percentages (at least 2), got "
                         f"{len(f)} values for {len(percentages)} percentages")
    if any(b <= a for a, b in zip(percentages, percentages[1:])):
        raise ValueError("the percentages must increase")
    if not all(math.isfinite(v) for v in f):
        raise ValueError("a faithfulness value is not finite (NaN or infinite): the full and the "
                         "empty circuit gave the same metric, so nothing can be normalised")


def faithfulness(circuit: float, full: float, empty: float) -> float:
    """``(circuit - empty) / (full - empty)`` with a clear error when ``full == empty``."""
    if not abs(full - empty) > 0:
        raise GapTooSmallError(f"the full model and the empty circuit give the same metric ({full:.4g}): "
                               "no faithfulness can be normalised (a model that does not do the task?)")
    return (circuit - empty) / (full - empty)


@dataclass
class EdgeEvaluation:
    """What ``evaluate_edges`` returns: ``values`` ``[C, N]`` the logit difference of each circuit
    on each prompt; ``full`` / ``empty`` ``[N]`` the unablated model and every edge ablated;
    ``sizes`` the circuits' edge counts."""

    values: torch.Tensor
    full: torch.Tensor
    empty: torch.Tensor
    sizes: list[int]
    ablation: str

    def faithfulness(self) -> list[float]:
        """``f(C)`` of every circuit (a ratio of prompt means; module docstring)."""
        full, empty = float(self.full.mean()), float(self.empty.mean())
        return [faithfulness(float(v.mean()), full, empty) for v in self.values]


def _run_masks(setup: EdgeSetup, masks: torch.Tensor, memory_mb: float | None) -> torch.Tensor:
    """Logit differences ``[C, N]`` of the clean prompts with the edges outside ``masks[c]`` ablated."""
    em, g, clean, n = setup.em, setup.graph, setup.clean, setup.n
    f, s = em.f, setup.pairs.seq_len
    real = g.real
    rows_c, rows_p = torch.arange(len(masks)).repeat_interleave(n), torch.arange(n).repeat(len(masks))
    size = torch.finfo(f.dtype).bits // 8
    per_row = size * s * f.d_model * (2 * len(g.senders) + 3 * g.n_heads + 16) + size * real.numel()
    out = torch.zeros(len(masks), n, dtype=torch.float64)
    for sl in row_chunks(len(rows_c), per_row, memory_mb, f.device):
        c, p = rows_c[sl], rows_p[sl]
        off = torch.zeros(len(c), *real.shape, dtype=f.dtype)
        kept = torch.zeros(len(c), *real.shape, dtype=torch.bool)
        kept[:, g.edge_sender, g.edge_receiver] = masks[c]
        off[real[None].expand_as(kept) & ~kept] = 1
        policy = DenseAblation(em, setup.ablated[p], off.to(f.device), clean.values[p], setup.first_position)
        with torch.no_grad():
            logits = em.forward(setup.x0(clean.values[p, 0]), policy, columns=setup.cols[p])
        out[c, p] = (logits[:, 0] - logits[:, 1]).double().cpu()
    return check_finite(out, "the logit differences of the ablated circuits")


def evaluate_edges(model: Any, pairs: PromptPairs, circuits: Any, ablation: str = "counterfactual", *,
                   reference: Any = None, kv: str = "query", memory_mb: float | None = None) -> EdgeEvaluation:
    """Edge-level ablation of each circuit (module docstring): ``circuits`` a ``Circuit``, a list
    of them, a list of edge names (``"a0.h1->logits"``), a list of such lists, or bool masks
    ``[E]`` / ``[C, E]`` over ``helpers.edge_graph(model, kv).edges``.  Returns an
    ``EdgeEvaluation`` (``values`` ``[C, N]``, ``full`` / ``empty`` ``[N]``, ``faithfulness()``)."""
    setup = edge_setup(model, pairs, kv, ablation, reference)
    masks = as_edge_masks(setup.graph, circuits)
    return _evaluate(setup, masks, ablation, memory_mb)


def _evaluate(setup: EdgeSetup, masks: torch.Tensor, ablation: str, memory_mb: float | None) -> EdgeEvaluation:
    """The circuits ``masks`` ``[C, E]`` and the empty one, each distinct circuit run once."""
    empty = torch.zeros(1, len(setup.graph.edges), dtype=torch.bool)
    distinct, which = torch.unique(torch.cat([empty, masks]), dim=0, return_inverse=True)
    values = _run_masks(setup, distinct, memory_mb)[which]
    return EdgeEvaluation(values=values[1:], full=setup.clean_ld().double().cpu(), empty=values[0],
                          sizes=[int(m.sum()) for m in masks], ablation=ablation)


@dataclass
class FaithfulnessCurve:
    """MIB's faithfulness curve (module docstring): ``percentages``; ``requested`` the item
    counts ``int(p * n)``; per ranking (``"signed"``, ``"absolute"``): ``faithfulness`` and the
    edges left after pruning (``edges``); ``cpr`` (from the signed ranking) and ``cmd`` (the
    absolute one; None for a ranking not run); ``full`` / ``empty`` the prompt-mean metrics the
    curve is normalised by."""

    percentages: list[float]
    requested: list[int]
    faithfulness: dict[str, list[float]]
    edges: dict[str, list[int]]
    cpr: float | None
    cmd: float | None
    full: float
    empty: float
    level: str
    ablation: str
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def faithfulness_curve(model: Any, pairs: PromptPairs, scores: EdgeScores, ablation: str = "counterfactual",
                       *, level: str = "edge", reference: Any = None,
                       percentages: Sequence[float] = PERCENTAGES,
                       rankings: Sequence[str] = ("signed", "absolute"),
                       memory_mb: float | None = None) -> FaithfulnessCurve:
    """MIB's faithfulness curve of ``scores`` on ``pairs`` with CPR and CMD (module docstring):
    per ranking (``"signed"`` for CPR, ``"absolute"`` for CMD; ``rankings`` picks) one circuit
    per fraction in ``percentages``, plus the empty circuit, all evaluated by edge-level ablation
    (``ablation``: ``"counterfactual"``, ``"mean"``, ``"zero"``), each distinct circuit once.
    ``level``: ``"edge"`` or ``"node"``."""
    if level not in ("edge", "node"):
        raise ValueError(f"level must be 'edge' or 'node', got {level!r}")
    rankings = list(rankings)
    if not rankings or set(rankings) - {"signed", "absolute"} or len(set(rankings)) != len(rankings):
        raise ValueError(f"rankings must be 'signed' and/or 'absolute', each once; got {rankings!r}")
    setup = edge_setup(model, pairs, scores.graph.kv, ablation, reference)
    if setup.graph.edges != scores.graph.edges:
        raise ValueError(f"these scores are of another graph ({scores.graph.describe()}) than this "
                         f"model's ({setup.graph.describe()})")
    n_items = len(scores.graph.edges) if level == "edge" else len(scores.graph.senders)
    requested = [int(p * n_items) for p in percentages]  # MIB: int(pct * n_scored_items)
    masks, edges = [], {}
    for name in rankings:
        absolute = name == "absolute"
        pick = [(top_edges(scores, k, absolute) if level == "edge" else top_nodes(scores, k, absolute))
                for k in requested]
        masks += [c.edges for c in pick]
        edges[name] = [len(c) for c in pick]
    ev = _evaluate(setup, torch.stack(masks), ablation, memory_mb)
    f = ev.faithfulness()
    k = len(requested)
    curves = {name: f[i * k:(i + 1) * k] for i, name in enumerate(rankings)}
    return FaithfulnessCurve(percentages=list(percentages), requested=requested, faithfulness=curves,
                             edges=edges,
                             cpr=area_under(percentages, curves["signed"]) if "signed" in curves else None,
                             cmd=area_from_1(percentages, curves["absolute"]) if "absolute" in curves else None,
                             full=float(ev.full.mean()), empty=float(ev.empty.mean()), level=level,
                             ablation=ablation, method=scores.method)


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
