"""Circuit evaluation (Wang et al. 2022, "Interpretability in the Wild", section 4): faithfulness,
minimality and completeness of a circuit under a chosen ablation (``helpers.methods.ablations``).

A *circuit* C is a list of components (``"L0H3"``, ``"mlp1"``) out of a *universe* U (default:
every head and every MLP of the model).  ``M(S)`` is the prompt-mean metric (default the logit
difference, as Wang et al.) of the clean prompts with every component of U **outside** S ablated
(``"mean"``, ``"zero"`` or ``"resample"``, every position); the ablated values come from one
``ablation_source`` call, so every M uses the same donors.  ``M(U)`` is the unablated model and
``M({})`` the model with all of U ablated.  Definitions as implemented:

* **faithfulness** ``F(S) = (M(S) - M({})) / (M(U) - M({}))``, normalised (ratio of prompt
  means): 1 = the circuit alone does what the whole model does, 0 = no better than ablating
  everything; ``F(U) = 1`` and ``F({}) = 0`` exactly.  Wang et al. report the unnormalised ratio
  ``M(C) / M(U)`` (87% for their IOI circuit with mean ablation): kept as ``wang_ratio``;
* **minimality** of v in C: ``(M(C) - M(C - {v})) / (M(C) - M({}))``, the share of the circuit's
  own effect (above everything ablated) lost when v is ablated too (``minimality_drop``: the
  raw ``M(C) - M(C - {v})``);
* **completeness** (Wang et al.): for K a subset of C, the gap
  ``|M(C - K) - M(U - K)| / |M(U) - M({})|`` between the circuit and the whole model, each with
  K ablated (0 for a complete circuit, for every K).  K is searched greedily: start empty and add
  the member that raises the gap most, for at most ``max_steps`` steps; the K with the largest
  gap on that path is reported (with the path).  Wang et al. also search K by sampling and by
  hand; a greedy search only gives a lower bound on the worst gap;
* **curve**: members added in order of importance (their minimality drop, largest first):
  ``F`` of the first k, for k = 0 .. |C|.

``compare_ablations`` evaluates one circuit under several ablation kinds: one table row each,
with the verdict (faithful / complete / minimal at the given thresholds).

``method="fast"`` (default; GPT-2 and Llama-style models) runs the ablated sets on
``helpers.engine.fastablate``: the sets of one prompt share the blocks they agree on (a
complement ablation runs block 0 once per prompt, then branches where its sets differ);
``"batched"`` runs whole traced forwards.  Remote models and other families run batched.  The
result's ``method`` records which ran.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence

import torch

from helpers.base.validate import as_count, refuse_unused
from helpers.data.prompts import PromptPairs
from helpers.engine.runs import all_components, check_pairs
from helpers.methods.ablations import (KINDS, AblationKind, Method, ablation_source, check_kind,
                                       clean_run, component_patches, pick_method, run_sets)
from helpers.models.loaded import handle
from helpers.results.metrics import normalised

__all__ = ["CircuitEvaluation", "evaluate_circuit", "compare_ablations"]

CircuitMetric = Literal["logit_diff", "answer_prob"]
_METRICS = ("logit_diff", "answer_prob")


@dataclass
class CircuitEvaluation:
    """What ``evaluate_circuit`` returns (definitions: module docstring)."""

    circuit: list[str]
    ablation: str
    metric: str
    universe: list[str]
    full: float              # M(U): nothing ablated
    empty: float             # M({}): the whole universe ablated
    circuit_metric: float    # M(C)
    faithfulness: float      # (M(C) - M({})) / (M(U) - M({}))
    wang_ratio: float        # M(C) / M(U)
    minimality: dict[str, float]
    minimality_drop: dict[str, float]
    completeness: dict[str, Any]   # K, gap (normalised), raw gap, both metrics, path
    curve: list[dict[str, Any]]    # size, added, faithfulness
    evaluated_sets: int = 0        # distinct ablated sets run
    method: str = "batched"        # what ran them: "fast" or "batched"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None)."""
        def clean(x: Any) -> Any:
            if isinstance(x, float):
                return x if math.isfinite(x) else None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            return x
        return clean(asdict(self))


class _Evaluator:
    """M(S) for kept sets S, each distinct set run once (batched), cached."""

    def __init__(self, model: Any, pairs: PromptPairs, universe: list[str], kind: str,
                 reference: Any, seed: int, metric: str, batch_size: int | None,
                 method: str) -> None:
        self.model, self.pairs, self.universe, self.metric = model, pairs, universe, metric
        self.batch_size, self.method = batch_size, method
        self.patch = dict(zip(universe, component_patches(model, universe, pairs.seq_len)))
        self.keep: dict = {}  # the clean run, computed once
        self.source = ablation_source(model, pairs, list(self.patch.values()), kind, reference, seed,
                                      clean_run(model, pairs, method, self.keep)[0])
        self.known: dict[frozenset, float] = {}

    def __call__(self, kept_sets: Sequence[Sequence[str]]) -> list[float]:
        keys = [frozenset(s) for s in kept_sets]
        todo = list(dict.fromkeys(k for k in keys if k not in self.known))
        if todo:
            sets = [[self.patch[c] for c in self.universe if c not in k] for k in todo]
            values, _, self.method = run_sets(self.model, self.pairs, self.source, sets,
                                              self.batch_size, self.method, (self.metric,),
                                              keep=self.keep)
            for k, v in zip(todo, values[self.metric].mean(0).tolist()):
                self.known[k] = v
        return [self.known[k] for k in keys]


def _norm(value: float, full: float, empty: float, metric: str, min_gap: float | None) -> float:
    return normalised(torch.tensor([value], dtype=torch.float64), full, empty, metric, min_gap).item()


def evaluate_circuit(model: Any, pairs: PromptPairs, circuit: str | Sequence[str],
                     ablation: AblationKind = "mean", *, universe: str | Sequence[str] | None = None,
                     reference: Any = None, seed: int = 0, metric: CircuitMetric = "logit_diff", max_steps: int = 3, min_gap: float | None = None,
                     batch_size: int | None = None, method: Method = "fast") -> CircuitEvaluation:
    """Faithfulness, minimality, completeness and the size-vs-faithfulness curve of ``circuit``
    with everything else in ``universe`` (default every head and MLP) ablated by ``ablation``
    (``"mean"``, ``"zero"``, ``"resample"``; ``reference``, ``seed``: ``helpers.methods.ablations``).
    ``max_steps`` caps the greedy completeness search.  ``min_gap``: the smallest
    ``|M(U) - M({})|`` that may be divided by (``helpers.results.metrics.normalised``).
    ``method``: ``"fast"`` or ``"batched"`` (module docstring)."""
    mh = handle(model)

    check_kind(ablation)
    check_pairs(mh, pairs)
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    max_steps = as_count(max_steps, "max_steps")
    circuit = [circuit] if isinstance(circuit, str) else list(circuit)
    universe = list(all_components(mh) if universe is None else
                    ([universe] if isinstance(universe, str) else universe))
    component_patches(mh, circuit, pairs.seq_len)  # names checked, repeats refused
    component_patches(mh, universe, pairs.seq_len)
    outside = [c for c in circuit if c not in universe]
    if outside:
        raise ValueError(f"circuit component(s) {outside} are not in the universe: write them as "
                         "in helpers.circuits.search.all_components(model) ('L0H3', 'mlp1'), or add them "
                         "to universe=")
    M = _Evaluator(mh, pairs, universe, ablation, reference, seed, metric, batch_size,
                   pick_method(mh, method, pairs.seq_len))
    U, C = set(universe), set(circuit)
    # one batched run: U, {}, C, and C minus each member
    full, empty, m_c, *without = M([U, set(), C] + [C - {v} for v in circuit])
    F = lambda x: _norm(x, full, empty, metric, min_gap)  # noqa: E731
    faith = F(m_c)
    drops = {v: m_c - w for v, w in zip(circuit, without)}
    own = m_c - empty
    share = {v: (d / own if own != 0 else math.nan) for v, d in drops.items()}

    scale = abs(full - empty)
    def gaps(ks: list[set]) -> list[tuple[float, float, float]]:
        got = M([C - k for k in ks] + [U - k for k in ks])
        return [(abs(a - b) / scale, a, b) for a, b in zip(got[:len(ks)], got[len(ks):])]

    g0 = gaps([set()])[0]
    path = [{"K": [], "gap": g0[0], "circuit_without_K": g0[1], "model_without_K": g0[2]}]
    K: list[str] = []
    for _ in range(max_steps):
        rest = [v for v in circuit if v not in K]
        if not rest:
            break
        trial = gaps([set(K) | {v} for v in rest])
        best = max(range(len(rest)), key=lambda i: trial[i][0])
        K.append(rest[best])
        g, a, b = trial[best]
        path.append({"K": list(K), "gap": g, "circuit_without_K": a, "model_without_K": b})
    worst = max(path, key=lambda p: p["gap"])
    completeness = {"K": worst["K"], "gap": worst["gap"],
                    "raw_gap": abs(worst["circuit_without_K"] - worst["model_without_K"]),
                    "circuit_without_K": worst["circuit_without_K"],
                    "model_without_K": worst["model_without_K"], "steps": max_steps, "path": path}

    order = sorted(circuit, key=lambda v: -drops[v])  # stable: ties keep the circuit's order
    prefixes = [order[:k] for k in range(len(order) + 1)]
    curve = [{"size": k, "added": order[k - 1] if k else None, "components": list(p),
              "faithfulness": F(v)} for k, (p, v) in enumerate(zip(prefixes, M(prefixes)))]
    return CircuitEvaluation(circuit=circuit, ablation=ablation, metric=metric, universe=universe,
                             full=full, empty=empty, circuit_metric=m_c, faithfulness=faith,
                             wang_ratio=m_c / full if full != 0 else math.nan,
                             minimality=share, minimality_drop=drops, completeness=completeness,
                             curve=curve, evaluated_sets=len(M.known), method=M.method)


def compare_ablations(model: Any, pairs: PromptPairs, circuit: str | Sequence[str],
                      ablations: AblationKind | Sequence[AblationKind] = KINDS, *, reference: Any = None,
                      resample_reference: Any = None, faithful_at: float = 0.8,
                      complete_within: float = 0.2, minimal_share: float = 0.05,
                      **kw: Any) -> Any:
    """One ``evaluate_circuit`` per ablation kind, as a pandas ``DataFrame`` (one row each):
    the metrics M(U), M({}), M(C), faithfulness, Wang et al.'s ratio, the completeness gap and
    its K, the smallest minimality share, and the verdict: *faithful* if faithfulness >=
    ``faithful_at``, *complete* if the gap <= ``complete_within``, *minimal* if every member's
    share >= ``minimal_share``.  ``reference`` is the mean ablation's reference set (e.g. ABC
    prompts), ``resample_reference`` the resample ablation's (default: the prompts themselves,
    each from another one); each is refused when its kind is not among ``ablations``.  The
    thresholds are fractions in [0, 1].  ``kw`` goes to ``evaluate_circuit`` (``universe``,
    ``metric``, ``max_steps``, ``method``, ...; ``seed`` to the resample ablation only); the
    table's ``attrs["method"]`` records what ran."""
    mh = handle(model)
    import pandas as pd

    if isinstance(ablations, str):
        ablations = [ablations]
    for kind in ablations:
        check_kind(kind)
    if "mean" not in ablations:
        refuse_unused("reference", reference, "it is the mean ablation's reference set, and "
                      "'mean' is not among the ablations")
    if "resample" not in ablations:
        refuse_unused("resample_reference", resample_reference, "'resample' is not among the "
                      "ablations")
    seed = kw.pop("seed", 0)
    if "resample" not in ablations:
        refuse_unused("seed", seed, "only the resample ablation draws at random", default=0)
    rows, ran = [], set()
    for kind in ablations:
        ref = {"mean": reference, "resample": resample_reference}.get(kind)
        drawn = {"seed": seed} if kind == "resample" else {}
        e = evaluate_circuit(mh, pairs, circuit, kind, reference=ref, **drawn, **kw)
        ran.add(e.method)
        least = min(e.minimality.values(), default=math.nan)
        verdict = [("faithful" if e.faithfulness >= faithful_at else "not faithful"),
                   ("complete" if e.completeness["gap"] <= complete_within else "incomplete"),
                   ("minimal" if least >= minimal_share else "not minimal")]
        rows.append({"ablation": kind, "full": e.full, "all_ablated": e.empty,
                     "circuit": e.circuit_metric, "faithfulness": e.faithfulness,
                     "wang_ratio": e.wang_ratio, "completeness_gap": e.completeness["gap"],
                     "worst_K": " + ".join(e.completeness["K"]) or "(none)",
                     "least_minimality": least, "verdict": ", ".join(verdict)})
    table = pd.DataFrame(rows).set_index("ablation")
    table.attrs["method"] = ", ".join(sorted(ran))
    return table


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
