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

__all__ = ["module_of", "sender_run", "receiver_run", "frozen_receiver_run", "final_logits", "run_ops"]


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
        for r, whole in enumerate(senders):
            for s in whole.pieces:  # a joint sender: every part from the source run
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


def _patch_ops(mh: ModelHandle, f: Any, seq: int, rows_parts: list, recorded: dict, base: dict,
               reset_group: bool = True) -> list:
    """The ops that put recorded inputs back, each with its forward-order key: ``rows_parts``
    lists (row, pair, sender, (receiver, part) key, part node); a key/value part read by one
    query head also gets the other query heads of its group their base-run outputs back
    (``reset_group``)."""
    device, dh, ops = mh.device, f.d_head, []
    for sl in sorted({x.slot(f) for *_, x in rows_parts}):
        where, vals = [], []  # (row, position, first column) and the values, per patched token
        for r, i, k, key, x in rows_parts:
            if x.slot(f) == sl:
                where += [(r, p, x.columns(f).start) for p in x.pos(seq)]
                vals.append(recorded[key][i, k])
        rows, pos, start = torch.tensor(where, device=device).T
        columns = start[:, None] + torch.arange(f.d_model if sl[1] == 3 else f.d_head, device=device)
        ops.append(((sl[0], sl[1]), ("in" if sl[1] == 3 else "out", "patch", module_of(mh, f, sl),
                    ((rows[:, None], pos[:, None], columns), torch.cat(vals).to(device)))))
    group = f.n_heads // f.n_kv_heads
    for layer in sorted({x.layer for *_, x in rows_parts if x.query_head is not None and reset_group}):
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
    return ops


def receiver_run(mh: ModelHandle, f: Any, ids: torch.Tensor, pair_idx: torch.Tensor,
                 chunk: list[tuple[int, int, int]], recv: list, recorded: dict, base: dict,
                 norm: dict | None, cols: torch.Tensor | None) -> torch.Tensor:
    """One trace of ``ids`` ``[rows, seq]``: row r (pair i, sender k, receiver j in ``chunk``)
    with receiver j's input (every part of a joint receiver: ``recorded[(j, part)]``) replaced by
    its recorded value; for a key/value receiver read by one query head (``recv[j].query_head``),
    the other query heads of its group get their base-run outputs back (``base[("head",
    layer)]``).  Returns last-position logits."""
    rows_parts = [(r, i, k, (j, q), x) for r, (i, k, j) in enumerate(chunk)
                  for q, x in enumerate(recv[j].pieces)]
    ops = _patch_ops(mh, f, ids.shape[1], rows_parts, recorded, base)
    return run_ops(mh, f, ids, [op for _, op in sorted(ops, key=lambda o: o[0])], norm, pair_idx,
                   cols)[1]


def _receiver_heads(f: Any, x: Any) -> list[int]:
    """The query heads whose output a q/k/v receiver changes: its own (a query, or a key/value
    read by one query head), or every query head of a shared key/value head's group."""
    if x.kind == "q" or x.query_head is not None:
        return [x.head if x.kind == "q" else x.query_head]
    group = f.n_heads // f.n_kv_heads
    return list(range(x.head * group, (x.head + 1) * group))


def frozen_receiver_run(mh: ModelHandle, f: Any, ids: torch.Tensor, pair_idx: torch.Tensor,
                        chunk: list[tuple[int, int, int]], recv: list, recorded: dict, base: dict,
                        final_x: torch.Tensor, norm: dict | None, cols: torch.Tensor | None
                        ) -> torch.Tensor:
    """Later layers frozen: each part of receiver j is put back alone (one run row per part), the
    receiving heads' output change at the last position ``dz`` (their columns only) is read, and
    ``o_proj(dz)`` of every part goes straight into the base run's final stream ``final_x``
    ``[n, d_model]`` (every other head and MLP keeps its base value); then the final norm (live,
    or frozen with ``norm``) and the unembedding.  Returns last-position logits."""
    device, dh = mh.device, f.d_head
    owner, rows_parts = [], []  # the chunk row of every run row; the run rows
    for r, (i, k, j) in enumerate(chunk):
        for q, x in enumerate(recv[j].pieces):
            if x.kind not in ("q", "k", "v"):
                raise ValueError("later='frozen' reads the change of the receiving heads' outputs: "
                                 "give q/k/v receivers ('L3H0.q', 'L3KV0.v'), not MLP inputs")
            rows_parts.append((len(owner), i, k, (j, q), x))
            owner.append(r)
    keyed = _patch_ops(mh, f, ids.shape[1], rows_parts, recorded, base, reset_group=False)
    keyed += [((layer, 2.5), ("in", "read", f.o_proj(mh.model, layer), ("z", layer)))
              for layer in sorted({x.layer for *_, x in rows_parts})]
    rows = torch.tensor(owner)
    reads, _ = run_ops(mh, f, ids[rows], [op for _, op in sorted(keyed, key=lambda o: o[0])], None,
                       pair_idx[rows], None)
    change = torch.zeros(len(chunk), f.d_model, dtype=final_x.dtype, device=device)
    for n, i, _, _, x in rows_parts:
        cz = torch.cat([torch.arange(h * dh, (h + 1) * dh) for h in _receiver_heads(f, x)]).to(device)
        dz = torch.zeros(1, f.n_heads * dh, dtype=final_x.dtype, device=device)
        dz[0, cz] = (reads[("z", x.layer)][n, -1, cz] - base[("head", x.layer)][i, -1].to(device)[cz]).to(dz.dtype)
        proj = f.o_proj(mh.hf, x.layer)
        with torch.no_grad():
            change[owner[n]] += (proj(dz) - proj(torch.zeros_like(dz)))[0]
    return final_logits(mh, f, final_x[pair_idx].to(device) + change, norm, pair_idx, cols)


def final_logits(mh: ModelHandle, f: Any, x: torch.Tensor, norm: dict | None, pair_idx: torch.Tensor,
                 cols: torch.Tensor | None) -> torch.Tensor:
    """The logits of final streams ``x`` ``[rows, d_model]`` (the last position): the final norm,
    live or with its scale frozen at the base run (``norm``), then the unembedding; only
    ``cols`` ``[rows, k]`` if given."""
    with torch.no_grad():
        if norm is None:
            y = f.final_norm(mh.hf)(x)
        else:
            x_base, y_base, scale = (norm[k][pair_idx][:, -1].to(x.device) for k in ("x", "y", "scale"))
            d = x - x_base
            y = y_base + (d - d.mean(-1, keepdim=True) if norm["centre"] else d) * scale
        logits = f.logits(f.unembed(mh.hf)(y))
    return logits if cols is None else logits.gather(1, cols.to(logits.device))


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


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
