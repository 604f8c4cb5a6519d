"""A scorecard of circuit-discovery methods on a model whose circuit is known (a planted one).

Every method ranks MIB's graph (``helpers.base.edge_graph``) on the same prompt pairs, and each
ranking is scored two ways (``helpers.circuits.truth``, ``helpers.circuits.edge_evaluation``):

* **against the truth**: ROC AUC over edges and over sender nodes, by ``|score|``, with the
  backup name mover's items counted as positives and as negatives (a backup is silent on a clean
  run, so no comparison of a clean and a corrupted run with the rest of the model intact sees it);
* **without it**: MIB's CPR (signed ranking) and CMD (absolute ranking) under each ablation asked
  for, every edge outside a circuit ablated (edge-level ablation).  The scores are computed once,
  with the counterfactual (corrupted) prompts; only the evaluation's ablation changes.

The methods (``METHODS``): ``"exact"`` edge patching, ``"eap"``, ``"eap-ig-inputs"``,
``"eap-ig-activations"`` (``helpers.edge_attribution``, MIB's default 5 steps), ``"greedy"``
(``helpers.minimal_circuit``: a greedy search over heads and MLPs by joint denoising, threshold
0.8; it returns a *set of nodes*, not a ranking, so its circuit is every edge among its nodes,
``input`` and ``logits``, pruned as MIB prunes, and it is scored as a ranking with two values, in
(1) or out (0): its ROC AUC is the balanced accuracy of that one cut, and in place of a curve its
one circuit's faithfulness is given) and ``"random"`` (``EdgeScores.random``, seeded).  Wall and
CPU time are of the scoring alone (not of its evaluation), in this process.

``Scorecard.findings()`` says, from the numbers, where the decoy (a head that attends like a name
mover and does nothing; ``class: "decoy"`` in the truth) and the backup name mover (role
``backup_name_mover``) land in each method's node ranking.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from helpers.base.fmt import md_table, num
from helpers.data.prompts import PromptPairs
from helpers.methods.edge_attribution import edge_attribution
from helpers.methods.edge_values import edge_graph
from helpers.models.loaded import handle
from helpers.models.sources import resolve
from helpers.results.edge_scores import EdgeScores
from helpers.circuits.edge_circuits import Circuit, prune
from helpers.circuits.edge_evaluation import evaluate_edges, faithfulness_curve
from helpers.circuits.mib_format import load_mib_circuit
from helpers.circuits.search import minimal_circuit
from helpers.circuits.truth import score_against_truth

__all__ = ["METHODS", "ABLATIONS", "truth_file", "load_truth", "greedy_circuit", "method_scores",
           "MethodRow", "Scorecard", "scorecard", "role_nodes"]

METHODS = ("exact", "eap", "eap-ig-inputs", "eap-ig-activations", "greedy", "random")
ABLATIONS = ("counterfactual", "mean")
AUROC_COLUMNS = (("edge", "positive"), ("edge", "negative"), ("node", "positive"), ("node", "negative"))


def truth_file(model_name: str | Path) -> Path:
    """The ``ground_truth.json`` beside a bundled model's weights (by name) or in a model folder."""
    try:
        folder, local = resolve(model_name)
    except Exception:  # noqa: BLE001  (the message below says what is needed)
        folder, local = str(model_name), False
    path = Path(folder) / "ground_truth.json"
    if not local or not path.is_file():
        raise FileNotFoundError(f"no ground_truth.json for {str(model_name)!r} (looked at {path}): a scorecard "
                                "needs a model with a known circuit, e.g. the bundled 'ioi-planted' or a "
                                "folder its training script wrote")
    return path


def load_truth(model_name: str | Path) -> Circuit:
    """The known circuit of ``model_name`` (``truth_file``) as a ``Circuit`` with its backups."""
    return load_mib_circuit(truth_file(model_name))


def role_nodes(truth: Circuit, key: str, value: str) -> list[str]:
    """The truth's sender nodes whose ``key`` (``"class"`` or ``"role"``) is ``value``."""
    info = truth.info.get("nodes", {})
    return [n for n in truth.graph.senders if info.get(n, {}).get(key) == value]


def _mib_node(component: str) -> str:
    """``"L2H0"`` -> ``"a2.h0"``, ``"mlp1"`` -> ``"m1"``."""
    if component.startswith("mlp"):
        return f"m{int(component[3:])}"
    layer, head = component[1:].split("H")
    return f"a{int(layer)}.h{int(head)}"


def greedy_circuit(model: Any, pairs: PromptPairs, threshold: float = 0.8) -> tuple[Circuit, Any]:
    """``helpers.minimal_circuit`` (heads and MLPs, joint denoising) as a circuit of edges: every
    edge from ``input`` or a member to a member or ``logits``, pruned.  Returns (the circuit, the
    ``CircuitSearch``)."""
    mh = handle(model)
    graph = edge_graph(mh)
    search = minimal_circuit(mh, pairs, threshold)
    members = {"input", "logits", *(_mib_node(c) for c in search.members)}
    senders, receivers = graph.edge_nodes()
    mask = torch.tensor([s in members and r in members for s, r in zip(senders, receivers)])
    edges, nodes = prune(graph, mask)
    info = {"members": list(search.members), "joint_patching_score": search.score, "reached": search.reached}
    return Circuit(graph, edges, nodes, info=info), search


def _as_scores(circuit: Circuit, model_name: str, n: int) -> EdgeScores:
    """A set as a two-valued ranking: 1 in the circuit, 0 out."""
    return EdgeScores(graph=circuit.graph, values=circuit.edges.double(), nodes=circuit.nodes[:-1].double(),
                      method="greedy", ablation="counterfactual", model_name=model_name, n_prompts=n,
                      clean=0.0, corrupted=None)


def method_scores(model: Any, pairs: PromptPairs, method: str, seed: int = 0) -> tuple[EdgeScores, Circuit | None]:
    """(the method's ``EdgeScores``, its circuit for ``"greedy"`` else None) on ``pairs``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose from {METHODS}")
    mh = handle(model)
    if method == "random":
        return EdgeScores.random(edge_graph(mh), seed, mh.anatomy.name), None
    if method == "greedy":
        circuit, _ = greedy_circuit(mh, pairs)
        return _as_scores(circuit, mh.anatomy.name, len(pairs)), circuit
    return edge_attribution(mh, pairs, method), None


@dataclass
class MethodRow:
    """One method's line of the scorecard (module docstring): ``auroc`` keyed ``"edge/positive"``
    etc. (level / how backups count); ``cpr`` / ``cmd`` per ablation (None for a set);
    ``set_faithfulness`` per ablation (the greedy circuit's); ``node_rank`` of every sender node
    (1 = highest ``|score|``; ties share the best rank); ``in_set`` (decoy, backup) for a set."""

    method: str
    auroc: dict[str, float]
    cpr: dict[str, float | None]
    cmd: dict[str, float | None]
    set_faithfulness: dict[str, float]
    seconds: float
    cpu_seconds: float
    node_rank: dict[str, int]
    top_nodes: list[tuple[str, float]]
    in_set: dict[str, bool] = field(default_factory=dict)
    circuit_edges: int | None = None
    search: dict[str, Any] = field(default_factory=dict)  # the greedy search: members, joint patching score
    curves: dict[str, Any] = field(default_factory=dict)
    roc: dict[str, Any] = field(default_factory=dict)  # "edge/positive" etc. -> TruthScore (fpr, tpr)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("curves", "roc")} | {
            "curves": {a: c.to_dict() for a, c in self.curves.items()}}


def _rank(values: torch.Tensor, i: int) -> int:
    key = values.double().abs()
    return 1 + int((key > key[i]).sum())


def scorecard(model: Any, pairs: PromptPairs, truth: Circuit, methods: Sequence[str] = METHODS,
              ablations: Sequence[str] = ABLATIONS, seed: int = 0) -> "Scorecard":
    """Run and score every method in ``methods`` on ``pairs`` against ``truth`` (module docstring)."""
    model = handle(model)
    graph = edge_graph(model)
    if graph.edges != truth.graph.edges:
        raise ValueError(f"the truth is of another graph ({truth.graph.describe()}) than this model's "
                         f"({graph.describe()}): give the model the truth was written for")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"unknown methods {bad}: choose from {METHODS}")
    watched = role_nodes(truth, "class", "decoy") + role_nodes(truth, "role", "backup_name_mover")
    rows = []
    for method in methods:
        start, cpu = time.perf_counter(), time.process_time()
        scores, circuit = method_scores(model, pairs, method, seed)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        roc = {f"{lvl}/{b}": score_against_truth(scores, truth, level=lvl, backups=b) for lvl, b in AUROC_COLUMNS}
        auroc = {k: v.roc_auc for k, v in roc.items()}
        cpr: dict[str, float | None] = {}
        cmd: dict[str, float | None] = {}
        curves, set_f = {}, {}
        for ablation in ablations:
            if circuit is None:
                curves[ablation] = faithfulness_curve(model, pairs, scores, ablation)
                cpr[ablation], cmd[ablation] = curves[ablation].cpr, curves[ablation].cmd
            else:
                cpr[ablation] = cmd[ablation] = None
                set_f[ablation] = evaluate_edges(model, pairs, circuit, ablation).faithfulness()[0]
        ranks = {n: _rank(scores.nodes, i) for i, n in enumerate(graph.senders)}
        in_set = {} if circuit is None else {n: n in circuit for n in watched}
        rows.append(MethodRow(method, auroc, cpr, cmd, set_f, wall, cpu, ranks, scores.top(6, level="node"),
                              in_set, None if circuit is None else len(circuit),
                              {} if circuit is None else dict(circuit.info), curves, roc))
    return Scorecard(rows, truth, model.anatomy.name, len(pairs), list(ablations))


@dataclass
class Scorecard:
    """What ``scorecard`` returns: one ``MethodRow`` per method; ``table()``, ``findings()``,
    ``to_dict()``."""

    rows: list[MethodRow]
    truth: Circuit
    model_name: str
    n_pairs: int
    ablations: list[str]

    def row(self, method: str) -> MethodRow:
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(f"no row for {method!r}; the rows are {[r.method for r in self.rows]}")

    def table(self, digits: int = 2, timing: bool = True) -> str:
        """The markdown table: AUROC (edges, nodes; backups as positives / negatives), CPR and CMD
        per ablation, and (``timing``) wall and CPU seconds."""
        head = ["method", "edge AUROC (backup +)", "edge AUROC (backup −)", "node AUROC (backup +)",
                "node AUROC (backup −)"]
        for a in self.ablations:
            head += [f"CPR ({a})", f"CMD ({a})"]
        head += ["wall (s)", "CPU (s)"] if timing else []
        body = []
        for r in self.rows:
            line = [r.method] + [num(r.auroc[f"{lvl}/{b}"], digits) for lvl, b in AUROC_COLUMNS]
            for a in self.ablations:
                if r.cpr[a] is None:
                    line += [f"set: f = {num(r.set_faithfulness[a], digits)}", "—"]
                else:
                    line += [num(r.cpr[a], digits), num(r.cmd[a], digits)]
            line += [num(r.seconds, 2), num(r.cpu_seconds, 2)] if timing else []
            body.append(line)
        return md_table(head, body)

    def positives(self) -> list[str]:
        """The planted sender nodes (``in_graph``, backups not counted)."""
        t = self.truth
        backup = t.backup_nodes if t.backup_nodes is not None else torch.zeros_like(t.nodes)
        return [n for n, on, b in zip(t.graph.senders, t.nodes[:-1].tolist(), backup[:-1].tolist()) if on and not b]

    def watched(self) -> list[str]:
        """The decoy and backup name mover nodes of the truth."""
        return role_nodes(self.truth, "class", "decoy") + role_nodes(self.truth, "role", "backup_name_mover")

    def findings(self) -> list[str]:
        """One sentence per method and watched head (decoy, backup): its node rank against the
        number of planted nodes, and what that means; then what counting backups changes."""
        k, n = len(self.positives()), len(self.truth.graph.senders)
        watched = self.watched()
        out = []
        for r in self.rows:
            for node in watched:
                rank = r.node_rank[node]
                decoy = node in role_nodes(self.truth, "class", "decoy")
                what = "the decoy" if decoy else "the backup name mover"
                if r.in_set:
                    inside = r.in_set[node]
                    verdict = ("in its set: FAILS" if inside else "not in its set: fine") if decoy \
                        else ("in its set: found" if inside else "not in its set: MISSED")
                    out.append(f"{r.method}: {what} {node} is {verdict}.")
                    continue
                top = rank <= k
                if decoy:
                    verdict = (f"FAILS: ranked among the top {k} (the number of planted nodes)" if top
                               else f"fine: below the top {k}")
                else:
                    verdict = (f"found: within the top {k}" if top else
                               f"MISSED: below the top {k}")
                out.append(f"{r.method}: {what} {node} ranks {rank} of {n} nodes by |score| — {verdict}.")
            if r.search:
                f = "; ".join(f"{num(v)} ({a})" for a, v in r.set_faithfulness.items())
                out.append(f"{r.method}: its nodes ({', '.join(r.search['members']) or 'none'}) patched together "
                           f"restore {num(r.search['joint_patching_score'])} of the gap (denoising), but as a "
                           f"circuit of {r.circuit_edges} edges with every other edge ablated they keep f = {f}.")
            drop = r.auroc["edge/negative"] - r.auroc["edge/positive"]
            if drop > 0:
                out.append(f"{r.method}: counting the backup's edges as positives lowers its edge AUROC by "
                           f"{num(drop, 2)} ({num(r.auroc['edge/negative'], 2)} → {num(r.auroc['edge/positive'], 2)}).")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_name, "n_pairs": self.n_pairs, "ablations": self.ablations,
                "planted_nodes": self.positives(), "rows": [r.to_dict() for r in self.rows],
                "findings": self.findings()}

    def save_json(self, path: str | Path) -> Path:
        from helpers.base.validate import json_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json_text(self.to_dict()))
        return path


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
