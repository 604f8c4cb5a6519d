"""MIB's circuit JSON (``hannamw/EAP-IG``'s ``Graph.to_json`` / ``Graph.from_json``), so a circuit
or a set of scores found here can be submitted to MIB's circuit track, and MIB's circuits (or a
planted ground truth) read back.

The file: ``{"cfg": {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"}, "nodes": {name:
{"in_graph": bool[, "score": float]}}, "edges": {name: {"score": float, "in_graph": bool}}}``
with MIB's names (``input``, ``a{L}.h{H}``, ``m{L}``, ``logits``; ``input->a0.h0<q>``), every node
and every edge of the graph in ``Graph.from_model``'s order (checked against MIB's shipped
``circuits/ioi-eap-ig.json``: GPT-2 small, 158 nodes, 32491 edges).  Grouped-query models are
written with keys and values per query head (MIB ungroups them): score with ``kv="query"``.

MIB's evaluation ranks edges by ``score`` at every circuit size (it ignores ``in_graph``): scores
come from ``EdgeScores``; a circuit without scores is written with score 1.0 on its edges and 0.0
elsewhere, so MIB's top-n takes its edges first.  Saving ``EdgeScores`` writes every edge with
``in_graph`` false and ``logits`` in (MIB's ``importances.json``).  Extra keys per edge or node (a
planted truth's ``class``, ``backup``, ...) are read into ``Circuit.info``; ``"backup": true`` into
``Circuit.backup_edges`` / ``backup_nodes``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from helpers.base.edge_graph import EdgeGraph
from helpers.base.validate import json_text
from helpers.results.edge_scores import EdgeScores
from helpers.circuits.edge_circuits import Circuit

__all__ = ["mib_dict", "save_mib_circuit", "load_mib_circuit"]

_KNOWN = {"score", "in_graph", "backup"}


def mib_dict(obj: Circuit | EdgeScores) -> dict[str, Any]:
    """``obj`` as MIB's circuit JSON (a dict; module docstring)."""
    if isinstance(obj, EdgeScores):
        g, scores, node_scores = obj.graph, obj.values, obj.nodes
        edges = torch.zeros(len(g.edges), dtype=torch.bool)
        nodes = torch.zeros(len(g.nodes), dtype=torch.bool)
        nodes[-1] = True
    elif isinstance(obj, Circuit):
        g, edges, nodes = obj.graph, obj.edges, obj.nodes
        scores = obj.scores if obj.scores is not None else edges.double()
        node_scores = obj.node_scores
    else:
        raise TypeError(f"expected a Circuit or EdgeScores, got {type(obj).__name__}")
    if g.grouped:
        raise ValueError("MIB's graph has key/value receivers per query head: score with kv='query' "
                         "(this graph has them per key/value head, kv='kv')")
    out_nodes = {}
    for i, name in enumerate(g.nodes):
        out_nodes[name] = {"in_graph": bool(nodes[i])}
        if node_scores is not None and name != "logits":
            out_nodes[name]["score"] = float(node_scores[i])
    out_edges = {name: {"score": float(s), "in_graph": bool(on)}
                 for name, s, on in zip(g.edges, scores.tolist(), edges.tolist())}
    return {"cfg": dict(g.cfg), "nodes": out_nodes, "edges": out_edges}


def save_mib_circuit(obj: Circuit | EdgeScores, path: str | os.PathLike) -> Path:
    """Write ``obj`` as MIB's circuit JSON at ``path`` (NaN refused with a clear error)."""
    path = Path(path)
    path.write_text(json_text(mib_dict(obj)))
    return path


def load_mib_circuit(source: str | os.PathLike | dict) -> Circuit:
    """A ``Circuit`` from MIB's circuit JSON (a path or the loaded dict); every edge and node of
    the graph its ``cfg`` describes must be there, with finite scores."""
    if isinstance(source, dict):
        d, where = source, "the circuit"
    else:
        where = str(source)
        with open(source) as fh:
            d = json.load(fh)
    missing = [k for k in ("cfg", "nodes", "edges") if k not in d]
    if missing:
        raise ValueError(f"{where} is not MIB's circuit JSON: it lacks {missing} (expected 'cfg', "
                         "'nodes' and 'edges')")
    cfg = d["cfg"]
    if cfg.get("parallel_attn_mlp"):
        raise ValueError(f"{where}: parallel attention/MLP graphs (GPT-NeoX, Pythia) are not supported")
    try:
        g = EdgeGraph(int(cfg["n_layers"]), int(cfg["n_heads"]), int(cfg["n_heads"]), "query",
                      int(cfg.get("d_model", 0)))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: its cfg {cfg!r} needs integer n_layers and n_heads ({err})") from None
    for what, want, got in (("edges", g.edges, d["edges"]), ("nodes", g.nodes, d["nodes"])):
        known = set(want)
        unknown = [n for n in got if n not in known]
        absent = [n for n in want if n not in got]
        if unknown or absent:
            raise ValueError(f"{where}: its {what} do not match a {g.n_layers}-block, {g.n_heads}-head "
                             f"graph: {len(absent)} missing (e.g. {absent[:2]}), {len(unknown)} unknown "
                             f"(e.g. {unknown[:2]})")
    edges = torch.tensor([bool(d["edges"][n]["in_graph"]) for n in g.edges])
    scores = torch.tensor([float(d["edges"][n].get("score", math.nan)) for n in g.edges], dtype=torch.float64)
    if not torch.isfinite(scores).all():
        bad = g.edges[int((~torch.isfinite(scores)).nonzero()[0])]
        raise ValueError(f"{where}: edge {bad!r} has no finite score")
    nodes = torch.tensor([bool(d["nodes"][n].get("in_graph", False)) for n in g.nodes])
    nodes[-1] = True
    node_scores = None
    if all("score" in d["nodes"][n] for n in g.senders):
        node_scores = torch.tensor([float(d["nodes"][n]["score"]) for n in g.senders], dtype=torch.float64)
    flags = {what: torch.tensor([bool(d[what][n].get("backup", False)) for n in names])
             for what, names in (("edges", g.edges), ("nodes", g.nodes))}
    info: dict[str, Any] = {k: v for k, v in d.items() if k not in ("cfg", "nodes", "edges")}
    for what in ("edges", "nodes"):
        extra = {n: {k: v for k, v in item.items() if k not in _KNOWN} for n, item in d[what].items()}
        extra = {n: v for n, v in extra.items() if v}
        if extra:
            info[what] = extra
    return Circuit(g, edges, nodes, scores, node_scores,
                   flags["edges"] if flags["edges"].any() else None,
                   flags["nodes"] if flags["nodes"].any() else None, info)


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
