"""Chapter 1's "What it means" prose: predictions, roles, the two baselines, the spread over
many prompts and why probability is a poor metric.  Every number is computed here from the
values passed in, with the same formatting the chapter's cells print."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from IPython.display import Markdown

from helpers.base.fmt import join, num, pct, signed
from helpers.results.metrics import mean_and_sem
from helpers.teach.explain._markdown import markdown

__all__ = ["predictions", "roles", "baselines", "spread", "probability"]


def predictions(clean_top: Sequence[tuple[str, float]], corrupted_top: Sequence[tuple[str, float]],
                answer: str) -> Markdown:
    """What the top predictions (``H.top_predictions`` lists of ``(token, p)``) of a clean and
    a corrupted prompt say; ``answer`` is the clean prompt's right answer."""
    top_clean, p_clean = clean_top[0][0].strip(), clean_top[0][1]
    top_corrupted, p_corrupted = corrupted_top[0][0].strip(), corrupted_top[0][1]
    verdict = ("the right answer" if top_clean == answer else
               f"not the right answer {answer} (a model without the skill, e.g. one with random "
               "weights, only guesses)")
    text = (f"**What it means.** On the clean prompt the top prediction is **{top_clean}** "
            f"(p = {p_clean:.3g}), {verdict}. ")
    if top_corrupted != top_clean:
        text += (f"On the corrupted prompt it is **{top_corrupted}** (p = {p_corrupted:.3g}). "
                 "Changing one word changed the prediction, so somewhere between that word and the "
                 "last position the model carries the information that decides the answer. "
                 "Activation patching finds where.")
    else:
        text += (f"On the corrupted prompt the top prediction stays **{top_corrupted}**: the "
                 "corruption does not change this model's answer, so there is little for patching "
                 "to find here.")
    return markdown(text)


def roles(pairs: Any) -> Markdown:
    """Where the first clean prompt of ``pairs`` (a ``PromptPairs``) and its corrupted partner
    differ, and why nothing before the first difference can matter."""
    differ = [p for p, (c, k) in enumerate(zip(pairs.tokens, pairs.corrupted_tokens)) if c != k]
    where = join(f"{pairs.position_labels[p]} (position {p})" for p in differ)
    return markdown(
        f"**What it means.** In the first pair the two prompts differ only at {where}. At every "
        f"position before {pairs.first_difference} both runs read the same tokens, so their "
        "activations there are identical and patching them can change nothing. Information about "
        "the corruption enters at the first difference and can only travel forward, to later "
        "positions, through attention: by the time the model predicts at END, attention must have "
        "moved it there.")


def baselines(clean_ld: torch.Tensor, corrupted_ld: torch.Tensor, normalise: bool = True) -> Markdown:
    """The two baselines (per-pair logit differences, ``[n_pairs]`` each) and the gap between
    them, the ruler of every later normalised score."""
    (clean_mean, clean_sem), (corrupted_mean, corrupted_sem) = (mean_and_sem(clean_ld),
                                                                mean_and_sem(corrupted_ld))
    gap = clean_mean - corrupted_mean
    text = (f"**What it means.** The clean run prefers the right name by {signed(clean_mean)} logits "
            f"on average (± {num(clean_sem)}); the corrupted run scores {signed(corrupted_mean)} "
            f"(± {num(corrupted_sem)}). ")
    if normalise:
        text += (f"The gap between them, {num(gap)} logits, is the ruler for everything that follows: "
                 "a patched run is scored by where it lands between these two baselines.")
    else:
        text += (f"The runs differ by {num(gap)} logits. With `normalise=False` the later chapters show "
                 "raw logit differences instead of normalised scores: the right choice when this gap "
                 "is too small to serve as a ruler, as on a model without the skill.")
    return markdown(text)


def spread(accuracy: Any, clean_ld: torch.Tensor, corrupted_ld: torch.Tensor) -> Markdown:
    """Accuracy (an ``H.ioi_accuracy`` result: ``.n``, ``.accuracy``) and the share of prompts
    on the expected side of 0 (``[n]`` logit differences of each run)."""
    right = (clean_ld > 0).double().mean().item()
    flipped = (corrupted_ld < 0).double().mean().item()
    text = (f"**What it means.** Over {accuracy.n} random prompts the IO name is the top prediction "
            f"{pct(accuracy.accuracy, 1)} of the time. In the histogram the clean logit difference is "
            f"positive on {pct(right, 1)} of the {len(clean_ld)} prompts and the corrupted one is "
            f"negative on {pct(flipped, 1)}. ")
    if clean_ld.min() > corrupted_ld.max():
        text += ("The two distributions do not overlap: every clean prompt scores higher than every "
                 "corrupted one, so the difference between the runs holds prompt by prompt, not only "
                 "on average.")
    else:
        text += ("The two distributions overlap, so on this model judge patching results by their "
                 "means and standard errors over many pairs, not by single prompts.")
    return markdown(text)


def probability(clean_ld: torch.Tensor, clean_prob: torch.Tensor) -> Markdown:
    """Why probability says less than the logit difference, from the clean prompts' logit
    differences and p(IO) (``[n]`` each)."""
    low, high = clean_ld.min().item(), clean_ld.max().item()
    p_low, p_high = clean_prob.min().item(), clean_prob.max().item()
    text = (f"**What it means.** Across the {len(clean_ld)} clean prompts the logit difference "
            f"ranges from {num(low)} to {num(high)}, a spread of {num(high - low)} logits, while "
            f"p(IO) ranges from {p_low:.3g} to {p_high:.3g}. ")
    if p_low > 0.9:
        text += ("Probability is saturated on every clean prompt: it cannot tell a prompt the model "
                 "barely gets right from one it gets right by a wide margin, and it would not show a "
                 "component that pushes against the answer. The logit difference still resolves both.")
    elif p_high < 0.1:
        text += ("On this model p(IO) stays near zero: the model does not pick the name, and "
                 "probability has nothing to say. The logit difference still shows which of the two "
                 "names it leans towards.")
    else:
        text += ("Where the cloud flattens against 0 or 1, probability stops responding; the logit "
                 "difference keeps a straight scale across the whole range.")
    return markdown(text)


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
