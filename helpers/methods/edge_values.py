"""What an ablated edge carries, and the plumbing edge methods share: the model's edge runs
(``helpers.engine.edge_model``) for a set of prompt pairs, every sender's clean and ablated
output, the frozen final norm and chunks of rows that fit in memory.

Ablations (MIB's interventions; ``hannamw/EAP-IG`` ``evaluate.py``):

* ``"counterfactual"`` (MIB's default ``"patching"``): the sender's output on the pair's
  corrupted prompt;
* ``"mean"``: its mean over a reference set of prompts, position by position (default: the
  clean prompts of ``pairs``; as ``helpers.ablate``).  MIB's own ``"mean"`` averages over
  positions too; its ``"mean-positional"`` is this one;
* ``"zero"``: 0 (GPT-2's position embeddings and the output projections' biases are no sender's
  and stay, as in MIB).
"""
from __future__ import annotations

from typing import Any

import torch

from helpers.base.edge_graph import EdgeGraph
from helpers.data.prompts import PromptPairs
from helpers.engine.edge_model import EdgeModel, check_edge_support
from helpers.engine.edge_runs import NodeRun, node_values
from helpers.engine.memory import sweep_budget_mb
from helpers.engine.runs import check_pairs
from helpers.models.loaded import ModelHandle, handle

__all__ = ["ABLATIONS", "edge_graph", "EdgeSetup", "edge_setup", "ablated_values", "frozen_final_norm",
           "row_chunks"]

ABLATIONS = ("counterfactual", "mean", "zero")


def edge_graph(model: Any, kv: str = "query") -> EdgeGraph:
    """The edge graph of ``model`` (``helpers.base.edge_graph.EdgeGraph``): ``kv="query"`` MIB's
    (a key/value receiver per query head), ``kv="kv"`` one per key/value head."""
    return EdgeGraph.of(handle(model).anatomy, kv)


class EdgeSetup:
    """A model's edge runs for one set of pairs: ``em`` (``EdgeModel``), ``pairs``, ``cols``
    ``[N, 2]`` (answer, distractor ids), ``clean`` (the clean run's ``NodeRun``, ``logits``
    ``[N, 2]``) and ``ablated`` ``[N, F, S, d]`` with ``corrupted_ld`` ``[N]`` (the corrupted run's
    logit difference, NaN unless counterfactual)."""

    def __init__(self, mh: ModelHandle, pairs: PromptPairs, graph: EdgeGraph):
        self.mh, self.pairs, self.graph = mh, pairs, graph
        self.em = EdgeModel(mh, graph)
        self.cols = torch.stack([pairs.answer_ids, pairs.distractor_ids], 1).to(mh.anatomy.device)
        self.clean: NodeRun | None = None
        self.ablated: torch.Tensor | None = None
        self.corrupted_ld = torch.full((len(pairs),), float("nan"), dtype=torch.float64)
        self.counterfactual = False

    @property
    def n(self) -> int:
        return len(self.pairs)

    @property
    def first_position(self) -> int:
        """The first position where an ablated value can differ from the clean one: the prompts'
        first difference under counterfactual ablation (a causal model's earlier positions read
        the same tokens in both), else 0."""
        return self.pairs.first_difference if self.counterfactual else 0

    def clean_ld(self) -> torch.Tensor:
        return (self.clean.logits[:, 0] - self.clean.logits[:, 1]).detach()

    def x0(self, a_input: torch.Tensor) -> torch.Tensor:
        """The stream before block 0 for ``input`` sender values ``[R, S, d]``."""
        return a_input + self.em.constant(a_input.shape[1])


def edge_setup(model: Any, pairs: PromptPairs, kv: str = "query", ablation: str = "counterfactual",
               reference: Any = None, clean: bool = True, ablated: bool = True) -> EdgeSetup:
    """Check the inputs, build the edge runs and compute the ablated values (unless not
    ``ablated``: the caller records them) and, with ``clean``, the clean run."""
    mh = handle(model)
    check_pairs(mh, pairs)
    check_edge_support(mh, pairs.seq_len)
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}: choose one of {ABLATIONS} ('counterfactual' "
                         "is MIB's default: each sender's value on the pair's corrupted prompt)")
    setup = EdgeSetup(mh, pairs, EdgeGraph.of(mh.anatomy, kv))
    if ablated:
        setup.ablated = ablated_values(setup, ablation, reference)
    if clean:
        setup.clean = node_values(setup.em, pairs.clean_ids, setup.cols)
    return setup


def ablated_values(setup: EdgeSetup, ablation: str, reference: Any = None) -> torch.Tensor:
    """Every sender's ablated value for every pair, ``[N, F, S, d_model]`` (module docstring)."""
    em, pairs, n = setup.em, setup.pairs, setup.n
    if reference is not None and ablation != "mean":
        raise ValueError(f"reference= is the prompt set of a mean ablation; {ablation!r} takes none")
    if ablation == "counterfactual":
        run = node_values(em, pairs.corrupted_ids, setup.cols)
        setup.corrupted_ld = (run.logits[:, 0] - run.logits[:, 1]).double().cpu()
        setup.counterfactual = True
        return run.values
    if ablation == "zero":
        s, f = pairs.seq_len, em.f
        return torch.zeros(n, len(em.graph.senders), s, f.d_model, dtype=f.dtype, device=f.device)
    ids = pairs.clean_ids if reference is None else (
        reference.clean_ids if isinstance(reference, PromptPairs) else torch.as_tensor(reference))
    if ids.dim() != 2 or ids.shape[1] != pairs.seq_len:
        raise ValueError(f"the reference prompts are {tuple(ids.shape)} token ids; they must be "
                         f"[n_ref, {pairs.seq_len}] like these prompts (same template): build them "
                         "with ioi_pairs(tok, template=t), or give a PromptPairs")
    total = None
    for chunk in ids.split(max(1, n)):
        part = node_values(em, chunk).values.sum(0, keepdim=True)
        total = part if total is None else total + part
    return (total / ids.shape[0]).expand(n, -1, -1, -1)


def frozen_final_norm(setup: EdgeSetup, rows: torch.Tensor | None) -> Any:
    """The final norm with its scale frozen at the clean run of pair ``rows[r]`` for row r:
    ``N(x) = N(x_clean) + J(x - x_clean)`` at the last position (``helpers.path_patch``'s
    ``final_norm="frozen"``).  ``rows=None``: at the stream it is given (a clean run itself)."""
    f = setup.em.f
    norm = f.final_norm(setup.mh.hf)

    def frozen(x: torch.Tensor) -> torch.Tensor:
        x_base = (x if rows is None else setup.clean.streams[rows.to(x.device), -1, -1]).detach()
        with torch.no_grad():
            y_base = norm(x_base)
        centre, scale = f.norm_linear_part(norm, x_base)
        d = x - x_base
        if centre:
            d = d - d.mean(-1, keepdim=True)
        return y_base + d * scale

    return frozen


def row_chunks(n_rows: int, bytes_per_row: float, memory_mb: float | None, device: Any) -> list[slice]:
    """Consecutive slices of ``range(n_rows)`` whose rows fit in the memory budget."""
    budget = memory_mb if memory_mb is not None else sweep_budget_mb(device)
    k = max(1, int(budget * 2**20 // max(1.0, bytes_per_row)))
    return [slice(i, min(n_rows, i + k)) for i in range(0, n_rows, k)]


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
