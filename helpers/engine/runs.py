"""Patches and the traced runs that apply them: the nnsight layer under every sweep.

A ``Patch`` names one *site* (``helpers.models.anatomy``) and where in it:

* ``Patch("embed", position=p)`` - the embeddings (block 0's input) at token ``p``;
* ``Patch("resid", L, p)``       - the output of block ``L`` (the label ``L{L}`` in results);
* ``Patch("attn", L, p)``, ``Patch("mlp", L, p)`` - block ``L``'s attention / MLP output;
* ``Patch("head", L, p, h)``     - head ``h`` of block ``L`` (label ``L{L}H{h}``).

``position=None`` patches every position.  Indices may be negative (Python's meaning) and
may be numpy or tensor integers; they are checked against the model and the prompts before
anything runs, and stored non-negative.

Every traced run here also runs on NDIF (``load_model(..., remote=True)``), so each
``with model.trace(...)`` body follows three rules: (a) whatever leaves it is ``.save()``d
inside it (containers too, e.g. ``nnsight.save({})``); (b) it appends to or fills nothing
created outside it; (c) it calls nothing from ``helpers`` (the server has no such package):
module envoys, index tensors and values are prepared before the ``with``, and the body holds
only envoy reads/writes, indexing, tensor methods and ``.save()``.  Tensors made here reach the
server on the CPU in their own dtype, so the body moves them next to the activation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import nnsight
import torch

from helpers.base.fmt import head_name
from helpers.base.validate import as_index, check_finite, check_ids, norm_index, vocab_fingerprint
from helpers.data.prompts import PromptError, PromptPairs
from helpers.models.anatomy import SITES, ModelAnatomy
from helpers.models.loaded import handle

__all__ = ["Patch", "SITES", "cache_activations", "run_with_patches", "locate_non_finite",
           "check_pairs", "normalise_patch", "all_components", "component_place", "component_patch"]


@dataclass(frozen=True)
class Patch:
    """One patch: replace ``site`` at ``layer`` (and ``position``, ``head``) with the source
    run's value.  See the module docstring for the sites."""

    site: str
    layer: int | None = None
    position: int | None = None
    head: int | None = None

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise ValueError(f"unknown site {self.site!r}; choose one of {SITES}")
        if self.site == "embed":
            if self.layer not in (None, 0):
                raise ValueError(f"the 'embed' site has no layer (got layer={self.layer!r}): write "
                                 "Patch('embed', position=p); the output of block L is Patch('resid', L, p)")
            object.__setattr__(self, "layer", None)
        elif self.layer is None:
            raise ValueError(f"site {self.site!r} needs a layer: Patch({self.site!r}, layer, position)")
        else:
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
        """``L2H1@10``, ``L2@all`` (block 2's output), ``attn2@14``, ``embed@10``."""
        where = "all" if self.position is None else str(self.position)
        if self.site == "head":
            return f"L{self.layer}H{self.head}@{where}"
        if self.site == "embed":
            return f"embed@{where}"
        return f"{'L' if self.site == 'resid' else self.site}{self.layer}@{where}"


def normalise_patch(p: Patch, facts: ModelAnatomy, seq: int) -> Patch:
    """``p`` with every index checked against the model and a ``seq``-token prompt, and made
    non-negative (Python's meaning of negatives)."""
    layer = None if p.layer is None else norm_index(p.layer, facts.n_layers, "layer",
                                                    "blocks in this model")
    position = None if p.position is None else norm_index(p.position, seq, "position",
                                                           "token positions in these prompts")
    head = None if p.head is None else norm_index(p.head, facts.n_heads, "head", "heads per layer")
    return Patch(p.site, layer, position, head)


def _site_layer(site: str, layer: Any, facts: ModelAnatomy) -> tuple[str, int | None]:
    p = normalise_patch(Patch(site, layer, None, 0 if site == "head" else None), facts, 1)
    return p.site, p.layer


def check_pairs(model: Any, pairs: PromptPairs) -> None:
    """Pairs a sweep can use: built with this model's vocabulary, token ids the model reads, no
    identical clean/corrupted pair."""
    mh = handle(model)
    if not isinstance(pairs, PromptPairs):
        raise PromptError("expected a PromptPairs object (see helpers.ioi_pairs, pairs_from_prompt "
                          f"or make_pairs), got {type(pairs).__name__}")
    facts = mh.anatomy
    theirs = getattr(pairs, "vocab", None)
    if theirs is not None and mh.tokenizer is not None and vocab_fingerprint(mh.tokenizer) != theirs:
        raise PromptError("these prompt pairs were tokenized with another vocabulary than this "
                          "model's (their token ids would mean other words): build them with this "
                          "model's tokenizer, e.g. ioi_pairs(model.tokenizer, ...)")
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


def cache_activations(model: Any, ids: torch.Tensor, sites: Iterable[tuple[str, int | None]]
                      ) -> tuple[dict[tuple[str, int | None], torch.Tensor], torch.Tensor]:
    """Run ``ids`` ``[batch, seq]`` once; return ({(site, layer): activation}, last logits).

    Activations are ``[batch, seq, d_model]`` (``head`` sites: the whole output projection
    input ``[batch, seq, n_heads * d_head]``); logits are ``[batch, vocab]``.  Layers may be
    negative (Python's meaning); the keys use the non-negative index (``("embed", None)``
    for the embeddings).
    """
    mh = handle(model)
    facts = mh.anatomy
    ids = check_ids(ids, facts.vocab_size, facts.n_positions)
    sites = sorted({_site_layer(site, layer, facts) for site, layer in sites},
                   key=lambda s: facts.order(*s))
    # envoys resolved here: the trace body calls nothing from helpers (rule (c) above)
    reads = [(key, *facts.site(mh.model, *key)) for key in sites]
    unembed = facts.unembed(mh.model)
    with torch.no_grad(), mh.model.trace(ids.to(mh.device), logits_to_keep=1,
                                      use_cache=False, **mh.trace_kwargs):
        cache = nnsight.save({})
        for key, mod, kind in reads:
            if kind == "output0":
                cache[key] = mod.output[0].clone()
            elif kind == "input":
                cache[key] = mod.input.clone()
            else:
                cache[key] = mod.output.clone()
        logits = unembed.output[:, -1].clone().save()
    logits = facts.logits(logits)
    check_finite(logits, "the logits of this forward pass", lambda: locate_non_finite(mh, ids))
    return cache, logits


def locate_non_finite(model: Any, ids: torch.Tensor) -> str | None:
    """The first site, in forward order, holding a NaN or infinity for ``ids`` ``[batch, seq]``
    (or None if all are finite), e.g. ``"block 1 MLP output (transformer.h[1].mlp)"``."""
    mh = handle(model)
    f = mh.anatomy
    points = [(f"the embeddings ({f.module_name('embed')})", f.block(mh.model, 0), "input")]
    for layer in range(f.n_layers):
        points.append((f"block {layer} attention output ({f.module_name('attn', layer)})",
                       f.attn(mh.model, layer), "output0"))
        points.append((f"block {layer} MLP output ({f.module_name('mlp', layer)})",
                       f.mlp(mh.model, layer), "output"))
    points.append((f"the final norm ({f.module_name('final_norm')})", f.final_norm(mh.model), "output"))
    points.append((f"the unembedding ({f.module_name('unembed')})", f.unembed(mh.model), "output"))
    mods = [(mod, kind) for _, mod, kind in points]
    with torch.no_grad(), mh.model.trace(ids.to(mh.device), use_cache=False,
                                      **mh.trace_kwargs):
        finite = nnsight.save([])  # one 0-d bool per site: a remote run downloads no activations
        for mod, kind in mods:
            if kind == "output0":
                finite.append(mod.output[0].isfinite().all())
            elif kind == "input":
                finite.append(mod.input.isfinite().all())
            else:
                finite.append(mod.output.isfinite().all())
    for (name, _, _), ok in zip(points, finite):
        if not bool(ok):
            return name
    return None


def run_with_patches(model: Any, ids: torch.Tensor, source: dict[tuple[str, int | None], torch.Tensor],
                     patch_sets: Sequence[Sequence[Patch]], source_rows: torch.Tensor | None = None,
                     all_logits: bool = False, columns: torch.Tensor | None = None) -> torch.Tensor:
    """One traced forward pass over ``len(patch_sets)`` rows: row r runs ``ids[r]``
    with every patch in ``patch_sets[r]`` taken from ``source[...][source_rows[r]]``.

    ``ids``: ``[rows, seq]``; ``source``: as returned by ``cache_activations``.
    Returns the last position's logits, ``[rows, vocab]``.  ``all_logits=True``
    lets the model compute the logits of every position, as a plain forward pass
    does (the textbook loop), and keeps the last.  ``columns`` (``[rows, k]`` token ids)
    returns only those logits, ``[rows, k]`` (what a remote sweep downloads for the logit
    difference).
    """
    mh = handle(model)
    facts = mh.anatomy
    ids = check_ids(ids, facts.vocab_size, facts.n_positions)
    rows, seq = ids.shape
    if len(patch_sets) != rows:
        raise ValueError(f"{len(patch_sets)} patch sets for {rows} rows of ids: give one set per row")
    if columns is not None and (columns.dim() != 2 or columns.shape[0] != rows):
        raise ValueError(f"columns must be [rows, k] = [{rows}, k] token ids, got {tuple(columns.shape)}")
    patch_sets = [[normalise_patch(p, facts, seq) for p in s] for s in patch_sets]
    device = mh.device
    src_rows = torch.arange(rows) if source_rows is None else source_rows.cpu()
    todo: dict[tuple[str, int | None], list[tuple[int, int | None, int | None]]] = {}
    for r, patches in enumerate(patch_sets):
        for p in patches:
            todo.setdefault((p.site, p.layer), []).append((r, p.position, p.head))
    heads = (facts.n_heads, facts.d_head)
    # Everything the trace needs, prepared here (rule (c) in the module docstring): per site,
    # its envoy, how to read it, and the rows/positions/heads to overwrite with which values.
    steps = []
    for key in sorted(todo, key=lambda k: facts.order(*k)):
        if key not in source:
            raise KeyError(f"no cached activation for {key}: cache_activations(model, ids, [{key}])")
        r_idx, p_idx, h_idx = [], [], []
        for r, pos, head in todo[key]:
            for q in (range(seq) if pos is None else [pos]):
                r_idx.append(r), p_idx.append(q), h_idx.append(head)
        r_t = torch.tensor(r_idx, device=device)
        p_t = torch.tensor(p_idx, device=device)
        s_t = src_rows[r_idx].to(device)
        h_t = torch.tensor(h_idx, device=device) if key[0] == "head" else None
        value = source[key].to(device)
        if h_t is not None:
            value = value.view(*value.shape[:2], *heads)[s_t, p_t, h_t]
        else:
            value = value[s_t, p_t]
        mod, kind = facts.site(mh.model, *key)
        steps.append((mod, kind, r_t, p_t, h_t, value))
    unembed = facts.unembed(mh.model)
    cols = None if columns is None else columns.to(device)
    keep = {} if all_logits else {"logits_to_keep": 1, "use_cache": False}
    with torch.no_grad(), mh.model.trace(ids.to(device), **keep, **mh.trace_kwargs):
        for mod, kind, r_t, p_t, h_t, value in steps:
            if kind == "output0":
                act = mod.output[0].clone()
            elif kind == "input":
                act = mod.input.clone()
            else:
                act = mod.output.clone()
            at = act.device
            if h_t is not None:
                act.view(act.shape[0], act.shape[1], heads[0], heads[1])[
                    r_t.to(at), p_t.to(at), h_t.to(at)] = value.to(at, act.dtype)
            else:
                act[r_t.to(at), p_t.to(at)] = value.to(at, act.dtype)
            if kind == "output0":
                mod.output = (act,) + tuple(mod.output[1:])
            elif kind == "input":
                mod.input = act
            else:
                mod.output = act
        last = unembed.output[:, -1]
        if cols is not None:
            last = last.gather(1, cols.to(last.device))
        logits = last.clone().save()
    logits = facts.logits(logits)
    check_finite(logits, "the logits of the patched runs")
    return logits


# --------------------------------------------------------------------------- components

def all_components(model: Any) -> list[str]:
    """Names of every head (``"L1H2"``) and MLP output (``"mlp1"``) of the model."""
    f = handle(model).anatomy
    return [head_name(l, h) for l in range(f.n_layers) for h in range(f.n_heads)] + \
           [f"mlp{l}" for l in range(f.n_layers)]


_COMPONENT = re.compile(r"L(-?\d+)H(-?\d+)|(?:mlp|MLP)(-?\d+)")


def component_place(name: str) -> tuple[int, int | None]:
    """``"L1H2"`` -> ``(1, 2)``; ``"mlp1"`` -> ``(1, None)``: the block and the head (None = MLP)."""
    p = component_patch(name)
    return p.layer, p.head


def component_patch(name: str) -> Patch:
    """``"L1H2"`` -> head 2 of block 1, ``"mlp1"`` (or ``"MLP1"``) -> block 1's MLP output;
    all positions."""
    m = _COMPONENT.fullmatch(name.strip()) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"unknown component {name!r}: write a head as 'L<block>H<head>' (e.g. "
                         "'L0H3') and an MLP output as 'mlp<block>' (e.g. 'mlp0'); "
                         "all_components(model) lists every one")
    if m.group(3) is not None:
        return Patch("mlp", int(m.group(3)))
    return Patch("head", int(m.group(1)), None, int(m.group(2)))


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
