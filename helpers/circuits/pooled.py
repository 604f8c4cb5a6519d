"""Measurements pooled over several templates and both name orders, each decided on its
bootstrap interval.

A template fixes where every role sits, so prompt pairs of different templates (or name orders)
cannot share one batch: ``PairGroups`` holds one ``PromptPairs`` per (template, order) group, and
``Pooled`` one value per prompt pair of every group, ``values`` ``[n_pairs, *cells]``, with the
template each pair came from.  Definitions:

* **pooled share** of a cell (``estimate``): with a per-pair *gap* (the clean - corrupted logit
  difference of the pair), ``sum_i values[i] / sum_i gap[i]``: the share of the pooled gap, the
  ratio of means PatchLab's normalised score uses within one group (1 = the whole gap).  Without
  a gap (attention weights, logits), the mean over pairs;
* **bootstrap**: ``n_boot`` resamples of the pairs, each drawn with replacement **within its
  template** (every template keeps its number of pairs; ``numpy.random.default_rng([seed, 2])``);
  the estimate recomputed on each (ratio of the resampled sums).  ``interval``: the ``alpha / 2``
  and ``1 - alpha / 2`` percentiles;
* **criterion** "``sign * share >= threshold``" (``decide``): one-sided bootstrap p-value
  ``p = (1 + #{resamples with sign * share < threshold}) / (1 + n_boot)``, Holm-corrected across
  every cell given (the heads of one stage), met when the adjusted p is below ``alpha``.  A cell
  whose resamples all clear the threshold has the smallest p, ``1 / (1 + n_boot)``: with 10,000
  resamples and 270 heads Holm then still admits it (``0.05 / 270 = 0.000185``).  Equivalently:
  its one-sided lower bound at the Holm-adjusted level is at or above the threshold (upper bound
  at or below ``-threshold`` for ``sign=-1``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from helpers.base.validate import as_count
from helpers.data.prompts import PromptPairs, ioi_pairs
from helpers.results.stats import adjust_p

__all__ = ["PairGroups", "pair_groups", "Pooled", "N_BOOT"]

#: resamples behind every pooled decision (see the module docstring for why this many)
N_BOOT = 10_000
ORDERS = ("ABBA", "BABA")


@dataclass(frozen=True)
class PairGroups:
    """Prompt pairs of several templates and both name orders: ``groups[g]`` is one
    ``PromptPairs`` (one template, one order, its roles at fixed positions), ``templates[g]`` and
    ``orders[g]`` say which."""

    groups: tuple[PromptPairs, ...]
    templates: tuple[int, ...]
    orders: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        """``["t0 ABBA", "t0 BABA", ...]``."""
        return [f"t{t} {o}" for t, o in zip(self.templates, self.orders)]

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)

    def __iter__(self) -> Any:
        return iter(self.groups)

    @property
    def strata(self) -> np.ndarray:
        """The template of every pair, ``[n_pairs]`` (pairs in group order)."""
        return np.concatenate([np.full(len(g), t) for g, t in zip(self.groups, self.templates)])

    @property
    def group_of_pair(self) -> np.ndarray:
        """The group index of every pair, ``[n_pairs]``."""
        return np.concatenate([np.full(len(g), i) for i, g in enumerate(self.groups)])

    def summary(self) -> str:
        """One line per group: its name, size and first clean prompt."""
        lines = [f"{len(self)} pairs in {len(self.groups)} groups ({len(set(self.templates))} "
                 f"templates x both name orders), {self.groups[0].corruption}:"]
        lines += [f"  {name}: {len(g)} x '{g.clean[0]}'" for name, g in zip(self.names, self.groups)]
        return "\n".join(lines)


def pair_groups(tokenizer: Any, templates: Sequence[int], n: int = 8, corruption: str = "s2_swap",
                seed: int = 0) -> PairGroups:
    """``n`` pairs of every template in ``templates`` in both name orders (``ABBA``: IO named
    first; ``BABA``: S first), from ``helpers.ioi_pairs``; template ``t`` draws its names with
    seed ``seed + 7919 * t``, the same for both of its orders (so each order of a template uses
    the same names, and templates use different ones)."""
    templates = [int(t) for t in templates]
    if not templates:
        raise ValueError("give at least one template index, e.g. templates=[0, 1, 2, 3]")
    n = as_count(n, "n")
    groups, ts, orders = [], [], []
    for t in templates:
        for order in ORDERS:
            groups.append(ioi_pairs(tokenizer, n=n, corruption=corruption, seed=seed + 7919 * t,
                                    template=t, order=order))
            ts.append(t)
            orders.append(order)
    return PairGroups(tuple(groups), tuple(ts), tuple(orders))


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, float)


@dataclass
class Pooled:
    """One value per prompt pair of every group: ``values`` ``[n_pairs, *cells]``, the pairs'
    gaps ``gap`` ``[n_pairs]`` (or None: plain means), the template (``strata``) and group of
    every pair.  Definitions: module docstring."""

    values: np.ndarray
    gap: np.ndarray | None
    strata: np.ndarray
    group: np.ndarray
    group_names: list[str]
    what: str = ""
    labels: list[str] | None = None  # names of the cells along the first cell axis, if any
    _boot: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_groups(cls, per_group: Sequence[Any], groups: PairGroups, gaps: Sequence[Any] | None = None,
                    what: str = "", labels: Sequence[str] | None = None) -> "Pooled":
        """Stack per-group values (``[n_g, *cells]`` each) and gaps (``[n_g]`` each or None)."""
        values = np.concatenate([_np(v) for v in per_group])
        gap = None if gaps is None else np.concatenate([_np(g) for g in gaps])
        if values.shape[0] != len(groups) or (gap is not None and gap.shape != values.shape[:1]):
            raise ValueError(f"{values.shape[0]} pooled values for {len(groups)} pairs")
        return cls(values, gap, groups.strata, groups.group_of_pair, groups.names, what,
                   None if labels is None else list(labels))

    @property
    def cells(self) -> tuple[int, ...]:
        return self.values.shape[1:]

    def _ratio(self, counts: np.ndarray) -> np.ndarray:
        flat = counts @ self.values.reshape(len(self.values), -1)
        denom = counts.sum(1) if self.gap is None else counts @ self.gap
        with np.errstate(divide="ignore", invalid="ignore"):
            return (flat / denom[:, None]).reshape(counts.shape[0], *self.cells)

    def estimate(self) -> np.ndarray:
        """The pooled share (or mean) of every cell, ``[*cells]``."""
        return self._ratio(np.ones((1, len(self.values))))[0]

    def resamples(self, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
        """``[n_boot, *cells]``: the estimate on resamples of the pairs within their template."""
        key = (as_count(n_boot, "n_boot"), as_count(seed, "seed", 0))
        if key not in self._boot:
            rng = np.random.default_rng([key[1], 2])
            counts = np.zeros((key[0], len(self.values)))
            for s in np.unique(self.strata):
                members = np.flatnonzero(self.strata == s)
                draw = members[rng.integers(0, len(members), size=(key[0], len(members)))]
                np.add.at(counts, (np.arange(key[0])[:, None], draw), 1.0)
            self._boot[key] = self._ratio(counts)
        return self._boot[key]

    def interval(self, alpha: float = 0.05, n_boot: int = N_BOOT, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The two-sided percentile interval ``(low, high)``, each ``[*cells]``."""
        low, high = np.quantile(self.resamples(n_boot, seed), [alpha / 2, 1 - alpha / 2], axis=0)
        return low + 0.0, high + 0.0

    def decide(self, threshold: float, sign: int = 1, alpha: float = 0.05, n_boot: int = N_BOOT,
               seed: int = 0, among: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The criterion ``sign * share >= threshold`` for every cell (module docstring):
        ``{"estimate", "low", "high", "p", "p_holm", "meets"}``, each ``[*cells]``.  Holm runs
        across the cells where ``among`` (bool ``[*cells]``, default all) is True; the others
        get ``p_holm`` 1 and never meet it."""
        boot = self.resamples(n_boot, seed)
        est = self.estimate()
        low, high = self.interval(alpha, n_boot, seed)
        below = (sign * boot < threshold).sum(0)
        p = (1.0 + below) / (1.0 + boot.shape[0])
        mask = np.ones(self.cells, bool) if among is None else np.asarray(among, bool)
        p_holm = np.ones(self.cells)
        if mask.any():
            p_holm[mask] = adjust_p(p[mask], "holm")
        return {"estimate": est, "low": low, "high": high, "p": p, "p_holm": p_holm,
                "meets": (p_holm < alpha) & mask}

    def subset(self, keep: np.ndarray) -> "Pooled":
        """The pairs where ``keep`` (bool ``[n_pairs]``) is True."""
        keep = np.asarray(keep, bool)
        return replace(self, values=self.values[keep], gap=None if self.gap is None else self.gap[keep],
                       strata=self.strata[keep], group=self.group[keep], _boot={})

    def templates(self) -> list[int]:
        """The templates present, in order of first appearance."""
        return list(dict.fromkeys(self.strata.tolist()))

    def by_template(self) -> dict[int, "Pooled"]:
        """One ``Pooled`` per template (both of its name orders)."""
        return {t: self.subset(self.strata == t) for t in self.templates()}

    def table(self, alpha: float = 0.05, n_boot: int = N_BOOT, seed: int = 0) -> Any:
        """A ``pandas.DataFrame`` of a one-axis measurement (``labels``): the estimate and its
        interval per cell."""
        import pandas as pd

        est, (low, high) = self.estimate(), self.interval(alpha, n_boot, seed)
        names = self.labels or [str(i) for i in range(len(est))]
        return pd.DataFrame({"estimate": est, "low": low, "high": high}, index=names)

    def by_group(self) -> np.ndarray:
        """The estimate of every group alone, ``[n_groups, *cells]``."""
        return np.stack([self.subset(self.group == g).estimate() for g in range(len(self.group_names))])


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
