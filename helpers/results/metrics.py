"""Metrics on last-position logits, and the normalised patching score.

All functions take logits of the final position, ``[batch, vocab]``, and
return one value per prompt, ``[batch]``.

* ``logit_diff``: answer logit minus distractor logit (IO minus S for IOI): the
  default metric.  Positive = the model prefers the right answer.
* ``answer_prob``: softmax probability of the answer token.
* ``kl_to_clean``: KL(clean || patched), in nats: 0 when the patched run
  predicts exactly what the clean run does.
* ``normalised``: ``(patched - corrupted) / (clean - corrupted)``: 0 = the
  corrupted run's value, 1 = the clean run's, whichever direction was patched.
"""
from __future__ import annotations

import math
from typing import Literal, get_args

import torch

from helpers.base.validate import NonFiniteError
from helpers.data.pairs import PromptPairs

__all__ = ["METRICS", "Metric", "GapTooSmallError", "logit_diff", "answer_prob", "kl_to_clean",
           "normalised", "mean_and_sem", "MIN_GAP", "metrics_of"]

Metric = Literal["logit_diff", "answer_prob", "kl_to_clean"]
METRICS: tuple[str, ...] = get_args(Metric)
#: Smallest |clean - corrupted| per metric that can be normalised.
MIN_GAP = {"logit_diff": 0.1, "answer_prob": 0.01, "kl_to_clean": 0.01}


class GapTooSmallError(ValueError):
    """The clean and corrupted runs are too close to normalise a patching effect."""


def logit_diff(logits: torch.Tensor, answer_ids: torch.Tensor,
               distractor_ids: torch.Tensor) -> torch.Tensor:
    """``logits[b, answer_b] - logits[b, distractor_b]``.  ``logits``: ``[batch, vocab]``."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, answer_ids.to(logits.device)] - logits[rows, distractor_ids.to(logits.device)]


def answer_prob(logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``answer_ids[b]`` under ``logits[b]``: ``[batch]``."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits.float().softmax(-1)[rows, answer_ids.to(logits.device)].to(logits.dtype)


def kl_to_clean(logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """KL(clean || patched) per prompt, in nats: ``[batch]``.  ``clean_logits`` is
    ``[batch, vocab]`` (or ``[vocab]``, broadcast)."""
    logp = logits.log_softmax(-1)
    logq = clean_logits.to(logits.device, logits.dtype).log_softmax(-1).expand_as(logp)
    return (logq.exp() * (logq - logp)).sum(-1).clamp_min(0)


def normalised(values: torch.Tensor, clean: torch.Tensor | float, corrupted: torch.Tensor | float,
               metric: Metric = "logit_diff", min_gap: float | None = None) -> torch.Tensor:
    """``(values - corrupted) / (clean - corrupted)``.

    Raises ``GapTooSmallError`` when ``|clean - corrupted|`` is below ``min_gap``
    (default ``MIN_GAP[metric]``) anywhere: the score would only amplify noise.
    On a model that does not do the task (e.g. random weights) compare raw
    values instead.
    """
    gap = torch.as_tensor(clean, dtype=values.dtype) - torch.as_tensor(corrupted, dtype=values.dtype)
    limit = MIN_GAP.get(metric, 1e-6) if min_gap is None else min_gap
    smallest = gap.abs().min().item() if gap.numel() else math.nan
    if gap.numel() and not torch.isfinite(gap).all():
        raise NonFiniteError(f"the clean or corrupted {metric} is not finite (NaN or infinite), so "
                             "no normalised score exists: the model's forward pass produced "
                             "non-finite values (check its weights and dtype)")
    if not smallest >= limit:
        raise GapTooSmallError(
            f"the clean and corrupted {metric} differ by only {smallest:.3g} (< {limit:g}), so a "
            f"normalised score would divide by almost nothing. The model barely tells the two "
            f"prompts apart (random weights? a task it cannot do?): look at the raw {metric} "
            f"instead (result.mean('{metric}')), or pass min_gap= if you know better.")
    return (values - corrupted) / gap


def mean_and_sem(values: torch.Tensor) -> tuple[float, float]:
    """Mean over prompts (dim 0) and its standard error (0 for one prompt)."""
    v = values.double().flatten()
    sem = (v.std(unbiased=True) / math.sqrt(len(v))).item() if len(v) > 1 else 0.0
    return v.mean().item(), sem


METRIC_BLOCK_MB = 32  # the vocabulary-wide metrics (softmax, KL) run on row blocks this size


def metrics_of(logits: torch.Tensor, pairs: PromptPairs, clean_logits: torch.Tensor,
             rows_pair: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric of ``logits`` ``[rows, vocab]`` (row r is prompt ``rows_pair[r]`` of ``pairs``,
    whose answers and distractors it reads; ``clean_logits`` ``[N, vocab]`` the clean run's):
    ``{metric: [rows]}``.  Softmax and KL make several ``[rows, vocab]`` temporaries, so they run on blocks of
    rows: a sweep's memory is its chunk's logits, not several copies of them."""
    a = pairs.answer_ids.to(logits.device)[rows_pair]
    d = pairs.distractor_ids.to(logits.device)[rows_pair]
    block = max(1, int(METRIC_BLOCK_MB * 2**20 // (logits.shape[-1] * logits.element_size())))
    prob, kl = [], []
    for i in range(0, logits.shape[0], block):
        part = logits[i: i + block]
        prob.append(answer_prob(part, a[i: i + block]))
        kl.append(kl_to_clean(part, clean_logits[rows_pair[i: i + block]]))
    return {"logit_diff": logit_diff(logits, a, d), "answer_prob": torch.cat(prob),
            "kl_to_clean": torch.cat(kl)}


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
