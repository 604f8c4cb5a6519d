"""Exact patching that skips the work the textbook loop repeats (GPT-2 and Llama-style models).

For a patch set whose earliest patch is at block L0 and position p0, in the patched run

* every block before L0 computes exactly what the unpatched run computed, so the run
  starts from the cached residual stream at L0;
* every position before p0 is unchanged at every layer, so only positions p0 .. seq-1
  are computed, attending to the cached keys and values of the earlier positions;
* a head, attention-output or MLP patch leaves block L0's attention as it was: such a row
  starts from the cached attention output of block L0 (before the output projection);
* only the last position's logits are needed for the metrics, and in the last block only
  the last position's query, output projection and MLP (the other positions still supply
  keys and values);
* with ``columns``, only the answer and distractor logits are computed.

The rows (one per prompt pair and patch set) are *packed*: each row contributes only its
own positions p0 .. seq-1, and the tokens of every row are laid end to end in one
``[tokens, d_model]`` matrix, rows ordered by L0, so the rows taking part in block L (those
with L0 <= L) are a prefix of it.  Every position-wise step (norms, projections, MLP) runs as
one matrix product over that prefix, whatever the rows' widths; only attention goes through
a padded ``[rows, positions, ...]`` layout (a row's missing early positions are padding whose
outputs are never read), with the cached keys and values in front.  One unembedding then
serves every row.  A block is recomputed from the model's own submodules, with the causal softmax
attention written out (``helpers.engine.fastablate`` edits its weights): GPT-2 (``ln_1``,
``c_attn``, ``c_proj``, ``ln_2``, ``mlp``) and Llama-style models (RMSNorm, rotary positions,
grouped-query attention, optional per-head q/k norms as in Qwen3, gated MLP: Llama, SmolLM2, Qwen2,
Qwen3, Mistral).  Other families run the batched path.  ``tests/`` check every sweep against an
independent hook-based reference.  ``run_rows`` also patches given values into a head's query /
key / value or an MLP's input: path patching's receiver runs (``helpers.engine.fastpaths``).
"""
from __future__ import annotations

import itertools
import sys
from typing import Any, Callable, Sequence

import nnsight
import torch

from helpers.base.validate import check_finite
from helpers.engine.runs import locate_non_finite
from helpers.models.anatomy import ModelAnatomy
from helpers.models.loaded import handle

__all__ = ["BaseCache", "cache_runs", "run_patch_sets", "run_rows", "supports_fast_path"]


class BaseCache:
    """The unpatched run's residual stream before every block ``[N, n_layers + 1, seq, d_model]``
    (the last row is the final block's output), its keys and values
    ``[N, n_layers, n_kv_heads, seq, d_head]``, every block's attention output before the output
    projection ``z`` ``[N, n_layers, seq, n_heads * d_head]``, its last-position logits
    ``[N, vocab]`` and ``acts``: its activations at the sites ``cache_runs`` was asked for, as
    ``helpers.engine.runs.cache_activations`` returns them."""

    def __init__(self, resid: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 z: torch.Tensor, logits: torch.Tensor, acts: dict | None = None):
        self.resid, self.keys, self.values, self.z, self.logits = resid, keys, values, z, logits
        self.acts = acts or {}


def supports_fast_path(model: Any, seq: int | None = None) -> bool:
    """Families and configurations whose blocks this module reproduces exactly."""
    mh = handle(model)
    f, cfg = mh.anatomy, mh.hf.config
    if not f.fast:
        return False
    if f.family == "gpt2":
        return not (getattr(cfg, "reorder_and_upcast_attn", False) or getattr(cfg, "add_cross_attention", False))
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    return not (window and seq is not None and seq > window)


class Blocks:
    """One family's block arithmetic on packed tokens (outside any trace)."""

    def __init__(self, hf: Any, f: ModelAnatomy):
        self.hf, self.f = hf, f
        self.gpt2 = f.family == "gpt2"
        if not self.gpt2:
            attn = f.attn(hf, 0)
            self.rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
            self.rotary = hf.model.rotary_emb
        act = f.block(hf, 0).mlp.act if self.gpt2 else None  # GPT-2's "gelu_new" is the tanh GELU:
        self.fused_gelu = type(act).__name__ in ("NewGELUActivation", "GELUTanh")  # one fused kernel

    def block(self, layer: int) -> Any:
        return self.f.block(self.hf, layer)

    def norms(self, layer: int) -> tuple[Any, Any]:
        """The block's norm before attention and its norm before the MLP (modules)."""
        block = self.block(layer)
        if self.gpt2:
            return block.ln_1, block.ln_2
        return block.input_layernorm, block.post_attention_layernorm

    def qkv(self, layer: int, x: torch.Tensor, positions: torch.Tensor,
            edit: Callable | None = None) -> tuple[torch.Tensor, ...]:
        """Queries ``[T, n_heads, d_head]``, keys and values ``[T, n_kv_heads, d_head]`` of the
        block's input ``x`` ``[T, d_model]`` (tokens at ``positions`` ``[T]``); ``edit(q, k, v)``
        may change them in place before rotary positions and q/k norms."""
        f, block = self.f, self.block(layer)
        t, h = x.shape[0], self.norms(layer)[0](x)
        if self.gpt2:
            qkv = block.attn.c_attn(h).view(t, 3, f.n_heads, f.d_head)
            if edit is not None:
                edit(qkv[:, 0], qkv[:, 1], qkv[:, 2])
            return qkv[:, 0], qkv[:, 1], qkv[:, 2]
        attn = block.self_attn
        q = attn.q_proj(h).view(t, -1, f.d_head)
        k = attn.k_proj(h).view(t, -1, f.d_head)
        v = attn.v_proj(h).view(t, -1, f.d_head)
        if edit is not None:
            edit(q, k, v)
        if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head's vector
            q, k = attn.q_norm(q), attn.k_norm(k)
        cos, sin = self.rotary(x[None], positions[None])  # [1, T, d_head]
        q, k = self.rope(q[None], k[None], cos, sin, unsqueeze_dim=2)
        return q[0], k[0], v

    def attend(self, layer: int, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               mask: torch.Tensor, edit: Callable | None = None) -> torch.Tensor:
        """Causal softmax attention of ``q`` ``[rows, n_heads, w, d_head]`` over ``keys`` and
        ``values`` ``[rows, n_kv_heads, seq, d_head]``: ``[rows, w, n_heads * d_head]``;
        ``edit(weights)`` may replace the weights ``[rows, n_heads, w, seq]`` before they are used."""
        f = self.f
        if keys.shape[1] != q.shape[1]:  # grouped-query attention: each kv head serves a group
            group = q.shape[1] // keys.shape[1]
            keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
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
        probs = probs if edit is None else edit(probs)
        rows, _, w, _ = q.shape
        return (probs @ values).transpose(1, 2).reshape(rows, w, -1)

    def o_proj(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        return self.f.o_proj(self.hf, layer)(z)

    def mlp(self, layer: int, h: torch.Tensor, edit: Callable | None = None) -> torch.Tensor:
        """The MLP's output for the stream ``h``; ``edit`` may change its input (after its
        norm) in place."""
        mlp, x = self.block(layer).mlp, self.norms(layer)[1](h)
        if edit is not None:
            edit(x)
        if self.fused_gelu:
            return mlp.c_proj(torch.nn.functional.gelu(mlp.c_fc(x), approximate="tanh"))
        return mlp(x)

    def logits(self, final: torch.Tensor, columns: torch.Tensor | None,
               norm: Callable | None = None) -> torch.Tensor:
        """Logits ``[rows, vocab]`` (or of ``columns`` ``[rows, k]``) of the final stream
        ``[rows, d_model]``; ``norm`` replaces the final norm."""
        x = (norm or self.f.final_norm(self.hf))(final)
        unembed = self.f.unembed(self.hf)
        if columns is None:
            return self.f.logits(unembed(x))
        out = (unembed.weight[columns] @ x[:, :, None])[:, :, 0]  # only the needed rows
        return self.f.logits(out + unembed.bias[columns] if unembed.bias is not None else out)


def cache_runs(model: Any, base_ids: torch.Tensor, source_ids: torch.Tensor | None = None,
               sites: Sequence[tuple[str, int | None]] = ()) -> tuple[BaseCache, dict, torch.Tensor | None]:
    """One traced forward of the base prompts ``base_ids`` ``[N, seq]`` and, in the same batch,
    the source prompts ``source_ids``: the base run's ``BaseCache`` (its ``acts`` at ``sites``),
    and the source run's activations at ``sites`` (non-negative layers) with its last-position
    logits ``[N, vocab]`` as ``helpers.engine.runs.cache_activations`` returns them (``{}, None``
    without a source).  Keys and values come from the block inputs, as the patched runs compute."""
    mh = handle(model)
    f, (n, seq) = mh.anatomy, base_ids.shape
    ids = base_ids if source_ids is None else torch.cat([base_ids, source_ids.to(base_ids.device)])
    outputs = {}  # layer -> [(key, module, kind)]: the attention / MLP outputs ``sites`` asks for
    for key in sorted({k for k in sites if k[0] in ("attn", "mlp")}, key=lambda k: f.order(*k)):
        outputs.setdefault(key[1], []).append((key, *f.site(mh.model, *key)))
    mods = [(f.block(mh.model, layer), f.o_proj(mh.model, layer), outputs.get(layer, ()))
            for layer in range(f.n_layers)]
    resid, z = [], []
    with torch.no_grad(), mh.model.trace(ids.to(f.device), logits_to_keep=1, use_cache=False):
        read = nnsight.save({})
        for block, o_proj, outs in mods:
            resid.append(block.input.clone().save())
            z.append(o_proj.input.clone().save())
            for key, mod, kind in outs:
                read[key] = (mod.output[0] if kind == "output0" else mod.output).clone()
        resid.append(mods[-1][0].output.clone().save())
        logits = f.unembed(mh.model).output[:, -1].clone().save()
    logits = check_finite(f.logits(logits), "the logits of the unpatched and source runs",
                          lambda: locate_non_finite(mh, ids))  # as cache_activations checks its own
    resid, z = torch.stack(resid, 1), torch.stack(z, 1)
    blocks, positions = Blocks(mh.hf, f), torch.arange(seq, device=resid.device).repeat(n)
    keys, values = [], []
    with torch.no_grad():
        for layer in range(f.n_layers):
            _, k, v = blocks.qkv(layer, resid[:n, layer].reshape(n * seq, -1), positions)
            keys.append(k.view(n, seq, f.n_kv_heads, f.d_head).transpose(1, 2))
            values.append(v.view(n, seq, f.n_kv_heads, f.d_head).transpose(1, 2))
    halves = (slice(0, n), slice(n, None))  # the base run's rows, the source run's
    acts = [{key: read[key][rows] for key in read} for rows in halves]
    for (site, layer), (part, rows) in itertools.product(sites, enumerate(halves)):
        if site in ("embed", "resid", "head"):
            acts[part][(site, layer)] = (z[rows, layer] if site == "head" else
                                         resid[rows, 0 if site == "embed" else layer + 1])
    base = BaseCache(resid[:n], torch.stack(keys, 1), torch.stack(values, 1), z[:n], logits[:n], acts[0])
    return (base, {}, None) if source_ids is None else (base, acts[1], logits[n:])


def _stream_index(site: str, layer: int | None) -> int:
    """Where a site's patch enters the cached stream (embeddings 0, block L's output L + 1)."""
    return 0 if site == "embed" else layer + 1 if site == "resid" else layer


def run_patch_sets(model: Any, base: BaseCache, source: dict[tuple[str, int | None], torch.Tensor],
                   patch_sets: Sequence[Sequence[Any]], pair_of_row: torch.Tensor,
                   first_difference: int, columns: torch.Tensor | None = None) -> torch.Tensor:
    """Last-position logits of row r = the base run of pair ``pair_of_row[r]`` with
    ``patch_sets[r]`` applied jointly (sources from ``source[(site, layer)][pair]``
    as in ``helpers.engine.runs.cache_activations``): ``[rows, vocab]``, or only the
    token ids ``columns[r]`` (``[rows, k]`` -> ``[rows, k]``) when given.

    Patches must have non-negative indices (``helpers.engine.runs.normalise_patch``).  Patches at
    positions before ``first_difference`` are dropped: the source and base activations
    there are identical.  Every set must keep at least one patch.  A set whose first block
    is patched only after its attention (heads, attention or MLP outputs) starts from the
    base run's attention output there.
    """
    mh = handle(model)
    seq = base.resid.shape[2]
    starts_l, starts_p, plans, after = [], [], [], []
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
        after.append(all(site not in ("embed", "resid") or _stream_index(site, layer) > starts_l[-1]
                         for site, layer, _, _ in plan))
    return run_rows(mh, base, source, plans, starts_l, starts_p, pair_of_row, columns,
                    after_attention=after)


def run_rows(model: Any, base: BaseCache, source: dict, plans: list, starts_l: list[int],
             starts_p: list[int], pair_of_row: torch.Tensor, columns: torch.Tensor | None = None,
             inputs: dict | None = None, final_norm: Callable | None = None,
             after_attention: Sequence[bool] | None = None) -> torch.Tensor:
    """Last-position logits ``[rows, vocab]`` (or of ``columns`` ``[rows, k]``) of rows that start
    at the stream before block ``starts_l[r]`` and position ``starts_p[r]``: ``plans[r]`` holds
    (site, layer, positions, head) patches from ``source``, ``inputs`` per-row values for the
    blocks' inputs: ``{(kind, layer): [(row, positions, head | None, values [len(positions),
    width])]}``, kind ``"q"`` / ``"k"`` / ``"v"`` (a query head's / a key/value head's
    ``d_head`` columns, before rotary positions) or ``"mlp_in"`` (the MLP's input, after its
    norm).  ``final_norm(stream [rows, d_model], pair [rows])`` replaces the final norm.
    ``after_attention[r]``: row r changes nothing before its first block's attention output,
    which is then the base run's (``base.z``), not recomputed."""
    mh = handle(model)
    f = mh.anatomy
    blocks, dev, rows = Blocks(mh.hf, f), base.resid.device, len(plans)
    # rows ordered by the block they start at (then those starting after its attention, then
    # by p0): the rows taking part in block L are a prefix, and so are their tokens
    after = list(after_attention) if after_attention is not None else [False] * rows
    order = sorted(range(rows), key=lambda r: (starts_l[r], after[r], starts_p[r]))
    pairs = pair_of_row.to(dev)[order]
    new = {r: i for i, r in enumerate(order)}
    inputs = {w: [(new[r], *rest) for r, *rest in items] for w, items in (inputs or {}).items()}
    norm = None if final_norm is None else (lambda x: final_norm(x, pairs))
    with torch.no_grad():
        final = _run_packed(blocks, base, source, [plans[r] for r in order],
                            [starts_l[r] for r in order], [starts_p[r] for r in order], pairs,
                            base.resid.shape[2], inputs, [after[r] for r in order])
        cols = None if columns is None else columns.to(dev)[order]
        logits = blocks.logits(final, cols, norm)
    out = torch.empty_like(logits)
    out[torch.tensor(order, device=dev)] = logits
    return out


def _run_packed(blocks: Blocks, base: BaseCache, source: dict, plans: list, start_layers: list[int],
                start_positions: list[int], pairs: torch.Tensor, seq: int,
                inputs: dict | None = None, after: list[bool] | None = None) -> torch.Tensor:
    """The final residual stream at the last position, ``[rows, d_model]``, of rows sorted by
    their start block (``start_layers`` non-decreasing; within a block, the rows starting
    after its attention last); ``inputs`` and ``after`` as in ``run_rows``."""
    f, dev, rows = blocks.f, base.resid.device, len(plans)
    n_layers, last = f.n_layers, f.n_layers - 1
    widths = [seq - p for p in start_positions]
    row_start = [0, *itertools.accumulate(widths)]
    tok_row = torch.repeat_interleave(torch.arange(rows, device=dev), torch.tensor(widths, device=dev))
    tok_pos = torch.cat([torch.arange(p, seq, device=dev) for p in start_positions])
    last_tok = torch.tensor(row_start[1:], device=dev) - 1  # each row's final position
    start = torch.tensor(start_layers, device=dev)
    # every token begins as the base run's residual stream before its row's first block
    hidden = base.resid[pairs[tok_row], start[tok_row].clamp(max=n_layers), tok_pos]  # [T, d]
    rows_in = [int((start <= layer).sum()) for layer in range(n_layers)]  # prefix lengths
    skip = start + torch.tensor(after or [False] * rows, device=dev, dtype=torch.long)
    rows_att = [int((skip <= layer).sum()) for layer in range(n_layers)]  # rows attending
    # Patches, per place: ("stream", i) | (site, layer) -> [(token, row, src pair, pos, head, key)]
    by_site: dict[tuple[str, int], list] = {}
    for r, plan in enumerate(plans):
        for site, layer, qs, head in plan:
            where = ("stream", _stream_index(site, layer)) if site in ("embed", "resid") else (site, layer)
            for q in qs:
                tok = row_start[r] + q - start_positions[r]
                by_site.setdefault(where, []).append((tok, r, int(pairs[r]), q, head, (site, layer)))
    # the source values, gathered once: where -> [(token idx, row idx, head idx | None, value)]
    steps: dict[tuple[str, int], list] = {}
    for where, items in by_site.items():
        by_key: dict[tuple, list] = {}
        for it in items:
            by_key.setdefault(it[5], []).append(it)
        for key, its in by_key.items():
            tok, row, src, pos = (torch.tensor([it[i] for it in its], device=dev) for i in range(4))
            value = source[key].to(dev)
            head = None
            if key[0] == "head":
                head = torch.tensor([it[4] for it in its], device=dev)
                value = value.view(*value.shape[:2], f.n_heads, f.d_head)[src, pos, head]
            else:
                value = value[src, pos]
            steps.setdefault(where, []).append((tok, row, pos, head, value.to(hidden.dtype)))
    for where, items in (inputs or {}).items():  # given values: (row, positions, head, values)
        idx = [(row_start[r] + q - start_positions[r], r, q, -1 if h is None else h)
               for r, qs, h, _ in items for q in qs]
        tok, row, pos, head = torch.tensor(idx, device=dev).T
        value = torch.cat([v for *_, v in items]).to(dev, hidden.dtype)
        steps[where] = [(tok, row, pos, None if items[0][2] is None else head, value)]

    def patch(tensor: torch.Tensor, where: tuple[str, int], final_only: bool = False) -> None:
        """In place: ``tensor`` (tokens, or with ``final_only`` one final position per row)."""
        for tok, row, pos, head, value in steps.get(where, ()):
            index = tok
            if final_only:  # only the final position's value matters here
                keep = pos == seq - 1
                index, head, value = row[keep], None if head is None else head[keep], value[keep]
            if head is not None:  # query, key/value or output heads
                tensor.view(tensor.shape[0], -1, f.d_head)[index, head] = value
            else:
                tensor[index] = value

    p_min = min(start_positions)
    width = seq - p_min  # the padded attention layout: positions p_min .. seq-1
    slot = tok_pos - p_min
    causal = torch.ones(width, seq, dtype=torch.bool, device=dev).tril(diagonal=p_min)
    for layer in range(min(start_layers), n_layers):
        n_rows, n_att = rows_in[layer], rows_att[layer]
        n_t, n_ta = row_start[n_rows], row_start[n_att]
        x = hidden[:n_t]
        patch(x, ("stream", layer))
        edit_qkv = None if not any((s, layer) in steps for s in "qkv") else (
            lambda *qkv: [patch(t, (s, layer)) for s, t in zip("qkv", qkv)])
        edit_mlp = None if ("mlp_in", layer) not in steps else (
            lambda t: patch(t, ("mlp_in", layer), final_only=layer == last))
        final_only = layer == last  # only the final position: its query, output projection and MLP
        tokens = last_tok[:n_rows] if final_only else torch.arange(n_t, device=dev)
        n_new = n_att if final_only else n_ta  # z entries attention computes; the rest are cached
        z = x.new_empty(len(tokens), base.z.shape[-1])  # [T or rows, H*dh]
        z[n_new:] = base.z[pairs[tok_row[tokens[n_new:]]], layer, tok_pos[tokens[n_new:]]]
        if n_att:
            q, k, v = blocks.qkv(layer, x[:n_ta], tok_pos[:n_ta], edit_qkv)
            r_t, s_t = tok_row[:n_ta], slot[:n_ta]
            # keys and values: the base run's, with this block's new ones from each row's p0 on
            keys = base.keys[pairs[:n_att], layer].transpose(1, 2).clone()  # [rows, seq, kv, d_head]
            values = base.values[pairs[:n_att], layer].transpose(1, 2).clone()
            keys[r_t, tok_pos[:n_ta]] = k
            values[r_t, tok_pos[:n_ta]] = v
            keys, values = keys.transpose(1, 2), values.transpose(1, 2)
            if final_only:
                queries = q[last_tok[:n_att]][:, :, None]  # [rows, heads, 1, d_head]
                z[:n_att] = blocks.attend(layer, queries, keys, values, causal[-1:])[:, 0]
            else:
                queries = q.new_zeros(n_att, width, f.n_heads, f.d_head)
                queries[r_t, s_t] = q
                z[:n_ta] = blocks.attend(layer, queries.transpose(1, 2), keys, values, causal)[r_t, s_t]
        patch(z, ("head", layer), final_only)
        attn_out = blocks.o_proj(layer, z)
        patch(attn_out, ("attn", layer), final_only)
        h = (x[tokens] if final_only else x) + attn_out
        mlp_out = blocks.mlp(layer, h, edit_mlp)
        patch(mlp_out, ("mlp", layer), final_only)
        if final_only:
            hidden[last_tok[:n_rows]] = h + mlp_out
            break
        hidden[:n_t] = h + mlp_out
    final = hidden[last_tok]
    patch(final, ("stream", n_layers), final_only=True)
    return final
