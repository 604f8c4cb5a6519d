"""The scorecard's computing core (``helpers.circuits.scorecard``, behind ``benchmarks/scorecard.py``)
on the bundled model with a truth written for the test: the top edges of exact edge patching as
the circuit, the strongest node outside it as a "decoy", the weakest one as a "backup" (its edge
to the logits the backup edge).
Timing is not tested (it is printed, not asserted)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import helpers as H
from helpers.circuits import discovery, scorecard as sc

K_EDGES = 8


def _trapezoid(x, y):
    return sum((x2 - x1) * (a + b) / 2 for x1, x2, a, b in zip(x, x[1:], y, y[1:]))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(model, pairs, truth, exact scores, decoy node, backup node), the truth in a model folder."""
    from helpers.organism import BUNDLED_MODELS

    folder = tmp_path_factory.mktemp("scorecard") / "model"
    shutil.copytree(BUNDLED_MODELS["ioi-tiny"], folder)
    model = H.load_model(folder)
    pairs = H.ioi_pairs(model.tokenizer, n=3, seed=5)
    exact = H.edge_attribution(model, pairs, "exact")
    g = exact.graph
    order = torch.sort(-exact.values.abs(), stable=True).indices.tolist()
    assert float(exact.values.abs()[order[K_EDGES - 1]]) > float(exact.values.abs()[order[K_EDGES]])
    chosen = [g.edges[i] for i in order[:K_EDGES]]
    senders, receivers = g.edge_nodes()
    nodes_in = {senders[i] for i in order[:K_EDGES]} | {receivers[i] for i in order[:K_EDGES]}
    others = [n for n in g.senders if n not in nodes_in]
    node_key = {n: abs(float(v)) for n, v in zip(g.senders, exact.nodes)}
    decoy = max(others, key=node_key.get)
    backup = min((n for n in others if n != decoy), key=node_key.get)   # the weakest node outside
    backup_edge = g.edge_position[f"{backup}->logits"]
    d = {"cfg": g.cfg, "nodes": {}, "edges": {}}
    for n in g.nodes:
        d["nodes"][n] = {"in_graph": n in nodes_in or n == "logits", "class": "decoy" if n == decoy else None,
                         "role": "backup_name_mover" if n == backup else None, "backup": n == backup}
    for i, e in enumerate(g.edges):
        d["edges"][e] = {"score": 1.0 if e in chosen else 0.0, "in_graph": e in chosen, "backup": i == backup_edge}
    (folder / "ground_truth.json").write_text(json.dumps(d))
    return model, pairs, sc.load_truth(folder), exact, decoy, backup, folder


@pytest.fixture(scope="module")
def card(planted):
    model, pairs, truth, *_ = planted
    return sc.scorecard(model, pairs, truth, methods=("exact", "eap", "greedy", "random"))


def test_exact_scores_rank_a_truth_made_of_their_own_top_edges_perfectly(card):
    row = card.row("exact")
    assert row.auroc["edge/negative"] == 1.0       # the top edges are the positives
    assert row.auroc["edge/positive"] < 1.0        # counted as a positive, the weak backup edge costs AUROC
    assert card.row("random").auroc["edge/negative"] < 0.9


def test_node_ranks_and_findings_follow_the_scores(card, planted):
    _, _, truth, exact, decoy, backup, _ = planted
    keys = exact.nodes.abs()
    i = exact.graph.senders.index(decoy)
    rank = 1 + int((keys > keys[i]).sum())
    assert card.row("exact").node_rank[decoy] == rank
    k = len(card.positives())
    in_graph = [n for n in truth.graph.senders if bool(truth.nodes[truth.graph.nodes.index(n)])]
    assert card.positives() == in_graph and backup not in in_graph
    line = next(s for s in card.findings() if s.startswith(f"exact: the backup name mover {backup} ranks "))
    assert "MISSED" in line   # the weakest node outside the circuit is below the top k
    verdict = "FAILS" if rank <= k else "fine"
    line = next(s for s in card.findings() if s.startswith(f"exact: the decoy {decoy} ranks {rank} "))
    assert verdict in line


def test_the_greedy_circuit_is_the_edges_among_its_nodes(planted):
    model, pairs, *_ = planted
    circuit, search = sc.greedy_circuit(model, pairs)
    members = {("m" + c[3:]) if c.startswith("mlp") else "a{}.h{}".format(*c[1:].split("H")) for c in search.members}
    assert members, "the bundled model's search finds at least one component"
    senders, receivers = circuit.graph.edge_nodes()
    inside = [(s, r) for s, r, on in zip(senders, receivers, circuit.edges.tolist()) if on]
    assert all(s in members | {"input"} and r in members | {"logits"} for s, r in inside)
    for m in members:   # a member reads the input and writes to the logits, so pruning keeps both
        assert f"{m}->logits" in circuit and any(s == "input" and r == m for s, r in inside)


def test_cpr_and_cmd_are_mibs_trapezoids_of_the_rows_curves(card):
    for method in ("exact", "eap", "random"):
        row = card.row(method)
        for ablation in sc.ABLATIONS:
            curve = row.curves[ablation]
            x = curve.percentages
            assert row.cpr[ablation] == pytest.approx(_trapezoid(x, curve.faithfulness["signed"]), abs=1e-12)
            assert row.cmd[ablation] == pytest.approx(
                _trapezoid(x, [abs(1 - f) for f in curve.faithfulness["absolute"]]), abs=1e-12)
    greedy = card.row("greedy")
    assert greedy.cpr["mean"] is None and set(greedy.set_faithfulness) == set(sc.ABLATIONS)


def test_the_random_row_is_seeded(planted, card):
    model, pairs, truth, *_ = planted
    again = sc.scorecard(model, pairs, truth, methods=("random",), ablations=("counterfactual",))
    assert again.row("random").auroc == card.row("random").auroc


def test_the_scorecard_writes_a_table_and_json_without_nan(card, tmp_path):
    table = card.table()
    assert all(f"| {m} |" in table for m in ("exact", "eap", "greedy", "random"))
    data = json.loads(card.save_json(tmp_path / "card.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["exact", "eap", "greedy", "random"]
    assert data["findings"] == card.findings()


def test_a_model_without_a_truth_is_refused_with_what_to_give(planted):
    model, pairs, truth, *_ = planted
    with pytest.raises(FileNotFoundError, match="ground_truth.json"):
        sc.load_truth("ioi-tiny")
    with pytest.raises(ValueError, match="unknown methods"):
        sc.scorecard(model, pairs, truth, methods=("acdc",))


# ------------------------------------------------------------------ chapter 11's explain, figures and part 2

def test_the_lessons_name_exactly_the_methods_that_rank_the_decoy_in_the_top_k(card, planted):
    decoy = planted[4]
    k = len(card.positives())
    first = H.explain.discovery.lessons(card).data.split("\n")[0]
    listed = first.split(f"top {k} nodes by ", 1)[1].split(".")[0]
    named = set() if listed == "no method" else set(listed.replace(" and ", ", ").split(", "))
    fooled = {r.method for r in card.rows if (r.in_set[decoy] if r.in_set else r.node_rank[decoy] <= k)}
    assert named == fooled


def test_the_roc_figure_draws_one_curve_per_method_and_chance(card):
    fig = H.figures.discovery.roc_curves(card, "positive")
    assert [len(ax.get_lines()) for ax in fig.axes] == [len(card.rows) + 1] * 2
    fig = H.figures.discovery.node_ranks(card)
    assert fig.axes[0].get_yticklabels()[0].get_text() == card.rows[0].method


def test_by_hand_agreement_is_judged_relative_to_the_largest_score():
    same = H.explain.discovery.by_hand("a2.h0->logits", 1.0, 1.0 + 1e-7, 10.0).data
    off = H.explain.discovery.by_hand("a2.h0->logits", 1.0, 1.5, 10.0).data
    assert "the same number" in same and "differ by 0.5000" in off


def test_node_overlap_on_a_worked_example():
    ov = discovery.node_overlap(["L1H0", "L2H1", "L3H3"], ["L2H1", "L0H0"])
    assert ov["both"] == ["L2H1"] and ov["only_hand"] == ["L0H0"] and ov["only_found"] == ["L1H0", "L3H3"]
    assert ov["jaccard"] == pytest.approx(1 / 4)


def test_a_head_circuit_holds_only_edges_among_its_heads_the_mlps_input_and_logits():
    g = H.EdgeGraph(4, 4, 4)
    c = discovery.head_circuit(g, ["L1H2", "L3H0"])
    members = {"input", "logits", "a1.h2", "a3.h0", "m0", "m1", "m2", "m3"}
    senders, receivers = g.edge_nodes()
    inside = {(s, r) for s, r, on in zip(senders, receivers, c.edges.tolist()) if on}
    assert all(s in members and r in members for s, r in inside)
    assert ("a1.h2", "a3.h0") in inside and ("a3.h0", "logits") in inside
    assert discovery.circuit_heads(c) == ["L1H2", "L3H0"]
    with pytest.raises(ValueError, match="not in this model"):
        discovery.head_circuit(g, ["L9H0"])


def test_the_smallest_faithful_size_is_the_first_to_reach_the_target(card):
    curve = card.row("exact").curves["counterfactual"]
    i = discovery.smallest_faithful(curve, 0.8)
    f = curve.faithfulness["absolute"]
    reach = [j for j, v in enumerate(f[:-1]) if v >= 0.8 and curve.edges["absolute"][j] > 0]
    assert i == (reach[0] if reach else max(range(len(f) - 1), key=lambda j: f[j]))


def test_the_recorded_hand_found_heads_are_chapter_10s_class_members():
    hand = discovery.hand_found(None, None, "smollm2-135m")
    assert hand.source == "recorded" and "L23H0" in hand.heads and len(hand.heads) == 7


def test_the_exercise_check_accepts_the_best_edge_auroc_only(card, capsys):
    best = max(card.rows, key=lambda r: r.auroc["edge/negative"]).method
    worst = min(card.rows, key=lambda r: r.auroc["edge/negative"]).method
    assert H.checks.check_best_auroc(best, card) is True
    assert H.checks.check_best_auroc(worst, card) is False
    assert H.checks.check_best_auroc(None, card) is False
    assert "Hint" in capsys.readouterr().out
