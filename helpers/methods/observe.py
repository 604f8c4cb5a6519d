"""Looking without intervening: predictions, task accuracy and attention patterns.

Each function runs one traced forward pass per call (per chunk in ``ioi_accuracy``), on NDIF
for a model loaded with ``remote=True``; the trace bodies follow the rules in
``helpers.engine.runs`` (save what leaves, fill nothing outside, call nothing from helpers)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from helpers.base.validate import as_count, check_finite, check_ids, norm_index
from helpers.data.behaviours import BinaryTask, binary_pairs
from helpers.data.prompts import IOIPrompt, PromptError, single_token_id, token_ids
from helpers.engine.runs import locate_non_finite
from helpers.methods.sweeps import baselines
from helpers.models.loaded import handle
from helpers.results.metrics import logit_diff

__all__ = ["encode", "top_predictions", "ioi_accuracy", "ioi_per_prompt", "IOIAccuracy", "attention_patterns",
           "last_logits", "template_check"]


def encode(model: Any, text: str | Sequence[str]) -> torch.Tensor:
    """Token ids ``[batch, seq]`` for one text or several of the same token length;
    words outside a word-level vocabulary raise ``PromptError``."""
    mh = handle(model)
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise PromptError("no text to encode: give a string or a non-empty list of strings")
    f = mh.anatomy
    rows = [token_ids(mh.tokenizer, t) for t in texts]
    if len({len(r) for r in rows}) > 1:
        raise PromptError(f"texts have different token lengths {[len(r) for r in rows]}; "
                          "run them one at a time or use prompts of equal length")
    return check_ids(torch.tensor(rows), f.vocab_size, f.n_positions,
                     "the prompt's tokens").to(mh.device)


def last_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the last position, ``[batch, vocab]``, in one traced forward."""
    mh = handle(model)
    f = mh.anatomy
    ids = check_ids(ids, f.vocab_size, f.n_positions)
    unembed = f.unembed(mh.model)
    with torch.no_grad(), mh.model.trace(ids.to(mh.device), logits_to_keep=1, use_cache=False,
                                      **mh.trace_kwargs):
        out = unembed.output[:, -1].clone().save()
    return check_finite(f.logits(out), "the logits of this forward pass",
                        lambda: locate_non_finite(mh, ids))


def top_predictions(model: Any, text: str, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely next tokens after ``text`` with their probabilities."""
    mh = handle(model)
    k = as_count(k, "k")
    probs = last_logits(mh, encode(mh, text))[0].float().softmax(-1)
    p, idx = probs.topk(min(k, probs.shape[-1]))
    return [(mh.tokenizer.decode([int(i)]), float(q)) for q, i in zip(p, idx)]


@dataclass(frozen=True)
class IOIAccuracy:
    """Top-1 accuracy (the IO name is the most likely next token) and the mean
    logit difference IO - S over ``n`` prompts, with its standard error."""

    n: int
    accuracy: float
    mean_logit_diff: float
    sem_logit_diff: float


def ioi_accuracy(model: Any, prompts: Sequence[IOIPrompt], batch_size: int = 64) -> IOIAccuracy:
    """Evaluate IOI prompts of any lengths (grouped by length, no padding)."""
    mh = handle(model)
    per = ioi_per_prompt(mh, prompts, batch_size)
    h, d = per["top1"], per["logit_diff"]
    sem = (d.std() / len(d) ** 0.5).item() if len(d) > 1 else 0.0
    return IOIAccuracy(len(d), h.mean().item(), d.mean().item(), sem)


def ioi_per_prompt(model: Any, prompts: Sequence[IOIPrompt], batch_size: int = 64
                   ) -> dict[str, torch.Tensor]:
    """Per prompt (float64, ``[n]``, in the order given): ``top1`` (1.0 when IO is the most likely
    next token), ``io_over_s`` (1.0 when IO's logit beats S's) and ``logit_diff`` (IO - S)."""
    mh = handle(model)
    tok = mh.tokenizer
    batch_size = as_count(batch_size, "batch_size")
    if isinstance(prompts, IOIPrompt):
        prompts = [prompts]
    if not prompts:
        raise PromptError("no prompts to evaluate: give a non-empty list (e.g. "
                          "helpers.random_ioi_prompts(100))")
    groups: dict[int, list[tuple[int, list[int], int, int]]] = {}
    for i, p in enumerate(prompts):
        if not isinstance(p, IOIPrompt):
            raise PromptError(f"ioi_accuracy takes IOIPrompt objects (helpers.random_ioi_prompts), "
                              f"got {type(p).__name__}")
        ids = token_ids(tok, p.text)
        groups.setdefault(len(ids), []).append((i, ids, single_token_id(tok, p.io),
                                                single_token_id(tok, p.s)))
    top1, diff = torch.zeros(len(prompts), dtype=torch.float64), torch.zeros(len(prompts), dtype=torch.float64)
    for items in groups.values():
        for j in range(0, len(items), batch_size):
            chunk = items[j: j + batch_size]
            logits = last_logits(mh, torch.tensor([c[1] for c in chunk]))
            io = torch.tensor([c[2] for c in chunk], device=logits.device)
            s = torch.tensor([c[3] for c in chunk], device=logits.device)
            rows = torch.tensor([c[0] for c in chunk])
            top1[rows] = (logits.argmax(-1) == io).double().cpu()
            diff[rows] = logit_diff(logits, io, s).double().cpu()
    return {"top1": top1, "io_over_s": (diff > 0).double(), "logit_diff": diff}


def attention_patterns(model: Any, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Attention weights of every head of ``layer``: ``[batch, n_heads, seq_q, seq_k]``.

    Needs the eager attention implementation (``load_model`` sets it): rows
    are query positions, columns the key positions they attend to.
    """
    mh = handle(model)
    f = mh.anatomy
    layer = norm_index(layer, f.n_layers, "layer", "blocks in this model")
    ids = check_ids(ids, f.vocab_size, f.n_positions)
    attn = f.attn(mh.model, layer)
    pattern = None  # stays None when the attention module returns no weights
    with torch.no_grad(), mh.model.trace(ids.to(mh.device), logits_to_keep=1, use_cache=False,
                                      **mh.trace_kwargs):
        weights = attn.output[1]
        if weights is not None:
            pattern = weights.clone().save()
    if pattern is None:
        where = (" NDIF ran it with an attention implementation that returns none (helpers asks "
                 "for 'eager'; the server may refuse to switch)" if mh.remote is True else
                 " load it with attn_implementation='eager' (helpers.load_model does)")
        raise RuntimeError(f"this model's attention returns no weights:{where}")
    return pattern


def template_check(model: Any, task: BinaryTask, n: int = 8, seed: int = 0) -> list[dict]:
    """The unpatched logit difference on ``n`` pairs of every template of ``task``: one dict per
    template, ``{"template", "text", "seen", "clean", "corrupted", "right"}`` (prompt means of
    the clean and corrupted logit difference, and the share of prompts with the right sign)."""
    mh = handle(model)
    rows = []
    for t, text in enumerate(task.every_template):
        base = baselines(mh, binary_pairs(mh.tokenizer, task, n=n, seed=seed, template=t))
        c, k = base["clean"]["logit_diff"], base["corrupted"]["logit_diff"]
        rows.append({"template": t, "text": text, "seen": t < len(task.templates),
                     "clean": c.mean().item(), "corrupted": k.mean().item(),
                     "right": torch.cat([c > 0, k < 0]).float().mean().item()})
    return rows


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
