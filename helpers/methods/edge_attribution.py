"""Edge attribution: a score for every edge of the model's graph (``helpers.base.edge_graph``, MIB's
graph) at once, and for every node.

An edge u -> v is *ablated* when receiver v reads sender u's ablated value (the corrupted
prompt's, by default: ``helpers.methods.edge_values``) instead of its clean one, every other edge
as it is.  Its score is the prompt-mean drop of the logit difference m (``EdgeScores``: MIB's sign,
positive = the edge helps the clean answer):

* ``"eap"`` (Syed et al. 2023, "Attribution Patching Outperforms Automated Circuit Discovery"):
  first order, ``-(a_u(ablated) - a_u(clean)) . dm/dx_v``, the gradient at receiver v's input
  (the stream as v reads it, before its norm) on the clean run.  One forward of the corrupted
  prompts, one forward and one backward of the clean ones: every edge at once;
* ``"eap-ig-inputs"`` (Hanna et al. 2024, "Have Faith in Faithfulness"): the gradient averaged
  over ``steps`` runs whose input embeddings lie on the straight line from the corrupted to the
  clean prompt's, ``e_k = e_corr + (k / steps)(e_clean - e_corr)``, k = 0 .. steps - 1 (as MIB's
  ``get_scores_eap_ig``); ``steps`` forward + backward passes.  Counterfactual ablation only;
* ``"eap-ig-activations"`` (MIB, after Marks et al. 2024): for each sender group (the input, a
  block's heads, a block's MLP) its output interpolated, ``alpha_k clean + (1 - alpha_k)
  ablated``, ``alpha_k = k / steps``, k = 1 .. steps, everything downstream recomputed; an edge's
  gradient is the average over its own sender group's runs: the integrated gradient of the
  sender's output, split over its receivers.  ``steps x (2 n_layers + 1)`` passes.  (MIB's code
  averages every receiver's gradient over all groups' runs together; here each sender uses the
  runs that interpolate it, so a node's edges sum to its node score);
* ``"exact"``: the edge really ablated, one run per edge and prompt (MIB's ``get_scores_exact``):
  each row starts at the receiver's block from the cached clean stream.

Node scores, the same for all of a node's outgoing edges at once: ``-(a_u(ablated) - a_u(clean))
. dm/da_u`` with the gradient at the node's output (EAP), averaged the same way (IG), or the node
really ablated (``"exact"``: ordinary activation patching of it, noising).  To first order a
node's score is the sum of its edges' (tested).

``kv="kv"`` scores grouped-query models per key/value head (``EdgeGraph``).  ``final_norm=
"frozen"`` holds the final norm's scale at the clean run (in the gradient, and in every exact
run): then a sender -> ``logits`` edge is linear and EAP equals exact patching of it, and equals
``helpers.path_patch(..., direction="noise", final_norm="frozen")`` of that path.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from helpers.base.validate import as_count, check_finite
from helpers.data.prompts import PromptPairs
from helpers.engine.edge_model import Capture
from helpers.engine.edge_runs import NodeRun, Recorder, positions_used, receiver_gradients, scores_from
from helpers.methods.edge_exact import exact_edges, exact_nodes
from helpers.methods.edge_values import EdgeSetup, edge_setup, frozen_final_norm
from helpers.results.edge_scores import EdgeScores

__all__ = ["METHODS", "MIB_STEPS", "edge_attribution"]

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "exact")
MIB_STEPS = 5  # MIB's default number of integrated-gradient steps (run_attribution.py --ig-steps)


def edge_attribution(model: Any, pairs: PromptPairs, method: str = "eap", *, steps: int | None = None,
                     kv: str = "query", ablation: str = "counterfactual", reference: Any = None,
                     final_norm: str = "live", memory_mb: float | None = None) -> EdgeScores:
    """Score every edge and node of ``model``'s graph on ``pairs`` (module docstring).

    ``method``: ``"eap"``, ``"eap-ig-inputs"``, ``"eap-ig-activations"`` or ``"exact"`` (MIB's
    names, any case); ``steps``: integrated-gradient steps (default ``MIB_STEPS`` = 5);
    ``kv``: ``"query"`` (MIB) or ``"kv"``; ``ablation``: ``"counterfactual"``, ``"mean"`` (over
    ``reference``, default the clean prompts) or ``"zero"``; ``final_norm``: ``"live"`` or
    ``"frozen"``.  Returns ``EdgeScores`` (``values`` ``[n_edges]``, ``nodes`` ``[n_senders]``).
    GPT-2 and Llama-style models, local."""
    start = time.perf_counter()
    method = str(method).lower()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {METHODS}")
    if final_norm not in ("live", "frozen"):
        raise ValueError(f"final_norm must be 'live' or 'frozen', got {final_norm!r}")
    ig = method.startswith("eap-ig")
    if steps is not None and not ig:
        raise ValueError(f"steps= is for the integrated-gradient methods; {method!r} takes none")
    steps = as_count(MIB_STEPS if steps is None else steps, "steps") if ig else None
    if method == "eap-ig-inputs" and ablation != "counterfactual":
        raise ValueError("eap-ig-inputs interpolates between the clean and the corrupted prompt's "
                         "embeddings, so its ablation is 'counterfactual'; for mean or zero "
                         "ablation use 'eap' or 'eap-ig-activations'")
    setup = edge_setup(model, pairs, kv, ablation, reference, clean=method != "eap",
                       ablated=method != "eap-ig-inputs")
    if method == "eap":
        edges, nodes = _eap(setup, final_norm)
    elif method == "eap-ig-inputs":
        edges, nodes = _ig_inputs(setup, steps, final_norm)
    elif method == "eap-ig-activations":
        edges, nodes = _ig_activations(setup, steps, final_norm)
    g = setup.graph
    if method == "exact":
        values = exact_edges(setup, torch.arange(len(g.edges)), final_norm, memory_mb)
        nodes = exact_nodes(setup, final_norm, memory_mb)
    else:
        values = edges[g.edge_sender, g.edge_receiver]
    values = check_finite(values.double().cpu(), "the edge scores")
    return EdgeScores(graph=g, values=values, nodes=check_finite(nodes.double().cpu(), "the node scores"),
                      method=method, ablation=ablation, model_name=setup.em.f.name, n_prompts=setup.n,
                      clean=float(setup.clean_ld().double().mean()),
                      corrupted=float(setup.corrupted_ld.mean()) if setup.counterfactual else None,
                      steps=steps, final_norm=final_norm,
                      seconds=time.perf_counter() - start)


# ------------------------------------------------------------------ gradient runs

def _gradient_run(setup: EdgeSetup, x: torch.Tensor, start: int = 0, override: tuple | None = None,
                  final_norm: str = "live", record: Any = None, frozen_at_clean: bool = True,
                  positions: torch.Tensor | None = None) -> tuple:
    """One forward + backward from the stream ``x`` before block ``start``: (last-position
    answer/distractor logits ``[N, 2]``, receiver gradients per block, the logits receiver's,
    node-output gradients), the gradients of ``sum_i m_i`` at ``positions`` (default all)."""
    em, cap = setup.em, Capture()
    frozen = None
    if final_norm == "frozen":
        frozen = frozen_final_norm(setup, torch.arange(setup.n) if frozen_at_clean else None)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        cap.add(("input", -1) if start == 0 else ("stream", start), x)
        if override is not None:
            override = (*override[:2], override[2].detach().requires_grad_(True))
        logits = em.forward(x, record, start, cap, override, frozen, setup.cols)
        grads = torch.autograd.grad((logits[:, 0] - logits[:, 1]).sum(), cap.tensors, allow_unused=True)
    return (logits.detach(), *receiver_gradients(em, cap, grads, start, positions))


def _add(total: list | None, part: list) -> list:
    """Sum (receiver gradients per block, logits receiver's, node gradients) term by term."""
    if total is None:
        return part
    blocks = [b if a is None else a if b is None else a + b for a, b in zip(total[0], part[0])]
    nodes = {k: total[2].get(k, 0) + part[2].get(k, 0) for k in set(total[2]) | set(part[2])}
    return [blocks, total[1] + part[1], nodes]


def _node_scores(setup: EdgeSetup, delta: torch.Tensor, nodes: dict) -> torch.Tensor:
    """``sum delta[u] . dm/da_u`` per sender from the write-point gradients ``nodes``."""
    g = setup.graph
    out = delta.new_zeros(len(g.senders))
    for (kind, layer), grad in nodes.items():
        if kind == "input":
            out[0] = (delta[:, 0] * grad).sum()
        elif kind == "attn_out":
            i = g.head_index(layer, 0)
            out[i: i + g.n_heads] = torch.einsum("rhsd,rsd->h", delta[:, i: i + g.n_heads], grad)
        elif kind == "mlp_out":
            out[g.mlp_index(layer)] = (delta[:, g.mlp_index(layer)] * grad).sum()
    return out


def _finish(setup: EdgeSetup, delta: torch.Tensor, grads: list, scale: float,
            senders: slice = slice(None)) -> tuple:
    """Edge matrix ``[F, B]`` and node scores ``[F]``: ``-delta . gradient * scale / N`` (the
    edges of ``senders`` only)."""
    blocks, logits, nodes = grads
    k = -scale / setup.n
    return k * scores_from(setup.em, delta, blocks, logits, senders), k * _node_scores(setup, delta, nodes)


def _eap(setup: EdgeSetup, final_norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One clean forward (recording every sender) and backward; the corrupted run is done."""
    ids = setup.pairs.clean_ids
    a_in, rec = _recorder(setup, ids)
    keep = torch.arange(setup.first_position, ids.shape[1])  # where ablated and clean values can differ
    logits, *grads = _gradient_run(setup, setup.x0(a_in), final_norm=final_norm, record=rec,
                                   frozen_at_clean=False, positions=keep)
    setup.clean = NodeRun(rec.values, rec.streams, logits)
    delta = setup.ablated - rec.values
    _check_prefix(delta, keep)
    return _finish(setup, delta[:, :, keep], grads, 1.0)


def _recorder(setup: EdgeSetup, ids: torch.Tensor) -> tuple[torch.Tensor, Recorder]:
    """A ``Recorder`` for a run of ``ids``: (its input sender values, the recorder)."""
    em = setup.em
    a_in = em.embed(ids)
    values = a_in.new_zeros(ids.shape[0], len(setup.graph.senders), ids.shape[1], em.f.d_model)
    streams = a_in.new_zeros(ids.shape[0], em.f.n_layers + 1, ids.shape[1], em.f.d_model)
    values[:, 0] = a_in
    return a_in, Recorder(em, values, streams)


def _check_prefix(delta: torch.Tensor, keep: torch.Tensor) -> None:
    outside = torch.ones(delta.shape[2], dtype=torch.bool)
    outside[keep] = False
    if bool((delta[:, :, outside] != 0).any()):
        raise RuntimeError("the clean and corrupted runs differ before the prompts' first difference")


def _ig_inputs(setup: EdgeSetup, steps: int, final_norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` runs on input embeddings from the corrupted prompt's towards the clean one's;
    the first (k = 0) is the corrupted run itself, which records the ablated values."""
    pairs, clean = setup.pairs, setup.clean
    keep = torch.arange(pairs.first_difference, pairs.seq_len)  # counterfactual: earlier positions agree
    a_corr, rec = _recorder(setup, pairs.corrupted_ids)
    a_clean = clean.values[:, 0]
    total = None
    for k in range(steps):  # MIB: k = 0 .. steps - 1, the corrupted end included
        x = setup.x0(a_corr + (k / steps) * (a_clean - a_corr))
        logits, *grads = _gradient_run(setup, x, final_norm=final_norm, positions=keep,
                                       record=rec if k == 0 else None)
        if k == 0:
            setup.ablated, setup.counterfactual = rec.values, True
            setup.corrupted_ld = (logits[:, 0] - logits[:, 1]).double().cpu()
        total = _add(total, grads)
    delta = setup.ablated - clean.values
    _check_prefix(delta, keep)
    return _finish(setup, delta[:, :, keep], total, 1.0 / steps)


def _ig_activations(setup: EdgeSetup, steps: int, final_norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sender group, ``steps`` runs with its output interpolated from ablated to clean."""
    g, clean, abl = setup.graph, setup.clean, setup.ablated
    delta = abl - clean.values
    keep = positions_used(delta)
    edges = delta.new_zeros(len(g.senders), len(g.receivers))
    nodes = delta.new_zeros(len(g.senders))
    bias = [setup.em.f.o_proj(setup.mh.hf, L).bias for L in range(g.n_layers)]
    groups = [("input", 0, slice(0, 1))] + [
        item for L in range(g.n_layers) for item in
        (("attn", L, slice(g.head_index(L, 0), g.head_index(L, 0) + g.n_heads)),
         ("mlp", L, slice(g.mlp_index(L), g.mlp_index(L) + 1)))]
    for kind, layer, senders in groups:
        total = None
        for k in range(1, steps + 1):  # MIB: alpha = k / steps, k = 1 .. steps, the clean end included
            a = k / steps
            mix = a * clean.values[:, senders] + (1 - a) * abl[:, senders]  # [N, n, S, d]
            if kind == "input":
                _, *grads = _gradient_run(setup, setup.x0(mix[:, 0]), final_norm=final_norm, positions=keep)
            else:
                out = mix.sum(1) + (bias[layer] if kind == "attn" and bias[layer] is not None else 0)
                _, *grads = _gradient_run(setup, clean.streams[:, layer], layer,
                                          (kind, layer, out if kind == "attn" else mix[:, 0]), final_norm,
                                          positions=keep)
            total = _add(total, grads)
        e, n = _finish(setup, delta[:, :, keep], total, 1.0 / steps, senders)
        sel = torch.zeros(len(g.senders), dtype=torch.bool)
        sel[senders] = True
        edges[sel] = e[sel]
        nodes[sel] = n[sel]
    return edges, nodes


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
