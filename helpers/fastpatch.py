"""Exact patching that skips the work the textbook loop repeats (GPT-2 and Llama-style models).

For a patch set whose earliest patch is at block L0 and position p0, in the patched run

* every block before L0 computes exactly what the unpatched run computed, so the run
  starts from the cached residual stream at L0;
* every position before p0 is unchanged at every layer, so only positions p0 .. seq-1
  are computed, attending to the cached keys and values of the earlier positions;
* only the last position's logits are needed for the metrics, and in the last block only
  the last position's query, output projection and MLP (the other positions still supply
  keys and values);
* with ``columns``, only the answer and distractor logits are computed.

Rows (one per prompt pair and patch set) are grouped by p0, so a group's tensors share a
shape; within a group a row takes part in a block only from its own L0 on.  A block is
recomputed from the model's own submodules, with the causal softmax attention written
out: GPT-2 (``ln_1``, ``c_attn``, ``c_proj``, ``ln_2``, ``mlp``) and Llama-style models
(RMSNorm, rotary positions, grouped-query attention, optional per-head q/k norms as in
Qwen3, gated MLP: Llama, SmolLM2, Qwen2, Qwen3, Mistral).  Other families run the batched
path.  ``tests/`` check every sweep against an independent hook-based reference.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

import torch

from helpers.anatomy import ModelAnatomy
from helpers.models import hf_model, model_facts

__all__ = ["BaseCache", "cache_base_run", "run_patch_sets", "supports_fast_path"]


class BaseCache:
    """The unpatched run's residual stream before every block ``[N, n_layers + 1, seq, d_model]``
    (the last row is the final block's output), its keys and values
    ``[N, n_layers, n_kv_heads, seq, d_head]`` and its last-position logits ``[N, vocab]``."""

    def __init__(self, resid: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 logits: torch.Tensor):
        self.resid, self.keys, self.values, self.logits = resid, keys, values, logits


def supports_fast_path(model: Any, seq: int | None = None) -> bool:
    """Families and configurations whose blocks this module reproduces exactly."""
    f = model_facts(model)
    cfg = hf_model(model).config
    if not f.fast:
        return False
    if f.family == "gpt2":
        return not (getattr(cfg, "reorder_and_upcast_attn", False) or getattr(cfg, "add_cross_attention", False))
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    return not (window and seq is not None and seq > window)


class _Blocks:
    """One family's block arithmetic on plain tensors (outside any trace)."""

    def __init__(self, hf: Any, f: ModelAnatomy):
        self.hf, self.f = hf, f
        self.gpt2 = f.family == "gpt2"
        if not self.gpt2:
            attn = f.attn(hf, 0)
            self.rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
            self.rotary = hf.model.rotary_emb

    def block(self, layer: int) -> Any:
        return self.f.block(self.hf, layer)

    def qkv(self, layer: int, x: torch.Tensor, first: int) -> tuple[torch.Tensor, ...]:
        """Queries ``[rows, n_heads, w, d_head]``, keys and values ``[rows, n_kv_heads, w, d_head]``
        of the block's input ``x`` ``[rows, w, d_model]`` at positions ``first .. first + w - 1``."""
        f, block = self.f, self.block(layer)
        rows, w, _ = x.shape
        if self.gpt2:
            qkv = block.attn.c_attn(block.ln_1(x)).view(rows, w, 3, f.n_heads, f.d_head)
            return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))
        attn, h = block.self_attn, block.input_layernorm(x)
        q = attn.q_proj(h).view(rows, w, -1, f.d_head)
        k = attn.k_proj(h).view(rows, w, -1, f.d_head)
        v = attn.v_proj(h).view(rows, w, -1, f.d_head)
        if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head's vector
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        positions = torch.arange(first, first + w, device=x.device)[None]
        cos, sin = self.rotary(x, positions)
        q, k = self.rope(q, k, cos, sin)
        return q, k, v

    def attend(self, layer: int, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """Causal softmax attention: ``[rows, w, n_heads * d_head]`` (the output projection's input)."""
        f = self.f
        if f.n_kv_heads != f.n_heads:  # grouped-query attention: each kv head serves a group
            keys = keys.repeat_interleave(f.n_heads // f.n_kv_heads, dim=1)
            values = values.repeat_interleave(f.n_heads // f.n_kv_heads, dim=1)
        scores = q @ keys.transpose(-1, -2)
        cfg = self.hf.config
        if self.gpt2:
            if cfg.scale_attn_weights:
                scores = scores / torch.full([], f.d_head ** 0.5, dtype=scores.dtype, device=scores.device)
            if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
                scores = scores / float(layer + 1)
            probs = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(-1).to(values.dtype)
        else:
            scores = scores * self.block(layer).self_attn.scaling
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
        rows, _, w, _ = q.shape
        return (probs @ values).transpose(1, 2).reshape(rows, w, -1)

    def o_proj(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        return self.f.o_proj(self.hf, layer)(z)

    def mlp(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        block = self.block(layer)
        norm = block.ln_2 if self.gpt2 else block.post_attention_layernorm
        return block.mlp(norm(h))

    def logits(self, final: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
        x = self.f.final_norm(self.hf)(final)
        unembed = self.f.unembed(self.hf)
        if columns is None:
            return self.f.logits(unembed(x))
        out = (unembed.weight[columns] @ x[:, :, None])[:, :, 0]  # only the needed rows
        return self.f.logits(out + unembed.bias[columns] if unembed.bias is not None else out)


def cache_base_run(model: Any, ids: torch.Tensor) -> BaseCache:
    """One traced forward of ``ids`` ``[N, seq]`` keeping every block's input; the keys and
    values are then computed from them with the same arithmetic the patched runs use."""
    f = model_facts(model)
    resid = []
    with torch.no_grad(), model.trace(ids.to(f.device), logits_to_keep=1, use_cache=False):
        for layer in range(f.n_layers):
            resid.append(f.block(model, layer).input.clone().save())
        resid.append(f.block(model, f.n_layers - 1).output.clone().save())
        logits = f.unembed(model).output[:, -1].clone().save()
    logits = f.logits(logits)
    blocks = _Blocks(hf_model(model), f)
    keys, values = [], []
    with torch.no_grad():
        for layer in range(f.n_layers):
            _, k, v = blocks.qkv(layer, resid[layer], 0)
            keys.append(k)
            values.append(v)
    return BaseCache(torch.stack(resid, 1), torch.stack(keys, 1), torch.stack(values, 1), logits)


def _stream_index(site: str, layer: int | None) -> int:
    """Where a site's patch enters the cached stream: the embeddings are block 0's input
    (index 0), block L's output is block L+1's input (index L + 1)."""
    return 0 if site == "embed" else layer + 1 if site == "resid" else layer


def run_patch_sets(model: Any, base: BaseCache, source: dict[tuple[str, int | None], torch.Tensor],
                   patch_sets: Sequence[Sequence[Any]], pair_of_row: torch.Tensor,
                   first_difference: int, columns: torch.Tensor | None = None) -> torch.Tensor:
    """Last-position logits of row r = the base run of pair ``pair_of_row[r]`` with
    ``patch_sets[r]`` applied jointly (sources from ``source[(site, layer)][pair]``
    as in ``helpers.runs.cache_activations``): ``[rows, vocab]``, or only the
    token ids ``columns[r]`` (``[rows, k]`` -> ``[rows, k]``) when given.

    Patches must have non-negative indices (``helpers.runs.normalise_patch``).  Patches at
    positions before ``first_difference`` are dropped: the source and base activations
    there are identical.  Every set must keep at least one patch.
    """
    f = model_facts(model)
    blocks = _Blocks(hf_model(model), f)
    seq = base.resid.shape[2]
    dev = base.resid.device
    rows = len(patch_sets)
    starts_l, starts_p, plans = [], [], []
    for patches in patch_sets:
        plan = []  # (site, layer, positions >= first_difference, head)
        for p in patches:
            positions = range(first_difference, seq) if p.position is None else [p.position]
            positions = [q for q in positions if q >= first_difference]
            if positions:
                plan.append((p.site, p.layer, positions, p.head))
        if not plan:
            raise ValueError("a patch set with no position at or after the first difference "
                             "changes nothing; its result is the unpatched baseline")
        plans.append(plan)
        starts_l.append(min(_stream_index(site, layer) for site, layer, _, _ in plan))
        starts_p.append(min(min(qs) for _, _, qs, _ in plan))
    width = f.vocab_size if columns is None else columns.shape[1]
    out = torch.empty(rows, width, dtype=base.resid.dtype, device=dev)
    for p0 in sorted(set(starts_p)):
        idx = [r for r in range(rows) if starts_p[r] == p0]
        final = _run_group(blocks, base, source, [plans[r] for r in idx],
                           [starts_l[r] for r in idx], pair_of_row[idx].to(dev), p0, seq)
        out[idx] = blocks.logits(final, None if columns is None else columns[idx].to(dev))
    return out


def _run_group(blocks: _Blocks, base: BaseCache, source: dict, plans: list, start_layers: list[int],
               pairs: torch.Tensor, p0: int, seq: int) -> torch.Tensor:
    """The final residual stream at the last position, ``[rows, 1, d_model]``, for rows
    whose earliest patched position is ``p0``."""
    f = blocks.f
    dev = base.resid.device
    width = seq - p0
    start = torch.tensor(start_layers, device=dev)
    # each row begins as the base run's residual stream at its own start
    hidden = base.resid[pairs, start.clamp(max=f.n_layers), p0:].clone()  # [rows, width, d_model]
    by_site: dict[tuple[str, int], list] = {}  # (where, stream index or layer) -> [(row, qs, head, key)]
    for r, plan in enumerate(plans):
        for site, layer, qs, head in plan:
            where = ("stream", _stream_index(site, layer)) if site in ("embed", "resid") else (site, layer)
            by_site.setdefault(where, []).append((r, qs, head, (site, layer)))
    causal = torch.ones(width, seq, dtype=torch.bool, device=dev).tril(diagonal=p0)

    def patch(tensor: torch.Tensor, where: tuple[str, int], active: torch.Tensor, first: int) -> None:
        """In place: ``tensor`` [active rows, positions first.., ...] patched at ``where``."""
        entries = by_site.get(where)
        if not entries:
            return
        slot = {int(r): i for i, r in enumerate(active.tolist())}
        groups: dict[tuple, list] = {}
        for r, qs, head, key in entries:
            if r in slot:
                for q in qs:
                    if first <= q < first + tensor.shape[1]:
                        groups.setdefault(key, []).append((slot[r], q, int(pairs[r]), head))
        for key, items in groups.items():
            r_t, q_t, s_t = (torch.tensor([it[i] for it in items], device=dev) for i in range(3))
            src = source[key].to(dev)
            if key[0] == "head":
                h_t = torch.tensor([it[3] for it in items], device=dev)
                view = tensor.view(*tensor.shape[:2], f.n_heads, f.d_head)
                view[r_t, q_t - first, h_t] = src.view(*src.shape[:2], f.n_heads, f.d_head)[s_t, q_t, h_t]
            else:
                tensor[r_t, q_t - first] = src[s_t, q_t]

    all_rows = torch.arange(len(plans), device=dev)
    last = f.n_layers - 1
    for layer in range(min(start_layers), f.n_layers):
        active = all_rows[start <= layer]
        h = hidden[active]
        patch(h, ("stream", layer), active, p0)
        q, k, v = blocks.qkv(layer, h, p0)
        keys = torch.cat([base.keys[pairs[active], layer, :, :p0], k], 2)
        values = torch.cat([base.values[pairs[active], layer, :, :p0], v], 2)
        # In the last block only the last position matters: its keys and values need
        # every position, but the queries, output projection and MLP only the last.
        first, mask = (seq - 1, causal[-1:]) if layer == last else (p0, causal)
        if layer == last:
            q, h = q[:, :, -1:], h[:, -1:]
        z = blocks.attend(layer, q, keys, values, mask)
        patch(z, ("head", layer), active, first)
        attn_out = blocks.o_proj(layer, z)
        patch(attn_out, ("attn", layer), active, first)
        h = h + attn_out
        mlp_out = blocks.mlp(layer, h)
        patch(mlp_out, ("mlp", layer), active, first)
        if layer == last:
            hidden[active, -1:] = h + mlp_out
        else:
            hidden[active] = h + mlp_out
    final = hidden[:, -1:]
    patch(final, ("stream", f.n_layers), all_rows, seq - 1)
    return final[:, 0]
