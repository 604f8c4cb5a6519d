"""Activation patching sweeps: denoising and noising, batched, with labelled results.

Vocabulary (used the same way in every notebook):

* **denoising** - run the *corrupted* prompt and patch in activations from the
  *clean* run: does this component *suffice* to bring the clean behaviour back?
* **noising** - run the *clean* prompt and patch in activations from the
  *corrupted* run: is this component *necessary* for the clean behaviour?

A *site* is where activations are replaced:

=========  ==========================================  ============================
site       module (GPT-2 names)                        shape patched
=========  ==========================================  ============================
``resid``  row 0: ``transformer.drop`` output (the      ``[batch, seq, d_model]``
           embeddings, block 0's input); row L>=1:
           ``transformer.h[L-1]`` output
``attn``   ``transformer.h[L].attn`` output[0]          ``[batch, seq, d_model]``
``mlp``    ``transformer.h[L].mlp`` output              ``[batch, seq, d_model]``
``head``   head h's slice of ``h[L].attn.c_proj``'s     ``[batch, seq, d_head]``
           input (``h*d_head:(h+1)*d_head``)
=========  ==========================================  ============================

Each sweep runs many patches per forward pass (one batch row per patch, the
rows chunked to a memory budget), reads only the last position's logits, and
skips positions before the first token where the prompts differ: activations
there are identical in both runs, so patching them changes nothing and their
result is the unpatched baseline exactly.  ``method="loop"`` runs the textbook
version instead - one traced forward pass per patch - for teaching and as a
reference.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import torch

from helpers.fastpatch import cache_base_run, run_patch_sets, supports_fast_path
from helpers.metrics import METRICS, answer_prob, kl_to_clean, logit_diff, mean_and_sem, normalised
from helpers.models import hf_model, model_facts
from helpers.prompts import PromptError, PromptPairs
from helpers.validate import as_index, check_finite, check_ids, first_non_finite, json_text, norm_index

__all__ = ["Patch", "PatchResult", "Direction", "SITES", "patch_residual", "patch_attn_out",
           "patch_mlp_out", "patch_heads", "patch_components", "sweep", "run_with_patches",
           "baselines", "cache_activations", "locate_non_finite", "DEFAULT_MEMORY_MB"]

Direction = Literal["denoise", "noise"]
SITES = ("resid", "attn", "mlp", "head")
DEFAULT_MEMORY_MB = 512


@dataclass(frozen=True)
class Patch:
    """One patch: replace ``site`` at ``layer`` (and ``position``, ``head``) with the source run's value.

    ``position=None`` patches every position; ``head`` is required for ``site="head"``.
    For ``site="resid"``, ``layer`` is the residual-stream row: 0 = embeddings,
    L = output of block L-1 (so ``n_layers`` is the last block's output).
    """

    site: str
    layer: int
    position: int | None = None
    head: int | None = None

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise ValueError(f"unknown site {self.site!r}; choose one of {SITES}")
        object.__setattr__(self, "layer", as_index(self.layer, "layer"))
        for name in ("position", "head"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, as_index(value, name))
        if self.site == "head" and self.head is None:
            raise ValueError("site 'head' needs head=: Patch('head', layer, position, head)")
        if self.site != "head" and self.head is not None:
            raise ValueError(f"head= only applies to site 'head', not {self.site!r}")

    def label(self) -> str:
        where = "all" if self.position is None else str(self.position)
        if self.site == "head":
            return f"L{self.layer}H{self.head}@{where}"
        return f"{self.site}{self.layer}@{where}"


# --------------------------------------------------------------------------- validation

def _rows(site: str, n_layers: int) -> int:
    """How many layer indices a site has: residual rows 0 (embeddings) .. n_layers, else blocks."""
    return n_layers + 1 if site == "resid" else n_layers


def _normalise_patch(p: Patch, n_layers: int, n_heads: int, seq: int) -> Patch:
    """``p`` with every index checked and made non-negative (Python's meaning of negatives)."""
    what = ("residual rows, 0 = embeddings and L = output of block L-1," if p.site == "resid"
            else "blocks in this model")
    layer = norm_index(p.layer, _rows(p.site, n_layers), "layer", what)
    position = None if p.position is None else norm_index(p.position, seq, "position",
                                                           "token positions in these prompts")
    head = None if p.head is None else norm_index(p.head, n_heads, "head", "heads per layer")
    return Patch(p.site, layer, position, head)


def _site_layer(site: str, layer: Any, n_layers: int) -> tuple[str, int]:
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {SITES}")
    what = ("residual rows, 0 = embeddings and L = output of block L-1," if site == "resid"
            else "blocks in this model")
    return site, norm_index(layer, _rows(site, n_layers), "layer", what)


def _check_direction(direction: str) -> None:
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' (clean into corrupted) or 'noise' "
                         f"(corrupted into clean), got {direction!r}")


def _check_pairs(model: Any, pairs: PromptPairs) -> None:
    if not isinstance(pairs, PromptPairs):
        raise PromptError("expected a PromptPairs object (see helpers.ioi_pairs, pairs_from_prompt "
                          f"or make_pairs), got {type(pairs).__name__}")
    facts = model_facts(model)
    for run in ("clean", "corrupted"):
        try:
            check_ids(getattr(pairs, f"{run}_ids"), facts.vocab_size, facts.n_positions,
                      f"the {run} prompts' token ids")
        except ValueError as err:
            raise PromptError(str(err)) from None
    same = (pairs.clean_ids == pairs.corrupted_ids).all(1).nonzero().flatten().tolist()
    if same:
        raise PromptError(f"pair(s) {same} have identical clean and corrupted prompts "
                          f"({pairs.clean[same[0]]!r}): patching one run into the other changes "
                          "nothing. Corrupt the prompt (e.g. corruption='s2_swap').")


# --------------------------------------------------------------------------- modules

def _module(hf: Any, site: str, layer: int) -> tuple[Any, str]:
    """(nnsight/HF module, "output" | "input" | "output0") for a site."""
    t = hf.transformer
    if site == "resid":
        return (t.drop, "output") if layer == 0 else (t.h[layer - 1], "output")
    if site == "attn":
        return t.h[layer].attn, "output0"
    if site == "mlp":
        return t.h[layer].mlp, "output"
    return t.h[layer].attn.c_proj, "input"


def _order_key(site: str, layer: int) -> tuple[int, int]:
    """Forward order of sites: nnsight requires modules to be touched in this order."""
    if site == "resid":
        return (layer - 1, 4) if layer else (-1, 4)
    return layer, {"head": 0, "attn": 1, "mlp": 2}[site]


def _read(mod: Any, kind: str) -> torch.Tensor:
    if kind == "output0":
        return mod.output[0]
    return mod.input if kind == "input" else mod.output


def _write(mod: Any, kind: str, value: torch.Tensor) -> None:
    if kind == "output0":
        mod.output = (value,) + tuple(mod.output[1:])
    elif kind == "input":
        mod.input = value
    else:
        mod.output = value


def cache_activations(model: Any, ids: torch.Tensor, sites: Iterable[tuple[str, int]]
                      ) -> tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor]:
    """Run ``ids`` ``[batch, seq]`` once; return ({(site, layer): activation}, last logits).

    Activations are ``[batch, seq, d_model]`` (``head`` sites: the whole c_proj
    input ``[batch, seq, n_heads * d_head]``); logits are ``[batch, vocab]``.
    Layers may be negative (Python's meaning); the keys use the non-negative index.
    """
    facts = model_facts(model)
    ids = check_ids(ids, facts.vocab_size, facts.n_positions)
    sites = sorted({_site_layer(site, layer, facts.n_layers) for site, layer in sites},
                   key=lambda s: _order_key(*s))
    cache: dict[tuple[str, int], torch.Tensor] = {}
    with torch.no_grad(), model.trace(ids.to(facts.device), logits_to_keep=1, use_cache=False):
        for site, layer in sites:
            mod, kind = _module(model, site, layer)
            cache[(site, layer)] = _read(mod, kind).clone().save()
        logits = model.lm_head.output[:, -1].clone().save()
    check_finite(logits, "the logits of this forward pass", lambda: locate_non_finite(model, ids))
    return cache, logits


def locate_non_finite(model: Any, ids: torch.Tensor) -> str | None:
    """The first module, in forward order, whose output holds a NaN or infinity for ``ids``
    ``[batch, seq]`` (or None if every output is finite), e.g. ``"block 1 MLP output
    (transformer.h[1].mlp)"``."""
    facts = model_facts(model)
    t = model.transformer
    named = []
    with torch.no_grad(), model.trace(ids.to(facts.device), use_cache=False):
        named.append(("the embeddings (transformer.drop)", t.drop.output.save()))
        for layer in range(facts.n_layers):
            named.append((f"block {layer} attention output (transformer.h[{layer}].attn)",
                          t.h[layer].attn.output[0].save()))
            named.append((f"block {layer} MLP output (transformer.h[{layer}].mlp)",
                          t.h[layer].mlp.output.save()))
        named.append(("the final layer norm (transformer.ln_f)", t.ln_f.output.save()))
        named.append(("the unembedding (lm_head)", model.lm_head.output.save()))
    return first_non_finite(named)


def run_with_patches(model: Any, ids: torch.Tensor, source: dict[tuple[str, int], torch.Tensor],
                     patch_sets: Sequence[Sequence[Patch]], source_rows: torch.Tensor | None = None,
                     all_logits: bool = False) -> torch.Tensor:
    """One traced forward pass over ``len(patch_sets)`` rows: row r runs ``ids[r]``
    with every patch in ``patch_sets[r]`` taken from ``source[...][source_rows[r]]``.

    ``ids``: ``[rows, seq]``; ``source``: as returned by ``cache_activations``.
    Returns the last position's logits, ``[rows, vocab]``.  ``all_logits=True``
    lets the model compute the logits of every position, as a plain forward pass
    does (the textbook loop), and keeps the last.
    """
    facts = model_facts(model)
    ids = check_ids(ids, facts.vocab_size, facts.n_positions)
    rows = len(patch_sets)
    seq = ids.shape[1]
    if rows != ids.shape[0]:
        raise ValueError(f"{rows} patch sets for {ids.shape[0]} rows of ids: give one set per row")
    patch_sets = [[_normalise_patch(p, facts.n_layers, facts.n_heads, seq) for p in s]
                  for s in patch_sets]
    src_rows = torch.arange(rows) if source_rows is None else source_rows.cpu()
    # (site, layer) -> lists of (row, position or None, head or None)
    todo: dict[tuple[str, int], list[tuple[int, int | None, int | None]]] = {}
    for r, patches in enumerate(patch_sets):
        for p in patches:
            todo.setdefault((p.site, p.layer), []).append((r, p.position, p.head))
    plans = []
    for key in sorted(todo, key=lambda k: _order_key(*k)):
        r_idx, p_idx, h_idx = [], [], []
        for r, pos, head in todo[key]:
            positions = range(seq) if pos is None else [pos]
            for q in positions:
                r_idx.append(r), p_idx.append(q), h_idx.append(head)
        r_t = torch.tensor(r_idx, device=facts.device)
        p_t = torch.tensor(p_idx, device=facts.device)
        s_t = src_rows[r_idx].to(facts.device)
        h_t = torch.tensor(h_idx, device=facts.device) if key[0] == "head" else None
        value = source[key].to(facts.device)
        if h_t is not None:
            value = value.view(*value.shape[:2], facts.n_heads, facts.d_head)[s_t, p_t, h_t]
        else:
            value = value[s_t, p_t]
        plans.append((key, r_t, p_t, h_t, value))
    keep = {} if all_logits else {"logits_to_keep": 1, "use_cache": False}
    with torch.no_grad(), model.trace(ids.to(facts.device), **keep):
        for (site, layer), r_t, p_t, h_t, value in plans:
            mod, kind = _module(model, site, layer)
            act = _read(mod, kind).clone()
            if h_t is not None:
                act.view(*act.shape[:2], facts.n_heads, facts.d_head)[r_t, p_t, h_t] = value
            else:
                act[r_t, p_t] = value
            _write(mod, kind, act)
        logits = model.lm_head.output[:, -1].clone().save()
    check_finite(logits, "the logits of the patched runs")
    return logits


# --------------------------------------------------------------------------- results

@dataclass
class PatchResult:
    """What a sweep returns: per-prompt values on named axes, plus everything
    needed to plot, tabulate and save it without recomputing.

    ``values[metric]`` is ``[n_prompts, *shape]`` where ``shape`` follows
    ``dims`` (e.g. ``("layer", "position")``) and ``labels[dim]`` names every
    entry of that axis.  ``clean[metric]`` and ``corrupted[metric]`` are the
    unpatched baselines, ``[n_prompts]``.
    """

    site: str
    direction: str
    dims: tuple[str, ...]
    labels: dict[str, list[str]]
    values: dict[str, torch.Tensor]
    clean: dict[str, torch.Tensor]
    corrupted: dict[str, torch.Tensor]
    prompts: PromptPairs
    model_name: str
    method: str = "fast"
    metric: str = "logit_diff"
    patches: list[list[Patch]] = field(default_factory=list, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.labels[d]) for d in self.dims)

    def mean(self, metric: str | None = None) -> torch.Tensor:
        """Mean over prompts of the raw metric: ``[*shape]``."""
        return self.values[metric or self.metric].mean(0)

    def baseline(self, run: str, metric: str | None = None) -> float:
        """Mean over prompts of the clean or corrupted run's metric."""
        return (self.clean if run == "clean" else self.corrupted)[metric or self.metric].mean().item()

    def score(self, metric: str | None = None, min_gap: float | None = None) -> torch.Tensor:
        """Normalised score of the prompt-mean: 0 = corrupted run, 1 = clean run; ``[*shape]``."""
        m = metric or self.metric
        return normalised(self.mean(m), self.baseline("clean", m), self.baseline("corrupted", m), m,
                          min_gap)

    def effect(self, metric: str | None = None) -> torch.Tensor:
        """Raw effect of the patch: patched minus the run that was patched into; ``[*shape]``."""
        m = metric or self.metric
        base = "corrupted" if self.direction == "denoise" else "clean"
        return self.mean(m) - self.baseline(base, m)

    def title(self, metric: str | None = None, normalise: bool = True) -> str:
        what = {"resid": "residual stream", "attn": "attention output", "mlp": "MLP output",
                "head": "attention heads", "set": "component sets"}.get(self.site, self.site)
        how = ("denoising (clean -> corrupted run)" if self.direction == "denoise"
               else "noising (corrupted -> clean run)")
        m = metric or self.metric
        val = f"normalised {m} (1 = clean, 0 = corrupted)" if normalise else f"mean {m}"
        return f"{what}: {how}\n{val}, {len(self.prompts)} prompt pair(s)"

    def to_frame(self, min_gap: float | None = None):
        """A tidy ``pandas.DataFrame``: one row per component per prompt, a column per
        metric (raw values and ``<metric>_normalised`` per prompt where the gap allows)."""
        import itertools

        import pandas as pd

        n = len(self.prompts)
        grids = list(itertools.product(*[range(len(self.labels[d])) for d in self.dims]))
        cols: dict[str, list] = {"prompt": [], **{d: [] for d in self.dims},
                                 **{f"{d}_index": [] for d in self.dims}}
        for i in range(n):
            for idx in grids:
                cols["prompt"].append(i)
                for d, j in zip(self.dims, idx):
                    cols[d].append(self.labels[d][j])
                    cols[f"{d}_index"].append(j)
        for m, v in self.values.items():
            cols[m] = v.reshape(n, -1).flatten().tolist()
            try:
                s = normalised(v.reshape(n, -1), self.clean[m][:, None], self.corrupted[m][:, None],
                               m, min_gap)
                cols[f"{m}_normalised"] = s.flatten().tolist()
            except ValueError:
                pass
        frame = pd.DataFrame(cols)
        frame.insert(0, "direction", self.direction)
        frame.insert(0, "site", self.site)
        return frame

    def to_dict(self, min_gap: float | None = None) -> dict:
        """A JSON-ready summary: axes, prompt-mean grids of every metric, the normalised
        score where defined, baselines with standard errors, and the prompts."""
        out: dict[str, Any] = {
            "site": self.site, "direction": self.direction, "metric": self.metric,
            "model": self.model_name, "method": self.method, "dims": list(self.dims),
            "labels": self.labels, "n_prompts": len(self.prompts),
            "prompts": {"clean": self.prompts.clean, "corrupted": self.prompts.corrupted,
                        "answers": self.prompts.answers, "distractors": self.prompts.distractors,
                        "positions": self.prompts.positions},
            "mean": {m: _round(self.mean(m)) for m in self.values},
            "baselines": {run: {m: dict(zip(("mean", "sem"), map(_r, mean_and_sem(v[m]))))
                                for m in v} for run, v in (("clean", self.clean),
                                                           ("corrupted", self.corrupted))},
        }
        try:
            out["score"] = _round(self.score(min_gap=min_gap))
        except ValueError as err:
            out["score"] = None
            out["score_error"] = str(err)
        return out

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write ``to_dict()`` to ``path`` (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json_text(self.to_dict()))
        return path


def _r(x: float) -> float:
    return float(f"{x:.6g}") if math.isfinite(x) else x


def _round(t: torch.Tensor) -> Any:
    return [_round(x) for x in t] if t.dim() else _r(t.item())


# --------------------------------------------------------------------------- sweeps

def _metrics(logits: torch.Tensor, pairs: PromptPairs, clean_logits: torch.Tensor,
             rows_pair: torch.Tensor) -> dict[str, torch.Tensor]:
    a = pairs.answer_ids.to(logits.device)[rows_pair]
    d = pairs.distractor_ids.to(logits.device)[rows_pair]
    return {"logit_diff": logit_diff(logits, a, d), "answer_prob": answer_prob(logits, a),
            "kl_to_clean": kl_to_clean(logits, clean_logits[rows_pair])}


def baselines(model: Any, pairs: PromptPairs, clean_logits: torch.Tensor | None = None,
              corrupted_logits: torch.Tensor | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Unpatched metrics of the clean and corrupted runs: {"clean"|"corrupted": {metric: [N]}}.
    Pass the runs' last-position logits ``[N, vocab]`` if you have them already."""
    _check_pairs(model, pairs)
    if clean_logits is None:
        clean_logits = cache_activations(model, pairs.clean_ids, [])[1]
    if corrupted_logits is None:
        corrupted_logits = cache_activations(model, pairs.corrupted_ids, [])[1]
    rows = torch.arange(len(pairs), device=clean_logits.device)
    return {"clean": _metrics(clean_logits, pairs, clean_logits, rows),
            "corrupted": _metrics(corrupted_logits, pairs, clean_logits, rows)}


def _rows_per_chunk(model: Any, seq: int, memory_mb: float) -> int:
    f = model_facts(model)
    size = torch.finfo(f.dtype).bits // 8
    # activations alive during a forward (a few per layer, plus eager attention scores)
    # and the last position's logits and softmax, per batch row
    per_row = size * (seq * (8 * f.d_model + 4 * f.n_heads * seq) + 3 * f.vocab_size)
    return max(1, int(memory_mb * 2**20 // per_row))


def sweep(model: Any, pairs: PromptPairs, patch_sets: Sequence[Sequence[Patch]],
          direction: Direction = "denoise", *, dims: tuple[str, ...] = ("set",),
          labels: dict[str, list[str]] | None = None, site: str = "set",
          method: Literal["fast", "batched", "loop"] = "fast", memory_mb: float = DEFAULT_MEMORY_MB,
          batch_size: int | None = None, progress: bool | None = None,
          metrics: Sequence[str] = METRICS, metric: str = "logit_diff") -> PatchResult:
    """Patch each set in ``patch_sets`` (jointly within a set), for every prompt pair.

    The result's values have shape ``[n_prompts, *shape]`` where ``shape`` is
    ``dims``' sizes (their product must equal ``len(patch_sets)``, in row-major
    order).  Methods, all exact:

    * ``"fast"`` (default): start each patched run at its first patched layer and
      position from the cached unpatched run (``helpers.fastpatch``);
    * ``"batched"``: many whole patched forward passes per nnsight trace;
    * ``"loop"``: the textbook loop, one plain traced forward pass per patch set
      (no shortcut at all: every position, all logits).

    ``batch_size`` (rows per forward) defaults to what fits in ``memory_mb``.
    ``metrics`` chooses which patched values are computed; ``("logit_diff",)``
    lets the fast path compute just the two logits it needs (the baselines
    always carry every metric).  ``metric`` is the one the result's ``score()``,
    ``mean()``, titles and plots use by default.
    """
    _check_direction(direction)
    _check_pairs(model, pairs)
    if method not in ("fast", "batched", "loop"):
        raise ValueError(f"method must be 'fast', 'batched' or 'loop', got {method!r}")
    if not metrics or set(metrics) - set(METRICS):
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics!r}")
    metrics = tuple(m for m in METRICS if m in metrics)
    if metric not in metrics:
        raise ValueError(f"metric {metric!r} is not among the computed metrics {metrics}")
    facts = model_facts(model)
    n, seq = len(pairs), pairs.seq_len
    if isinstance(patch_sets, Patch) or any(isinstance(s, Patch) for s in patch_sets):
        raise ValueError("patch_sets is a list of patch sets (lists of Patch): wrap a single "
                         "set as [[Patch(...), ...]] or use patch_components")
    patch_sets = [[_normalise_patch(p, facts.n_layers, facts.n_heads, seq) for p in s]
                  for s in patch_sets]
    if not patch_sets:
        raise ValueError("no patch sets to run: give at least one")
    labels = labels or {"set": [" + ".join(p.label() for p in s) or "(none)" for s in patch_sets]}
    base_ids = pairs.corrupted_ids if direction == "denoise" else pairs.clean_ids
    src_ids = pairs.clean_ids if direction == "denoise" else pairs.corrupted_ids
    needed = {(p.site, p.layer) for s in patch_sets for p in s}
    if method == "fast" and not supports_fast_path(model):
        method = "batched"
    source, src_logits = cache_activations(model, src_ids, needed)
    base_cache = cache_base_run(model, base_ids) if method == "fast" else None
    if base_cache is not None:
        check_finite(base_cache.logits, "the logits of the unpatched run",
                     lambda: locate_non_finite(model, base_ids))
    base_logits = base_cache.logits if base_cache else cache_activations(model, base_ids, [])[1]
    clean_logits = src_logits if direction == "denoise" else base_logits
    rows_all = torch.arange(n, device=clean_logits.device)
    clean_m = _metrics(clean_logits, pairs, clean_logits, rows_all)
    bad_m = _metrics(src_logits if direction == "noise" else base_logits, pairs, clean_logits, rows_all)
    base_m = bad_m if direction == "denoise" else clean_m

    # A patch set whose positions all lie before the first difference changes nothing.
    first = pairs.first_difference
    live = [k for k, s in enumerate(patch_sets)
            if any(p.position is None or p.position >= first for p in s)]
    k_total = len(patch_sets)
    values = {m: base_m[m][:, None].repeat(1, k_total).clone() for m in metrics}
    two_logits = metrics == ("logit_diff",)
    answer_pairs = torch.stack([pairs.answer_ids, pairs.distractor_ids], 1)
    if method == "loop":  # the textbook loop: every patch, one plain forward each
        chunks = [[(i, k) for i in range(n)] for k in range(k_total)]
    else:
        jobs = [(i, k) for k in live for i in range(n)]  # (pair, patch set)
        size = batch_size or _rows_per_chunk(model, seq, memory_mb)
        chunks = [jobs[j: j + size] for j in range(0, len(jobs), size)]
    bar = _progress(len(chunks), progress, f"{site} {direction}")
    for chunk in chunks:
        pair_idx = torch.tensor([i for i, _ in chunk])
        sets = [patch_sets[k] for _, k in chunk]
        if base_cache is not None and two_logits:  # only the answer and distractor logits
            both = run_patch_sets(model, base_cache, source, sets, pair_idx, first,
                                  answer_pairs[pair_idx])
            got = {"logit_diff": both[:, 0] - both[:, 1]}
        else:
            logits = (run_patch_sets(model, base_cache, source, sets, pair_idx, first)
                      if base_cache is not None else
                      run_with_patches(model, base_ids[pair_idx], source, sets, pair_idx,
                                       all_logits=method == "loop"))
            got = _metrics(logits, pairs, clean_logits, pair_idx.to(logits.device))
        for m in metrics:
            check_finite(got[m], f"the patched {m} values ({sets[0][0].label()} ...)")
        set_idx = torch.tensor([k for _, k in chunk])
        for m in metrics:
            values[m][pair_idx.to(values[m].device), set_idx.to(values[m].device)] = got[m]
        bar.update(1)
    bar.close()
    shape = tuple(len(labels[d]) for d in dims)
    if math.prod(shape) != k_total:
        raise ValueError(f"dims {dims} with sizes {shape} do not match {k_total} patch sets")
    return PatchResult(site=site, direction=direction, dims=dims, labels=labels,
                       values={m: v.reshape(n, *shape).cpu() for m, v in values.items()},
                       clean={m: v.cpu() for m, v in clean_m.items()},
                       corrupted={m: v.cpu() for m, v in bad_m.items()}, prompts=pairs,
                       model_name=facts.name, method=method, metric=metric,
                       patches=[list(s) for s in patch_sets])


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, progress: bool | None, desc: str) -> Any:
    """A ``tqdm.auto`` bar for sweeps of several chunks; off when ``progress=False``
    or when the environment sets ``PATCHLAB_PROGRESS=0`` (headless runs, tests)."""
    if progress is None:
        progress = total > 1 and os.environ.get("PATCHLAB_PROGRESS", "1") != "0"
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def _layer_labels(n: int, resid: bool = False) -> list[str]:
    return (["embed"] + [f"L{i}" for i in range(n)]) if resid else [f"L{i}" for i in range(n)]


def _grid(model: Any, pairs: PromptPairs, site: str, direction: Direction,
          by_position: bool, **kw: Any) -> PatchResult:
    f = model_facts(model)
    seq = pairs.seq_len
    rows = f.n_layers + 1 if site == "resid" else f.n_layers
    layer_lab = _layer_labels(f.n_layers, site == "resid")
    if site == "head":
        heads = [(l, h) for l in range(f.n_layers) for h in range(f.n_heads)]
        if by_position:
            sets = [[Patch("head", l, q, h)] for l, h in heads for q in range(seq)]
            dims = ("layer", "head", "position")
        else:
            sets = [[Patch("head", l, None, h)] for l, h in heads]
            dims = ("layer", "head")
        labels = {"layer": layer_lab, "head": [f"H{h}" for h in range(f.n_heads)],
                  "position": pairs.position_labels}
    else:
        sets = [[Patch(site, l, q)] for l in range(rows) for q in range(seq)]
        dims = ("layer", "position")
        labels = {"layer": layer_lab, "position": pairs.position_labels}
    labels = {d: labels[d] for d in dims}
    return sweep(model, pairs, sets, direction, dims=dims, labels=labels, site=site, **kw)


def patch_residual(model: Any, pairs: PromptPairs, direction: Direction = "denoise",
                   **kw: Any) -> PatchResult:
    """Residual stream by layer x position: ``[n_prompts, n_layers + 1, seq]``.

    Row 0 (``"embed"``) is the embeddings (block 0's input); row L is the output
    of block L-1.  Keyword options as for ``sweep``.
    """
    return _grid(model, pairs, "resid", direction, True, **kw)


def patch_attn_out(model: Any, pairs: PromptPairs, direction: Direction = "denoise",
                   **kw: Any) -> PatchResult:
    """Attention-layer output by layer x position: ``[n_prompts, n_layers, seq]``."""
    return _grid(model, pairs, "attn", direction, True, **kw)


def patch_mlp_out(model: Any, pairs: PromptPairs, direction: Direction = "denoise",
                  **kw: Any) -> PatchResult:
    """MLP output by layer x position: ``[n_prompts, n_layers, seq]``."""
    return _grid(model, pairs, "mlp", direction, True, **kw)


def patch_heads(model: Any, pairs: PromptPairs, direction: Direction = "denoise",
                by_position: bool = False, **kw: Any) -> PatchResult:
    """Every attention head: ``[n_prompts, n_layers, n_heads]`` (all positions at
    once), or ``[n_prompts, n_layers, n_heads, seq]`` with ``by_position=True``."""
    return _grid(model, pairs, "head", direction, by_position, **kw)


def patch_components(model: Any, pairs: PromptPairs, components: Sequence[Patch] | Sequence[Sequence[Patch]],
                     direction: Direction = "denoise", **kw: Any) -> PatchResult:
    """Patch one set of components jointly (a list of ``Patch``), or several sets
    (a list of lists), each set in one forward pass: ``[n_prompts, n_sets]``."""
    if components and isinstance(components[0], Patch):
        components = [components]  # type: ignore[list-item]
    return sweep(model, pairs, [list(s) for s in components], direction, **kw)
