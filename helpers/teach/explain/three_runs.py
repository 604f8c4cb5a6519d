"""Chapter 2's "What it means" prose: one patch measured, the same patch on three metrics, and
the hand-over from S2 to END along the residual stream.  Every number is computed here from
the values passed in, with the formatting the chapter's cells print."""
from __future__ import annotations


import torch
from IPython.display import Markdown

from helpers.base.fmt import join, num, signed
from helpers.results.metrics import METRICS, GapTooSmallError, mean_and_sem
from helpers.results.patch_result import PatchResult
from helpers.teach.explain._markdown import markdown

__all__ = ["patch", "metrics", "hand_over"]

GAIN = 0.1  # a block "moves" information to END when END's score rises by more than this


def patch(clean_ld: torch.Tensor, corrupted_ld: torch.Tensor, patched_ld: torch.Tensor,
          layer: int, position_label: str, normalise: bool = True) -> Markdown:
    """What patching residual row ``L<layer>`` (block ``layer``'s output) at ``position_label``
    did, from the per-pair logit differences of the three runs (``[n_pairs]`` each)."""
    clean, corrupted, patched = (mean_and_sem(v)[0] for v in (clean_ld, corrupted_ld, patched_ld))
    effect = patched - corrupted
    where = f"residual row L{layer} (block {layer}'s output) at {position_label}"
    if not normalise:
        return markdown(
            f"**What it means.** Patching {where} moves the mean logit difference from "
            f"{signed(corrupted)} to {signed(patched)}, a raw effect of {signed(effect)} logits, "
            f"against a clean − corrupted gap of {signed(clean - corrupted)}. With `normalise=False` "
            "we read raw effects only. On a model that cannot do the task (a gap near 0) they carry "
            "no story; what matters then is that the code runs and agrees with the helpers.")
    score = effect / (clean - corrupted)
    text = (f"**What it means.** Copying one vector per prompt, {where}, from the clean run into "
            f"the corrupted run moves the mean logit difference from {signed(corrupted)} to "
            f"{signed(patched)}: a raw effect of {signed(effect)} logits and a normalised score of "
            f"{num(score)}. ")
    blocks = "block L0" if layer == 0 else f"blocks L0 … L{layer}"
    if score > 0.9:
        text += ("That vector alone brings the clean behaviour back: at this point of the "
                 "computation, what decides the answer sits at this position.")
    elif score > 0.1:
        text += ("It brings part of the clean behaviour back: at this point some of what decides "
                 f"the answer still sits at this position, and the attention of {blocks} has "
                 "already copied some to later positions, where it stays corrupted. The loop over "
                 "blocks below shows where it goes.")
    else:
        text += (f"It brings almost nothing back: after {blocks}, what decides the answer no longer "
                 "sits at this position. The loop over blocks below shows where it went.")
    return markdown(text)


def metrics(result: PatchResult, normalise: bool = True) -> Markdown:
    """Whether one patch (a one-set ``patch_components`` result) scores alike on every metric;
    empty when ``normalise`` is off or a metric's clean − corrupted gap is too small."""
    if not normalise:
        return markdown()
    try:
        scores = {m: result.score(m).reshape(-1)[0].item() for m in METRICS}
    except GapTooSmallError:
        return markdown()
    text = (f"**What it means.** The same patch scores {num(scores['logit_diff'])} on the logit "
            f"difference, {num(scores['answer_prob'])} on probability and "
            f"{num(scores['kl_to_clean'])} on KL. ")
    if max(scores.values()) - min(scores.values()) > 0.2:
        text += ("The metrics disagree because they are not linear in one another. Probability "
                 "follows chapter 1's S-curve, flat far from a logit difference of 0 and steep near "
                 "it, so it understates a patch that leaves the logit difference on the corrupted "
                 "side and overstates one that pushes it just past 0; KL compares whole next-token "
                 "distributions. Partial effects are where metrics part ways (a full restoration "
                 "scores 1 on all three), which is why the linear logit difference is the default.")
    else:
        text += "They agree, so this result does not hinge on the metric."
    return markdown(text)


def _block(label: str) -> str:
    """``"L2"`` -> ``"block 2 (L2)"``."""
    return f"block {label[1:]} ({label})"


def hand_over(resid: PatchResult, loop_difference: float, normalise: bool = True) -> Markdown:
    """Where the information moves from S2 to END, read from a residual-stream result
    (``H.patch_residual``: rows ``embed, L0, …``; positions with roles S2 and END), and whether
    the hand-written loop agreed with it (``loop_difference``, the largest gap)."""
    labels = resid.labels["layer"]
    grid = resid.grid(normalise)
    s2 = grid[:, resid.index("position", "S2")].tolist()
    end = grid[:, resid.index("position", "END")].tolist()
    agree = ("The hand-written loop and the helpers agree point for point." if loop_difference < 1e-3
             else f"Careful: the loop and the helpers differ by up to {loop_difference:.2g}.")
    if not normalise:
        gap = resid.baseline("clean") - resid.baseline("corrupted")
        return markdown(
            f"**What it means.** The raw logit difference at S2 ranges from {signed(min(s2))} to "
            f"{signed(max(s2))} and at END from {signed(min(end))} to {signed(max(end))}; the last "
            f"block at END reproduces the clean run ({signed(resid.baseline('clean'))}), as it must. "
            "On a model with the skill the curves show the hand-over from S2 to END; on one without "
            f"it (clean − corrupted gap near 0, here {signed(gap)}) there is nothing to hand over, "
            f"and the run shows the code working. {agree}")
    steps = range(1, len(labels))                      # from row r - 1 to row r: block labels[r]
    drop = max(steps, key=lambda r: s2[r - 1] - s2[r])
    gain = max(steps, key=lambda r: end[r] - end[r - 1])
    where = (f"{_block(labels[drop])} is where" if drop == gain else
             f"{_block(labels[drop])} and {_block(labels[gain])} are where")
    text = (f"**What it means.** At S2 the score goes from {num(s2[0])} ({labels[0]}) to "
            f"{num(s2[-1])} ({labels[-1]}); at END from {num(end[0])} to {num(end[-1])}. S2 loses "
            f"most from row {labels[drop - 1]} to row {labels[drop]} ({num(s2[drop - 1])} → "
            f"{num(s2[drop])}) and END gains most from {labels[gain - 1]} to {labels[gain]} "
            f"({num(end[gain - 1])} → {num(end[gain])}): {where} attention moves the largest share "
            "of the information that decides the answer from the S2 token to the last token. ")
    gains = [labels[r] for r in steps if end[r] - end[r - 1] > GAIN]
    if len(gains) > 1:
        text += (f"The hand-over is spread out: END gains more than {GAIN} in each of blocks "
                 f"{join(gains)}. ")
    return markdown(text + f"{agree} Chapter 3 extends the picture to every position.")


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
