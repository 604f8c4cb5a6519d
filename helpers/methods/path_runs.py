"""The batched method of ``helpers.methods.path_patching.path_patch``: many (pair, sender) rows per
nnsight trace, every family.  The sender run of each row (the sender's source value, every other
head and MLP frozen at the base run, norms live) records the receivers' inputs; the receiver run
puts one recorded input back into the base run.  A key/value receiver read by one query head
only (grouped-query attention, ``"L3H1.k"``) also puts the base run's outputs back for the other
query heads of its group in that block: only the named query head sees the patched keys/values.
"""
from __future__ import annotations

from typing import Any

import torch

from helpers.base.validate import check_finite
from helpers.models.loaded import ModelHandle

__all__ = ["module_of", "sender_run", "receiver_run", "run_ops"]


def module_of(mh: ModelHandle, f: Any, slot: tuple[int, int]) -> Any:
    """The module a receiver slot ``(layer, step)`` reads: steps 0-2 the q/k/v module(s), 3 the MLP."""
    return f.mlp(mh.model, slot[0]) if slot[1] == 3 else f.qkv_module(mh.model, slot[0], "qkv"[slot[1]])


def sender_run(mh: ModelHandle, f: Any, ids: torch.Tensor, base: dict, src: dict,
                pair_idx: torch.Tensor, senders: list, slots: list[tuple[int, int]],
                norm: dict | None, cols: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    """One trace of ``ids`` ``[rows, seq]``: row r runs pair ``pair_idx[r]`` with sender
    ``senders[r]`` from the source run and every other head and MLP frozen at the base run.
    Returns ({slot: the receivers' module output or MLP input ``[rows, seq, width]``}, the
    last-position logits ``[rows, vocab]``, or ``[rows, 2]`` with ``cols``)."""
    device, seq, dh = mh.device, ids.shape[1], f.d_head
    ops: list[tuple] = []  # (input or output, set / read / patch, module envoy, value), in order
    if any(s.kind == "embed" for s in senders):
        emb = base[("embed", None)][pair_idx].clone()
        for r, s in enumerate(senders):
            if s.kind == "embed":
                emb[r, s.pos(seq)] = src[("embed", None)][pair_idx[r], s.pos(seq)]
        ops.append(("in", "set", f.block(mh.model, 0), emb.to(device)))
    for layer in range(f.n_layers):
        z, mlp = base[("head", layer)][pair_idx].clone(), base[("mlp", layer)][pair_idx].clone()
        for r, s in enumerate(senders):
            p = s.pos(seq)
            if s.layer == layer and s.kind == "mlp":
                mlp[r, p] = src[("mlp", layer)][pair_idx[r], p]
            elif s.layer == layer and s.kind in ("head", "attn"):
                c = slice(None) if s.kind == "attn" else slice(s.head * dh, (s.head + 1) * dh)
                z[r, p, c] = src[("head", layer)][pair_idx[r], p, c]
        ops += [("out", "read", module_of(mh, f, sl), sl) for sl in slots if sl[0] == layer and sl[1] < 3]
        ops.append(("in", "set", f.o_proj(mh.model, layer), z.to(device)))
        if (layer, 3) in slots:
            ops.append(("in", "read", f.mlp(mh.model, layer), (layer, 3)))
        ops.append(("out", "set", f.mlp(mh.model, layer), mlp.to(device)))
    return run_ops(mh, f, ids, ops, norm, pair_idx, cols)


def receiver_run(mh: ModelHandle, f: Any, ids: torch.Tensor, pair_idx: torch.Tensor,
                 chunk: list[tuple[int, int, int]], recv: list, recorded: dict, base: dict,
                 norm: dict | None, cols: torch.Tensor | None) -> torch.Tensor:
    """One trace of ``ids`` ``[rows, seq]``: row r (pair i, sender k, receiver j in ``chunk``)
    with receiver j's input (every part of a joint receiver: ``recorded[(j, part)]``) replaced by
    its recorded value; for a key/value receiver read by one
    query head (``recv[j].query_head``), the other query heads of its group get their base-run
    outputs back (``base[("head", layer)]``).  Returns last-position logits."""
    device, seq, dh, ops = mh.device, ids.shape[1], f.d_head, []
    rows_parts = [(r, i, k, q, x) for r, (i, k, j) in enumerate(chunk) for q, x in enumerate(recv[j].pieces)]
    recorded_of = {r: chunk[r][2] for r in range(len(chunk))}
    for sl in sorted({x.slot(f) for *_, x in rows_parts}):
        where, vals = [], []  # (row, position, first column) and the values, per patched token
        for r, i, k, q, x in rows_parts:
            if x.slot(f) == sl:
                where += [(r, p, x.columns(f).start) for p in x.pos(seq)]
                vals.append(recorded[(recorded_of[r], q)][i, k])
        rows, pos, start = torch.tensor(where, device=device).T
        columns = start[:, None] + torch.arange(f.d_model if sl[1] == 3 else f.d_head, device=device)
        ops.append(((sl[0], sl[1]), ("in" if sl[1] == 3 else "out", "patch", module_of(mh, f, sl),
                    ((rows[:, None], pos[:, None], columns), torch.cat(vals).to(device)))))
    group = f.n_heads // f.n_kv_heads
    for layer in sorted({x.layer for *_, x in rows_parts if x.query_head is not None}):
        where, vals = [], []  # the group's other query heads, every position, base-run outputs
        for r, i, _, _, x in rows_parts:
            if x.layer != layer or x.query_head is None:
                continue
            for h in range(x.head * group, (x.head + 1) * group):
                if h != x.query_head:
                    where += [(r, p, h * dh) for p in range(seq)]
                    vals.append(base[("head", layer)][i, :, h * dh:(h + 1) * dh])
        rows, pos, start = torch.tensor(where, device=device).T
        columns = start[:, None] + torch.arange(dh, device=device)
        ops.append(((layer, 2.5), ("in", "patch", f.o_proj(mh.model, layer),
                    ((rows[:, None], pos[:, None], columns), torch.cat(vals).to(device)))))
    ops = [op for _, op in sorted(ops, key=lambda o: o[0])]  # forward order
    return run_ops(mh, f, ids, ops, norm, pair_idx, cols)[1]


def run_ops(mh: ModelHandle, f: Any, ids: torch.Tensor, ops: list, norm: dict | None,
           pair_idx: torch.Tensor, cols: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    """Run ``ops`` (in forward order) in one trace of ``ids`` ``[rows, seq]``, then the final
    norm (its scale frozen with ``norm``) and the unembedding: (values read, last logits)."""
    device = mh.device
    if norm is not None:  # prepared here: the trace body calls nothing from helpers
        ops = ops + [("in", "norm", f.final_norm(mh.model), (norm["centre"], *(
            t[pair_idx].to(device) for t in (norm["x"], norm["y"], norm["scale"]))))]
    unembed, c = f.unembed(mh.model), None if cols is None else cols.to(device)
    reads: dict = {}  # filled with saved values (a dict made inside the trace would vanish)
    with torch.no_grad(), mh.model.trace(ids.to(device), logits_to_keep=1, use_cache=False):
        for side, action, mod, value in ops:
            act = mod.input if side == "in" else mod.output
            if action == "read":
                reads[value] = act.clone().save()
                continue
            if action == "patch":
                (rows, pos, columns), new = value
                value = act.clone()
                value[rows, pos, columns] = new.to(act.dtype)
            if action == "norm":  # N(x_base) + J(x - x_base), the scale frozen at the base run
                centre, x_base, y_base, scale = value
                d = act - x_base
                mod.output = y_base + (d - d.mean(-1, keepdim=True) if centre else d) * scale
            elif side == "in":
                mod.input = value
            else:
                mod.output = value
        last = unembed.output[:, -1]
        if c is not None:
            last = last.gather(1, c)
        logits = last.clone().save()
    logits = f.logits(logits)
    check_finite(logits, "the logits of the path-patching runs")
    return reads, logits
