"""Exact edge patching: each edge (or node) really ablated, one run per edge and prompt (MIB's
``get_scores_exact``, ``hannamw/EAP-IG`` ``attribute.py`` / ``attribute_node.py``).

An edge u -> v ablated alone changes only receiver v's input, by ``ablated_u - clean_u`` (u's own
inputs are untouched): the row starts at v's block from the cached clean stream
(``helpers.engine.edge_runs.SingleEdges``); rows of (edge, prompt) are batched within a memory
budget.  Its score is ``mean_i [m_i(clean) - m_i(edge ablated)]`` (``EdgeScores``' sign).  A
node ablated means all of its outgoing edges ablated (every receiver reads its ablated value:
ordinary activation patching of the node's output, noising), by edge-level ablation of the
circuit of every other edge (``DenseAblation``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from helpers.base.validate import check_finite
from helpers.data.prompts import PromptPairs
from helpers.engine.edge_runs import DenseAblation, SingleEdges
from helpers.methods.edge_values import EdgeSetup, edge_setup, frozen_final_norm, row_chunks

__all__ = ["exact_edge_patching", "exact_edges", "exact_nodes"]


def exact_edge_patching(model: Any, pairs: PromptPairs, edges: Sequence[str] | str, *, kv: str = "query",
                        ablation: str = "counterfactual", reference: Any = None, final_norm: str = "live",
                        memory_mb: float | None = None) -> dict[str, float]:
    """``{edge: score}`` of the named edges, each really ablated alone (module docstring): e.g. to
    check the top edges of an attribution method exactly.  Options as ``edge_attribution``."""
    if final_norm not in ("live", "frozen"):
        raise ValueError(f"final_norm must be 'live' or 'frozen', got {final_norm!r}")
    setup = edge_setup(model, pairs, kv, ablation, reference)
    names = [edges] if isinstance(edges, str) else list(edges)
    idx = setup.graph.edge_indices(names)
    values = check_finite(exact_edges(setup, idx, final_norm, memory_mb), "the edge scores")
    return dict(zip(names, values.tolist()))


def exact_edges(setup: EdgeSetup, idx: torch.Tensor, final_norm: str, memory_mb: float | None) -> torch.Tensor:
    """Scores ``[len(idx)]`` of the edges ``idx`` (indices of ``graph.edges``), float64."""
    g, em, clean, n = setup.graph, setup.em, setup.clean, setup.n
    f, s = em.f, setup.pairs.seq_len
    ld0 = setup.clean_ld()
    size = torch.finfo(f.dtype).bits // 8
    layer_of = torch.tensor(g.receiver_layer)[g.edge_receiver[idx]]
    out = torch.zeros(len(idx), dtype=torch.float64)
    per_row = size * s * f.d_model * (3 * g.n_heads + 16) + size * s * f.n_heads * s * 4
    for layer in range(f.n_layers + 1):  # receivers of block `layer` (n_layers: the logits)
        where = (layer_of == layer).nonzero().flatten()
        rows_k, rows_p = where.repeat_interleave(n), torch.arange(n).repeat(len(where))
        for sl in row_chunks(len(rows_k), per_row, memory_mb, f.device):
            k, p = rows_k[sl], rows_p[sl]
            e = idx[k]
            u, b = g.edge_sender[e], g.edge_receiver[e]
            deltas = setup.ablated[p, u] - clean.values[p, u]
            frozen = frozen_final_norm(setup, p) if final_norm == "frozen" else None
            with torch.no_grad():
                logits = em.forward(clean.streams[p, layer], SingleEdges(em, b, deltas), layer,
                                    final_norm=frozen, columns=setup.cols[p])
            drop = (ld0[p] - (logits[:, 0] - logits[:, 1])).double().cpu()
            out.index_add_(0, k, drop / n)
    return out


def exact_nodes(setup: EdgeSetup, final_norm: str, memory_mb: float | None) -> torch.Tensor:
    """Scores ``[F]`` of every sender node, all its outgoing edges ablated, float64."""
    g, em, clean, n = setup.graph, setup.em, setup.clean, setup.n
    f, s = em.f, setup.pairs.seq_len
    ld0 = setup.clean_ld()
    size = torch.finfo(f.dtype).bits // 8
    out = torch.zeros(len(g.senders), dtype=torch.float64)
    rows_u, rows_p = torch.arange(len(g.senders)).repeat_interleave(n), torch.arange(n).repeat(len(g.senders))
    per_row = size * s * f.d_model * (2 * len(g.senders) + 3 * g.n_heads + 16)
    real = g.real.to(f.dtype)
    for sl in row_chunks(len(rows_u), per_row, memory_mb, f.device):
        u, p = rows_u[sl], rows_p[sl]
        off = torch.zeros(len(u), *real.shape, dtype=f.dtype)
        off[torch.arange(len(u)), u] = real[u]
        frozen = frozen_final_norm(setup, p) if final_norm == "frozen" else None
        policy = DenseAblation(em, setup.ablated[p], off.to(f.device), clean.values[p], setup.first_position)
        with torch.no_grad():
            logits = em.forward(setup.x0(clean.values[p, 0]), policy, final_norm=frozen, columns=setup.cols[p])
        out.index_add_(0, u, (ld0[p] - (logits[:, 0] - logits[:, 1])).double().cpu() / n)
    return out


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
