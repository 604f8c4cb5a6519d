"""Path patching (Wang et al. 2022, "Interpretability in the Wild", section 3.1): how much of a
*sender*'s effect reaches a *receiver* directly, through the residual stream alone.

As everywhere in PatchLab, **denoising** runs the corrupted prompt (the *base* run) with values
from the clean one (the *source* run); **noising** the reverse.  Sender S -> receiver R:

1. Cache the base and the source runs.
2. **Sender run**: the base prompt, S's output replaced by its source value (at S's positions),
   every other component frozen at its base-run value: every attention head's output (its slice
   of the output projection's input, the ``head`` site) and every MLP output, in every block; the
   embeddings are the base run's unless S is the embedding.  S's change reaches R only directly,
   through the residual stream.  (Components before or beside S keep their base values anyway
   and those after R are not read, so one sender run serves every receiver.)  **Layer norms are
   not frozen** (Wang et al.): R's own norm and the final norm are recomputed on the changed
   residual stream.  The run records R's input:

   * ``"L3H0.q"`` / ``.k`` / ``.v``: head 0 of block 3's query / key / value input, its ``d_head``
     columns of the q/k/v projection's output (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``,
     Llama-style ``q_proj`` / ``k_proj`` / ``v_proj``), before rotary positions and q/k norms.  With
     grouped-query attention keys and values belong to *key/value heads*, each shared by
     ``n_heads / n_kv_heads`` query heads: ``"L3KV0.k"`` (``"L3H1.k"`` is refused);
   * ``"mlp2.in"``: the input of block 2's MLP module, i.e. after the MLP's own norm (GPT-2
     ``ln_2``, Llama ``post_attention_layernorm``, Gemma ``pre_feedforward_layernorm``) of the
     stream after the block's attention (GPT-NeoX's parallel residual: of the block's input);
   * ``"logits"``: the final residual stream (the last block's output).
3. **Receiver run**: the base prompt again with only R's input (at R's positions) replaced by the
   recorded value.  Its metrics are the result.  For ``"logits"`` it is the final norm and
   unembedding of the recorded stream: the sender run's own logits.

Senders: ``"embed"``, a head ``"L0H3"``, all heads of a block ``"attn2"``, an MLP ``"mlp2"``;
``"heads"`` / ``"all"``: every head / component before every receiver.  A q/k/v receiver in block L
takes senders from earlier blocks, an MLP receiver also its own block's heads (not with a parallel
residual).  Positions (indices or roles) restrict either side: ``"L0H3@S2"``, ``"L3H0.q@END"``,
``"mlp1@3,4"`` (default: every position); ``"logits"`` takes none.

``final_norm="frozen"`` holds the final norm's scale at the base run's in every patched run:
``N(x) = N(x_base) + J(x - x_base)``, ``J(d) = (d - mean d) * w / s_base``, ``s_base`` the base run's
``sqrt(variance + eps)`` per position (RMSNorm: no centring, mean square).  Exact identities (tested):

* a sender whose output is the same in both runs (e.g. only positions before the prompts' first
  difference) gives the base metric, for every receiver;
* frozen final norm, outputs added to the stream as they are (not Gemma's post-norms): S ->
  ``logits`` minus the base is S's direct logit contribution ``(W_U[answer] - W_U[distractor]) .
  J(delta_S)`` at the last position; so block L's heads add up to ``"attnL"`` (not with a live norm);
* the last block's MLP -> ``logits`` is ordinary patching of it; a last-block head is not (its
  block's MLP is frozen in the sender run).

``method="fast"`` (default; GPT-2 and Llama-style models, ``fastpatch.supports_fast_path``) is
exact: with every head and MLP frozen the sender run's stream is the base run's plus the sender's
change, so R's input needs no sender forward pass; R's runs start at its block and first changed
position (``helpers.engine.fastpaths``).  ``"batched"`` (every family; fast falls back to it): many rows
per nnsight trace.  Both chunk to a memory budget; ``result.method`` says which ran.  No NDIF yet.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from helpers.base.validate import as_count, check_finite, norm_index
from helpers.data.prompts import PromptPairs
from helpers.engine.fastpatch import supports_fast_path
from helpers.engine.fastpaths import path_logits
from helpers.engine.memory import sweep_budget_mb
from helpers.engine.runs import cache_activations, check_pairs
from helpers.models.loaded import ModelHandle, handle
from helpers.results.metrics import METRICS, Metric, metrics_of
from helpers.results.patch_result import PatchResult

__all__ = ["path_patch"]

Positions = Any  # None (every position), an index, a role ("END"), or a list of them


@dataclass(frozen=True)
class _Node:
    kind: str  # senders: embed, head, attn, mlp; receivers: q, k, v, mlp_in, logits
    layer: int  # -1 for embed, n_layers for logits
    head: int | None  # a key/value head for k and v receivers
    positions: tuple[int, ...] | None
    label: str
    order: tuple[int, int]  # forward order: a sender must come before its receiver

    def pos(self, seq: int) -> list[int]:
        return list(range(seq)) if self.positions is None else list(self.positions)

    def slot(self, f: Any) -> tuple[int, int]:
        """(layer, step) of a receiver's module: steps 0-2 its q/k/v module(s), 3 the MLP's input."""
        qkv = 0 if len(f.paths.qkv) == 1 or self.kind == "mlp_in" else "qkv".index(self.kind)
        return self.layer, 3 if self.kind == "mlp_in" else qkv

    def columns(self, f: Any) -> slice:
        return slice(0, f.d_model) if self.kind == "mlp_in" else f.qkv_columns(self.kind, self.head)


_SENDER = re.compile(r"L(-?\d+)H(-?\d+)|(attn|mlp)(-?\d+)|embed")
_RECEIVER = re.compile(r"L(-?\d+)(H|KV)(-?\d+)\.([qkv])|mlp(-?\d+)\.in|logits")
_FORMS = {True: "'embed', a head 'L0H3', all heads of a block 'attn2', an MLP 'mlp2', or 'heads' / "
                "'all'", False: "a head's input 'L3H0.q' / '.k' / '.v' (grouped-query attention: "
                "key/value head 'L3KV0.k'), an MLP's input 'mlp2.in', or 'logits'"}


def _positions(spec: Positions, pairs: PromptPairs, what: str) -> tuple[tuple[int, ...] | None, str]:
    """(sorted token indices or None, the label suffix such as ``"@END"``)."""
    if spec is None:
        return None, ""
    items = list(spec) if isinstance(spec, (list, tuple, range)) else [spec]
    bad = [p for p in items if isinstance(p, str) and p not in pairs.positions]
    if bad or not items:
        raise ValueError(f"{what}: unknown role {bad[0]!r}; these prompts have the roles "
                         f"{sorted(pairs.positions)}, or give token indices 0 .. {pairs.seq_len - 1}"
                         if bad else f"{what}: empty positions; give None for every position")
    out = sorted({pairs.positions[p] if isinstance(p, str) else norm_index(
        p, pairs.seq_len, "position", "token positions in these prompts") for p in items})
    role_at = {p: r for r, p in pairs.positions.items()}
    return tuple(out), "@" + ",".join(role_at.get(p, str(p)) for p in out)


def _parse(item: Any, default_pos: Positions, pairs: PromptPairs, f: Any, sender: bool) -> _Node:
    """A sender (``sender=True``) or receiver name, with ``@positions`` or ``default_pos``."""
    what = "sender" if sender else "receiver"
    name, at, where = item.partition("@") if isinstance(item, str) else (item, "", "")
    pos = [int(w) if w.strip().lstrip("-").isdigit() else w.strip()
           for w in where.split(",")] if at else default_pos
    m = (_SENDER if sender else _RECEIVER).fullmatch(name.strip()) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"unknown {what} {item!r}: write {_FORMS[sender]}, optionally with "
                         "positions, e.g. '@END' or '@3,4'")
    positions, at = _positions(pos, pairs, f"{what} {name!r}")
    g = m.groups()
    layer = next((norm_index(int(x), f.n_layers, "layer", "blocks in this model")
                  for x in (g[0], g[3] if sender else g[4]) if x is not None), None)
    if sender:
        if g[0] is not None:
            head = norm_index(int(g[1]), f.n_heads, "head", "heads per layer")
            return _Node("head", layer, head, positions, f"L{layer}H{head}{at}", (layer, 0))
        if g[2] is not None:
            return _Node(g[2], layer, None, positions, f"{g[2]}{layer}{at}",
                         (layer, 2 if g[2] == "mlp" else 0))
        return _Node("embed", -1, None, positions, f"embed{at}", (-1, 0))
    if g[0] is not None:
        kind, shared = g[3], f.n_kv_heads < f.n_heads and g[3] != "q"
        if shared and g[1] == "H":
            raise ValueError(
                f"receiver {name!r}: this model's query heads share keys and values (grouped-query "
                f"attention, {f.n_heads // f.n_kv_heads} query heads per key/value head): name the "
                f"key/value head, e.g. 'L{layer}KV{int(g[2]) * f.n_kv_heads // f.n_heads}.{kind}'")
        if g[1] == "KV" and kind == "q":
            raise ValueError(f"receiver {name!r}: queries belong to query heads: write 'L{layer}H0.q'")
        head = norm_index(int(g[2]), f.n_kv_heads if shared else f.n_heads, "head",
                          "key/value heads per layer" if shared else "heads per layer")
        label = f"L{layer}{'KV' if shared else 'H'}{head}.{kind}{at}"
        return _Node(kind, layer, head, positions, label, (layer, 0))
    if g[4] is not None:
        return _Node("mlp_in", layer, None, positions, f"mlp{layer}.in{at}",
                     (layer, 0 if f.parallel_residual else 1))
    if positions is not None:
        raise ValueError("receiver 'logits' takes no positions: the metrics read the last position")
    return _Node("logits", f.n_layers, None, None, "logits", (f.n_layers, 0))


def _plan(pairs: PromptPairs, f: Any, senders: Any, receivers: Any, sender_positions: Positions,
          receiver_positions: Positions) -> tuple[list[_Node], list[_Node]]:
    """The checked senders and receivers (every sender before every receiver)."""
    receivers = [receivers] if isinstance(receivers, str) else list(receivers)
    recv = [_parse(r, receiver_positions, pairs, f, False) for r in receivers]
    if not recv:
        raise ValueError("no receivers: give at least one, e.g. 'logits'")
    send: list[_Node] = []
    for s in [senders] if isinstance(senders, str) else senders:
        if isinstance(s, str) and s in ("heads", "all"):
            names = (["embed"] if s == "all" else []) + [
                x for L in range(f.n_layers)
                for x in [f"L{L}H{h}" for h in range(f.n_heads)] + ([f"mlp{L}"] if s == "all" else [])]
            nodes = [_parse(x, sender_positions, pairs, f, True) for x in names]
            send += [x for x in nodes if x.order < min(r.order for r in recv)]
        else:
            send.append(_parse(s, sender_positions, pairs, f, True))
    if not send:
        raise ValueError("no senders: give at least one (nothing comes before the receivers?)")
    for nodes, what in ((send, "sender"), (recv, "receiver")):
        labels = [x.label for x in nodes]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"{what}(s) {twice} given twice: give each once")
    bad = next(((s, r) for s in send for r in recv if not s.order < r.order), None)
    if bad:
        raise ValueError(f"sender {bad[0].label} does not come before receiver {bad[1].label}, so "
                         "there is no path from it: a q/k/v receiver takes senders from earlier "
                         "blocks, an MLP receiver also its own block's heads"
                         + (" (not with this model's parallel residual)" if f.parallel_residual else ""))
    return send, recv


def _module(mh: ModelHandle, f: Any, slot: tuple[int, int]) -> Any:
    return f.mlp(mh.model, slot[0]) if slot[1] == 3 else f.qkv_module(mh.model, slot[0], "qkv"[slot[1]])


def path_patch(model: Any, pairs: PromptPairs, senders: str | Sequence[str],
               receivers: str | Sequence[str],
               direction: Literal["denoise", "noise"] = "denoise", *,
               sender_positions: Positions = None, receiver_positions: Positions = None,
               final_norm: Literal["live", "frozen"] = "live", method: Literal["fast", "batched"] = "fast",
               metrics: Sequence[Metric] = METRICS, metric: Metric = "logit_diff",
               memory_mb: float | None = None, batch_size: int | None = None) -> PatchResult:
    """Path patching from every sender to every receiver (the module docstring defines it).

    ``senders``: names (``"L0H3"``; ``"L0H3@S2"`` at S2 only) or ``"heads"`` / ``"all"``;
    ``receivers``: names (``"L3H0.q@END"``); ``sender_positions`` / ``receiver_positions`` apply to
    names without ``@``.  Returns a ``PatchResult`` (site ``"path"``; baselines: the unpatched
    runs) with values ``[n_prompts, n_senders, n_receivers]`` on ``("sender", "receiver")`` (labels:
    the names with positions), or ``[n_prompts, k, n_heads]`` on ``("layer", "head")`` for every
    head of blocks 0 .. k-1 to one receiver.  ``method``: ``"fast"`` (runs batched where it is
    not supported) or ``"batched"``, both exact.  Other options as in ``helpers.sweep``.
    """
    mh = handle(model)
    for name, value, allowed in (("direction", direction, ("denoise", "noise")),
                                 ("method", method, ("batched", "fast")),
                                 ("final_norm", final_norm, ("live", "frozen"))):
        if value not in allowed:
            raise ValueError(f"{name} must be {' or '.join(map(repr, allowed))}, got {value!r}")
    if not metrics or set(metrics) - set(METRICS) or metric not in metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS} holding metric="
                         f"{metric!r}, got metrics={metrics!r}")
    metrics = tuple(m for m in METRICS if m in metrics)
    check_pairs(mh, pairs)
    if mh.remote:
        raise ValueError("path patching runs on a local model only for now: load it without remote=")
    f = mh.anatomy
    send, recv = _plan(pairs, f, senders, receivers, sender_positions, receiver_positions)
    batch_size = None if batch_size is None else as_count(batch_size, "batch_size")
    if method == "fast" and not supports_fast_path(mh, pairs.seq_len):
        method = "batched"  # the fast path computes GPT-2's and Llama-style blocks only

    n, seq = len(pairs), pairs.seq_len
    base_ids, src_ids = ((pairs.corrupted_ids, pairs.clean_ids) if direction == "denoise"
                         else (pairs.clean_ids, pairs.corrupted_ids))
    sites = [("embed", None)] + [(s, L) for L in range(f.n_layers) for s in ("head", "mlp")]
    (base, base_logits), (src, src_logits) = (cache_activations(mh, i, sites) for i in (base_ids, src_ids))
    clean_logits, bad_logits = (src_logits, base_logits) if direction == "denoise" else (base_logits, src_logits)
    norm = None
    if final_norm == "frozen":  # the base run's final norm input, output and frozen linear part
        mod, ids = f.final_norm(mh.model), base_ids.to(mh.device)
        with torch.no_grad(), mh.model.trace(ids, logits_to_keep=1, use_cache=False):
            x, y = mod.input.clone().save(), mod.output.clone().save()
        centre, scale = f.norm_linear_part(f.final_norm(mh.hf), x)
        norm = {"x": x, "y": y, "centre": centre, "scale": scale}
    two = metrics == ("logit_diff",)  # then only the answer and distractor logits are read
    cols = torch.stack([pairs.answer_ids, pairs.distractor_ids], 1)

    def store(pair_idx: torch.Tensor, snd_idx: torch.Tensor, rcv_idx: Any, logits: torch.Tensor) -> None:
        got = {"logit_diff": logits[:, 0] - logits[:, 1]} if two else metrics_of(
            logits, pairs, clean_logits, pair_idx)
        for m in metrics:
            values[m][pair_idx, snd_idx, rcv_idx] = got[m].to(values[m].dtype).cpu()

    size = torch.finfo(f.dtype).bits // 8  # bytes per row: a forward, frozen values, reads
    forward = size * (seq * (8 * f.d_model + 4 * f.n_heads * seq) + 3 * f.vocab_size)
    frozen = size * seq * f.n_layers * (f.n_heads * f.d_head + f.d_model)
    slots = sorted({r.slot(f) for r in recv if r.kind != "logits"})
    read = size * seq * len(slots) * 3 * max(f.d_model, f.n_heads * f.d_head)
    budget = memory_mb if memory_mb is not None else sweep_budget_mb(base_logits.device)

    def chunks(jobs: list, per_row: int) -> list[list]:
        k = batch_size or max(1, int(budget * 2**20 // per_row))
        return [jobs[j: j + k] for j in range(0, len(jobs), k)]

    values = {m: torch.zeros(n, len(send), len(recv), dtype=base_logits.dtype) for m in metrics}
    jobs = [(i, k) for k in range(len(send)) for i in range(n)]
    if method == "fast":  # no sender forward pass; receiver runs from the cached base run
        for cells in path_logits(mh, base_ids, base, src, send, recv, pairs.first_difference,
                                 chunks(jobs, forward), norm, cols if two else None):
            store(*cells)
    recorded: dict[int, torch.Tensor] = {}  # receiver -> [n, n_senders, positions, width]
    for chunk in chunks(jobs, forward + frozen + read) if method == "batched" else []:
        pair_idx, snd_idx = torch.tensor([i for i, _ in chunk]), torch.tensor([k for _, k in chunk])
        outs, logits = _sender_run(mh, f, base_ids[pair_idx], base, src, pair_idx,
                                   [send[k] for _, k in chunk], slots, norm,
                                   cols[pair_idx] if two else None)
        for j, r in enumerate(recv):
            if r.kind == "logits":
                store(pair_idx, snd_idx, j, logits)
                continue
            out = outs[r.slot(f)][:, r.pos(seq), r.columns(f)]
            if j not in recorded:
                recorded[j] = torch.zeros(n, len(send), *out.shape[1:], dtype=out.dtype)
            recorded[j][pair_idx, snd_idx] = out.cpu()
    for chunk in chunks([(i, k, j) for j in recorded for k in range(len(send)) for i in range(n)], forward):
        pair_idx = torch.tensor([i for i, _, _ in chunk])
        logits = _receiver_run(mh, f, base_ids[pair_idx], pair_idx, chunk, recv, recorded,
                               norm, cols[pair_idx] if two else None)
        store(pair_idx, torch.tensor([k for _, k, _ in chunk]), torch.tensor([j for _, _, j in chunk]), logits)

    k = len(send) // f.n_heads
    if len(recv) == 1 and [(s.kind, s.layer, s.head, s.positions) for s in send] == [
            ("head", L, h, None) for L in range(k) for h in range(f.n_heads)]:
        dims: tuple[str, ...] = ("layer", "head")
        labels = {"layer": [f"L{L}" for L in range(k)], "head": [f"H{h}" for h in range(f.n_heads)]}
    else:
        dims = ("sender", "receiver")
        labels = {"sender": [s.label for s in send], "receiver": [r.label for r in recv]}
    clean_m, bad_m = ({m: v.cpu() for m, v in metrics_of(x, pairs, clean_logits, torch.arange(n)).items()}
                      for x in (clean_logits, bad_logits))
    result = PatchResult(site="path", direction=direction, dims=dims, labels=labels,
                         values={m: v.reshape(n, *(len(labels[d]) for d in dims)) for m, v in values.items()},
                         clean=clean_m, corrupted=bad_m,
                         prompts=pairs, model_name=f.name, method=method, metric=metric)
    result.remote, result.final_norm = False, final_norm
    return result


def _sender_run(mh: ModelHandle, f: Any, ids: torch.Tensor, base: dict, src: dict,
                pair_idx: torch.Tensor, senders: list[_Node], slots: list[tuple[int, int]],
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
        ops += [("out", "read", _module(mh, f, sl), sl) for sl in slots if sl[0] == layer and sl[1] < 3]
        ops.append(("in", "set", f.o_proj(mh.model, layer), z.to(device)))
        if (layer, 3) in slots:
            ops.append(("in", "read", f.mlp(mh.model, layer), (layer, 3)))
        ops.append(("out", "set", f.mlp(mh.model, layer), mlp.to(device)))
    return _trace(mh, f, ids, ops, norm, pair_idx, cols)


def _receiver_run(mh: ModelHandle, f: Any, ids: torch.Tensor, pair_idx: torch.Tensor,
                  chunk: list[tuple[int, int, int]], recv: list[_Node], recorded: dict,
                  norm: dict | None, cols: torch.Tensor | None) -> torch.Tensor:
    """One trace of ``ids`` ``[rows, seq]``: row r (pair i, sender k, receiver j in ``chunk``)
    with receiver j's input replaced by its recorded value.  Returns last-position logits."""
    device, seq, ops = mh.device, ids.shape[1], []
    for sl in sorted({recv[j].slot(f) for _, _, j in chunk}):
        where, vals = [], []  # (row, position, first column) and the values, per patched token
        for r, (i, k, j) in enumerate(chunk):
            if recv[j].slot(f) == sl:
                where += [(r, p, recv[j].columns(f).start) for p in recv[j].pos(seq)]
                vals.append(recorded[j][i, k])
        rows, pos, start = torch.tensor(where, device=device).T
        columns = start[:, None] + torch.arange(f.d_model if sl[1] == 3 else f.d_head, device=device)
        ops.append(("in" if sl[1] == 3 else "out", "patch", _module(mh, f, sl),
                    ((rows[:, None], pos[:, None], columns), torch.cat(vals).to(device))))
    return _trace(mh, f, ids, ops, norm, pair_idx, cols)[1]


def _trace(mh: ModelHandle, f: Any, ids: torch.Tensor, ops: list, norm: dict | None,
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
