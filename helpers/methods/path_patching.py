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
     ``n_heads / n_kv_heads`` query heads, and "an edge into a head's keys" has two meanings:
     ``"L3KV0.k"``, the key/value head's input as every query head of its group reads it (one
     patch, all of them see it), and ``"L3H1.k"``, the keys *as read by query head 1 only* (as
     MIB scores edges, key/value heads ungrouped): in the receiver run the other query heads of
     the group get their base-run outputs back, so only head 1 sees the patched keys (the
     batched method runs these);
   * ``"mlp2.in"``: the input of block 2's MLP module, i.e. after the MLP's own norm (GPT-2
     ``ln_2``, Llama ``post_attention_layernorm``, Gemma ``pre_feedforward_layernorm``) of the
     stream after the block's attention (GPT-NeoX's parallel residual: of the block's input);
   * ``"logits"``: the final residual stream (the last block's output).
3. **Receiver run**: the base prompt again with only R's input (at R's positions) replaced by the
   recorded value.  Its metrics are the result.  For ``"logits"`` it is the final norm and
   unembedding of the recorded stream: the sender run's own logits.

Senders: ``"embed"``, a head ``"L0H3"``, all heads of a block ``"attn2"``, an MLP ``"mlp2"``;
``"heads"`` / ``"all"``: every head / component before every receiver; ``"L5H6+L8H1"`` a group
whose members take their source values together (one sender, e.g. redundant heads).  A q/k/v receiver in block L
takes senders from earlier blocks, an MLP receiver also its own block's heads (not with a parallel
residual).  Positions (indices or roles) restrict either side: ``"L0H3@S2"``, ``"L3H0.q@END"``,
``"mlp1@3,4"`` (default: every position); ``"logits"`` takes none.

``later="frozen"`` (q/k/v receivers): in the receiver run only the receiving heads recompute (a
query: that query head; a shared key/value head: every query head of its group; ``"L3H1.k"``:
head 1), and their output change at the last position goes straight into the final stream:
every other head and MLP after them keeps its base value (a joint receiver: each part alone,
the changes added).  The path is then sender -> receiver -> logits and nothing else; with
``"recompute"`` (default, Wang et al.) everything after the receiver recomputes.  Batched.

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

from helpers.base.validate import as_count, norm_index
from helpers.data.prompts import PromptPairs
from helpers.engine.fastpatch import cache_runs, supports_fast_path
from helpers.engine.fastpaths import path_logits
from helpers.engine.memory import sweep_budget_mb
from helpers.engine.runs import cache_activations, check_pairs
from helpers.methods.path_runs import frozen_receiver_run, receiver_run, sender_run
from helpers.models.loaded import handle
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
    query_head: int | None = None  # k/v read by this query head only (grouped-query attention)
    parts: tuple = ()  # a joint receiver's parts, patched together in one receiver run

    @property
    def pieces(self) -> tuple:
        """The receivers patched in this node's receiver run: its parts, or itself."""
        return self.parts or (self,)

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
                "a key/value head's 'L3KV0.k'), an MLP's input 'mlp2.in', or 'logits'"}


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
        if g[1] == "KV" and kind == "q":
            raise ValueError(f"receiver {name!r}: queries belong to query heads: write 'L{layer}H0.q'")
        if shared and g[1] == "H":  # the key/value head's input as read by this query head only
            head = norm_index(int(g[2]), f.n_heads, "head", "heads per layer")
            return _Node(kind, layer, head * f.n_kv_heads // f.n_heads, positions,
                         f"L{layer}H{head}.{kind}{at}", (layer, 0), head)
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


def _joint(item: str, default_pos: Positions, pairs: PromptPairs, f: Any, sender: bool = False) -> _Node:
    """A joint receiver ``"L23H0.q@END+L23H1.q@END"`` (its parts patched together in one receiver
    run) or a joint sender ``"L5H6+L8H1"`` (its parts take their source values together)."""
    pieces = item.split("+")
    odd = next((i for i, x in enumerate(pieces[1:], 1) if not x.strip()[:1].isalpha()), None)
    if odd is not None and "@" in pieces[odd - 1]:  # "@S1+1": a position arithmetic, not a join
        raise ValueError(f"{'sender' if sender else 'receiver'} {item!r}: '+' joins components, and "
                         f"'{pieces[odd - 1].partition('@')[2]}+{pieces[odd]}' is not a role of these "
                         f"prompts (roles: {sorted(pairs.positions)}): give the token index instead, e.g. "
                         f"'@{pairs.positions.get('S1', 0) + 1}' for the token after S1")
    parts = tuple(_parse(x.strip(), default_pos, pairs, f, sender) for x in pieces)
    labels = [x.label for x in parts]
    if len(set(labels)) < len(labels) or any(x.kind in ("logits", "embed") for x in parts):
        raise ValueError(f"joint {'sender' if sender else 'receiver'} {item!r}: join distinct "
                         + ("heads, attention or MLP outputs" if sender else
                            "head or MLP inputs, without 'logits' (every path ends there anyway)")
                         + " with '+'")
    if sender:  # it must come before a receiver as a whole: its latest part counts
        return _Node("joint", max(x.layer for x in parts), None, None, "+".join(labels),
                     max(x.order for x in parts), parts=parts)
    return _Node("joint", min(x.layer for x in parts), None, None, "+".join(labels),
                 min(x.order for x in parts), parts=parts)


def _plan(pairs: PromptPairs, f: Any, senders: Any, receivers: Any, sender_positions: Positions,
          receiver_positions: Positions) -> tuple[list[_Node], list[_Node]]:
    """The checked senders and receivers (every sender before every receiver)."""
    receivers = [receivers] if isinstance(receivers, str) else list(receivers)
    recv = [_joint(r, receiver_positions, pairs, f) if isinstance(r, str) and "+" in r
            else _parse(r, receiver_positions, pairs, f, False) for r in receivers]
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
        elif isinstance(s, str) and "+" in s:
            send.append(_joint(s, sender_positions, pairs, f, sender=True))
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


def path_patch(model: Any, pairs: PromptPairs, senders: str | Sequence[str],
               receivers: str | Sequence[str],
               direction: Literal["denoise", "noise"] = "denoise", *,
               sender_positions: Positions = None, receiver_positions: Positions = None,
               final_norm: Literal["live", "frozen"] = "live", method: Literal["fast", "batched"] = "fast",
               later: Literal["recompute", "frozen"] = "recompute",
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
                                 ("final_norm", final_norm, ("live", "frozen")),
                                 ("later", later, ("recompute", "frozen"))):
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
    if method == "fast" and (not supports_fast_path(mh, pairs.seq_len) or later == "frozen"
                             or any(x.query_head is not None for r in recv for x in r.pieces)):
        method = "batched"  # the fast path computes GPT-2's and Llama-style blocks, shared k/v only

    n, seq = len(pairs), pairs.seq_len
    base_ids, src_ids = ((pairs.corrupted_ids, pairs.clean_ids) if direction == "denoise"
                         else (pairs.clean_ids, pairs.corrupted_ids))
    sites = [("embed", None)] + [(s, L) for L in range(f.n_layers) for s in ("head", "mlp")]
    if method == "fast":  # both runs in one forward; the base run's cache serves the receiver runs
        cache, src, src_logits = cache_runs(mh, base_ids, src_ids, sites)
        base, base_logits = cache.acts, cache.logits
    else:
        (base, base_logits), (src, src_logits) = (cache_activations(mh, i, sites) for i in (base_ids, src_ids))
    clean_logits, bad_logits = (src_logits, base_logits) if direction == "denoise" else (base_logits, src_logits)
    norm = None
    if final_norm == "frozen":  # the base run's final norm input, output and frozen linear part
        mod, ids = f.final_norm(mh.model), base_ids.to(mh.device)
        with torch.no_grad(), mh.model.trace(ids, logits_to_keep=1, use_cache=False):
            x, y = mod.input.clone().save(), mod.output.clone().save()
        centre, scale = f.norm_linear_part(f.final_norm(mh.hf), x)
        norm = {"x": x, "y": y, "centre": centre, "scale": scale}
    final_x = None
    if later == "frozen":  # the base run's final stream at the last position, [n, d_model]
        mod, ids = f.final_norm(mh.model), base_ids.to(mh.device)
        with torch.no_grad(), mh.model.trace(ids, logits_to_keep=1, use_cache=False):
            last = mod.input[:, -1].clone().save()
        final_x = last
    two = metrics == ("logit_diff",)  # then only the answer and distractor logits are read
    cols = torch.stack([pairs.answer_ids, pairs.distractor_ids], 1)

    def store(pair_idx: torch.Tensor, snd_idx: torch.Tensor, rcv_idx: Any, logits: torch.Tensor) -> None:
        got = {"logit_diff": logits[:, 0] - logits[:, 1]} if two else metrics_of(
            logits, pairs, clean_logits, pair_idx)
        for m in metrics:
            values[m][pair_idx, snd_idx, rcv_idx] = got[m].to(values[m].dtype).cpu()

    size = torch.finfo(f.dtype).bits // 8  # bytes per row: a forward, frozen values, reads
    # every metric: a row's vocabulary of logits lives ~8 times at once (the base run's, the
    # receiver run's, the softmax and KL temporaries; measured on GPT-2 small, 1.56 MB a row)
    forward = size * (seq * (8 * f.d_model + 4 * f.n_heads * seq) + (3 if two else 8) * f.vocab_size)
    frozen = size * seq * f.n_layers * (f.n_heads * f.d_head + f.d_model)
    slots = sorted({x.slot(f) for r in recv for x in r.pieces if r.kind != "logits"})
    read = size * seq * len(slots) * 3 * max(f.d_model, f.n_heads * f.d_head)
    budget = memory_mb if memory_mb is not None else sweep_budget_mb(base_logits.device)

    def chunks(jobs: list, per_row: int) -> list[list]:
        k = batch_size or max(1, int(budget * 2**20 // per_row))
        return [jobs[j: j + k] for j in range(0, len(jobs), k)]

    values = {m: torch.zeros(n, len(send), len(recv), dtype=base_logits.dtype) for m in metrics}
    jobs = [(i, k) for k in range(len(send)) for i in range(n)]
    if method == "fast":  # no sender forward pass; receiver runs from the cached base run
        for cells in path_logits(mh, cache, src, send, recv, pairs.first_difference,
                                 chunks(jobs, forward), norm, cols if two else None):
            store(*cells)
    recorded: dict[tuple, torch.Tensor] = {}  # (receiver, part) -> [n, n_senders, positions, width]
    for chunk in chunks(jobs, forward + frozen + read) if method == "batched" else []:
        pair_idx, snd_idx = torch.tensor([i for i, _ in chunk]), torch.tensor([k for _, k in chunk])
        outs, logits = sender_run(mh, f, base_ids[pair_idx], base, src, pair_idx,
                                   [send[k] for _, k in chunk], slots, norm,
                                   cols[pair_idx] if two else None)
        for j, r in enumerate(recv):
            if r.kind == "logits":
                store(pair_idx, snd_idx, j, logits)
                continue
            for q, x in enumerate(r.pieces):
                out = outs[x.slot(f)][:, x.pos(seq), x.columns(f)]
                if (j, q) not in recorded:
                    recorded[(j, q)] = torch.zeros(n, len(send), *out.shape[1:], dtype=out.dtype)
                recorded[(j, q)][pair_idx, snd_idx] = out.cpu()
    patched = sorted({j for j, _ in recorded})
    for chunk in chunks([(i, k, j) for j in patched for k in range(len(send)) for i in range(n)], forward):
        pair_idx = torch.tensor([i for i, _, _ in chunk])
        run = receiver_run if final_x is None else (
            lambda *a: frozen_receiver_run(*a[:8], final_x, *a[8:]))
        logits = run(mh, f, base_ids[pair_idx], pair_idx, chunk, recv, recorded, base,
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
    result.remote, result.final_norm, result.later = False, final_norm, later
    return result
