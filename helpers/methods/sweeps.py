"""Activation patching sweeps: denoising and noising, batched, with labelled results.

Vocabulary (used the same way in every notebook):

* **denoising** - run the *corrupted* prompt and patch in activations from the
  *clean* run: does this component *suffice* to bring the clean behaviour back?
* **noising** - run the *clean* prompt and patch in activations from the
  *corrupted* run: is this component *necessary* for the clean behaviour?

A *site* is where activations are replaced (``helpers.models.anatomy``; ``Patch`` in
``helpers.engine.runs``): ``embed`` (block 0's input), ``resid`` L (block L's output), ``attn`` L,
``mlp`` L (block L's attention / MLP output) and ``head`` L, h (head h's slice of the input
of block L's attention output projection).  A residual-stream result has one row per
site in forward order: ``embed``, ``L0`` (block 0's output), ..., ``L{n_layers-1}``.

Each sweep runs many patches per forward pass (one batch row per patch, the
rows chunked to a memory budget), reads only the last position's logits, and
skips positions before the first token where the prompts differ: activations
there are identical in both runs, so patching them changes nothing and their
result is the unpatched baseline exactly.  ``method="loop"`` runs the textbook
version instead - one traced forward pass per patch - for teaching and as a
reference.

A model loaded with ``remote=True`` runs every sweep on NDIF: the fast path needs the
weights here, so sweeps run batched (``method="batched"``), each chunk of rows one NDIF
request (plus one request caching the source run and one for the unpatched run); with
``remote="local"`` the same requests go through nnsight's local dry run.  The result's
``remote`` attribute records this (``False``, ``True`` or ``"local"``).
"""
from __future__ import annotations

import math
import os
from typing import Any, Literal, Sequence

import torch

from helpers.base.fmt import layer_labels
from helpers.base.validate import check_finite
from helpers.data.prompts import PromptPairs
from helpers.engine.fastpatch import cache_runs, run_patch_sets, supports_fast_path
from helpers.engine.memory import REMOTE_BUDGET_MB, rows_per_chunk, sweep_budget_mb
from helpers.engine.runs import (SITES, Patch, cache_activations, check_pairs, locate_non_finite,
                                 normalise_patch, run_with_patches)
from helpers.models.loaded import ModelHandle, handle
from helpers.results.metrics import METRICS, Metric, metrics_of
from helpers.results.patch_result import PatchResult

__all__ = ["Patch", "PatchResult", "Direction", "SITES", "patch_residual", "patch_attn_out",
           "patch_mlp_out", "patch_heads", "patch_components", "sweep", "run_with_patches",
           "baselines", "cache_activations", "locate_non_finite", "check_direction"]

Direction = Literal["denoise", "noise"]


def check_direction(direction: str) -> None:
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' (clean into corrupted) or 'noise' "
                         f"(corrupted into clean), got {direction!r}")


# --------------------------------------------------------------------------- sweeps

def baselines(model: Any, pairs: PromptPairs, clean_logits: torch.Tensor | None = None,
              corrupted_logits: torch.Tensor | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Unpatched metrics of the clean and corrupted runs: {"clean"|"corrupted": {metric: [N]}}.
    Pass the runs' last-position logits ``[N, vocab]`` if you have them already."""
    mh = handle(model)
    check_pairs(mh, pairs)
    if clean_logits is None:
        clean_logits = cache_activations(mh, pairs.clean_ids, [])[1]
    if corrupted_logits is None:
        corrupted_logits = cache_activations(mh, pairs.corrupted_ids, [])[1]
    rows = torch.arange(len(pairs), device=clean_logits.device)
    return {"clean": metrics_of(clean_logits, pairs, clean_logits, rows),
            "corrupted": metrics_of(corrupted_logits, pairs, clean_logits, rows)}


def sweep(model: Any, pairs: PromptPairs, patch_sets: Sequence[Sequence[Patch]],
          direction: Direction = "denoise", *, dims: tuple[str, ...] = ("set",),
          labels: dict[str, list[str]] | None = None, site: str = "set",
          method: Literal["fast", "batched", "loop"] = "fast", memory_mb: float | None = None,
          batch_size: int | None = None, progress: bool | None = None,
          metrics: Sequence[Metric] = METRICS, metric: Metric = "logit_diff") -> PatchResult:
    """Patch each set in ``patch_sets`` (jointly within a set), for every prompt pair.

    The result's values have shape ``[n_prompts, *shape]`` where ``shape`` is
    ``dims``' sizes (their product must equal ``len(patch_sets)``, in row-major
    order).  Methods, all exact:

    * ``"fast"`` (default): start each patched run at its first patched layer and
      position from the cached unpatched run (``helpers.engine.fastpatch``);
    * ``"batched"``: many whole patched forward passes per nnsight trace;
    * ``"loop"``: the textbook loop, one plain traced forward pass per patch set
      (no shortcut at all: every position, all logits).

    On a remote model (``load_model(..., remote=True)`` or ``"local"``) ``"fast"`` runs
    batched (it needs the weights here) and ``"loop"`` is refused (one NDIF request per patch);
    each chunk of rows is one request, so a larger ``memory_mb`` means fewer, bigger requests.
    ``metrics=("logit_diff",)`` downloads two logits per row instead of the vocabulary.

    ``batch_size`` (rows per forward) defaults to what fits in ``memory_mb``, which defaults to
    what is free where the sweep runs (``helpers.engine.memory.sweep_budget_mb``: a quarter of the free
    memory, at most 128 MB; 512 MB for a remote model, whose chunks run on the server).
    ``metrics`` chooses which patched values are computed; ``("logit_diff",)``
    lets the fast path compute just the two logits it needs (the baselines
    always carry every metric).  ``metric`` is the one the result's ``score()``,
    ``mean()``, titles and plots use by default.
    """
    mh = handle(model)
    check_direction(direction)
    check_pairs(mh, pairs)
    if method not in ("fast", "batched", "loop"):
        raise ValueError(f"method must be 'fast', 'batched' or 'loop', got {method!r}")
    if not metrics or set(metrics) - set(METRICS):
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics!r}")
    metrics = tuple(m for m in METRICS if m in metrics)
    if metric not in metrics:
        raise ValueError(f"metric {metric!r} is not among the computed metrics {metrics}")
    facts = mh.anatomy
    remote = mh.remote
    if remote and method == "loop":
        raise ValueError("method='loop' runs one forward pass per patch, which for a model on NDIF "
                         "(remote=True) is one request per patch: use method='batched' (exact too)")
    n, seq = len(pairs), pairs.seq_len
    if isinstance(patch_sets, Patch) or any(isinstance(s, Patch) for s in patch_sets):
        raise ValueError("patch_sets is a list of patch sets (lists of Patch): wrap a single "
                         "set as [[Patch(...), ...]] or use patch_components")
    patch_sets = [[normalise_patch(p, facts, seq) for p in s] for s in patch_sets]
    if not patch_sets:
        raise ValueError("no patch sets to run: give at least one")
    labels = labels or {"set": [" + ".join(p.label() for p in s) or "(none)" for s in patch_sets]}
    base_ids = pairs.corrupted_ids if direction == "denoise" else pairs.clean_ids
    src_ids = pairs.clean_ids if direction == "denoise" else pairs.corrupted_ids
    needed = {(p.site, p.layer) for s in patch_sets for p in s}
    if method == "fast" and (remote or not supports_fast_path(mh, seq)):
        method = "batched"  # the fast path computes blocks from the weights, here
    if method == "fast":  # both runs in one traced forward
        base_cache, source, src_logits = cache_runs(mh, base_ids, src_ids, needed)  # checks its logits
    else:
        base_cache, (source, src_logits) = None, cache_activations(mh, src_ids, needed)
    base_logits = base_cache.logits if base_cache else cache_activations(mh, base_ids, [])[1]
    clean_logits = src_logits if direction == "denoise" else base_logits
    rows_all = torch.arange(n, device=clean_logits.device)
    clean_m = metrics_of(clean_logits, pairs, clean_logits, rows_all)
    bad_m = metrics_of(src_logits if direction == "noise" else base_logits, pairs, clean_logits, rows_all)
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
        if memory_mb is None:
            memory_mb = REMOTE_BUDGET_MB if remote else sweep_budget_mb(base_logits.device)
        size = batch_size or rows_per_chunk(mh.anatomy, seq, memory_mb)
        chunks = [jobs[j: j + size] for j in range(0, len(jobs), size)]
    bar = _progress(len(chunks), progress, f"{site} {direction}")
    for chunk in chunks:
        pair_idx = torch.tensor([i for i, _ in chunk])
        sets = [patch_sets[k] for _, k in chunk]
        if base_cache is not None and two_logits:  # only the answer and distractor logits
            both = run_patch_sets(mh, base_cache, source, sets, pair_idx, first,
                                  answer_pairs[pair_idx])
            got = {"logit_diff": both[:, 0] - both[:, 1]}
        elif method == "batched" and two_logits:  # the same two logits, from a whole forward
            both = run_with_patches(mh, base_ids[pair_idx], source, sets, pair_idx,
                                    columns=answer_pairs[pair_idx])
            got = {"logit_diff": both[:, 0] - both[:, 1]}
        else:
            logits = (run_patch_sets(mh, base_cache, source, sets, pair_idx, first)
                      if base_cache is not None else
                      run_with_patches(mh, base_ids[pair_idx], source, sets, pair_idx,
                                       all_logits=method == "loop"))
            got = metrics_of(logits, pairs, clean_logits, pair_idx.to(logits.device))
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
    result = PatchResult(site=site, direction=direction, dims=dims, labels=labels,
                         values={m: v.reshape(n, *shape).cpu() for m, v in values.items()},
                         clean={m: v.cpu() for m, v in clean_m.items()},
                         corrupted={m: v.cpu() for m, v in bad_m.items()}, prompts=pairs,
                         model_name=facts.name, method=method, metric=metric,
                         patches=[list(s) for s in patch_sets])
    result.remote = remote  # where it ran: False here, True on NDIF, "local" nnsight's dry run
    return result


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


def _grid(mh: ModelHandle, pairs: PromptPairs, site: str, direction: Direction,
          by_position: bool, **kw: Any) -> PatchResult:
    f = mh.anatomy
    seq = pairs.seq_len
    layer_lab = layer_labels(f.n_layers, site == "resid")
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
        sets = [[Patch(site, l, q)] for l in range(f.n_layers) for q in range(seq)]
        if site == "resid":  # the embed row first: every site of the stream in forward order
            sets = [[Patch("embed", None, q)] for q in range(seq)] + sets
        dims = ("layer", "position")
        labels = {"layer": layer_lab, "position": pairs.position_labels}
    labels = {d: labels[d] for d in dims}
    return sweep(mh, pairs, sets, direction, dims=dims, labels=labels, site=site, **kw)


def patch_residual(model: Any, pairs: PromptPairs, direction: Direction = "denoise",
                   **kw: Any) -> PatchResult:
    """Residual stream by layer x position: ``[n_prompts, n_layers + 1, seq]``.

    Row 0 (``"embed"``) is the embeddings (block 0's input, ``Patch("embed", position=p)``);
    the row labelled ``L{l}`` (row ``l + 1``) is block l's output (``Patch("resid", l, p)``).
    Keyword options as for ``sweep``.
    """
    mh = handle(model)
    return _grid(mh, pairs, "resid", direction, True, **kw)


def patch_attn_out(model: Any, pairs: PromptPairs, direction: Direction = "denoise",
                   **kw: Any) -> PatchResult:
    """Attention-layer output by layer x position: ``[n_prompts, n_layers, seq]``."""
    mh = handle(model)
    return _grid(mh, pairs, "attn", direction, True, **kw)


def patch_mlp_out(model: Any, pairs: PromptPairs, direction: Direction = "denoise",
                  **kw: Any) -> PatchResult:
    """MLP output by layer x position: ``[n_prompts, n_layers, seq]``."""
    mh = handle(model)
    return _grid(mh, pairs, "mlp", direction, True, **kw)


def patch_heads(model: Any, pairs: PromptPairs, direction: Direction = "denoise",
                by_position: bool = False, **kw: Any) -> PatchResult:
    """Every attention head: ``[n_prompts, n_layers, n_heads]`` (all positions at
    once), or ``[n_prompts, n_layers, n_heads, seq]`` with ``by_position=True``."""
    mh = handle(model)
    return _grid(mh, pairs, "head", direction, by_position, **kw)


def patch_components(model: Any, pairs: PromptPairs, components: Sequence[Patch] | Sequence[Sequence[Patch]],
                     direction: Direction = "denoise", **kw: Any) -> PatchResult:
    """Patch one set of components jointly (a list of ``Patch``), or several sets
    (a list of lists), each set in one forward pass: ``[n_prompts, n_sets]``."""
    mh = handle(model)
    if components and isinstance(components[0], Patch):
        components = [components]  # type: ignore[list-item]
    return sweep(mh, pairs, [list(s) for s in components], direction, **kw)


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
