"""Exact patching that skips the work the textbook loop repeats.

For a patch set whose earliest patch is at layer L0 and position p0, in the
patched run

* every layer before L0 computes exactly what the unpatched run computed, so
  the run starts from the cached residual stream at L0;
* every position before p0 is unchanged at every layer, so only positions
  p0 .. seq-1 are computed, attending to the cached keys and values of the
  earlier positions;
* only the last position's logits are needed for the metrics, and in the last
  block only the last position's query, output projection and MLP (the other
  positions still supply keys and values);
* with ``columns``, only the answer and distractor logits are computed.

Rows (one per prompt pair and patch set) are grouped by p0, so a group's
tensors share a shape; within a group a row takes part in a layer only from
its own L0 on.  The block is recomputed from the model's own submodules
(``ln_1``, ``c_attn``, ``c_proj``, ``ln_2``, ``mlp``) with the causal softmax
attention of GPT-2 written out; ``tests/test_patching.py`` checks every sweep
against an independent hook-based reference.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from helpers.models import hf_model, model_facts

__all__ = ["BaseCache", "cache_base_run", "run_patch_sets", "supports_fast_path"]


class BaseCache:
    """The unpatched run's residual stream before every block ``[N, n_layers + 1, seq, d_model]``
    (the last row is the final block's output), its keys and values
    ``[N, n_layers, n_heads, seq, d_head]`` and its last-position logits ``[N, vocab]``."""

    def __init__(self, resid: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 logits: torch.Tensor):
        self.resid, self.keys, self.values, self.logits = resid, keys, values, logits


def supports_fast_path(model: Any) -> bool:
    """GPT-2 configurations whose attention this module reproduces exactly."""
    cfg = hf_model(model).config
    return (getattr(cfg, "model_type", "") == "gpt2" and not getattr(cfg, "reorder_and_upcast_attn", False)
            and not getattr(cfg, "add_cross_attention", False))


def cache_base_run(model: Any, ids: torch.Tensor) -> BaseCache:
    """One traced forward of ``ids`` ``[N, seq]``, keeping block inputs and keys/values."""
    f = model_facts(model)
    blocks = model.transformer.h
    resid, qkv = [], []
    with torch.no_grad(), model.trace(ids.to(f.device), logits_to_keep=1, use_cache=False):
        for layer in range(f.n_layers):
            resid.append(blocks[layer].input.clone().save())
            qkv.append(blocks[layer].attn.c_attn.output.clone().save())
        resid.append(blocks[f.n_layers - 1].output.clone().save())
        logits = model.lm_head.output[:, -1].clone().save()
    n, seq = ids.shape
    kv = torch.stack(qkv, 1).view(n, f.n_layers, seq, 3, f.n_heads, f.d_head)
    keys = kv[:, :, :, 1].permute(0, 1, 3, 2, 4).contiguous()
    values = kv[:, :, :, 2].permute(0, 1, 3, 2, 4).contiguous()
    return BaseCache(torch.stack(resid, 1), keys, values, logits)


def run_patch_sets(model: Any, base: BaseCache, source: dict[tuple[str, int], torch.Tensor],
                   patch_sets: Sequence[Sequence[Any]], pair_of_row: torch.Tensor,
                   first_difference: int, columns: torch.Tensor | None = None) -> torch.Tensor:
    """Last-position logits of row r = the base run of pair ``pair_of_row[r]`` with
    ``patch_sets[r]`` applied jointly (sources from ``source[(site, layer)][pair]``
    as in ``helpers.patching.cache_activations``): ``[rows, vocab]``, or only the
    token ids ``columns[r]`` (``[rows, k]`` -> ``[rows, k]``) when given.

    Patches at positions before ``first_difference`` are dropped: the source
    and base activations there are identical.  Every set must keep at least one
    patch.
    """
    hf = hf_model(model)
    f = model_facts(model)
    seq = base.resid.shape[2]
    dev = base.resid.device
    rows = len(patch_sets)
    starts_l, starts_p, plans = [], [], []
    for patches in patch_sets:
        plan = []  # (site, layer, positions >= first_difference, head)
        for p in patches:
            positions = (range(first_difference, seq) if p.position is None
                         else [p.position % seq])
            positions = [q for q in positions if q >= first_difference]
            if positions:
                plan.append((p.site, p.layer, positions, p.head))
        if not plan:
            raise ValueError("a patch set with no position at or after the first difference "
                             "changes nothing; its result is the unpatched baseline")
        plans.append(plan)
        # resid row L is block L's input; attn/mlp/head at L sit inside block L
        starts_l.append(min(layer for _, layer, _, _ in plan))
        starts_p.append(min(min(qs) for _, _, qs, _ in plan))
    width = f.vocab_size if columns is None else columns.shape[1]
    out = torch.empty(rows, width, dtype=base.resid.dtype, device=dev)
    for p0 in sorted(set(starts_p)):
        idx = [r for r in range(rows) if starts_p[r] == p0]
        final = _run_group(hf, f, base, source, [plans[r] for r in idx],
                           [starts_l[r] for r in idx], pair_of_row[idx].to(dev), p0, seq)
        x = hf.transformer.ln_f(final)
        if columns is None:
            out[idx] = hf.lm_head(x)
        else:  # only the needed unembedding rows (GPT-2's lm_head has no bias)
            out[idx] = (hf.lm_head.weight[columns[idx].to(dev)] @ x[:, :, None])[:, :, 0]
    return out


def _run_group(hf: Any, f: Any, base: BaseCache, source: dict, plans: list, start_layers: list[int],
               pairs: torch.Tensor, p0: int, seq: int) -> torch.Tensor:
    """The final residual stream at the last position, ``[rows, d_model]``, for rows
    whose earliest patched position is ``p0``."""
    dev = base.resid.device
    width = seq - p0
    start = torch.tensor(start_layers, device=dev)
    # each row begins as the base run's residual stream at its own start layer
    hidden = base.resid[pairs, start, p0:].clone()  # [rows, width, d_model]
    by_site: dict[tuple[str, int], list] = {}  # (site, layer) -> [(row, positions, head)]
    for r, plan in enumerate(plans):
        for site, layer, qs, head in plan:
            by_site.setdefault((site, layer), []).append((r, qs, head))
    causal = torch.ones(width, seq, dtype=torch.bool, device=dev).tril(diagonal=p0)
    inv_layer = getattr(hf.config, "scale_attn_by_inverse_layer_idx", False)

    def patch(tensor: torch.Tensor, site: str, layer: int, active: torch.Tensor, first: int) -> None:
        """In place: ``tensor`` [active rows, positions first.., ...] patched at (site, layer)."""
        entries = by_site.get((site, layer))
        if not entries:
            return
        where = {int(r): i for i, r in enumerate(active.tolist())}
        r_i, q_i, s_i, h_i = [], [], [], []
        for r, qs, head in entries:
            if r in where:
                for q in qs:
                    if first <= q < first + tensor.shape[1]:
                        r_i.append(where[r]), q_i.append(q), s_i.append(int(pairs[r])), h_i.append(head)
        if not r_i:
            return
        r_t, q_t = torch.tensor(r_i, device=dev), torch.tensor(q_i, device=dev)
        s_t = torch.tensor(s_i, device=dev)
        src = source[(site, layer)].to(dev)
        if site == "head":
            h_t = torch.tensor(h_i, device=dev)
            view = tensor.view(*tensor.shape[:2], f.n_heads, f.d_head)
            view[r_t, q_t - first, h_t] = src.view(*src.shape[:2], f.n_heads, f.d_head)[s_t, q_t, h_t]
        else:
            tensor[r_t, q_t - first] = src[s_t, q_t]

    all_rows = torch.arange(len(plans), device=dev)
    last = f.n_layers - 1
    for layer in range(min(start_layers), f.n_layers):
        active = all_rows[start <= layer]
        a = len(active)
        h = hidden[active]
        patch(h, "resid", layer, active, p0)
        block = hf.transformer.h[layer]
        qkv = block.attn.c_attn(block.ln_1(h)).view(a, width, 3, f.n_heads, f.d_head)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [a, heads, width, d_head]
        keys = torch.cat([base.keys[pairs[active], layer, :, :p0], k], 2)
        values = torch.cat([base.values[pairs[active], layer, :, :p0], v], 2)
        # In the last block only the last position matters: its keys and values need
        # every position, but the queries, output projection and MLP only the last.
        first, mask = (seq - 1, causal[-1:]) if layer == last else (p0, causal)
        if layer == last:
            q, h = q[:, :, -1:], h[:, -1:]
        scores = q @ keys.transpose(-1, -2)
        if hf.config.scale_attn_weights:
            scores = scores / torch.full([], f.d_head ** 0.5, dtype=scores.dtype, device=dev)
        if inv_layer:
            scores = scores / float(layer + 1)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        z = (scores.softmax(-1).to(values.dtype) @ values).transpose(1, 2).reshape(a, h.shape[1], -1)
        patch(z, "head", layer, active, first)
        attn_out = block.attn.c_proj(z)
        patch(attn_out, "attn", layer, active, first)
        h = h + attn_out
        mlp_out = block.mlp(block.ln_2(h))
        patch(mlp_out, "mlp", layer, active, first)
        if layer == last:
            hidden[active, -1:] = h + mlp_out
        else:
            hidden[active] = h + mlp_out
    final = hidden[:, -1:]
    patch(final, "resid", f.n_layers, all_rows, seq - 1)
    return final[:, 0]
