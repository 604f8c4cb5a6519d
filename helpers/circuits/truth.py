"""Scoring a circuit-discovery method against a circuit known in advance (a planted one).

The truth is a ``Circuit`` (e.g. ``load_mib_circuit`` of a model's ``ground_truth.json``): its
``in_graph`` edges and nodes are the positives, everything else in the graph the negatives.
Items marked ``"backup": true`` (a backup name mover's route: silent on a clean run, so no
patching of clean and corrupted prompts can see it) are counted as ``backups="positive"``,
``"negative"`` or left out (``"ignore"``).

* **ROC AUC** (InterpBench, Gupta et al. 2024, scores methods by edge AUROC against the planted
  graph): the probability that a random positive outranks a random negative, ties counting one
  half (the Mann-Whitney statistic: the exact area under the ROC curve over every threshold).
  MIB's InterpBench track instead reads TPR / FPR at its ten circuit sizes (greedy circuits) and
  integrates those points: a coarser estimate of the same area.
* **precision / recall at k**: of the top k items by score (``k`` default: the number of
  positives, where precision = recall), or of a given circuit (``compare_circuits``, as MIB's
  ``compare_graphs``).

Items are ranked by ``|score|`` (``absolute=True``, so a negative name mover's edges count as
found) or by signed score.  Levels: ``"edge"`` (every edge of the graph) or ``"node"`` (the sender
nodes, scored by the method's node scores; ``logits`` is no sender).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from helpers.base.validate import as_count
from helpers.results.edge_scores import EdgeScores
from helpers.circuits.edge_circuits import Circuit

__all__ = ["BACKUPS", "TruthScore", "roc_auc", "roc_curve", "score_against_truth", "compare_circuits"]

BACKUPS = ("positive", "negative", "ignore")


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """P(score of a random positive > a random negative's) + P(tie) / 2."""
    pos, neg = _split(scores, positive)
    greater = (pos[:, None] > neg[None]).double().sum()
    ties = (pos[:, None] == neg[None]).double().sum()
    return float((greater + ties / 2) / (len(pos) * len(neg)))


def roc_curve(scores: torch.Tensor, positive: torch.Tensor) -> tuple[list[float], list[float]]:
    """(false-positive rates, true-positive rates) from (0, 0) to (1, 1), one point per distinct
    score threshold (tied items enter together)."""
    pos, neg = _split(scores, positive)
    fpr, tpr = [0.0], [0.0]
    for t in torch.unique(torch.cat([pos, neg])).flip(0):
        fpr.append(float((neg >= t).double().mean()))
        tpr.append(float((pos >= t).double().mean()))
    return fpr, tpr


def _split(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores, positive = scores.double().flatten(), positive.bool().flatten()
    if scores.shape != positive.shape:
        raise ValueError(f"{len(scores)} scores for {len(positive)} labels")
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        raise ValueError(f"an ROC needs positives and negatives, got {len(pos)} positive and "
                         f"{len(neg)} negative items")
    return pos, neg


@dataclass
class TruthScore:
    """What ``score_against_truth`` returns (module docstring)."""

    level: str
    backups: str
    absolute: bool
    n_positive: int
    n_negative: int
    k: int
    precision: float
    recall: float
    roc_auc: float
    fpr: list[float]
    tpr: list[float]
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _labels(truth: Circuit, level: str, backups: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive ``[n]``, counted ``[n]``) over edges or sender nodes."""
    if backups not in BACKUPS:
        raise ValueError(f"backups must be one of {BACKUPS} (count a backup's edges as positives, as "
                         f"negatives, or leave them out), got {backups!r}")
    on = truth.edges if level == "edge" else truth.nodes[:-1]
    backup = truth.backup_edges if level == "edge" else truth.backup_nodes
    backup = torch.zeros_like(on) if backup is None else (backup if level == "edge" else backup[:-1])
    counted = ~backup if backups == "ignore" else torch.ones_like(on)
    positive = on | backup if backups == "positive" else on & ~backup
    return positive, counted


def score_against_truth(scores: EdgeScores, truth: Circuit, k: int | None = None, *, level: str = "edge",
                        backups: str = "positive", absolute: bool = True) -> TruthScore:
    """Precision and recall of the top ``k`` and the ROC AUC of ``scores`` against ``truth``
    (module docstring).  ``truth`` must be of the same graph (``kv="query"``)."""
    if level not in ("edge", "node"):
        raise ValueError(f"level must be 'edge' or 'node', got {level!r}")
    if truth.graph.edges != scores.graph.edges:
        raise ValueError(f"the truth's graph ({truth.graph.describe()}) is not the scores' "
                         f"({scores.graph.describe()}): score with kv='query', MIB's graph")
    positive, counted = _labels(truth, level, backups)
    values = (scores.values if level == "edge" else scores.nodes).double()
    key = (values.abs() if absolute else values)[counted]
    positive = positive[counted]
    k = int(positive.sum()) if k is None else as_count(k, "k")
    if k > len(key):
        raise ValueError(f"k = {k} is more than the {len(key)} items scored")
    order = torch.sort(-key, stable=True).indices[:k]
    hits = int(positive[order].sum())
    fpr, tpr = roc_curve(key, positive)
    return TruthScore(level=level, backups=backups, absolute=absolute, n_positive=int(positive.sum()),
                      n_negative=int((~positive).sum()), k=k, precision=hits / k,
                      recall=hits / int(positive.sum()), roc_auc=roc_auc(key, positive), fpr=fpr,
                      tpr=tpr, method=scores.method)


def compare_circuits(circuit: Circuit, truth: Circuit, *, level: str = "edge",
                     backups: str = "positive") -> dict[str, float]:
    """Precision, recall, true- and false-positive rates of a found ``circuit`` against
    ``truth`` (MIB's ``compare_graphs`` on edges or nodes, with the backup rule)."""
    if truth.graph.edges != circuit.graph.edges:
        raise ValueError("the circuit and the truth are of different graphs")
    positive, counted = _labels(truth, level, backups)
    found = (circuit.edges if level == "edge" else circuit.nodes[:-1])[counted]
    positive = positive[counted]
    tp, fp = int((found & positive).sum()), int((found & ~positive).sum())
    fn, tn = int((~found & positive).sum()), int((~found & ~positive).sum())
    return {"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
            "tpr": tp / (tp + fn) if tp + fn else 0.0, "fpr": fp / (fp + tn) if fp + tn else 0.0,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
