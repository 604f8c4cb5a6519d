"""Statistics on every patching result, computed on per-prompt effects.

A result holds one value per prompt and cell, ``values`` ``[n_prompts, *shape]``, and the
unpatched baselines ``clean`` and ``corrupted``, ``[n_prompts]``.  Everything here starts from
the **per-prompt effect** of each cell::

    effect[i, cell] = values[i, cell] - base[i]

where ``base`` is the run that was patched into: the corrupted run when denoising, the clean
run when noising.  Per cell (every array below is ``[*shape]``, float64):

* ``effect`` and ``sem``: the mean effect over prompts (``PatchResult.effect()``) and its
  standard error, ``std(ddof=1) / sqrt(n)``, as ``metrics.mean_and_sem``.  Every
  statistic needs at least 2 prompts (``TooFewPromptsError``).
* ``ci_low``, ``ci_high``: a seeded percentile bootstrap interval of the mean effect.
  ``n_boot`` resamples of the prompts with replacement, indices
  ``numpy.random.default_rng([seed, 0]).integers(0, n, (n_boot, n))`` (``bootstrap_indices``);
  the interval is the ``alpha / 2`` and ``1 - alpha / 2`` quantiles of the resampled means
  (linear interpolation, numpy's default).  The same resamples serve every cell (cells are
  comparable) and the normalised score.
* ``score`` and its interval: the normalised score of the prompt means,
  ``normalised(mean patched, mean clean, mean corrupted)`` (``PatchResult.score()``: 0 = the
  corrupted run, 1 = the clean run); in each resample the same formula over the resampled
  prompts.  ``importance`` (what ``plot_patching`` shows, ``PatchResult.importance()``) is the
  score when denoising and ``1 - score`` when noising, its interval that of the per-resample
  importance.  When the clean-corrupted gap of the prompt means, or of any resample, is below
  ``min_gap`` (``metrics.normalised``), these are ``None`` and ``score_note`` says why.
* ``p``: a two-sided sign-flip permutation test of H0 "the per-prompt effects are symmetric
  around 0".  Statistic ``|mean effect|``; p = share of sign patterns ``s`` (prompt ``i``'s
  effect times ``s_i = +-1``) whose ``|mean|`` reaches the observed one, ties allowed within
  ``1e-9 * mean |effect|`` (float rounding).  Exact when ``2^n <= 2^16`` (n <= 16 prompts): all
  ``2^n`` patterns, counted on the ``2^(n-1)`` with ``s_0 = +1`` (a pattern and its negative
  have the same ``|mean|``).  Above, ``n_perm`` random patterns from
  ``numpy.random.default_rng([seed, 1])`` (``sign_patterns``) and ``p = (1 + count) /
  (1 + n_perm)``.  All-positive effects give the smallest exact p, ``2 / 2^n``.
* ``p_adjusted``: a multiple-comparison correction across all cells of the map:
  ``"holm"`` (step-down, family-wise error rate), ``"bh"`` (Benjamini-Hochberg step-up, false
  discovery rate) or ``None`` (unadjusted); monotone in ``p`` and capped at 1.

A cell whose per-prompt effects are all exactly 0 (e.g. a position before the first token that
differs) gets effect 0, sem 0, interval [0, 0] and p = 1.  There is no global state: the seed
fixes every random draw (numpy's PCG64, the same stream on every platform), p-values are
counts, and the same inputs give the same table; across machines floats can differ only in the
last bits of float64 sums (BLAS order), far below the 6 significant digits saved in JSON.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal, Sequence, get_args

import numpy as np
import torch

from helpers.base.validate import Direction, as_count, check_memory
from helpers.results.metrics import Metric, normalised

__all__ = ["CellStats", "cell_stats", "per_prompt_effects", "bootstrap_indices",
           "resampled_means", "percentile_interval", "sign_patterns", "sign_flip_p", "adjust_p",
           "CORRECTIONS", "Correction", "EXACT_MAX_PROMPTS", "STAT_COLUMNS", "SETTING_COLUMNS",
           "TooFewPromptsError"]

Correction = Literal["holm", "bh"]
CORRECTIONS: tuple[str, ...] = get_args(Correction)
#: The per-cell columns of ``CellStats.table`` (after the cell's labels), then the settings.
STAT_COLUMNS = ("effect", "sem", "ci_low", "ci_high", "score", "score_ci_low", "score_ci_high",
                "importance", "importance_ci_low", "importance_ci_high", "p", "p_adjusted")
SETTING_COLUMNS = ("metric", "direction", "correction", "alpha", "n_prompts", "n_boot", "n_perm",
                   "exact", "seed")
#: Up to this many prompts the sign-flip test enumerates all 2^n patterns (2^16 = 65,536).
EXACT_MAX_PROMPTS = 16
_CHUNK = 1024  # sign patterns per matrix product: memory 1024 x cells floats (cache-sized)


class TooFewPromptsError(ValueError):
    """Statistics over prompts asked of fewer than 2 prompts: no spread, no interval, no test."""


def _array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def per_prompt_effects(values: Any, clean: Any, corrupted: Any, direction: Direction) -> np.ndarray:
    """``values - base`` per prompt: ``values`` ``[n_prompts, *shape]``, ``clean`` and
    ``corrupted`` ``[n_prompts]``; base = corrupted when ``direction == "denoise"``, clean when
    ``"noise"``.  Returns ``[n_prompts, *shape]`` float64."""
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    v = _array(values)
    base = _array(corrupted if direction == "denoise" else clean)
    if v.ndim < 1 or base.shape != v.shape[:1]:
        raise ValueError(f"values must be [n_prompts, *shape] and the baselines [n_prompts]; got "
                         f"values {v.shape} and baselines {base.shape}")
    return v - base.reshape(-1, *([1] * (v.ndim - 1)))


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` prompt indices drawn with replacement, one row per resample, from
    ``numpy.random.default_rng([seed, 0])``."""
    n, n_boot = as_count(n, "n"), as_count(n_boot, "n_boot")
    check_memory(2 * 8 * n_boot * n, f"n_boot={n_boot} bootstrap resamples of {n} prompts "
                 "(two [n_boot, n] arrays of 8-byte numbers)", "use fewer resamples (1000 to "
                 "10,000 give a stable 95% interval)")
    return np.random.default_rng([as_count(seed, "seed", 0), 0]).integers(0, n, size=(n_boot, n))


def resampled_means(x: Any, idx: np.ndarray) -> np.ndarray:
    """Mean of ``x`` ``[n, *shape]`` over the prompts of each resample ``idx`` ``[n_boot, n]``:
    ``[n_boot, *shape]`` (``x[idx[b]].mean(0)`` for every ``b``, as one matrix product)."""
    x = _array(x)
    n = x.shape[0]
    counts = np.zeros((idx.shape[0], n))
    np.add.at(counts, (np.arange(idx.shape[0])[:, None], idx), 1.0)
    return (counts @ x.reshape(n, -1) / n).reshape(idx.shape[0], *x.shape[1:])


def percentile_interval(samples: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """The ``alpha / 2`` and ``1 - alpha / 2`` quantiles over axis 0 of ``samples``
    ``[n_boot, *shape]`` (linear interpolation): two ``[*shape]`` arrays."""
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2], axis=0)
    return low + 0.0, high + 0.0  # + 0.0: never -0.0


def sign_patterns(n: int, n_perm: int = 10_000, seed: int = 0) -> tuple[np.ndarray, bool]:
    """The sign patterns of the sign-flip test, ``[n_patterns, n]`` of +-1, and whether they
    are exact: the ``2^(n-1)`` patterns with ``s_0 = +1`` (half of all ``2^n``; each stands for
    itself and its negative) when ``n <= 16``, else ``n_perm`` random patterns from
    ``numpy.random.default_rng([seed, 1])``."""
    n = as_count(n, "n")
    if n <= EXACT_MAX_PROMPTS:
        k = np.arange(2 ** (n - 1))[:, None]
        bits = (k >> np.arange(n - 1)) & 1
        return np.hstack([np.ones((len(k), 1)), 1.0 - 2.0 * bits]), True
    rng = np.random.default_rng([as_count(seed, "seed", 0), 1])
    n_perm = as_count(n_perm, "n_perm")
    check_memory(2 * 8 * n_perm * n, f"n_perm={n_perm} sign patterns of {n} prompts (two "
                 "[n_perm, n] arrays of 8-byte numbers)", "use fewer patterns (10,000 resolve "
                 "p-values down to 1e-4)")
    return 1.0 - 2.0 * rng.integers(0, 2, size=(as_count(n_perm, "n_perm"), n)), False


def sign_flip_p(effects: Any, n_perm: int = 10_000, seed: int = 0) -> tuple[np.ndarray, bool]:
    """Two-sided sign-flip permutation p-value per cell of ``effects`` ``[n_prompts, *shape]``:
    ``[*shape]``, and whether it is exact (see the module docstring).  A cell with a NaN or
    infinite effect gets p = NaN."""
    x = _array(effects)
    n, shape = x.shape[0], x.shape[1:]
    flat = x.reshape(n, -1)
    observed = np.abs(flat.mean(0))
    threshold = observed - 1e-9 * np.abs(flat).mean(0)
    signs, exact = sign_patterns(n, n_perm, seed)
    count = np.zeros(flat.shape[1], dtype=np.int64)
    for start in range(0, len(signs), _CHUNK):
        total = signs[start:start + _CHUNK] @ flat  # n x the mean of each pattern
        count += (np.abs(total, out=total) >= n * threshold).sum(0)
    p = count / len(signs) if exact else (1.0 + count) / (1.0 + len(signs))
    p[~np.isfinite(flat).all(0)] = np.nan
    return p.reshape(shape), exact


def adjust_p(p: Any, correction: Correction | None = "holm") -> np.ndarray:
    """``p`` ``[*shape]`` adjusted for testing all its cells together: ``"holm"``
    (``max_{j<=i} (m - j + 1) p_(j)``), ``"bh"`` (``min_{j>=i} m p_(j) / j``) over the ``m``
    finite p-values sorted ascending, capped at 1; ``None`` returns ``p`` unchanged."""
    p = _array(p)
    if correction is None:
        return p.copy()
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS} or None, got {correction!r}")
    flat = p.ravel()
    ok = np.flatnonzero(np.isfinite(flat))
    order = ok[np.argsort(flat[ok], kind="stable")]
    m, ps = len(order), flat[order]
    if correction == "holm":
        adj = np.maximum.accumulate((m - np.arange(m)) * ps)
    else:
        adj = np.minimum.accumulate((m / np.arange(1, m + 1) * ps)[::-1])[::-1]
    out = np.full_like(flat, np.nan)
    out[order] = np.minimum(adj, 1.0)
    return out.reshape(p.shape)


@dataclass(frozen=True)
class CellStats:
    """Per-cell statistics of one map (module docstring): each array is ``[*shape]`` float64;
    the score and importance arrays are ``None`` where the gap is too small to normalise."""

    effect: np.ndarray
    sem: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    score: np.ndarray | None
    score_ci_low: np.ndarray | None
    score_ci_high: np.ndarray | None
    importance: np.ndarray | None
    importance_ci_low: np.ndarray | None
    importance_ci_high: np.ndarray | None
    p: np.ndarray
    p_adjusted: np.ndarray
    metric: str
    direction: str
    correction: str | None
    alpha: float
    n_prompts: int
    n_boot: int
    n_perm: int  # sign patterns counted: 2^n when exact
    exact: bool
    seed: int
    score_note: str | None = None

    def table(self, dims: Sequence[str], labels: dict[str, list[str]]):
        """A ``pandas.DataFrame``, one row per cell in row-major order: the cell's label and
        ``<dim>_index`` per axis (as ``PatchResult.to_frame``), then every statistic and the
        settings.  Unavailable scores are ``None``; ``frame.attrs["score_note"]`` says why."""
        import pandas as pd

        shape = tuple(len(labels[d]) for d in dims)
        if shape != self.effect.shape:
            raise ValueError(f"labels give shape {shape}, the statistics {self.effect.shape}")
        cells = list(itertools.product(*[range(s) for s in shape]))
        cols: dict[str, list] = {}
        for k, d in enumerate(dims):
            cols[d] = [labels[d][c[k]] for c in cells]
            cols[f"{d}_index"] = [c[k] for c in cells]
        for name in STAT_COLUMNS:
            value = getattr(self, name)
            cols[name] = [None] * len(cells) if value is None else value.reshape(-1).tolist()
        for name in SETTING_COLUMNS:
            cols[name] = [getattr(self, name)] * len(cells)
        frame = pd.DataFrame(cols)
        frame.attrs["score_note"] = self.score_note
        return frame


def _scores(effects: np.ndarray, clean: np.ndarray, corrupted: np.ndarray, direction: str,
            metric: str, min_gap: float | None, idx: np.ndarray,
            alpha: float) -> tuple[dict[str, np.ndarray], str | None]:
    """Score and importance of the prompt means and their bootstrap intervals (from the
    resamples ``idx``); what is missing when a gap is too small, and a note saying why."""
    base = corrupted if direction == "denoise" else clean
    t = torch.from_numpy
    try:  # mean patched = mean base + mean effect: result.score()'s formula
        score = normalised(t(base.mean() + effects.mean(0)), clean.mean(), corrupted.mean(),
                           metric, min_gap).numpy()
    except (ValueError, FloatingPointError) as err:
        return {}, f"no normalised score: {err}"
    out = {"score": score, "importance": score if direction == "denoise" else 1.0 - score}
    col = (len(idx),) + (1,) * (effects.ndim - 1)  # one resample's baseline beside its cells
    mean_of = {name: resampled_means(x, idx).reshape(col)
               for name, x in (("base", base), ("clean", clean), ("corrupted", corrupted))}
    try:
        boot = normalised(t(mean_of["base"] + resampled_means(effects, idx)), t(mean_of["clean"]),
                          t(mean_of["corrupted"]), metric, min_gap).numpy()
    except (ValueError, FloatingPointError) as err:
        return out, f"no interval for the normalised score: in a bootstrap resample, {err}"
    out["score_ci_low"], out["score_ci_high"] = percentile_interval(boot, alpha)
    imp = boot if direction == "denoise" else 1.0 - boot
    out["importance_ci_low"], out["importance_ci_high"] = percentile_interval(imp, alpha)
    return out, None


def cell_stats(values: Any, clean: Any, corrupted: Any, direction: Direction,
               metric: Metric = "logit_diff", n_boot: int = 1000, alpha: float = 0.05,
               n_perm: int = 10_000, seed: int = 0, correction: Correction | None = "holm",
               min_gap: float | None = None) -> CellStats:
    """Every statistic of the module docstring for one map: ``values`` ``[n_prompts, *shape]``
    (one metric), ``clean`` and ``corrupted`` ``[n_prompts]``; ``direction`` is ``"denoise"``
    or ``"noise"``.  ``min_gap`` is ``metrics.normalised``'s (default ``MIN_GAP[metric]``).
    Needs at least 2 prompts (``TooFewPromptsError``): one prompt has no spread, so its
    interval would have zero width and its p-value would be 1 whatever the effect."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1 (0.05 for a 95% interval), got {alpha!r}")
    if correction is not None and correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS} or None, got {correction!r}")
    effects = per_prompt_effects(values, clean, corrupted, direction)
    n = effects.shape[0]
    if n < 2:
        raise TooFewPromptsError(
            f"statistics over prompts need at least 2 prompts, got {n}: one prompt has no spread, "
            "so an interval would have zero width and the sign-flip p-value would be 1 whatever "
            "the effect. Use more pairs (e.g. ioi_pairs(tok, n=16)), or read the raw effect "
            "(result.effect()) without statistics.")
    clean, corrupted = _array(clean), _array(corrupted)
    effect = effects.mean(0) + 0.0
    sem = effects.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(effect)
    idx = bootstrap_indices(n, n_boot, seed)
    ci_low, ci_high = percentile_interval(resampled_means(effects, idx), alpha)
    scores, note = _scores(effects, clean, corrupted, direction, metric, min_gap, idx, alpha)
    p, exact = sign_flip_p(effects, n_perm, seed)
    missing = {k: None for k in ("score", "score_ci_low", "score_ci_high", "importance",
                                 "importance_ci_low", "importance_ci_high")}
    return CellStats(effect=effect, sem=sem, ci_low=ci_low, ci_high=ci_high,
                     **{**missing, **scores}, p=p, p_adjusted=adjust_p(p, correction),
                     metric=metric, direction=direction, correction=correction,
                     alpha=float(alpha), n_prompts=n, n_boot=len(idx),
                     n_perm=2 ** n if exact else as_count(n_perm, "n_perm"), exact=exact,
                     seed=seed, score_note=note)


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
