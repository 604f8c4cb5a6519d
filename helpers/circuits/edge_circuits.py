"""Circuits of edges: which edges (and nodes) of a model's graph (``helpers.base.edge_graph``) are
in, chosen from scores as MIB chooses them.

A ``Circuit`` holds an edge mask ``[E]`` and a node mask over MIB's nodes (the senders, then
``logits``), with the scores it came from if any.  Selection follows ``hannamw/EAP-IG``'s
``Graph.apply_topn`` and ``Graph.prune`` (MIB's evaluation applies them at every circuit size):

* ``top_edges(scores, size)``: the ``size`` highest-scoring edges (by ``|score|`` when ``absolute``, else
  signed; ties keep the graph's order), then **pruned**: repeatedly drop every node without an
  edge in and an edge out (``input`` needs none in, ``logits`` stays) and every edge whose sender
  or receiver node is dropped, until nothing changes.  What is left lies on paths from ``input``
  to ``logits``, so a circuit can hold fewer than n edges;
* ``top_nodes(scores, size)``: the ``size`` highest-scoring sender nodes; the circuit is every edge from a
  chosen node to a chosen node or to ``logits`` (MIB's node level: a node's outgoing edges, those
  into unchosen nodes removed; MIB's prune then removes nothing, because its node masks keep a
  node that has any chosen node at all);
* ``circuit_from_edges(graph, names)``: a circuit you name; its nodes are its edges' endpoints.

With ``EdgeGraph(kv="kv")`` a key/value receiver belongs to every query head of its group.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from helpers.base.edge_graph import EdgeGraph, node_of
from helpers.base.validate import as_count
from helpers.results.edge_scores import EdgeScores

__all__ = ["Circuit", "circuit_from_edges", "top_edges", "top_nodes", "prune", "receiver_nodes",
           "as_edge_masks"]


@dataclass
class Circuit:
    """A set of edges of ``graph``: ``edges`` ``[E]`` bool; ``nodes`` ``[F + 1]`` bool (the
    senders, then ``logits``); ``scores`` / ``node_scores`` the scores it was chosen from, if any;
    ``backup_edges`` / ``backup_nodes`` edges and nodes marked ``"backup": true`` in a JSON file
    (a known circuit's backups: ``helpers.circuits.truth``); ``info`` anything else the file held
    (per-item extra fields under ``"edges"`` / ``"nodes"``, the rest at the top level)."""

    graph: EdgeGraph
    edges: torch.Tensor
    nodes: torch.Tensor
    scores: torch.Tensor | None = None
    node_scores: torch.Tensor | None = None
    backup_edges: torch.Tensor | None = None
    backup_nodes: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        e, f = len(self.graph.edges), len(self.graph.nodes)
        for name, t, n in (("edges", self.edges, e), ("nodes", self.nodes, f),
                           ("backup_edges", self.backup_edges, e), ("backup_nodes", self.backup_nodes, f)):
            if t is not None and (t.dtype != torch.bool or t.shape != (n,)):
                raise ValueError(f"Circuit.{name} must be a bool tensor [{n}], got {t.dtype} {tuple(t.shape)}")

    def __len__(self) -> int:
        return int(self.edges.sum())

    def __contains__(self, name: str) -> bool:
        if name in self.graph.edge_position:
            return bool(self.edges[self.graph.edge_position[name]])
        return name in self.graph.nodes and bool(self.nodes[self.graph.nodes.index(name)])

    @property
    def edge_names(self) -> list[str]:
        return [n for n, on in zip(self.graph.edges, self.edges.tolist()) if on]

    @property
    def node_names(self) -> list[str]:
        return [n for n, on in zip(self.graph.nodes, self.nodes.tolist()) if on]

    def describe(self) -> str:
        return f"{len(self)} of {len(self.graph.edges)} edges, {int(self.nodes.sum())} nodes"


def receiver_nodes(graph: EdgeGraph) -> list[list[int]]:
    """Per receiver, the node indices (``graph.nodes``) it belongs to: a head's q/k/v its head,
    a key/value head's (``kv="kv"``) every query head of its group, an MLP its MLP, ``logits``."""
    index = {n: i for i, n in enumerate(graph.nodes)}
    out = []
    for name, kind, layer, head in zip(graph.receivers, graph.receiver_kind, graph.receiver_layer,
                                       graph.receiver_head):
        node = node_of(name)
        if ".kv" in node:
            per = graph.n_heads // graph.n_kv_heads
            out.append([graph.head_index(layer, h) for h in range(head * per, (head + 1) * per)])
        else:
            out.append([index[node]])
    return out


@functools.lru_cache(maxsize=8)
def _edge_receiver_node_masks(graph: EdgeGraph) -> torch.Tensor:
    """``[E, F + 1]`` bool: the nodes each edge's receiver belongs to."""
    rn = receiver_nodes(graph)
    out = torch.zeros(len(graph.edges), len(graph.nodes), dtype=torch.bool)
    for e, b in enumerate(graph.edge_receiver.tolist()):
        out[e, rn[b]] = True
    return out


def prune(graph: EdgeGraph, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MIB's ``Graph.prune`` (module docstring): the (edges ``[E]``, nodes ``[F + 1]``) left."""
    edges = edges.clone()
    snd = graph.edge_sender
    recv = _edge_receiver_node_masks(graph)
    n_nodes = len(graph.nodes)
    while True:
        has_out = torch.zeros(n_nodes, dtype=torch.bool)
        has_out[snd[edges]] = True
        has_in = recv[edges].any(0)
        has_in[0] = True  # input
        nodes = has_out & has_in
        nodes[-1] = True  # logits
        keep = edges & nodes[snd] & (recv & nodes).any(1)
        if torch.equal(keep, edges):
            return edges, nodes
        edges = keep


def _nodes_of(graph: EdgeGraph, edges: torch.Tensor) -> torch.Tensor:
    """The endpoints of ``edges``, and ``logits``."""
    nodes = torch.zeros(len(graph.nodes), dtype=torch.bool)
    nodes[graph.edge_sender[edges]] = True
    rn = receiver_nodes(graph)
    for b in graph.edge_receiver[edges].tolist():
        nodes[rn[b]] = True
    nodes[-1] = True
    return nodes


def circuit_from_edges(graph: EdgeGraph, names: Iterable[str], scores: EdgeScores | None = None) -> Circuit:
    """The circuit of the named edges (nodes: their endpoints); a clear error for an unknown name."""
    edges = torch.zeros(len(graph.edges), dtype=torch.bool)
    edges[graph.edge_indices(list(names))] = True
    return _circuit(graph, edges, _nodes_of(graph, edges), scores)


def _circuit(graph: EdgeGraph, edges: torch.Tensor, nodes: torch.Tensor, scores: EdgeScores | None) -> Circuit:
    return Circuit(graph, edges, nodes, None if scores is None else scores.values.clone(),
                   None if scores is None else scores.nodes.clone())


def _top(values: torch.Tensor, n: int, absolute: bool) -> torch.Tensor:
    """The mask of the n largest (ties: the lower index first)."""
    key = values.double().abs() if absolute else values.double()
    order = torch.sort(-key, stable=True).indices
    mask = torch.zeros(len(key), dtype=torch.bool)
    mask[order[:n]] = True
    return mask


def top_edges(scores: EdgeScores, size: int, absolute: bool = True, pruned: bool = True) -> Circuit:
    """The ``size`` highest-scoring edges (MIB ``apply_topn(size, absolute, level="edge")``), pruned
    unless ``pruned=False`` (module docstring)."""
    size = as_count(size, "size", minimum=0)
    if size > len(scores.graph.edges):
        raise ValueError(f"size = {size} is more than the graph's {len(scores.graph.edges)} edges")
    edges = _top(scores.values, size, absolute)
    graph = scores.graph
    edges, nodes = prune(graph, edges) if pruned else (edges, _nodes_of(graph, edges))
    return _circuit(graph, edges, nodes, scores)


def top_nodes(scores: EdgeScores, size: int, absolute: bool = True) -> Circuit:
    """The ``size`` highest-scoring sender nodes and every edge among them and into ``logits``
    (MIB ``apply_topn(size, absolute, level="node")``; module docstring)."""
    graph = scores.graph
    size = as_count(size, "size", minimum=0)
    if size > len(graph.senders):
        raise ValueError(f"size = {size} is more than the graph's {len(graph.senders)} sender nodes")
    nodes = torch.zeros(len(graph.nodes), dtype=torch.bool)
    nodes[:-1] = _top(scores.nodes, size, absolute)
    nodes[-1] = True
    recv = _edge_receiver_node_masks(graph)
    edges = nodes[graph.edge_sender] & (recv & nodes).any(1)
    return _circuit(graph, edges, nodes, scores)


def as_edge_masks(graph: EdgeGraph, circuits: Any) -> torch.Tensor:
    """``[C, E]`` bool from a ``Circuit``, a list of them, a list of edge names (one circuit), a
    list of such lists, or a bool tensor ``[E]`` / ``[C, E]``."""
    e = len(graph.edges)
    if isinstance(circuits, torch.Tensor):
        if circuits.dtype != torch.bool or circuits.shape[-1] != e or circuits.dim() not in (1, 2):
            raise ValueError(f"a circuit mask must be a bool tensor [{e}] or [n_circuits, {e}], got "
                             f"{circuits.dtype} {tuple(circuits.shape)}")
        return circuits.reshape(-1, e)
    if isinstance(circuits, Circuit) or (isinstance(circuits, (list, tuple)) and circuits
                                          and all(isinstance(c, str) for c in circuits)):
        circuits = [circuits]
    out = []
    for c in circuits:
        if isinstance(c, Circuit):
            if c.graph.edges != graph.edges:
                raise ValueError(f"the circuit's graph ({c.graph.describe()}) is not this model's "
                                 f"({graph.describe()}): score and evaluate with the same kv= mode")
            out.append(c.edges)
        elif isinstance(c, torch.Tensor):
            out.append(as_edge_masks(graph, c)[0])
        else:
            mask = torch.zeros(e, dtype=torch.bool)
            mask[graph.edge_indices(list(c))] = True
            out.append(mask)
    if not out:
        raise ValueError("no circuits given: pass a Circuit, a list of edge names, or a list of them")
    return torch.stack(out)


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
