"""Exercise checks for the notebooks.

Each check recomputes the right answer from the data it is given (never a
stored number), prints whether the learner's answer is right, and prints a
hint - never raises - when the answer is missing (``None`` or ``...``) or
wrong.  ``solution(name)`` prints a worked solution.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch

from helpers.base.fmt import parse_head
from helpers.base.validate import norm_index
from helpers.base.guard import checked, rules_of
from helpers.methods.sweeps import PatchResult

__all__ = ["check_normalised_score", "check_peak_position", "check_top_head", "check_direction_word",
           "check_best_auroc", "solution", "SOLUTIONS"]

SOLUTIONS = {
    "normalised_score": "score = (patched - corrupted) / (clean - corrupted): subtract the corrupted "
                        "baseline, divide by the full clean-corrupted gap.",
    "peak_position": "r = patch_residual(model, pairs); row = r.grid()[r.index('layer', layer)]; "
                     "the answer is r.labels['position'][int(row.argmax())].",
    "top_head": "r = patch_heads(model, pairs); s = r.grid(); l, h = divmod(int(s.argmax()), "
                "s.shape[1]); the answer is H.fmt.head_name(l, h), e.g. 'L0H3'.",
    "best_auroc": "best = max(card.rows, key=lambda r: r.auroc['edge/negative']); the answer is "
                  "best.method (the scorecard table's column 'edge AUROC (backup −)').",
    "direction_word": "Denoising patches clean activations into the corrupted run (sufficiency); "
                      "noising patches corrupted activations into the clean run (necessity).",
}


def _never_raises(check: Callable[..., bool]) -> Callable[..., bool]:
    """A check prints a hint instead of raising, whatever it is given: a learner's typo
    (a wrong type, an index out of range) is feedback, not a traceback.  The input rules
    (``helpers.base.guard``) run inside, so what they refuse is a hint too."""
    inner = checked(check)

    @functools.wraps(check)
    def wrapper(*args: Any, **kwargs: Any) -> bool:
        try:
            return inner(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - reported to the learner, never hidden
            print(f"Not yet: the check could not use what it was given ({type(err).__name__}: {err}). "
                  f"Look at the exercise's instructions for the expected kind of answer.")
            return False

    wrapper.__patchlab_rules__ = rules_of(inner)  # type: ignore[attr-defined]
    return wrapper


def _missing(answer: Any) -> bool:
    return answer is None or answer is Ellipsis


def _report(ok: bool, hint: str) -> bool:
    print("Correct!" if ok else f"Not yet. Hint: {hint}")
    return ok


@_never_raises
def check_normalised_score(answer: Any, patched: float, clean: float, corrupted: float) -> bool:
    """Is ``answer`` the normalised score of ``patched`` between the two baselines?"""
    hint = "0 should mean 'as bad as the corrupted run' and 1 'as good as the clean run'."
    if _missing(answer):
        return _report(False, hint)
    truth = (patched - corrupted) / (clean - corrupted)
    try:
        ok = math.isclose(float(answer), truth, rel_tol=1e-3, abs_tol=1e-3)
    except (TypeError, ValueError):
        ok = False
    return _report(ok, hint)


@_never_raises
def check_peak_position(answer: Any, result: PatchResult, layer: Any) -> bool:
    """Is ``answer`` (a role such as "S2", a position index, or a label) where row ``layer``
    of a layer x position result peaks?  ``layer`` is named as everywhere (``helpers.base.fmt``):
    block 2 (``2`` or ``"L2"``) is the row labelled ``L2``; ``"embed"`` the embedding row."""
    row_i = result.index("layer", layer)
    hint = (f"look at row {result.labels['layer'][row_i]!r} of the heatmap: which column is "
            "darkest blue? Answer with its role (e.g. 'END') or its index.")
    if _missing(answer):
        return _report(False, hint)
    row = _grid(result)[row_i]
    best = int(row.argmax())
    role_at = {p: r for r, p in result.prompts.positions.items()}
    if isinstance(answer, str):
        ok = answer.strip() in (result.labels["position"][best], role_at.get(best, ""))
    else:
        try:
            ok = norm_index(answer, len(row), "answer", "positions") == best
        except (TypeError, ValueError):
            ok = False
    return _report(ok, hint)


@_never_raises
def check_top_head(answer: Any, result: PatchResult) -> bool:
    """Is ``answer`` the head with the largest value in the heatmap — written ``"L0H3"`` or
    as a ``(layer, head)`` pair?"""
    if result.dims != ("layer", "head"):
        raise ValueError(f"check_top_head needs a layer x head result (patch_heads), got dims "
                         f"{result.dims}")
    hint = "find the darkest blue cell of the layer x head heatmap; answer like 'L0H3'."
    if _missing(answer):
        return _report(False, hint)
    grid = _grid(result)
    best = divmod(int(grid.argmax()), grid.shape[1])
    try:
        given = parse_head(answer) if isinstance(answer, str) else tuple(int(x) for x in answer)
        ok = given == best
    except (TypeError, ValueError):
        ok = False
    return _report(ok, hint + ("" if ok else f" (you gave {answer!r})"))


@_never_raises
def check_direction_word(answer: Any, question: str = "sufficiency") -> bool:
    """Which direction tests ``question`` ("sufficiency" or "necessity")?"""
    if question not in ("sufficiency", "necessity"):
        raise ValueError(f"question must be 'sufficiency' or 'necessity', got {question!r}")
    truth = {"sufficiency": "denoise", "necessity": "noise"}[question]
    hint = "which run do you start from, and what do you patch in?"
    if _missing(answer):
        return _report(False, hint)
    word = str(answer).strip().lower()
    ok = word in (truth, truth[:-1] + "ing")  # "noise"/"noising", "denoise"/"denoising"
    return _report(ok, hint)


def _grid(result: PatchResult) -> torch.Tensor:
    """What the heatmap shows: importance (normalised), or the raw mean where the gap is too
    small to normalise."""
    try:
        return result.grid(True)
    except ValueError:
        return result.mean()


@_never_raises
def check_best_auroc(answer: Any, card: Any, level: str = "edge") -> bool:
    """The method of a ``helpers.circuits.scorecard.Scorecard`` with the highest ROC AUC over
    ``level`` (``"edge"`` or ``"node"``), the backup counted as not in the circuit (ties: any of
    them)."""
    if _missing(answer):
        return _report(False, "answer with a method's name as the table writes it, e.g. 'eap'")
    key = f"{level}/negative"
    best = max(r.auroc[key] for r in card.rows)
    winners = [r.method for r in card.rows if r.auroc[key] == best]
    return _report(str(answer).strip().lower() in winners,
                   f"read the column '{level} AUROC (backup −)' of the scorecard and take the largest value")


def solution(name: str) -> None:
    """Print the worked solution of an exercise."""
    print(SOLUTIONS.get(name, f"no exercise {name!r}; known: {', '.join(SOLUTIONS)}"))


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
