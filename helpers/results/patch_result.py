"""What a sweep returns: ``PatchResult``, per-prompt values on named axes with both
baselines, ready to plot, tabulate (pandas) and save (JSON) without recomputing; per-cell
statistics of the per-prompt effects come from ``helpers.results.stats``."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from helpers.base.validate import Run, json_text, norm_index
from helpers.data.prompts import PromptPairs
from helpers.engine.runs import Patch
from helpers.results.metrics import Metric, mean_and_sem, normalised
from helpers.results.stats import STAT_COLUMNS, Correction, cell_stats

__all__ = ["PatchResult"]


@dataclass
class PatchResult:
    """What a sweep returns: per-prompt values on named axes, plus everything
    needed to plot, tabulate and save it without recomputing.

    ``values[metric]`` is ``[n_prompts, *shape]`` where ``shape`` follows
    ``dims`` (e.g. ``("layer", "position")``) and ``labels[dim]`` names every
    entry of that axis.  ``clean[metric]`` and ``corrupted[metric]`` are the
    unpatched baselines, ``[n_prompts]``.
    """

    site: str
    direction: str
    dims: tuple[str, ...]
    labels: dict[str, list[str]]
    values: dict[str, torch.Tensor]
    clean: dict[str, torch.Tensor]
    corrupted: dict[str, torch.Tensor]
    prompts: PromptPairs
    model_name: str
    method: str = "fast"
    metric: Metric = "logit_diff"
    patches: list[list[Patch]] = field(default_factory=list, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.labels[d]) for d in self.dims)

    def has(self, metric: Metric | None = None) -> str:
        """``metric`` (default: the result's own) if this result holds it, else a clear error
        naming the metrics it has (a sweep run with ``metrics=("logit_diff",)`` holds one)."""
        m = metric or self.metric
        if m not in self.values:
            raise ValueError(f"this result has no metric {m!r}; it has {sorted(self.values)} "
                             "(sweep(..., metrics=...) chooses which are computed)")
        return m

    def mean(self, metric: Metric | None = None) -> torch.Tensor:
        """Mean over prompts of the raw metric: ``[*shape]``."""
        return self.values[self.has(metric)].mean(0)

    def baseline(self, run: Run, metric: Metric | None = None) -> float:
        """Mean over prompts of the clean or corrupted run's metric (``run``: ``"clean"`` or
        ``"corrupted"``)."""
        m = metric or self.metric
        base = self.clean if run == "clean" else self.corrupted
        if m not in base:
            raise ValueError(f"this result has no {run} baseline of {m!r}; it has {sorted(base)}")
        return base[m].mean().item()

    def score(self, metric: Metric | None = None, min_gap: float | None = None) -> torch.Tensor:
        """Normalised score of the prompt-mean: 0 = corrupted run, 1 = clean run; ``[*shape]``."""
        m = metric or self.metric
        return normalised(self.mean(m), self.baseline("clean", m), self.baseline("corrupted", m), m,
                          min_gap)

    def effect(self, metric: Metric | None = None) -> torch.Tensor:
        """Raw effect of the patch: patched minus the run that was patched into; ``[*shape]``."""
        m = metric or self.metric
        base = "corrupted" if self.direction == "denoise" else "clean"
        return self.mean(m) - self.baseline(base, m)

    def importance(self, metric: Metric | None = None, min_gap: float | None = None) -> torch.Tensor:
        """How much each patched component matters, read the same way in both directions:
        denoising, the normalised score (share of the clean behaviour the clean activation
        brings back); noising, ``1 - score`` (share the corrupted activation destroys).
        1 = everything, 0 = nothing; ``[*shape]``."""
        s = self.score(metric, min_gap)
        return s if self.direction == "denoise" else 1 - s

    def grid(self, normalise: bool = True, metric: Metric | None = None) -> torch.Tensor:
        """What a heatmap of this result shows: ``importance()`` when ``normalise``, else the
        raw prompt-mean metric (for models that cannot do the task); ``[*shape]``."""
        return self.importance(metric) if normalise else self.mean(metric)

    def change(self, normalise: bool = True, metric: Metric | None = None) -> torch.Tensor:
        """Each patch's effect in ``grid``'s units: 0 = the run that was patched into."""
        if normalise:
            return self.importance(metric)
        return self.effect(metric)

    def index(self, dim: str, key: Any) -> int:
        """Where ``key`` sits on axis ``dim``, by one naming scheme (``helpers.base.fmt``): a label
        (``"embed"``, ``"L2"``, ``"H3"``, ``"Mary (S2)"``), a role (``"S2"``), or an int that
        means what ``Patch`` means: layer 2 is block 2 (row ``"L2"``, even where row 0 is
        ``embed``), head 3 is ``"H3"``, position 5 is token 5; negatives count from the end."""
        if dim not in self.dims:
            raise ValueError(f"this result has no axis {dim!r}; its axes are {self.dims}")
        labels = self.labels[dim]
        if isinstance(key, str):
            if key in labels:
                return labels.index(key)
            hits = [i for i, lab in enumerate(labels) if lab.endswith(f"({key})")]
            if len(hits) == 1:
                return hits[0]
            raise ValueError(f"{key!r} is not on the {dim} axis; its labels are {labels}")
        if dim in ("layer", "head"):
            prefix = "L" if dim == "layer" else "H"
            named = [lab for lab in labels if lab.startswith(prefix)]
            return labels.index(named[norm_index(key, len(named), dim, f"{dim}s in this result")])
        return norm_index(key, len(labels), dim, f"{dim}s in this result")

    def value(self, normalise: bool = True, metric: Metric | None = None, **keys: Any) -> float:
        """One cell of ``grid``: ``resid.value(layer=2, position="S2")`` is the residual stream
        after block 2 at S2 (row ``"L2"``).  Every axis of the result must be given."""
        missing = [d for d in self.dims if d not in keys]
        extra = [k for k in keys if k not in self.dims]
        if missing or extra:
            raise ValueError(f"give one key per axis {self.dims}: missing {missing}, unknown {extra}")
        idx = tuple(self.index(d, keys[d]) for d in self.dims)
        return self.grid(normalise, metric)[idx].item()

    def title(self, metric: Metric | None = None, normalise: bool = True) -> str:
        what = {"resid": "residual stream", "attn": "attention output", "mlp": "MLP output",
                "head": "attention heads", "set": "component sets"}.get(self.site, self.site)
        how = ("denoising (clean -> corrupted run)" if self.direction == "denoise"
               else "noising (corrupted -> clean run)")
        m = metric or self.metric
        val = (f"{self.importance_label(m)}" if normalise else f"mean {m}")
        return f"{what}: {how}\n{val}, {len(self.prompts)} prompt pair(s)"

    def importance_label(self, metric: Metric | None = None) -> str:
        """The colour-bar label of ``importance``: what 1 and 0 mean in this direction."""
        m = metric or self.metric
        if self.direction == "denoise":
            return f"share of clean {m} restored (normalised score)"
        return f"share of clean {m} destroyed (1 - normalised score)"

    def to_frame(self, min_gap: float | None = None):
        """A tidy ``pandas.DataFrame``: one row per component per prompt, a column per
        metric (raw values and ``<metric>_normalised`` per prompt where the gap allows)."""
        import itertools

        import pandas as pd

        n = len(self.prompts)
        grids = list(itertools.product(*[range(len(self.labels[d])) for d in self.dims]))
        cols: dict[str, list] = {"prompt": [], **{d: [] for d in self.dims},
                                 **{f"{d}_index": [] for d in self.dims}}
        for i in range(n):
            for idx in grids:
                cols["prompt"].append(i)
                for d, j in zip(self.dims, idx):
                    cols[d].append(self.labels[d][j])
                    cols[f"{d}_index"].append(j)
        for m, v in self.values.items():
            cols[m] = v.reshape(n, -1).flatten().tolist()
            try:
                s = normalised(v.reshape(n, -1), self.clean[m][:, None], self.corrupted[m][:, None],
                               m, min_gap)
                cols[f"{m}_normalised"] = s.flatten().tolist()
            except ValueError:
                pass
        frame = pd.DataFrame(cols)
        frame.insert(0, "direction", self.direction)
        frame.insert(0, "site", self.site)
        return frame

    def stats(self, metric: Metric | None = None, n_boot: int = 1000, alpha: float = 0.05,
              n_perm: int = 10_000, seed: int = 0, correction: Correction | None = "holm",
              min_gap: float | None = None):
        """Per-cell statistics of the per-prompt effects (patched minus the run patched into;
        definitions in ``helpers.results.stats``): a ``pandas.DataFrame``, one row per cell, with the
        cell's labels and ``<dim>_index`` as in ``to_frame``; ``effect`` (= ``effect()``), ``sem``,
        the seeded bootstrap interval ``ci_low``/``ci_high``, ``score`` and ``importance`` (=
        ``score()``, ``importance()``) with their intervals from the same resamples (``None``
        where the gap is too small: ``frame.attrs["score_note"]`` says why), the sign-flip
        ``p`` and ``p_adjusted`` (``correction``: ``"holm"``, ``"bh"`` or ``None``) and the
        settings.  Same seed, same table."""
        m = metric or self.metric
        if m not in self.values:
            raise ValueError(f"this result has no metric {m!r}; it has {sorted(self.values)}")
        frame = cell_stats(self.values[m], self.clean[m], self.corrupted[m], self.direction, m,
                           n_boot, alpha, n_perm, seed, correction, min_gap).table(self.dims,
                                                                                   self.labels)
        frame.insert(0, "direction", frame.pop("direction"))
        frame.insert(0, "site", self.site)
        return frame

    def to_dict(self, min_gap: float | None = None, stats: bool = True) -> dict:
        """A JSON-ready summary: axes, prompt-mean grids of every metric, the normalised
        score where defined, baselines with standard errors, the prompts, the per-prompt values
        (``"per_prompt"``: ``values[metric]`` ``[n_prompts, *shape]`` and both baselines
        ``[n_prompts]``), and (``stats``) the
        per-cell statistics table of ``stats()`` with its default settings: ``"stats"`` holds
        the settings and ``"cells"``, one record per cell in ``to_frame``'s order (a result of
        one prompt has none: ``"stats"`` is None and ``"stats_note"`` says why)."""
        out: dict[str, Any] = {
            "site": self.site, "direction": self.direction, "metric": self.metric,
            "model": self.model_name, "method": self.method, "dims": list(self.dims),
            "labels": self.labels, "n_prompts": len(self.prompts),
            "prompts": {"clean": self.prompts.clean, "corrupted": self.prompts.corrupted,
                        "answers": self.prompts.answers, "distractors": self.prompts.distractors,
                        "positions": self.prompts.positions},
            "mean": {m: _round(self.mean(m)) for m in self.values},
            "baselines": {run: {m: dict(zip(("mean", "sem"), map(_r, mean_and_sem(v[m]))))
                                for m in v} for run, v in (("clean", self.clean),
                                                           ("corrupted", self.corrupted))},
        }
        # the per-prompt table behind the means (to_frame's values): enough to recompute stats
        out["per_prompt"] = {"values": {m: _round(v) for m, v in self.values.items()},
                             "clean": {m: _round(v) for m, v in self.clean.items()},
                             "corrupted": {m: _round(v) for m, v in self.corrupted.items()}}
        try:
            out["score"] = _round(self.score(min_gap=min_gap))
        except ValueError as err:
            out["score"] = None
            out["score_error"] = str(err)
        if stats and len(self.prompts) < 2:  # no statistics over one prompt: say so
            out["stats"] = None
            out["stats_note"] = (f"no statistics: {len(self.prompts)} prompt pair (an interval "
                                 "or a p-value needs at least 2)")
        elif stats:
            out["stats"] = _stats_json(self.stats(min_gap=min_gap), self.dims)
        return out

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write ``to_dict()`` to ``path`` (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json_text(self.to_dict()))
        return path


def _r(x: float) -> float:
    return float(f"{x:.6g}") if math.isfinite(x) else x


def _round(t: torch.Tensor) -> Any:
    return [_round(x) for x in t] if t.dim() else _r(t.item())


def _stats_json(frame: Any, dims: tuple[str, ...]) -> dict:
    """``stats()``'s table as JSON: the settings once, then one record per cell (floats
    rounded as ``to_dict`` rounds them; unavailable scores ``None``)."""
    first = frame.iloc[0]
    out: dict[str, Any] = {k: _plain(first[k]) for k in ("metric", "correction", "alpha",
                                                          "n_prompts", "n_boot", "n_perm",
                                                          "exact", "seed")}
    out["score_note"] = frame.attrs.get("score_note")
    keys = [c for d in dims for c in (d, f"{d}_index")] + list(STAT_COLUMNS)
    out["cells"] = [{k: _plain(row[k]) for k in keys} for row in frame[keys].to_dict("records")]
    return out


def _plain(x: Any) -> Any:
    """A table entry as a JSON value: floats rounded (never -0.0), numpy scalars as Python
    ones."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if hasattr(x, "item"):
        x = x.item()
    return _r(x) + 0.0 if isinstance(x, float) else x


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
