"""What edge attribution returns: ``EdgeScores``, one score per edge of the model's graph
(``helpers.base.edge_graph``) and one per sender node, with how they were made.

**Sign and units** (MIB's, checked against ``hannamw/EAP-IG``'s ``attribute.py``, which scores
with the loss ``-logit difference``): an edge's score is the (estimated, or for ``"exact"`` the
measured) **drop** of the prompt-mean logit difference when that edge alone carries its sender's
ablated value, ``mean_i [m_i(clean) - m_i(edge ablated)]``.  Positive = the edge helps the clean
answer; negative = it works against it.  (MIB divides by the batch size once more; a constant
factor that changes no ranking.)  A node's score is the same for all of its outgoing edges at
once (the node's output ablated wherever it is read).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from helpers.base.edge_graph import EdgeGraph
from helpers.base.fmt import md_table, num
from helpers.base.validate import json_text

__all__ = ["EdgeScores"]


@dataclass
class EdgeScores:
    """Scores of every edge (``values`` ``[E]``, in ``graph.edges`` order) and every sender node
    (``nodes`` ``[F]``, ``graph.senders`` order) of one model on a set of prompt pairs.

    ``method``: ``"eap"``, ``"eap-ig-inputs"``, ``"eap-ig-activations"`` or ``"exact"``;
    ``steps`` the integrated-gradient steps (None otherwise); ``ablation``: what an ablated
    edge carries (``"counterfactual"``, ``"mean"``, ``"zero"``); ``clean`` / ``corrupted`` the
    prompt-mean logit differences of the two runs (``corrupted`` None unless the ablation is
    counterfactual); ``final_norm`` ``"live"`` or ``"frozen"``."""

    graph: EdgeGraph
    values: torch.Tensor
    nodes: torch.Tensor
    method: str
    ablation: str
    model_name: str
    n_prompts: int
    clean: float
    corrupted: float | None
    steps: int | None = None
    final_norm: str = "live"
    metric: str = "logit_diff"
    seconds: float = field(default=float("nan"), compare=False)

    def __post_init__(self) -> None:
        if self.values.shape != (len(self.graph.edges),):
            raise ValueError(f"values must be [{len(self.graph.edges)}] (one per edge), got "
                             f"{tuple(self.values.shape)}")
        if self.nodes.shape != (len(self.graph.senders),):
            raise ValueError(f"nodes must be [{len(self.graph.senders)}] (one per sender), got "
                             f"{tuple(self.nodes.shape)}")

    def __len__(self) -> int:
        return len(self.graph.edges)

    @classmethod
    def random(cls, graph: EdgeGraph, seed: int = 0, model_name: str = "") -> "EdgeScores":
        """A random ranking (the baseline MIB reports): edge and node scores drawn uniformly from
        [-1, 1) with a seeded generator; no model is run (``clean`` / ``corrupted`` are 0)."""
        g = torch.Generator().manual_seed(int(seed))
        values = torch.rand(len(graph.edges), generator=g, dtype=torch.float64) * 2 - 1
        nodes = torch.rand(len(graph.senders), generator=g, dtype=torch.float64) * 2 - 1
        return cls(graph=graph, values=values, nodes=nodes, method="random", ablation="none",
                   model_name=model_name, n_prompts=0, clean=0.0, corrupted=None)

    def by_name(self) -> dict[str, float]:
        """``{edge name: score}``."""
        return dict(zip(self.graph.edges, self.values.tolist()))

    def node_scores(self) -> dict[str, float]:
        """``{node name: score}`` of the senders (``logits`` has none)."""
        return dict(zip(self.graph.senders, self.nodes.tolist()))

    def __getitem__(self, name: str) -> float:
        """The score of an edge (``"a0.h1->logits"``) or a node (``"a0.h1"``)."""
        if name in self.graph.edge_position:
            return float(self.values[self.graph.edge_position[name]])
        if name in self.graph.senders:
            return float(self.nodes[self.graph.senders.index(name)])
        self.graph.edge_indices([name])  # raises the error that explains the names
        raise KeyError(name)

    def matrix(self) -> torch.Tensor:
        """``[F, B]`` sender x receiver scores, 0 where there is no edge."""
        out = torch.zeros(len(self.graph.senders), len(self.graph.receivers), dtype=self.values.dtype)
        out[self.graph.edge_sender, self.graph.edge_receiver] = self.values
        return out

    def ranking(self, absolute: bool = True, level: str = "edge") -> list[int]:
        """Indices of edges (``level="edge"``) or senders (``"node"``) from the highest score
        down (by ``|score|`` when ``absolute``); ties keep the graph's order."""
        v = (self.values if level == "edge" else self.nodes).double()
        key = v.abs() if absolute else v
        return torch.sort(-key, stable=True).indices.tolist()

    def top(self, k: int = 10, absolute: bool = True, level: str = "edge") -> list[tuple[str, float]]:
        """The ``k`` highest-scoring edges (or nodes) with their scores."""
        names = self.graph.edges if level == "edge" else self.graph.senders
        vals = self.values if level == "edge" else self.nodes
        return [(names[i], float(vals[i])) for i in self.ranking(absolute, level)[:k]]

    def table(self, k: int = 10, absolute: bool = True, level: str = "edge", digits: int = 3) -> str:
        """A markdown table of the top ``k``."""
        what = "edge" if level == "edge" else "node"
        return md_table([what, "score"], [(n, num(s, digits)) for n, s in self.top(k, absolute, level)])

    def describe(self) -> str:
        steps = f", {self.steps} steps" if self.steps else ""
        return (f"{self.method}{steps} on {self.model_name}: {len(self)} edges, {self.n_prompts} "
                f"prompt pairs, {self.ablation} ablation, final norm {self.final_norm}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the settings, ``edges`` ``{name: score}`` and ``nodes`` ``{name: score}``."""
        return {"method": self.method, "steps": self.steps, "ablation": self.ablation,
                "model": self.model_name, "n_prompts": self.n_prompts, "metric": self.metric,
                "final_norm": self.final_norm, "clean": self.clean, "corrupted": self.corrupted,
                "graph": {**self.graph.cfg, "n_kv_heads": self.graph.n_kv_heads, "kv": self.graph.kv},
                "edges": self.by_name(), "nodes": self.node_scores()}

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write ``to_dict()`` (NaN refused with a clear error)."""
        path = Path(path)
        path.write_text(json_text(self.to_dict()))
        return path


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
