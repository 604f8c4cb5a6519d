"""Attention knockout as a traced run: which attention edges a set removes, and one forward
pass with them removed.

``edge_masks`` turns edges ``(head, query, key)`` (positions as roles of ``PromptPairs`` or
token indices) into ``{layer: bool [n_heads, seq, seq]}`` masks, refusing an edge to a later
key (causal attention gives it weight 0 already) and a query left with no key.
``knockout_trace`` runs ``ids`` ``[rows, seq]`` with the masks applied to the probabilities
inside the eager attention function (renormalised over the keys kept): the batched reference
for ``helpers.engine.fastablate``'s knockout and what ``helpers.methods.ablations.knockout``
runs on models the fast path does not cover.  May import ``helpers.models``, ``helpers.data``,
``helpers.base`` and ``helpers.engine.runs``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from helpers.base.validate import check_finite, norm_index
from helpers.data.prompts import PromptPairs
from helpers.engine.runs import component_patch, normalise_patch
from helpers.models.loaded import ModelHandle

__all__ = ["edge_masks", "knockout_trace"]


def _position(spec: Any, pairs: PromptPairs, what: str) -> int:

    if isinstance(spec, str):
        if spec not in pairs.positions:
            raise ValueError(f"{what}: unknown role {spec!r}; these prompts have the roles "
                             f"{sorted(pairs.positions)}, or give a token index")
        return pairs.positions[spec]
    return norm_index(spec, pairs.seq_len, "position", "token positions in these prompts")


def edge_masks(mh: ModelHandle, pairs: PromptPairs, edges: Sequence[tuple[Any, Any, Any]]
                ) -> dict[int, torch.Tensor]:
    """``{layer: bool [n_heads, seq, seq]}``: True where an edge is knocked out."""

    f = mh.anatomy
    seq = pairs.seq_len
    if isinstance(edges, tuple) and len(edges) == 3 and isinstance(edges[0], str):
        edges = [edges]
    masks: dict[int, torch.Tensor] = {}
    for edge in edges:
        if not (isinstance(edge, (tuple, list)) and len(edge) == 3):
            raise ValueError(f"an edge is (head, query, key), e.g. ('L1H2', 'END', 'S2'); got {edge!r}")
        p = normalise_patch(component_patch(edge[0]), f, seq)
        if p.site != "head":
            raise ValueError(f"edge {edge!r}: knockout removes attention edges of a head "
                             "('L1H2'), not of an MLP")
        q = _position(edge[1], pairs, f"edge {edge!r} query")
        k = _position(edge[2], pairs, f"edge {edge!r} key")
        if k > q:
            raise ValueError(f"edge {edge!r}: query position {q} cannot attend to the later key "
                             f"position {k} (causal attention), so knocking it out would change "
                             "nothing: give a key at or before the query, e.g. (head, 'END', 'S2')")
        masks.setdefault(p.layer, torch.zeros(f.n_heads, seq, seq, dtype=torch.bool))[p.head, q, k] = True
    for layer, m in masks.items():
        full = m.tril().sum(-1) == torch.arange(1, seq + 1)  # every key a query can see
        if full.any():
            h, q = full.nonzero()[0].tolist()
            raise ValueError(f"L{layer}H{h}: every key position 0..{q} of query {q} is knocked "
                             "out, leaving nothing to attend to; keep at least one key")
    return dict(sorted(masks.items()))


def knockout_trace(mh: ModelHandle, ids: torch.Tensor, masks: dict[int, torch.Tensor],
                    pattern_layer: int | None = None, columns: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One traced forward of ``ids`` ``[rows, seq]`` with the masks (``[rows or 1, n_heads, seq,
    seq]``) applied; (last-position logits ``[rows, vocab]``, or of ``columns`` ``[rows, k]``,
    and the edited pattern of ``pattern_layer`` ``[rows, n_heads, seq, seq]`` or None)."""
    f = mh.anatomy
    impl = getattr(mh.hf.config, "_attn_implementation", None)
    if impl != "eager":
        raise ValueError(f"attention knockout edits the attention weights of the eager "
                         f"implementation, but this model uses {impl!r}: load it with "
                         "attn_implementation='eager' (helpers.load_model does)")
    device = mh.device
    # envoys resolved before the trace (no helpers calls inside it)
    steps = [(f.attn(mh.model, layer).source.attention_interface_1, m) for layer, m in masks.items()]
    want = None if pattern_layer is None else f.attn(mh.model, pattern_layer)
    unembed = f.unembed(mh.model)
    pattern, cols = None, None if columns is None else columns.to(device)
    with torch.no_grad(), mh.model.trace(ids.to(device), logits_to_keep=1, use_cache=False,
                                      **mh.trace_kwargs):
        for iface, mask in steps:
            w = iface.source.nn_functional_dropout_0.output
            m = mask.to(w.device)
            kept = w.masked_fill(m, 0)
            # rows that lose no weight stay bit-identical (their sum need not be exactly 1)
            lost = w.masked_fill(~m, 0).sum(-1, keepdim=True) > 0
            total = kept.sum(-1, keepdim=True)
            iface.source.nn_functional_dropout_0.output = kept / torch.where(lost, total,
                                                                             torch.ones_like(total))
        if want is not None:
            pattern = want.output[1].clone().save()
        last = unembed.output[:, -1]
        if cols is not None:
            last = last.gather(1, cols.to(last.device))
        logits = last.clone().save()
    logits = f.logits(logits)
    check_finite(logits, "the logits of the knocked-out run (a sliding window hiding every "
                 "key left to a query?)")
    return logits, pattern


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
