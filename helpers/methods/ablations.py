"""Ablations: replace components by a value that carries no prompt-specific information.

Components are attention heads (``"L0H3"``: head 3's slice of block 0's output projection input,
the ``head`` site) and MLP outputs (``"mlp1"``), named as in ``helpers.circuits.search``, each ablated
at every position.  The run ablated is always the **clean** prompt (like noising: the result's
``direction`` is ``"noise"``, its ``clean`` / ``corrupted`` baselines the unpatched runs, so
``score()`` is 1 = clean behaviour kept, 0 = as bad as the corrupted run).  Kinds:

* ``"zero"``: the component's output set to 0 (every position);
* ``"mean"``: its mean over a *reference set* of prompts, position by position: ``reference``
  is ``[n_ref, seq]`` token ids (or a ``PromptPairs``: its clean prompts) of the same length
  and template, e.g. ABC prompts ``H.ioi_pairs(tok, corruption="abc", template=t).corrupted_ids``
  (Wang et al. 2022); default: the clean prompts of ``pairs`` themselves (the dataset mean).
  Build one reference per template: positions must line up;
* ``"resample"``: the value from another prompt.  Default: the clean prompts of ``pairs``,
  prompt i taking prompt ``perm[i]``'s value, ``perm = resample_rows(n, seed)`` a seeded
  permutation without fixed points (no prompt is resampled from itself; needs 2+ prompts).
  With a ``reference``: a seeded uniform draw among the reference rows whose ids differ from
  prompt i.  Every component of a prompt takes its value from the same donor prompt.

**Attention knockout** (``knockout``) removes edges ``(head, query, key)``: head h's attention
weight from query position q to key position k is set to 0 and the row renormalised
(divided by its new sum), which is exactly the same as setting the pre-softmax score to
``-inf``: ``softmax`` without k is ``p_j / (1 - p_k)``.  (Rows that lose no weight are left
bit-identical.  Llama-style eager attention takes its softmax in float32 even in a float64
model, so there the two forms agree to float32 precision only.)  Implemented as the first (renormalise)
on the probabilities inside the eager attention function, through nnsight's ``.source``
(``attention_interface_1`` -> ``nn_functional_dropout_0``: the weights that multiply the
values, identity dropout in eval mode); the model must use ``attn_implementation="eager"``
(``helpers.load_model`` does).  An edge from a query to a later key (whose weight causal attention
already makes 0) is refused, and so is knocking out every key a query can see.

What is checked together: a ``reference`` given as ``PromptPairs`` must come from the same
vocabulary (``helpers.base.validate.vocab_fingerprint``) and have its roles at the same positions
as ``pairs`` (same template and order); a reference given as raw token ids is only checked for
its shape (``[n_ref, seq]``): that its positions line up is the caller's responsibility.  A
``reference`` with ``kind="zero"`` and a ``seed`` with ``"zero"`` or ``"mean"`` have no effect and
are refused.

**Methods.**  ``method="fast"`` (the default for GPT-2 and Llama-style models) runs the ablated
and knocked-out sets on ``helpers.engine.fastablate``: blocks recomputed from the cached clean
run, rows sharing the blocks their sets agree on, the knockout applied to the recomputed
attention weights in the same way.  ``"batched"`` runs whole traced forwards (many sets per
trace); other families and remote models (``load_model(..., remote=True)``) always run it.
The result's ``method`` records which ran.  Both give the same values up to rounding.
"""
from __future__ import annotations

from typing import Any, Literal, Sequence, get_args

import torch

from helpers.base.validate import InputTypeError, Run, check_finite, norm_index, refuse_unused
from helpers.data.prompts import PromptPairs
from helpers.engine.fastablate import knock_stack, run_masked, set_masks
from helpers.engine.fastpatch import BaseCache, cache_runs, supports_fast_path
from helpers.engine.knockout_runs import edge_masks, knockout_trace
from helpers.engine.memory import rows_per_chunk, sweep_budget_mb
from helpers.engine.runs import (Patch, cache_activations, check_pairs, component_patch,
                                 normalise_patch, run_with_patches)
from helpers.methods.sweeps import baselines
from helpers.models.loaded import ModelHandle, handle
from helpers.results.metrics import METRICS, metrics_of
from helpers.results.patch_result import PatchResult

__all__ = ["KINDS", "AblationKind", "ablation_source", "ablate", "resample_rows", "knockout",
           "knockout_patterns", "component_patches", "pick_method", "clean_run", "run_sets"]

AblationKind = Literal["zero", "mean", "resample"]
KINDS: tuple[str, ...] = get_args(AblationKind)
Key = tuple[str, int | None]
Method = Literal["fast", "batched"]


def pick_method(model: Any, method: str, seq: int) -> str:
    """The method that runs: ``method`` (``"fast"`` or ``"batched"``), except that ``"fast"``
    runs batched on a remote model or a family / configuration the fast path does not cover
    (``helpers.engine.fastpatch.supports_fast_path``)."""
    mh = handle(model)
    if method not in ("fast", "batched"):
        raise ValueError(f"method must be 'fast' or 'batched', got {method!r}")
    if method == "fast" and (mh.remote or not supports_fast_path(mh, seq)):
        return "batched"  # the fast path computes blocks from the weights, here
    return method


def component_patches(model: Any, names: str | Sequence[str], seq: int = 1) -> list[Patch]:
    """``["L0H3", "mlp1"]`` -> checked ``Patch`` objects (every position); a clear error for
    an unknown or out-of-range name."""
    mh = handle(model)

    if isinstance(names, str):
        names = [names]
    f = mh.anatomy
    out = [normalise_patch(component_patch(n), f, seq) for n in names]
    labels = [p.label() for p in out]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ValueError(f"component(s) {twice} given twice: give each once")
    return out


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown ablation kind {kind!r}: choose one of {KINDS} (attention "
                         "edges: helpers.methods.ablations.knockout)")


def check_used(kind: str, reference: Any, seed: Any) -> None:
    """Refuse a ``reference`` or ``seed`` that ``kind`` would ignore (module docstring)."""
    if kind == "zero":
        refuse_unused("reference", reference, "kind='zero' sets every value to 0; a reference "
                      "set is read by kind='mean' and kind='resample'")
    if kind != "resample":
        refuse_unused("seed", seed, f"kind={kind!r} draws nothing at random; the seed chooses "
                      "the donors of kind='resample'", default=0)


def resample_rows(n: int, seed: int = 0) -> torch.Tensor:
    """A seeded permutation of ``range(n)`` without fixed points: prompt i resamples from
    ``perm[i] != i`` (one random cycle through all prompts)."""
    if n < 2:
        raise ValueError(f"resample ablation needs at least 2 prompts (got {n}): a prompt is never "
                         "resampled from itself; use more pairs (ioi_pairs(tok, n=8)), give a "
                         "reference set, or use kind='mean' / 'zero'")
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=g)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)  # order[j] takes order[j + 1]: a single n-cycle
    return perm


def _reference_ids(pairs: PromptPairs, reference: Any) -> torch.Tensor:
    if isinstance(reference, PromptPairs):
        theirs, ours = reference.vocab, pairs.vocab
        if theirs is not None and ours is not None and theirs != ours:
            raise ValueError("the reference prompts were tokenized with another vocabulary than "
                             "these pairs: build both with the same model's tokenizer")
        if reference.positions != pairs.positions or reference.seq_len != pairs.seq_len:
            raise ValueError(f"the reference prompts have their roles at {reference.positions} "
                             f"({reference.seq_len} tokens), these pairs at {pairs.positions} "
                             f"({pairs.seq_len} tokens): a mean over the reference is taken position "
                             "by position, so build it from the same template and order, e.g. "
                             "ioi_pairs(tok, corruption='abc', template=t, order=o)")
        ids = reference.clean_ids
    elif isinstance(reference, torch.Tensor) or (hasattr(reference, "__array__")
                                                 and not isinstance(reference, str)):
        ids = torch.as_tensor(reference)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise InputTypeError(f"reference must be token ids (integers), got dtype {ids.dtype}")
    else:
        raise InputTypeError("reference must be PromptPairs (e.g. ioi_pairs(tok, corruption='abc', "
                             "template=t)) or a [n_ref, seq] tensor of token ids, got "
                             f"{type(reference).__name__}: {reference!r:.60}")
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[1] != pairs.seq_len:
        raise ValueError(f"the reference prompts are {tuple(ids.shape)} token ids; they must be "
                         f"[n_ref, {pairs.seq_len}] like these prompts: build them from the same "
                         "template, e.g. ioi_pairs(tok, corruption='abc', template=t).corrupted_ids")
    return ids


def ablation_source(model: Any, pairs: PromptPairs, components: Sequence[str] | Sequence[Patch],
                    kind: AblationKind = "zero", reference: Any = None, seed: int = 0,
                    clean: BaseCache | None = None) -> dict[Key, torch.Tensor]:
    """The ablated values of ``components`` for every prompt: ``{(site, layer): [n, seq, width]}``
    (row i for prompt i; ``head`` sites the whole output projection input, every head), ready
    for ``run_with_patches(model, pairs.clean_ids, source, patch_sets, source_rows)``.
    ``clean``: the clean run's cache (``clean_run``), whose heads' activations stand in for a
    forward pass when the values come from the clean prompts themselves."""
    mh = handle(model)
    check_kind(kind)
    check_used(kind, reference, seed)
    check_pairs(mh, pairs)
    n, seq = len(pairs), pairs.seq_len
    if kind == "mean" and reference is None and n < 2:
        raise ValueError("mean ablation over these pairs needs at least 2 prompts: the mean of one "
                         "prompt is that prompt itself, so ablating would change nothing. Use more "
                         "pairs (ioi_pairs(tok, n=8)) or give a reference set (reference=...)")
    f = mh.anatomy
    patches = [normalise_patch(p, f, seq) if isinstance(p, Patch) else
               component_patches(mh, [p], seq)[0] for p in components]
    keys = sorted({(p.site, p.layer) for p in patches}, key=lambda k: f.order(*k))
    if not keys:
        return {}
    if kind == "resample" and reference is None:
        rows = resample_rows(n, seed)
        ref = pairs.clean_ids
    else:
        ref = pairs.clean_ids if reference is None else _reference_ids(pairs, reference)
        rows = None
        if kind == "resample":
            g = torch.Generator().manual_seed(int(seed))
            rows = torch.empty(n, dtype=torch.long)
            for i in range(n):
                ok = (ref != pairs.clean_ids[i]).any(1).nonzero().flatten()
                if len(ok) == 0:
                    raise ValueError(f"resample: every reference prompt equals prompt {i}; give "
                                     "other prompts to resample from")
                rows[i] = ok[torch.randint(len(ok), (1,), generator=g)]
    if clean is not None and (reference is None or kind == "zero") and all(s == "head" for s, _ in keys):
        cache = {k: clean.z[:, k[1]] for k in keys}  # [n, seq, n_heads * d_head], the same run
    else:  # (zero: for the shapes and dtypes only)
        cache, _ = cache_activations(mh, pairs.clean_ids[:1] if kind == "zero" else ref, keys)
    if kind == "zero":
        return {k: torch.zeros(n, *v.shape[1:], dtype=v.dtype) for k, v in cache.items()}
    if kind == "mean":
        return {k: v.mean(0, keepdim=True).expand(n, *v.shape[1:]).contiguous()
                for k, v in cache.items()}
    return {k: v[rows.to(v.device)] for k, v in cache.items()}


def _result(mh: ModelHandle, pairs: PromptPairs, values: dict[str, torch.Tensor], labels: list[str],
            site: str, patches: list[list[Patch]], clean_logits: torch.Tensor, method: str) -> PatchResult:
    base = baselines(mh, pairs, clean_logits=clean_logits)
    return PatchResult(site=site, direction="noise", dims=("set",), labels={"set": labels},
                       values={m: v.cpu() for m, v in values.items()},
                       clean={m: v.cpu() for m, v in base["clean"].items()},
                       corrupted={m: v.cpu() for m, v in base["corrupted"].items()},
                       prompts=pairs, model_name=mh.anatomy.name, method=method,
                       patches=patches)


def clean_run(model: Any, pairs: PromptPairs, method: str, keep: dict | None = None
              ) -> tuple[BaseCache | None, torch.Tensor]:
    """The clean run for ``method`` (``pick_method``'s): its cache (``"fast"``; None for
    ``"batched"``) and last-position logits ``[n, vocab]``, computed once per ``keep`` (a dict
    the caller keeps across calls on the same ``pairs``)."""
    mh = handle(model)
    keep = {} if keep is None else keep
    if method not in keep:
        base = cache_runs(mh, pairs.clean_ids)[0] if method == "fast" else None
        keep[method] = base, base.logits if base else cache_activations(mh, pairs.clean_ids, [])[1]
    return keep[method]


def run_sets(model: Any, pairs: PromptPairs, source: dict[Key, torch.Tensor],
             sets: list[list[Patch]], batch_size: int | None, method: Method = "fast",
             metrics: Sequence[str] = METRICS, knock: list[dict] | None = None,
             keep: dict | None = None) -> tuple[dict, torch.Tensor, str]:
    """The ``metrics`` ``[n, len(sets)]`` of the clean runs with each set of whole heads / MLP
    outputs replaced from ``source`` (``ablation_source``), or (``knock``, one ``edge_masks``
    per set, ``sets`` empty) with each set's attention edges knocked out; the clean run's
    last-position logits ``[n, vocab]``; the method that ran (``pick_method``).  Only the
    answer and distractor logits are computed for ``metrics=("logit_diff",)``.  ``keep``: as
    for ``clean_run``."""
    mh = handle(model)
    n, k = len(pairs), len(knock) if knock is not None else len(sets)
    method = pick_method(mh, method, pairs.seq_len)
    base, clean_logits = clean_run(mh, pairs, method, keep)
    if base is not None:
        heads, mlps = set_masks(mh, sets if knock is None else [[] for _ in range(k)])
        edges = None if knock is None else knock_stack(knock)
        # knocking out query q's edges changes nothing before position q
        first = min([int(m.any(0).any(1).nonzero().min()) for d in knock or () for m in d.values()] or [0])
    # fast: pair-major, so that a chunk's rows share the blocks their sets agree on
    jobs = [(i, s) for i in range(n) for s in range(k)] if base else [(i, s) for s in range(k) for i in range(n)]
    size = batch_size or rows_per_chunk(mh.anatomy, pairs.seq_len, sweep_budget_mb(clean_logits.device))
    two = tuple(metrics) == ("logit_diff",)
    answers = torch.stack([pairs.answer_ids, pairs.distractor_ids], 1)
    out: dict[str, torch.Tensor] = {}
    for j in range(0, len(jobs), size):
        chunk = jobs[j: j + size]
        rows, set_idx = torch.tensor([i for i, _ in chunk]), torch.tensor([s for _, s in chunk])
        cols = answers[rows] if two else None
        if base is not None:
            logits = run_masked(mh, base, source, heads, mlps, set_idx, rows, first, cols, edges)
        elif knock is not None:
            layers = sorted({L for s in set_idx.tolist() for L in knock[s]})
            empty = torch.zeros(mh.anatomy.n_heads, pairs.seq_len, pairs.seq_len, dtype=torch.bool)
            batch = {L: torch.stack([knock[s].get(L, empty) for s in set_idx.tolist()]) for L in layers}
            logits = knockout_trace(mh, pairs.clean_ids[rows], batch, columns=cols)[0]
        else:
            logits = run_with_patches(mh, pairs.clean_ids[rows], source,
                                      [sets[s] for s in set_idx.tolist()], rows, columns=cols)
        got = {"logit_diff": logits[:, 0] - logits[:, 1]} if two else \
            metrics_of(logits, pairs, clean_logits, rows.to(logits.device))
        for m, v in got.items():
            check_finite(v, f"the {m} values of the ablated runs")
            out.setdefault(m, torch.empty(n, k, dtype=v.dtype))
            out[m][rows, set_idx] = v.cpu()
    return out, clean_logits, method


def ablate(model: Any, pairs: PromptPairs, components: str | Sequence[str] | Sequence[Sequence[str]],
           kind: AblationKind = "zero", reference: Any = None, seed: int = 0,
           batch_size: int | None = None, method: Method = "fast") -> PatchResult:
    """Ablate ``components`` jointly (a list of names) or several sets (a list of lists, one
    result column each) in the clean run: ``values[metric]`` ``[n_prompts, n_sets]``,
    ``site="ablation"``, ``direction="noise"``; ``importance()`` is the share of the clean
    behaviour the ablation destroys.  ``kind``, ``reference``, ``seed``, ``method``: module
    docstring."""
    mh = handle(model)
    check_kind(kind)
    check_used(kind, reference, seed)
    check_pairs(mh, pairs)
    if isinstance(components, str):
        components = [components]
    sets = [list(components)] if not components or isinstance(components[0], str) else \
        [list(s) for s in components]
    patch_sets = [component_patches(mh, s, pairs.seq_len) for s in sets]
    every = {p for s in patch_sets for p in s}
    method, keep = pick_method(mh, method, pairs.seq_len), {}
    source = ablation_source(mh, pairs, list(every), kind, reference, seed,
                             clean_run(mh, pairs, method, keep)[0])
    values, clean_logits, method = run_sets(mh, pairs, source, patch_sets, batch_size, method,
                                            keep=keep)
    labels = [" + ".join(s) or "(none)" for s in sets]
    result = _result(mh, pairs, values, labels, "ablation", patch_sets, clean_logits, method)
    result.ablation = kind
    return result


# --------------------------------------------------------------------------- knockout

def knockout(model: Any, pairs: PromptPairs, edges: Sequence[Any],
             batch_size: int | None = None, method: Method = "fast") -> PatchResult:
    """Knock out attention ``edges`` in the clean run: ``[("L1H2", "END", "S2"), ...]``
    (head, query, key; positions as roles or token indices) jointly, or several edge sets (a
    list of lists: one result column each).  ``values[metric]`` ``[n_prompts, n_sets]``,
    ``site="knockout"``, ``direction="noise"``, both baselines (``score()`` works).
    ``method``: module docstring."""
    mh = handle(model)
    check_pairs(mh, pairs)
    edges = list(edges)
    sets = [edges] if not edges or not isinstance(edges[0], list) else [list(s) for s in edges]
    masks = [edge_masks(mh, pairs, s) for s in sets]
    values, clean_logits, method = run_sets(mh, pairs, {}, [], batch_size, method, knock=masks)
    labels = [" + ".join(f"{h}:{q}->{k}" for h, q, k in s) or "(none)" for s in sets]
    return _result(mh, pairs, values, labels, "knockout", [], clean_logits, method)


def knockout_patterns(model: Any, pairs: PromptPairs, edges: Sequence[Any], layer: int,
                      run: Run = "clean", method: Method = "fast") -> torch.Tensor:
    """Block ``layer``'s attention weights ``[n, n_heads, seq, seq]`` in the ``run`` prompts
    with ``edges`` knocked out (what the values are multiplied by).  ``method``: module
    docstring."""
    mh = handle(model)
    check_pairs(mh, pairs)
    layer = norm_index(layer, mh.anatomy.n_layers, "layer", "blocks in this model")
    if run not in ("clean", "corrupted"):
        raise ValueError(f"run must be 'clean' or 'corrupted', got {run!r}")
    ids = pairs.clean_ids if run == "clean" else pairs.corrupted_ids
    masks = edge_masks(mh, pairs, list(edges))
    if pick_method(mh, method, pairs.seq_len) == "fast":
        n = len(ids)
        heads, mlps = set_masks(mh, [[]])
        return run_masked(mh, cache_runs(mh, ids)[0], {}, heads, mlps, torch.zeros(n, dtype=torch.long),
                          torch.arange(n), knock=knock_stack([masks]), pattern_layer=layer)
    return knockout_trace(mh, ids, {L: m[None] for L, m in masks.items()}, layer)[1]


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
