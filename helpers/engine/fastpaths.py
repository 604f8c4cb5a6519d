"""Exact fast path patching (``helpers.methods.path_patching.path_patch(..., method="fast")``; GPT-2 and
Llama-style models, ``helpers.engine.fastpatch.supports_fast_path``).

**The sender run needs no forward pass.**  With every head output and every MLP output frozen at
the base run, nothing in the sender run mixes positions or reacts to the sender: the residual
stream at every point is the base run's plus the sender's change ``delta`` ``[seq, d_model]``,

* a head (or ``attnL``, all of block L's heads): ``o_proj(dz) - o_proj(0)``, ``dz`` the (source -
  base) input of the output projection in the head's ``d_head`` columns (all columns for
  ``attnL``) at the sender's positions, zero elsewhere (biases cancel; GPT-2 ``Conv1D`` and
  Llama ``Linear`` alike); it joins the stream after block L's attention, so block L's MLP reads it;
* ``mlpL``: (source - base) MLP output at its positions, from block L + 1 on;
* ``embed``: (source - base) embeddings (block 0's input).

``delta`` is zero before the prompts' first difference and outside the sender's positions.  A
receiver's input in the sender run is therefore its module applied to the cached base stream plus
``delta``, norms live: block L's q/k/v projection columns (before rotary positions) of
``norm_L(stream before block L + delta)``, the MLP's input ``mlp_norm_L(stream after block L's
attention + delta)``, and the logits: the final norm (live, or its scale frozen at the base run)
and unembedding of ``final stream + delta`` at the last position.

**The receiver run** is ``helpers.engine.fastpatch.run_rows``: each row starts at the receiver's block
from the cached base stream and at the first position its recorded input differs from the base
run's (its positions that are also the sender's, from the first difference on), with the
recorded value patched into the query / key/value head's columns or the MLP's input (a joint
receiver: every part's, each where its block comes); a row with no such position is the base run.  Only the two logits are computed with ``columns``.

Exact: the same arithmetic as the batched method up to rounding (``tests/test_path_patching.py``
checks both against the plain-hooks reference within 1e-10 in float64, every receiver kind).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch

from helpers.engine.fastpatch import BaseCache, Blocks, run_rows
from helpers.models.loaded import ModelHandle, handle

__all__ = ["path_logits"]

Cache = dict  # {(site, layer): [n, seq, width]} as ``helpers.engine.runs.cache_activations`` returns


def path_logits(model: Any, cache: BaseCache, source: Cache, senders: Sequence[Any],
                receivers: Sequence[Any], first_difference: int, chunks: Iterable[list[tuple[int, int]]],
                norm: dict | None = None, columns: torch.Tensor | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]]:
    """Path patching from ``senders`` to ``receivers`` (``helpers.methods.path_patching`` nodes) on
    the base run ``cache`` (``cache_runs``; ``cache.acts`` and ``source`` hold the base and source
    runs' ``embed`` / ``head`` / ``mlp`` activations, ``[n, seq, width]`` each).  ``chunks``: lists of
    (pair, sender index) rows computed together.  ``norm``: the frozen final norm (``"x"``,
    ``"y"``, ``"scale"`` ``[n, seq, d_model]``, ``"centre"``) or None (live).  ``columns``
    ``[n, k]``: compute only these logits.

    Yields, per chunk and receiver j, ``(pairs [rows], senders [rows], j, logits [rows, vocab
    or k])`` of the last position (the indices on the CPU).
    """
    mh = handle(model)
    f = mh.anatomy
    blocks = Blocks(mh.hf, f)
    base = cache.acts
    dev, seq, fd = cache.resid.device, cache.resid.shape[2], first_difference
    frozen = None if norm is None else _frozen_norm(norm, dev)
    for chunk in chunks:
        pair_idx = torch.tensor([i for i, _ in chunk], device=dev)
        snd_idx = torch.tensor([k for _, k in chunk], device=dev)
        rows = [senders[k] for _, k in chunk]
        with torch.no_grad():
            delta, acts = _deltas(blocks, base, source, rows, pair_idx, fd, seq)  # [rows, W, d]
            cols = None if columns is None else columns.to(dev)[pair_idx]
            for j, r in enumerate(receivers):
                if r.kind == "logits":
                    final = cache.resid[pair_idx, f.n_layers, seq - 1] + delta[:, -1]
                    logits = blocks.logits(final, cols, None if frozen is None else (
                        lambda x: frozen(x, pair_idx)))
                else:
                    logits = _receiver(mh, blocks, cache, base, r, delta, acts, pair_idx, fd,
                                       cols, frozen)
                yield pair_idx.cpu(), snd_idx.cpu(), j, logits


def _frozen_norm(norm: dict, dev: torch.device) -> Any:
    """The final norm at the last position with its scale frozen at the base run:
    ``N(x_base) + J(x - x_base)`` (``helpers.methods.path_patching`` module docstring)."""
    x_base, y_base, scale = (norm[k][:, -1].to(dev) for k in ("x", "y", "scale"))

    def apply(x: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        d = x - x_base[pair]
        return y_base[pair] + (d - d.mean(-1, keepdim=True) if norm["centre"] else d) * scale[pair]

    return apply


def _deltas(blocks: Blocks, base: Cache, source: Cache, senders: list, pair_idx: torch.Tensor,
            fd: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's change of the residual stream at positions ``fd .. seq-1``, ``[rows, W,
    d_model]`` (a joint sender: the sum of its parts' changes, exact since every other component
    is frozen), and where it acts (any part's positions there), ``[rows, W]`` bool."""
    f, dev = blocks.f, pair_idx.device
    items = [(r, part) for r, s in enumerate(senders) for part in getattr(s, "pieces", (s,))]
    acts = torch.zeros(len(senders), seq, dtype=torch.bool, device=dev)
    part_acts = torch.zeros(len(items), seq, dtype=torch.bool, device=dev)
    for n, (r, s) in enumerate(items):
        acts[r, s.pos(seq)] = True
        part_acts[n, s.pos(seq)] = True
    acts, part_acts = acts[:, fd:], part_acts[:, fd:]
    delta, groups = None, {}
    for n, (_, s) in enumerate(items):  # parts by the cached activation their change comes from
        key = ("embed", None) if s.kind == "embed" else ("mlp" if s.kind == "mlp" else "head", s.layer)
        groups.setdefault(key, []).append(n)
    row_of = torch.tensor([r for r, _ in items], device=dev)
    for key, ns in groups.items():
        ns = torch.tensor(ns, device=dev)
        pairs = pair_idx[row_of[ns]]
        change = (source[key].to(dev)[pairs, fd:] - base[key].to(dev)[pairs, fd:]) * part_acts[ns, :, None]
        if key[0] == "head":  # keep the sender head's columns, then through the output projection
            keep = torch.ones(len(ns), change.shape[-1], dtype=change.dtype, device=dev)
            for m, n in enumerate(ns.tolist()):
                if items[n][1].kind == "head":
                    head = items[n][1].head
                    keep[m] = 0
                    keep[m, head * f.d_head:(head + 1) * f.d_head] = 1
            change = blocks.o_proj(key[1], change * keep[:, None]) - blocks.o_proj(
                key[1], change.new_zeros(1, change.shape[-1]))
        if delta is None:
            delta = change.new_zeros(len(senders), *change.shape[1:-1], f.d_model)
        delta.index_add_(0, row_of[ns], change)
    return delta, acts


def _receiver(mh: ModelHandle, blocks: Blocks, cache: BaseCache, base: Cache, r: Any, delta: torch.Tensor,
              acts: torch.Tensor, pair_idx: torch.Tensor, fd: int, cols: torch.Tensor | None,
              frozen: Any) -> torch.Tensor:
    """Last-position logits of the receiver runs of one q/k/v or MLP-input receiver ``r`` (or a
    joint receiver: every part of ``r.pieces`` patched in the same run)."""
    f, seq = blocks.f, delta.shape[1] + fd
    logits = cache.logits[pair_idx]  # the base run's, where the input does not change
    logits = logits if cols is None else logits.gather(1, cols)
    parts = []  # (part, its positions from fd on, [rows, P] where its input differs)
    for x in r.pieces:
        pos = torch.tensor([p for p in x.pos(seq) if p >= fd], dtype=torch.long, device=delta.device)
        parts.append((x, pos, acts[:, pos - fd] if len(pos) else acts[:, :0]))
    moved = torch.stack([live.any(1) for _, _, live in parts]).any(0).nonzero()[:, 0]
    if not len(moved):
        return logits
    pairs = pair_idx[moved]
    inputs: dict = {}
    first_l, first_p = [f.n_layers] * len(moved), [seq] * len(moved)  # each row's first change
    for x, pos, live in parts:
        if not live[moved].any():
            continue
        layer = x.layer
        h = cache.resid[pairs, layer][:, pos] + delta[moved][:, pos - fd]  # [rows, P, d_model]
        if x.kind == "mlp_in":  # the stream after the block's attention, through the MLP's norm
            attn = blocks.o_proj(layer, base[("head", layer)].to(h.device)[pairs][:, pos])
            h = blocks.norms(layer)[1](h + attn)
        else:  # the q/k/v projection's columns, before rotary positions
            h = f.qkv_module(blocks.hf, layer, x.kind)(blocks.norms(layer)[0](h))[..., x.columns(f)]
        for n, m in enumerate(moved.tolist()):
            where = pos[live[m]].tolist()
            if where:
                inputs.setdefault((x.kind, layer), []).append(
                    (n, where, None if x.kind == "mlp_in" else x.head, h[n][live[m]]))
                first_l[n], first_p[n] = min(first_l[n], layer), min(first_p[n], min(where))
    got = run_rows(mh, cache, {}, [[] for _ in moved], first_l, first_p,
                   pairs, None if cols is None else cols[moved], inputs, frozen)
    logits[moved] = got
    return logits


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
