"""Attribution patching: a first-order (gradient) estimate of every patch at once.

For a patch that replaces activation ``a`` of the run we patch into (the
*base* run: corrupted for denoising, clean for noising) with ``a'`` from the
other run, the metric changes by approximately

    metric(patched) - metric(base)  ~=  (a' - a) . d metric / d a   (at the base run)

One forward and one backward pass of the base run give ``d metric / d a`` for
every site; one forward of the other run gives ``a'``.  Cheap, but only as good
as the linear approximation: it fails where the model is far from linear in
the patched activation - the residual stream (a big change), layer 0 and
saturated attention (Nanda 2023; Kramar et al. 2024, AtP*).  Always validate it
against exact patching on a few components (chapter 08 does).

On a model loaded with ``remote=True`` both runs go to NDIF (two requests): the backward pass
runs on the server inside the base run's trace (``torch.autograd.grad``), and the activations
and gradients come back.
"""
from __future__ import annotations

from typing import Any

import nnsight
import torch

from helpers.base.fmt import layer_labels
from helpers.base.validate import check_finite
from helpers.data.prompts import PromptPairs
from helpers.engine.runs import check_pairs, locate_non_finite
from helpers.methods.sweeps import Direction, PatchResult, baselines, check_direction
from helpers.models.loaded import handle

__all__ = ["attribution_patching", "activations_and_gradients"]


def activations_and_gradients(model: Any, pairs: PromptPairs, ids: torch.Tensor, with_grad: bool
                              ) -> tuple[dict[tuple[str, int], torch.Tensor],
                                         dict[tuple[str, int], torch.Tensor], torch.Tensor]:
    """Activations of every site for ``ids`` ``[N, seq]``, if ``with_grad`` the
    gradient of the summed logit difference (answer - distractor of each pair)
    with respect to each of them, and the last-position logits ``[N, vocab]``.
    Only activations carry gradients: the weights stay frozen, so no weight
    gradient is ever computed.

    Keys: ``("embed", None)``, ``("resid", L)``, ``("attn", L)``, ``("mlp", L)``,
    ``("head", L)`` (the output projection's input); values ``[N, seq, d_model]``.
    """
    mh = handle(model)
    f = mh.anatomy
    keys: list[tuple[str, int | None]] = [("embed", None)]
    sites = []  # (envoy, how to read it), in forward order; resolved before the trace
    for layer in range(f.n_layers):
        for site in ("head", "attn", "mlp", "resid"):
            keys.append((site, layer))
            sites.append(f.site(mh.model, site, layer))
    first, unembed, cap = f.block(mh.model, 0), f.unembed(mh.model), f.logit_softcap
    rows = torch.arange(ids.shape[0])
    answers, distractors = pairs.answer_ids.cpu(), pairs.distractor_ids.cpu()
    # The body calls nothing from helpers and keeps only what it saves (it also runs on NDIF):
    # the summed logit difference and its gradients are computed inside it.
    # logits_to_keep=1: only the last position's logits, the only ones the metric reads (the
    # unembedding of every position would double the cost of the forward and backward passes)
    with torch.set_grad_enabled(with_grad), mh.model.trace(ids.to(mh.device), use_cache=False,
                                                        logits_to_keep=1, **mh.trace_kwargs):
        emb = first.input.detach().clone()
        if with_grad:
            emb.requires_grad_(True)
        first.input = emb
        live = [emb]
        for mod, kind in sites:
            if kind == "output0":
                live.append(mod.output[0])
            elif kind == "input":
                live.append(mod.input)
            else:
                live.append(mod.output)
        last = unembed.output[:, -1]
        if cap is not None:  # logits soft-capped after the unembedding (Gemma 2)
            last = torch.tanh(last / cap) * cap
        grads = nnsight.save([])
        if with_grad:
            at = last.device
            metric = (last[rows.to(at), answers.to(at)] - last[rows.to(at), distractors.to(at)]).sum()
            for g in torch.autograd.grad(metric, live):
                grads.append(g.detach())
        values = nnsight.save([])
        for a in live:
            values.append(a.detach())
        logits = last.detach().save()
    check_finite(logits, "the logits of this forward pass", lambda: locate_non_finite(mh, ids))
    acts = dict(zip(keys, values))
    grad_by_key = {k: check_finite(g, f"the gradient at {k[0]} {k[1]}")
                   for k, g in zip(keys, grads)}
    return acts, grad_by_key, logits


def attribution_patching(model: Any, pairs: PromptPairs, direction: Direction = "denoise"
                         ) -> dict[str, PatchResult]:
    """Estimated logit differences for every sweep of ``helpers.methods.sweeps``, from one
    forward + backward of the base run and one forward of the source run.

    Returns ``{"resid", "attn", "mlp", "heads", "head_pos"}`` -> ``PatchResult``
    with the same dims and labels as ``patch_residual``, ``patch_attn_out``,
    ``patch_mlp_out``, ``patch_heads`` and ``patch_heads(by_position=True)``;
    ``method="attribution"`` and only the ``logit_diff`` metric.
    """
    mh = handle(model)
    check_direction(direction)
    check_pairs(mh, pairs)
    f = mh.anatomy
    base_ids = pairs.corrupted_ids if direction == "denoise" else pairs.clean_ids
    src_ids = pairs.clean_ids if direction == "denoise" else pairs.corrupted_ids
    base_acts, grads, base_logits = activations_and_gradients(mh, pairs, base_ids, with_grad=True)
    src_acts, _, src_logits = activations_and_gradients(mh, pairs, src_ids, with_grad=False)
    clean_logits, bad_logits = ((src_logits, base_logits) if direction == "denoise"
                                else (base_logits, src_logits))
    base = baselines(mh, pairs, clean_logits, bad_logits)  # no extra forward passes
    base_ld = base["corrupted" if direction == "denoise" else "clean"]["logit_diff"].to(base_logits.device)

    def estimate(site: str, layer: int | None) -> torch.Tensor:  # [N, seq, d] elementwise terms
        key = (site, layer)
        return (src_acts[key] - base_acts[key]) * grads[key]

    n, seq = base_ids.shape
    resid = torch.stack([estimate("embed", None).sum(-1)]
                        + [estimate("resid", l).sum(-1) for l in range(f.n_layers)], 1)
    attn = torch.stack([estimate("attn", l).sum(-1) for l in range(f.n_layers)], 1)
    mlp = torch.stack([estimate("mlp", l).sum(-1) for l in range(f.n_layers)], 1)
    head_pos = torch.stack([estimate("head", l).view(n, seq, f.n_heads, f.d_head).sum(-1)
                            for l in range(f.n_layers)], 1).transpose(2, 3)  # [N, L, H, seq]
    layers, layers_r = layer_labels(f.n_layers), layer_labels(f.n_layers, resid=True)
    heads = [f"H{h}" for h in range(f.n_heads)]
    positions = pairs.position_labels
    out = {}
    for name, site, grid, dims, labels in (
            ("resid", "resid", resid, ("layer", "position"), {"layer": layers_r, "position": positions}),
            ("attn", "attn", attn, ("layer", "position"), {"layer": layers, "position": positions}),
            ("mlp", "mlp", mlp, ("layer", "position"), {"layer": layers, "position": positions}),
            ("heads", "head", head_pos.sum(-1), ("layer", "head"), {"layer": layers, "head": heads}),
            ("head_pos", "head", head_pos, ("layer", "head", "position"),
             {"layer": layers, "head": heads, "position": positions})):
        value = base_ld.view(n, *([1] * (grid.dim() - 1))) + grid
        out[name] = PatchResult(site=site, direction=direction, dims=dims, labels=labels,
                                values={"logit_diff": value.detach().cpu()},
                                clean={m: v.cpu() for m, v in base["clean"].items()},
                                corrupted={m: v.cpu() for m, v in base["corrupted"].items()},
                                prompts=pairs, model_name=f.name, method="attribution")
        out[name].remote = mh.remote
    return out


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
