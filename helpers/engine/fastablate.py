"""Whole components replaced, and attention edges knocked out, on the fast path (GPT-2 and
Llama-style models, ``helpers.engine.fastpatch.supports_fast_path``): ablations, circuit
evaluation (``helpers.methods.ablations``, ``helpers.circuits.evaluation``).

A *set* replaces heads (their ``d_head`` columns of the output projection's input) and MLP
outputs at every position from ``first`` on, with given values ``values[(site, layer)]``
``[n, seq, width]`` (row i for prompt pair i: zero, mean or resampled ablation values, or a
source run's activations), and may knock out attention edges: ``knock[layer]``
``[k, n_heads, seq, seq]`` bool, the weight set to 0 and its row renormalised
(``renormalise``; exactly ``helpers.methods.ablations``' batched knockout).

**Rows share their work.**  A row (one prompt pair and one set) has the residual stream of its
pair's unpatched run (``helpers.engine.fastpatch.BaseCache``) until the first block its set
touches: it starts there.  Beyond that, a row's stream before block L depends only on its pair
and on what its set changes in blocks 0 .. L-1, so rows that agree on those share one stream
(a trie over the blocks).  In block L the rows are grouped twice: by (stream, edges knocked
out in L) for the attention, and by (attention, components replaced in L) for the output
projection, the MLP and the stream after the block.  A complement ablation (everything outside
a circuit, from block 0 on) thus runs block 0 once per pair and branches where its sets
differ.  A replaced head or MLP changes nothing before its block's attention output, so a
group formed by replacements starts from its parent's (or the cached) attention output.

**Work skipped within a block.**  An attention group computes only the heads some of its rows
keep (their columns of the q/k/v projections; a complement ablation keeps few), none if every
head is replaced.  Where most heads are replaced, the output projection is that of the pair's
replacement values (computed once per pair) plus that of the kept heads' difference from them.
A replaced MLP is not run.  A group for which no later block computes attention (every head
replaced from there on, no edge knocked out) needs its stream at the final position only, and
computes only that.  In the last block only the final position's query, output projection
and MLP run; with ``columns`` only those logits are computed; a row that changes nothing is
its pair's cached logits.  Positions before ``first`` are unchanged in every row: their keys
and values are the cached ones.

The groups of one block run as one batch ``[groups, seq - first, d_model]``; the blocks'
arithmetic is ``helpers.engine.fastpatch.Blocks``.  ``tests/test_ablations.py``,
``tests/test_faithfulness.py`` and ``tests/test_ioi_circuit.py`` check it against plain-hooks
references.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from helpers.engine.fastpatch import BaseCache, Blocks
from helpers.models.loaded import handle

__all__ = ["set_masks", "knock_stack", "run_masked", "renormalise"]

Key = tuple[str, int | None]


def set_masks(model: Any, patch_sets: Sequence[Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which components each set replaces at every position: heads ``[k, n_layers, n_heads]``
    and MLP outputs ``[k, n_layers]`` (bool) of ``k`` sets of ``Patch`` (``head`` or ``mlp``
    sites, ``position=None``, non-negative indices: ``helpers.engine.runs.normalise_patch``)."""
    f = handle(model).anatomy
    heads = torch.zeros(len(patch_sets), f.n_layers, f.n_heads, dtype=torch.bool)
    mlps = torch.zeros(len(patch_sets), f.n_layers, dtype=torch.bool)
    for k, patches in enumerate(patch_sets):
        for p in patches:
            if p.site not in ("head", "mlp") or p.position is not None:
                raise ValueError(f"{p.label()}: this path replaces whole heads and MLP outputs "
                                 "(every position); use helpers.sweep for other patches")
            if p.site == "head":
                heads[k, p.layer, p.head] = True
            else:
                mlps[k, p.layer] = True
    return heads, mlps


def knock_stack(masks: Sequence[dict[int, torch.Tensor]]) -> dict[int, torch.Tensor]:
    """Per-set edge masks ``[{layer: bool [n_heads, seq, seq]}, ...]`` as ``{layer: bool [k,
    n_heads, seq, seq]}`` (all False for a set without edges in that layer)."""
    layers = sorted({layer for m in masks for layer in m})
    out = {}
    for layer in layers:
        like = next(m[layer] for m in masks if layer in m)
        out[layer] = torch.stack([m.get(layer, torch.zeros_like(like)) for m in masks])
    return out


def renormalise(weights: torch.Tensor, knocked: torch.Tensor) -> torch.Tensor:
    """Attention ``weights`` ``[..., seq]`` with the ``knocked`` (bool, same shape) entries set
    to 0 and each row divided by its new sum; rows that lose no weight stay bit-identical."""
    kept = weights.masked_fill(knocked, 0)
    lost = weights.masked_fill(~knocked, 0).sum(-1, keepdim=True) > 0
    total = kept.sum(-1, keepdim=True)
    return kept / torch.where(lost, total, torch.ones_like(total))


def _ids(masks: torch.Tensor | None, k: int, dev: torch.device) -> torch.Tensor:
    """``[k]`` labels of the sets' masks ``[k, ...]``: 0 where nothing is set, else one label
    per distinct mask."""
    if masks is None:
        return torch.zeros(k, dtype=torch.long, device=dev)
    flat = masks.reshape(k, -1)
    _, inverse = torch.unique(flat.to(torch.uint8), dim=0, return_inverse=True)
    return torch.where(flat.any(1), inverse + 1, 0)


def _groups(keys: torch.Tensor, live: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with equal ``keys`` ``[rows, m]`` among the ``live`` ones ``[rows]``: each row's
    group (-1 if not live) ``[rows]`` and one row of each group ``[groups]``."""
    group = torch.full((len(keys),), -1, dtype=torch.long, device=keys.device)
    rows = live.nonzero()[:, 0]
    if not len(rows):
        return group, rows
    uniq, inverse = torch.unique(keys[rows], dim=0, return_inverse=True)
    group[rows] = inverse
    some = torch.empty(len(uniq), dtype=torch.long, device=keys.device)
    some[inverse] = rows
    return group, some


def run_masked(model: Any, base: BaseCache, values: dict[Key, torch.Tensor], heads: torch.Tensor,
               mlps: torch.Tensor, set_of_row: torch.Tensor, pair_of_row: torch.Tensor,
               first: int = 0, columns: torch.Tensor | None = None,
               knock: dict[int, torch.Tensor] | None = None,
               pattern_layer: int | None = None) -> torch.Tensor:
    """Last-position logits ``[rows, vocab]`` (or of ``columns`` ``[rows, k]``) of row r = the
    unpatched run of pair ``pair_of_row[r]`` (``base``, ``[n, ...]``) with set
    ``set_of_row[r]`` applied: the heads ``heads[set]`` (``[k, n_layers, n_heads]``) and MLP
    outputs ``mlps[set]`` (``[k, n_layers]``) replaced by ``values[("head" | "mlp", layer)]
    [pair]`` at positions ``first .. seq-1``, and the edges ``knock[layer][set]`` knocked out
    (the module docstring).  With ``pattern_layer``: that block's attention weights
    ``[rows, n_heads, seq, seq]`` instead (``first`` must be 0)."""
    mh = handle(model)
    f = mh.anatomy
    blocks, dev = Blocks(mh.hf, f), base.resid.device
    k, seq, n_layers = heads.shape[0], base.resid.shape[2], f.n_layers
    sets, pairs = set_of_row.to(dev), pair_of_row.to(dev)
    heads, mlps = heads.to(dev), mlps.to(dev)
    knock = {layer: m.to(dev) for layer, m in (knock or {}).items()}
    if pattern_layer is not None and first:
        raise ValueError("an attention pattern needs every position: first=0")
    # the last block whose attention each set computes (-1: none): later, only the last position
    computes = ~heads.all(2)
    for layer, m in knock.items():
        computes[:, layer] |= m.flatten(1).any(1)
    reach = torch.where(computes.any(1), n_layers - 1 - computes.flip(1).int().argmax(1), -1)
    reach = reach if pattern_layer is None else reach.clamp(min=pattern_layer)
    positions = torch.arange(first, seq, device=dev)
    causal = torch.ones(len(positions), seq, dtype=torch.bool, device=dev).tril(diagonal=first)
    node = torch.full((len(sets),), -1, dtype=torch.long, device=dev)  # -1: the cached run
    stream = None  # [groups, seq - first, d_model]: the groups' streams before the block
    with torch.no_grad():
        for layer in range(n_layers if pattern_layer is None else pattern_layer + 1):
            read = layer == pattern_layer  # every row's weights are read here
            last = layer == n_layers - 1 or read
            kid = _ids(knock.get(layer), k, dev)[sets]
            mid = _ids(torch.cat([heads[:, layer], mlps[:, layer, None]], 1), k, dev)[sets]
            att, att_row = _groups(torch.stack([pairs, node, kid], 1), (node >= 0) | (kid > 0) | read)
            out, out_row = _groups(torch.stack([pairs, att, mid], 1), (att >= 0) | (mid > 0))
            # the heads each attention group computes: those any of its rows keeps (all: read)
            mine = (att >= 0).nonzero()[:, 0]
            kept = torch.zeros(len(att_row), f.n_heads, dtype=torch.long, device=dev)
            kept.index_add_(0, att[mine], (~heads[sets[mine], layer] | read).long())
            kept = kept > 0
            needed = kept.any(1)  # a group whose every head is replaced computes no attention
            z_att, got = _attend(blocks, base, stream, node, pairs, sets, layer, att_row[needed],
                                 kept[needed], positions, causal, first, knock.get(layer), last, read)
            if read:
                return got[att]
            slot = torch.full((len(att_row) + 1,), -1, dtype=torch.long, device=dev)  # [-1]: none
            slot[:-1][needed] = torch.arange(int(needed.sum()), device=dev)
            wide = torch.zeros(len(out_row), dtype=torch.bool, device=dev)  # attention later
            wide[out[(out >= 0) & (reach[sets] > layer)]] = True
            stream = _after(blocks, base, values, stream, node, pairs, sets, heads, mlps, layer,
                            out_row, slot[att[out_row]], z_att, first, last, wide)
            node = out
        live = (node >= 0).nonzero()[:, 0]
        logits = base.logits[pairs] if columns is None else base.logits[pairs].gather(1, columns.to(dev))
        if len(live):
            cols = None if columns is None else columns.to(dev)[live]
            logits[live] = blocks.logits(stream[node[live], 0], cols).to(logits.dtype)
    return logits


def _stream(base: BaseCache, stream: torch.Tensor | None, node: torch.Tensor, pair: torch.Tensor,
            layer: int, first: int) -> torch.Tensor:
    """The streams before block ``layer`` at positions ``first ..`` of rows with these
    ``node`` and ``pair`` ``[r]``: ``[r, seq - first, d_model]``."""
    x = base.resid[pair, layer, first:]
    mine = node >= 0
    if mine.any():
        x[mine] = stream[node[mine]]
    return x


def _attend(blocks: Blocks, base: BaseCache, stream: torch.Tensor | None, node: torch.Tensor,
            pairs: torch.Tensor, sets: torch.Tensor, layer: int, rows: torch.Tensor, kept: torch.Tensor,
            positions: torch.Tensor, causal: torch.Tensor, first: int, knock: torch.Tensor | None,
            last: bool, read: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Block ``layer``'s attention output before the output projection of the groups
    represented by ``rows``: ``[groups, w, n_heads * d_head]`` (w = 1 in the last block unless
    ``read``, else ``seq - first``), computed for the heads ``kept`` ``[groups, n_heads]`` (bool)
    only, zero in the others' columns; if ``read`` (every head kept) the weights ``[groups,
    n_heads, seq, seq]`` too.  Groups keeping most heads run with all of them, the others with
    the heads any of them keeps."""
    if not len(rows):
        return None, None
    f = blocks.f
    final = last and not read
    z = base.z.new_zeros(len(rows), 1 if final else len(positions), f.n_heads * f.d_head)
    weights = None
    most = kept.sum(1) > f.n_heads // 2
    for part in (most, ~most):
        if not part.any():
            continue
        these = torch.arange(f.n_heads, device=kept.device) if part is most else kept[part].any(0).nonzero()[:, 0]
        got, weights = _attend_heads(blocks, base, stream, node[rows[part]], pairs[rows[part]], layer,
                                     these, positions, causal, first, final,
                                     None if knock is None else knock[sets[rows[part]]], read)
        cols = (these[:, None] * f.d_head + torch.arange(f.d_head, device=these.device)).flatten()
        mine = z[part]
        mine[:, :, cols] = got.to(z.dtype)
        z[part] = mine
    return z, weights


def _attend_heads(blocks: Blocks, base: BaseCache, stream: torch.Tensor | None, node: torch.Tensor,
                  pair: torch.Tensor, layer: int, heads: torch.Tensor, positions: torch.Tensor,
                  causal: torch.Tensor, first: int, final: bool, knock: torch.Tensor | None,
                  read: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention output of the query ``heads`` ``[h]`` (ascending) of streams ``node`` /
    ``pair`` ``[g]``: ``[g, w, h * d_head]``, and if ``read`` their weights ``[g, h, w, seq]``;
    ``knock`` ``[g, n_heads, seq, seq]``.  Only those heads' (and their key/value heads')
    columns of the q/k/v projections are computed."""
    f = blocks.f
    g, w = len(node), len(positions)
    x = _stream(base, stream, node, pair, layer, first).reshape(g * w, -1)
    kv = torch.unique(heads // (f.n_heads // f.n_kv_heads))  # the key/value heads they read
    if len(heads) == f.n_heads:
        q, k, v = blocks.qkv(layer, x, positions.repeat(g))
    else:
        q, k, v = _qkv_heads(blocks, layer, x, positions.repeat(g), heads, kv)
    keys = torch.cat([base.keys[pair, layer][:, kv, :first], k.view(g, w, -1, f.d_head).transpose(1, 2)], 2)
    vals = torch.cat([base.values[pair, layer][:, kv, :first], v.view(g, w, -1, f.d_head).transpose(1, 2)], 2)
    if len(heads) != f.n_heads:  # each query head its own key/value head
        at = torch.searchsorted(kv, heads // (f.n_heads // f.n_kv_heads))
        keys, vals = keys[:, at], vals[:, at]
    q = q.view(g, w, len(heads), f.d_head).transpose(1, 2)  # [g, h, w, d_head]
    if final:
        q, causal = q[:, :, -1:], causal[-1:]
    weights, edit = [], None
    if knock is not None or read:
        mask = None if knock is None else knock[:, heads, first:]
        mask = mask[:, :, -1:] if mask is not None and final else mask

        def edit(probs: torch.Tensor) -> torch.Tensor:
            probs = probs if mask is None else renormalise(probs, mask)
            weights.append(probs)
            return probs
    z = blocks.attend(layer, q, keys, vals, causal, edit)
    return z, (weights[0] if read else None)


def _qkv_heads(blocks: Blocks, layer: int, x: torch.Tensor, positions: torch.Tensor,
               heads: torch.Tensor, kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``Blocks.qkv`` for the query ``heads`` and key/value heads ``kv`` only: queries
    ``[T, h, d_head]``, keys and values ``[T, len(kv), d_head]`` of the block's input ``x``
    ``[T, d_model]`` at ``positions`` ``[T]``."""
    f, hf = blocks.f, blocks.hf
    h = blocks.norms(layer)[0](x)

    def project(kind: str, which: torch.Tensor) -> torch.Tensor:
        module = f.qkv_module(hf, layer, kind)
        cols = torch.cat([torch.arange(f.qkv_columns(kind, int(i)).start,
                                       f.qkv_columns(kind, int(i)).stop) for i in which.tolist()])
        if isinstance(module, torch.nn.Linear):
            bias = None if module.bias is None else module.bias[cols]
            out = torch.nn.functional.linear(h, module.weight[cols], bias)
        else:  # GPT-2's Conv1D: x @ weight + bias
            out = torch.addmm(module.bias[cols], h, module.weight[:, cols])
        return out.view(len(h), len(which), f.d_head)

    q, k, v = project("q", heads), project("k", kv), project("v", kv)
    if blocks.gpt2:
        return q, k, v
    attn = f.attn(hf, layer)
    if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head's vector
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = blocks.rotary(x[None], positions[None])  # [1, T, d_head]
    q, k = blocks.rope(q[None], k[None], cos, sin, unsqueeze_dim=2)
    return q[0], k[0], v


def _after(blocks: Blocks, base: BaseCache, values: dict, stream: torch.Tensor | None,
           node: torch.Tensor, pairs: torch.Tensor, sets: torch.Tensor, heads: torch.Tensor,
           mlps: torch.Tensor, layer: int, rows: torch.Tensor, slot: torch.Tensor,
           z_att: torch.Tensor | None, first: int, last: bool, wide: torch.Tensor) -> torch.Tensor | None:
    """The streams after block ``layer`` ``[groups, w, d_model]`` of the groups represented by
    ``rows``, whose attention output is ``z_att[slot]`` (the cached one where ``slot`` is -1)
    with their replacements applied; w = 1 in the last block.  Groups not ``wide`` (``[groups]``
    bool: no later block computes attention for them) get only their last position."""
    if not len(rows):
        return None
    p, s, seq = pairs[rows], sets[rows], base.resid.shape[2]
    x = _stream(base, stream, node[rows], p, layer, first)
    tail = slice(seq - 1, None)
    if last:
        return _rest(blocks, base, values, heads, mlps, layer, x[:, -1:], z_att, slot, p, s, tail)
    if wide.all():
        return _rest(blocks, base, values, heads, mlps, layer, x, z_att, slot, p, s, slice(first, None))
    narrow = ~wide  # their other positions are left as they were: nothing reads them again
    x[narrow, -1:] = _rest(blocks, base, values, heads, mlps, layer, x[narrow][:, -1:],
                           None if z_att is None else z_att[:, -1:], slot[narrow], p[narrow],
                           s[narrow], tail)
    if wide.any():
        x[wide] = _rest(blocks, base, values, heads, mlps, layer, x[wide], z_att, slot[wide], p[wide],
                        s[wide], slice(first, None))
    return x


def _rest(blocks: Blocks, base: BaseCache, values: dict, heads: torch.Tensor, mlps: torch.Tensor,
          layer: int, x: torch.Tensor, z_att: torch.Tensor | None, slot: torch.Tensor,
          p: torch.Tensor, s: torch.Tensor, pos: slice) -> torch.Tensor:
    """Block ``layer`` from its attention output on: the streams ``x`` ``[g, w, d_model]``
    before it at positions ``pos`` of pairs ``p`` with sets ``s`` ``[g]``, their attention
    output ``z_att[slot]`` ``[g, w, n_heads * d_head]`` (the cached one where ``slot`` is -1)
    with the sets' heads and MLP replaced: the streams after the block ``[g, w, d_model]``."""
    f, dev = blocks.f, x.device
    z = base.z[p, layer, pos]
    mine = slot >= 0
    if mine.any():
        z[mine] = z_att[slot[mine]].to(z.dtype)
    replaced = heads[s, layer]
    if replaced.any():
        value = _value(values, ("head", layer), f"head(s) of block {layer}").to(dev, z.dtype)
        cols = replaced.repeat_interleave(f.d_head, 1)[:, None]  # [groups, 1, n_heads * d_head]
        z = torch.where(cols, value[p, pos], z)
        h = x + _o_proj(blocks, layer, z, value[:, pos], p, replaced)
    else:
        h = x + blocks.o_proj(layer, z)
    ablated = mlps[s, layer]
    out = torch.empty_like(h)
    if ablated.any():
        value = _value(values, ("mlp", layer), f"the MLP of block {layer}")
        out[ablated] = value.to(dev, h.dtype)[p[ablated], pos]
    if not ablated.all():
        out[~ablated] = blocks.mlp(layer, h[~ablated])
    return h + out


def _o_proj(blocks: Blocks, layer: int, z: torch.Tensor, value: torch.Tensor, pair: torch.Tensor,
            replaced: torch.Tensor) -> torch.Tensor:
    """The output projection of ``z`` ``[g, w, n_heads * d_head]``, whose ``replaced`` heads
    (``[g, n_heads]`` bool) hold ``value[pair]`` (``value`` ``[n, w, n_heads * d_head]``): for
    groups that replace most heads, the projection of the pair's values (one per pair) plus
    that of the kept heads' difference from them (only those heads' rows of the weight)."""
    f = blocks.f
    few = replaced.sum(1) > f.n_heads // 2
    if not few.any():
        return blocks.o_proj(layer, z)
    out = torch.empty(*z.shape[:2], f.d_model, dtype=z.dtype, device=z.device)
    if not few.all():
        out[~few] = blocks.o_proj(layer, z[~few])
    pairs, which = pair[few].unique(return_inverse=True)
    total = blocks.o_proj(layer, value[pairs])[which]  # [groups, w, d_model]
    kept = (~replaced[few]).any(0).nonzero()[:, 0]
    if len(kept):
        cols = (kept[:, None] * f.d_head + torch.arange(f.d_head, device=z.device)).flatten()
        module = f.o_proj(blocks.hf, layer)
        weight = module.weight[:, cols].T if isinstance(module, torch.nn.Linear) else module.weight[cols]
        total = total + (z[few][..., cols] - value[pair[few]][..., cols]) @ weight
    out[few] = total
    return out


def _value(values: dict, key: Key, what: str) -> torch.Tensor:
    if key not in values:
        raise KeyError(f"no replacement values for {what}: give values[{key}] [n, seq, width]")
    return values[key]


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
