"""An automatically found circuit of edges beside a hand-found circuit of heads (chapter 11, part 2).

* ``hand_found(model, pairs, model_name)``: the heads a hand search found on this model.  For a
  model with a recorded result (``RECORDED``: SmolLM2-135M, chapter 10's class circuit with its
  default parameters, the one ``tests/test_smollm2_circuit.py`` asserts and the model card
  states), those heads; for any other model chapter 10's first map stands in: the ``most``
  heads with the largest direct path to the logits (``helpers.path_patch(..., "heads",
  "logits")``), and ``source`` says so.
* ``smallest_faithful(curve, target)``: the smallest of MIB's circuit sizes whose faithfulness
  reaches ``target`` (the absolute ranking), else the most faithful size below the whole graph.
* ``head_circuit(graph, heads)``: a circuit of heads as a circuit of edges: every edge among the
  heads, every MLP, ``input`` and ``logits`` (chapter 10 keeps the MLPs), pruned.
* ``node_overlap(found, hand)``: the heads of an edge circuit (its edges' endpoints) against a
  head list: both, only one, Jaccard index.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

import helpers.organism as organism
from helpers.base.edge_graph import EdgeGraph
from helpers.base.fmt import head_name
from helpers.base.validate import as_count
from helpers.circuits.edge_circuits import Circuit, prune
from helpers.circuits.edge_evaluation import FaithfulnessCurve
from helpers.methods.path_patching import path_patch

__all__ = ["RECORDED", "HandFound", "hand_found", "smallest_faithful", "head_circuit", "circuit_heads",
           "node_overlap", "mib_head", "patchlab_head"]

#: model name -> the file holding its hand-found circuits (``{"circuits": {name: [heads]}}``)
RECORDED = {"smollm2-135m": Path(organism.__file__).parent / "smollm2" / "ioi_circuit.json"}


def mib_head(name: str) -> str:
    """``"L23H0"`` -> ``"a23.h0"``."""
    layer, head = name[1:].split("H")
    return f"a{int(layer)}.h{int(head)}"


def patchlab_head(node: str) -> str:
    """``"a23.h0"`` -> ``"L23H0"``."""
    layer, head = node[1:].split(".h")
    return head_name(int(layer), int(head))


@dataclass
class HandFound:
    """``heads`` (``L23H0`` names), ``source``: ``"recorded"`` or ``"direct-path map"``, and
    ``where``: a sentence saying where they come from."""

    heads: list[str]
    source: str
    where: str


def hand_found(model: Any, pairs: Any, model_name: str, which: str = "classes", most: int = 8) -> HandFound:
    """The hand-found heads of ``model_name`` (module docstring)."""
    path = RECORDED.get(str(model_name))
    if path is not None:
        data = json.loads(path.read_text())
        if which not in data["circuits"]:
            raise ValueError(f"{path.name} records {sorted(data['circuits'])}, not {which!r}")
        return HandFound(list(data["circuits"][which]), "recorded", data["source"])
    most = as_count(most, "most")
    screen = path_patch(model, pairs, "heads", "logits", metrics=("logit_diff",))
    values = screen.change(False).abs()  # [layers, heads]
    order = torch.sort(-values.flatten(), stable=True).indices[:most].tolist()
    heads = [head_name(i // values.shape[1], i % values.shape[1]) for i in order]
    return HandFound(heads, "direct-path map",
                     f"no hand search is recorded for {model_name}: the {len(heads)} heads with the largest "
                     "direct path to the logits (chapter 10's first map) stand in")


def smallest_faithful(curve: FaithfulnessCurve, target: float = 0.8, ranking: str = "absolute") -> int:
    """The index into ``curve.percentages`` of the smallest size (below the whole graph) whose
    faithfulness reaches ``target``; else of the most faithful size below the whole graph."""
    f = curve.faithfulness[ranking][:-1]
    for i, v in enumerate(f):
        if v >= target and curve.edges[ranking][i] > 0:
            return i
    return max(range(len(f)), key=lambda i: f[i])


def head_circuit(graph: EdgeGraph, heads: Sequence[str]) -> Circuit:
    """Every edge among ``heads`` (``L23H0`` names), every MLP, ``input`` and ``logits``, pruned."""
    members = {"input", "logits", *(mib_head(h) for h in heads),
               *(f"m{layer}" for layer in range(graph.n_layers))}
    unknown = [h for h in heads if mib_head(h) not in graph.senders]
    if unknown:
        raise ValueError(f"heads {unknown} are not in this model ({graph.describe()})")
    senders, receivers = graph.edge_nodes()
    mask = torch.tensor([s in members and r in members for s, r in zip(senders, receivers)])
    edges, nodes = prune(graph, mask)
    return Circuit(graph, edges, nodes)


def circuit_heads(circuit: Circuit) -> list[str]:
    """The heads among a circuit's nodes (its edges' endpoints), as ``L23H0`` names."""
    return [patchlab_head(n) for n in circuit.node_names if n.startswith("a")]


def node_overlap(found: Sequence[str], hand: Sequence[str]) -> dict[str, Any]:
    """``both`` / ``only_found`` / ``only_hand`` head lists, their sizes and the Jaccard index
    ``|both| / |either|``."""
    a, b = list(dict.fromkeys(found)), list(dict.fromkeys(hand))
    both = [h for h in b if h in a]
    either = len(set(a) | set(b))
    return {"both": both, "only_found": [h for h in a if h not in b], "only_hand": [h for h in b if h not in a],
            "n_found": len(a), "n_hand": len(b), "jaccard": len(both) / either if either else 0.0}


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
