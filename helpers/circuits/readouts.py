"""What heads read and write, measured in one traced forward: every head's attention along the IOI
routes (query role -> key role) and every head's direct logit attribution, optionally with some
heads mean-ablated; Wang et al.'s backup test built from the two.  Used by ``helpers.circuits.ioi_classes``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence, get_args

import torch

from helpers.base.fmt import parse_head
from helpers.base.validate import Run
from helpers.data.prompts import PromptPairs
from helpers.engine.runs import cache_activations, check_pairs
from helpers.methods.ablations import ablate, ablation_source
from helpers.models.loaded import ModelHandle, handle
from helpers.results.metrics import logit_diff

__all__ = ["ROUTES", "TARGETS", "Backup", "attention_to_roles", "backup_test",
           "direct_logit_attribution", "pairs_logit_diff", "readout"]

# the attention each class is read by: (query role, key role); "S1+1" is the token after S1
ROUTES = {"END->IO": ("END", "IO"), "END->S2": ("END", "S2"), "END->S1": ("END", "S1"),
          "S2->S1": ("S2", "S1"), "S2->S1+1": ("S2", "S1+1"), "S1+1->S1": ("S1+1", "S1")}

DlaTarget = Literal["difference", "answer", "distractor"]


def _role_positions(pairs: PromptPairs) -> dict[str, int]:
    pos = dict(pairs.positions)
    missing = [r for r in ("IO", "S1", "S2", "END") if r not in pos]
    if missing:
        raise ValueError(f"these prompt pairs have no {missing} role(s): build them with "
                         "helpers.ioi_pairs, whose prompts carry IO, S1, S2 and END")
    pos["S1+1"] = pos["S1"] + 1
    return pos


def attention_to_roles(model: Any, pairs: PromptPairs, ablate: Sequence[str] = (),
                       per_prompt: bool = False) -> dict[str, torch.Tensor]:
    """Mean attention weight (over the clean prompts) of every head along every route in
    ``ROUTES``: ``{"END->IO": [n_layers, n_heads], ...}`` (``per_prompt``: every prompt's,
    ``[n_prompts, n_layers, n_heads]``), in one traced forward (eager attention, as
    ``helpers.load_model`` loads).  ``ablate``: heads mean-ablated in that run (as in
    ``direct_logit_attribution``)."""
    mh = handle(model)
    f, pos = mh.anatomy, _role_positions(pairs)
    rows = sorted({pos[q] for q, _ in ROUTES.values()})
    got = _run(mh, pairs, ablate, attn_rows=rows)
    saved = [got[("attn", layer)] for layer in range(f.n_layers)]
    if any(s is None for s in saved):
        raise RuntimeError("this model's attention returns no weights: load it with "
                           "attn_implementation='eager' (helpers.load_model does)")
    if per_prompt:
        weights = torch.stack([s.double() for s in saved], 1)  # [n, layers, heads, rows, seq]
        return {name: weights[:, :, :, rows.index(pos[q]), pos[k]].to(saved[0].dtype)
                for name, (q, k) in ROUTES.items()}
    weights = torch.stack([s.double().mean(0) for s in saved])  # [layers, heads, rows, seq]
    return {name: weights[:, :, rows.index(pos[q]), pos[k]].to(saved[0].dtype)
            for name, (q, k) in ROUTES.items()}


def _ablation_means(mh: ModelHandle, pairs: PromptPairs, ablate: Sequence[str]) -> dict[int, tuple]:
    """``{layer: (columns [k] long, mean values [seq, k])}`` of the heads in ``ablate``: their
    output-projection input averaged over the clean prompts (the dataset mean)."""

    f = mh.anatomy
    source = ablation_source(mh, pairs, list(ablate), "mean")
    cols: dict[int, list[int]] = {}  # layer -> the ablated heads' columns
    for name in ablate:
        layer, head = parse_head(name)
        cols.setdefault(layer, []).extend(range(head * f.d_head, (head + 1) * f.d_head))
    return {layer: (torch.tensor(c), source[("head", layer)][0][:, c]) for layer, c in cols.items()}


def _run(mh: ModelHandle, pairs: PromptPairs, ablate: Sequence[str], ids: torch.Tensor | None = None,
         attn_rows: Sequence[int] | None = None, last_z: bool = False, logits: bool = False) -> dict:
    """One traced forward of the clean prompts (or ``ids``) with the heads in ``ablate``
    mean-ablated at every position, reading, block by block in forward order, the attention
    weights of the query positions ``attn_rows`` (``("attn", L)``: ``[n, n_heads, rows, seq]``)
    and/or the last position's output-projection input (``("z", L)``: ``[n, n_heads * d_head]``)
    and final-norm input (``"x"``: ``[n, d_model]``), and with ``logits`` the last position's
    logits (``"logits"``: ``[n, vocab]``)."""
    if mh.remote:
        raise ValueError("attention and direct-logit-attribution readouts run on a local model only "
                         "for now: load it without remote=")
    f = mh.anatomy
    check_pairs(mh, pairs)
    means = _ablation_means(mh, pairs, ablate) if ablate else {}
    device = mh.device
    blocks = [(f.o_proj(mh.model, layer), f.attn(mh.model, layer),
               *((cols.to(device), m.to(device)) if layer in means else (None, None)))
              for layer, (cols, m) in ((L, means.get(L, (None, None))) for L in range(f.n_layers))]
    norm, unembed = f.final_norm(mh.model), f.unembed(mh.model)
    ids = pairs.clean_ids if ids is None else ids
    rows = None if attn_rows is None else list(attn_rows)
    out: dict = {}  # filled inside the trace (a container made there would not outlive it)
    with torch.no_grad(), mh.model.trace(ids.to(device), logits_to_keep=1, use_cache=False):
        for layer, (o_proj, attn, cols, mean) in enumerate(blocks):
            if cols is not None:
                z = o_proj.input.clone()
                z[:, :, cols] = mean.to(z.dtype)
                o_proj.input = z
            if last_z:
                out[("z", layer)] = o_proj.input[:, -1].clone().save()
            if rows is not None:
                out[("attn", layer)] = attn.output[1][:, :, rows].clone().save()
        if last_z:
            out["x"] = norm.input[:, -1].clone().save()
        if logits:
            out["logits"] = unembed.output[:, -1].clone().save()
    if logits:
        out["logits"] = f.logits(out["logits"])
    return out


def direct_logit_attribution(model: Any, pairs: PromptPairs, ablate: Sequence[str] = (),
                             run: Run = "clean", target: DlaTarget = "difference") -> torch.Tensor:
    """Every head's direct contribution to the logit difference answer - distractor at the last
    position, ``[n_prompts, n_layers, n_heads]``: its slice of the output projection (no bias)
    passed through the final norm with the norm's scale frozen at that run's value, then the
    unembedding's answer - distractor row difference.  Summed with every MLP output, the
    embeddings, the output-projection biases and the final norm's bias (LayerNorm) it gives the run's logit difference exactly
    (GPT-2 and Llama-style models; not with Gemma's post-norms or soft-capped logits).
    ``ablate``: heads mean-ablated (over the clean prompts) in that run, e.g. to see which heads
    take over when the name movers are gone; ``run``: ``"clean"`` or ``"corrupted"`` prompts;
    ``target``: ``"difference"`` (answer - distractor), ``"answer"`` or ``"distractor"`` (one
    name's logit alone; the two add up to the difference)."""
    mh = handle(model)
    if run not in ("clean", "corrupted"):
        raise ValueError(f"run must be 'clean' or 'corrupted', got {run!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be 'difference', 'answer' or 'distractor', got {target!r}")
    ids = pairs.clean_ids if run == "clean" else pairs.corrupted_ids
    return _dla(mh, pairs, _run(mh, pairs, ablate, ids, last_z=True), (target,))[target]


TARGETS: tuple[str, ...] = get_args(DlaTarget)


def _dla(mh: ModelHandle, pairs: PromptPairs, saved: dict, targets: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every head's direct contribution to each target, ``{target: [n, n_layers, n_heads]}``,
    from one run's saved last-position head outputs and final-norm input."""
    f, hf = mh.anatomy, mh.hf
    z, x = [saved[("z", layer)] for layer in range(f.n_layers)], saved["x"]
    centre, scale = f.norm_linear_part(f.final_norm(hf), x)       # [n, d_model]
    w = f.unembed(hf).weight.detach()
    a, d = pairs.answer_ids.to(w.device), pairs.distractor_ids.to(w.device)
    rows = {"difference": w[a] - w[d], "answer": w[a], "distractor": w[d]}
    directions = {}
    for t in targets:
        direction = rows[t].to(scale.dtype) * scale                 # [n, d_model]
        if centre:  # LayerNorm: the centring is linear too
            direction = direction - direction.mean(-1, keepdim=True)
        directions[t] = direction
    out = {t: torch.zeros(len(pairs), f.n_layers, f.n_heads, dtype=scale.dtype) for t in targets}
    with torch.no_grad():
        for layer in range(f.n_layers):
            proj = f.o_proj(hf, layer)
            zl = z[layer].view(len(pairs), f.n_heads, 1, f.d_head)
            eye = torch.eye(f.n_heads, dtype=zl.dtype, device=zl.device)[None, :, :, None]
            per_head = (zl * eye).reshape(len(pairs), f.n_heads, -1)    # one head's slice each
            bias = proj(torch.zeros_like(per_head[:, :1]))
            contrib = (proj(per_head) - bias)                            # [n, heads, d_model]
            for t, direction in directions.items():
                out[t][:, layer] = (contrib.to(direction.dtype) * direction[:, None]).sum(-1).cpu()
    return out


def readout(model: Any, pairs: PromptPairs, ablate: Sequence[str] = (),
            targets: Sequence[str] = TARGETS) -> dict[str, Any]:
    """One traced forward of the clean prompts (``ablate``: heads mean-ablated over them) giving
    everything chapter 10 reads from a run: ``"dla"`` (``{target: [n, n_layers, n_heads]}``, as
    ``direct_logit_attribution``), ``"logit_diff"`` (``[n]``, answer - distractor) and
    ``"attention"`` (``{route: [n, n_layers, n_heads]}``, as ``attention_to_roles(per_prompt=True)``)."""
    mh = handle(model)
    for t in targets:
        if t not in TARGETS:
            raise ValueError(f"targets must be among {TARGETS}, got {t!r}")
    pos = _role_positions(pairs)
    rows = sorted({pos[q] for q, _ in ROUTES.values()})
    saved = _run(mh, pairs, ablate, attn_rows=rows, last_z=True, logits=True)
    weights = torch.stack([saved[("attn", L)].double() for L in range(mh.anatomy.n_layers)], 1)
    attention = {name: weights[:, :, :, rows.index(pos[q]), pos[k]] for name, (q, k) in ROUTES.items()}
    logits = saved["logits"]
    ld = logit_diff(logits, pairs.answer_ids.to(logits.device), pairs.distractor_ids.to(logits.device))
    return {"dla": _dla(mh, pairs, saved, targets), "logit_diff": ld.double().cpu(),
            "attention": attention}


@dataclass(frozen=True)
class Backup:
    """The backup test: direct logit attributions ``[n_layers, n_heads]`` (prompt means, clean
    prompts) with all heads present (``before``) and with ``ablated`` mean-ablated (``after``),
    the logit differences of both runs, and END -> IO attention in the ablated run."""

    ablated: list[str]
    before: torch.Tensor
    after: torch.Tensor
    full_ld: float
    ablated_ld: float
    attention: torch.Tensor

    def rise(self, gap: float | None = None) -> torch.Tensor:
        """Each head's rise in direct logit attribution (in logits, or as a share of ``gap``);
        the ablated heads' own entries are 0."""
        change = (self.after - self.before).double()
        for h in self.ablated:
            change[parse_head(h)] = 0.0
        return change / gap if gap else change


def backup_test(model: Any, pairs: PromptPairs, movers: Sequence[str]) -> Backup:
    """Mean-ablate the name movers ``movers`` (over the clean prompts, every position) and record
    which heads' direct logit attributions change (Wang et al.'s test for backup name movers)."""
    mh = handle(model)

    movers = list(movers)
    before = direct_logit_attribution(mh, pairs).mean(0)
    after = direct_logit_attribution(mh, pairs, ablate=movers).mean(0) if movers else before
    full = float(pairs_logit_diff(mh, pairs))
    gone = float(ablate(mh, pairs, movers, "mean").mean("logit_diff")[0]) if movers else full
    att = attention_to_roles(mh, pairs, ablate=movers)["END->IO"]
    return Backup(movers, before, after, full, gone, att)


def pairs_logit_diff(model: Any, pairs: PromptPairs) -> float:
    """The clean prompts' mean logit difference answer - distractor."""
    mh = handle(model)

    logits = cache_activations(mh, pairs.clean_ids, [])[1]
    return logit_diff(logits, pairs.answer_ids.to(logits.device),
                      pairs.distractor_ids.to(logits.device)).mean().item()


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
