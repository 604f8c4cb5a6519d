"""Circuits of edges: edge-level ablation (``H.evaluate_edges``) against the independent hooks
reference (``tests/reference_edges.py``), MIB's selection and pruning, its faithfulness curve with
CPR and CMD pinned by a worked example, scoring against a known circuit, and MIB's circuit JSON
checked against an excerpt of a real MIB file (``tests/fixtures/mib``, from
``hannamw/MIB-circuit-track``'s ``circuits/ioi-eap-ig.json``)."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import reference_edges as rx
import torch
from tiny_models import save_random_model

import helpers as H
from helpers.base.edge_graph import EdgeGraph
from helpers.circuits.edge_circuits import prune
from helpers.circuits.edge_evaluation import area_from_1, area_under
from helpers.circuits.mib_format import mib_dict
from helpers.circuits.truth import roc_auc, roc_curve

FIXTURE = Path(__file__).parent / "fixtures" / "mib" / "ioi-eap-ig-excerpt.json"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, gpt2_tokenizer):
    eos = gpt2_tokenizer.eos_token_id
    return save_random_model(tmp_path_factory.mktemp("edge-llama") / "llama", "llama", seed=2,
                             num_hidden_layers=3, tokenizer=gpt2_tokenizer, vocab_size=len(gpt2_tokenizer),
                             bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)


@pytest.fixture(scope="module")
def tiny(bundled64):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=3, seed=5)
    return bundled64, pairs, H.edge_attribution(bundled64, pairs, "eap-ig-inputs")


def _random_circuit(edges, seed, share=0.5):
    g = torch.Generator().manual_seed(seed)
    return {e for e in edges if float(torch.rand(1, generator=g)) < share}


# ------------------------------------------------------------------ edge-level ablation

@pytest.mark.parametrize("ablation", ["counterfactual", "mean", "zero"])
def test_evaluate_edges_equals_the_edges_ablated_by_hooks(bundled64, bundled_plain64, ablation):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=3, seed=5)
    clean = rx.record(bundled_plain64, pairs.clean_ids)
    if ablation == "counterfactual":
        ablated = rx.record(bundled_plain64, pairs.corrupted_ids)
    else:
        ablated = {k: v.mean(0, keepdim=True).expand_as(v) if ablation == "mean" else torch.zeros_like(v)
                   for k, v in clean.items()}
    edges = rx.edges_of(bundled_plain64)
    circuits = [_random_circuit(edges, seed, share) for seed, share in ((0, 0.5), (1, 0.1), (2, 0.9))]
    ev = H.evaluate_edges(bundled64, pairs, [[f"{s}->{r}" for s, r in c] for c in circuits], ablation)
    for row, circuit in zip(ev.values, circuits):
        ref = rx.ablate(bundled_plain64, pairs.clean_ids, ablated, circuit, pairs.answer_ids, pairs.distractor_ids)
        assert torch.allclose(row, ref, atol=1e-10)
    assert ev.sizes == [len(c) for c in circuits]


@pytest.mark.parametrize("kv", ["query", "kv"])
def test_evaluate_edges_on_grouped_query_attention_equals_hooks(llama_dir, kv):
    from transformers import AutoModelForCausalLM

    model = H.load_model(llama_dir, dtype="float64")
    plain = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float64, attn_implementation="eager").eval()
    plain = rx.ungrouped(plain) if kv == "query" else plain
    pairs = H.ioi_pairs(model.tokenizer, n=2, seed=3)
    ablated = rx.record(plain, pairs.corrupted_ids, kv)
    circuit = _random_circuit(rx.edges_of(plain, kv), 4)
    ev = H.evaluate_edges(model, pairs, [f"{s}->{r}" for s, r in circuit], kv=kv)
    ref = rx.ablate(plain, pairs.clean_ids, ablated, circuit, pairs.answer_ids, pairs.distractor_ids, kv)
    assert torch.allclose(ev.values[0], ref, atol=1e-10)


def test_the_full_circuit_is_the_clean_run_and_the_empty_one_the_corrupted_run(tiny):
    model, pairs, scores = tiny
    g = scores.graph
    ev = H.evaluate_edges(model, pairs, torch.stack([torch.ones(len(g.edges), dtype=torch.bool),
                                                     torch.zeros(len(g.edges), dtype=torch.bool)]))
    base = H.baselines(model, pairs)
    assert torch.allclose(ev.values[0], base["clean"]["logit_diff"].double(), atol=1e-10)
    assert torch.allclose(ev.values[1], base["corrupted"]["logit_diff"].double(), atol=1e-10)
    assert torch.allclose(ev.empty, ev.values[1]) and ev.faithfulness() == pytest.approx([1.0, 0.0], abs=1e-12)


# ------------------------------------------------------------------ MIB's selection

def test_pruning_drops_whatever_is_not_on_a_path_from_input_to_logits():
    """A hand-worked example on a 1-block, 2-head graph."""
    g = EdgeGraph(1, 2, 2)
    dangling = H.circuit_from_edges(g, ["input->a0.h0<q>", "a0.h0->m0", "input->a0.h1<v>"])
    edges, nodes = prune(g, dangling.edges)
    assert not edges.any() and [n for n, on in zip(g.nodes, nodes.tolist()) if on] == ["logits"]
    kept = H.circuit_from_edges(g, ["input->a0.h0<q>", "a0.h0->m0", "m0->logits", "a0.h1->logits"])
    edges, nodes = prune(g, kept.edges)
    assert [e for e, on in zip(g.edges, edges.tolist()) if on] == ["input->a0.h0<q>", "a0.h0->m0", "m0->logits"]
    assert [n for n, on in zip(g.nodes, nodes.tolist()) if on] == ["input", "a0.h0", "m0", "logits"]


def _on_paths(g, chosen):
    """Edges of ``chosen`` (names) on a path input -> logits using chosen edges only (reachability)."""
    pairs = [(e.split("->")[0], e.split("->")[1].split("<")[0]) for e in chosen]
    reach, back = {"input"}, {"logits"}
    for _ in range(len(g.nodes)):
        reach |= {v for u, v in pairs if u in reach}
        back |= {u for u, v in pairs if v in back}
    return {e for e, (u, v) in zip(chosen, pairs) if u in reach and v in back}


@pytest.mark.parametrize("absolute", [True, False])
def test_top_edges_keeps_exactly_the_top_n_edges_on_input_to_logits_paths(tiny, absolute):
    _, _, scores = tiny
    for n in (5, 23, 47, 95):
        key = scores.values.abs() if absolute else scores.values
        chosen = [scores.graph.edges[i] for i in key.argsort(descending=True)[:n].tolist()]
        circuit = H.top_edges(scores, n, absolute)
        assert set(circuit.edge_names) == _on_paths(scores.graph, chosen)
        assert len(H.top_edges(scores, n, absolute, pruned=False)) == n


def test_top_nodes_takes_the_edges_among_the_chosen_nodes_and_into_the_logits(tiny):
    _, _, scores = tiny
    c = H.top_nodes(scores, 4)
    chosen = {n for n, _ in scores.top(4, level="node")}
    assert set(c.node_names) == chosen | {"logits"}
    want = {e for e in scores.graph.edges
            if e.split("->")[0] in chosen and e.split("->")[1].split("<")[0] in chosen | {"logits"}}
    assert set(c.edge_names) == want


# ------------------------------------------------------------------ MIB's curve, CPR, CMD

def test_cpr_and_cmd_follow_mibs_trapezoids_on_a_worked_example():
    """By hand: widths .001 .003 .005 .01 .03 .05 .1 .3 .5 between MIB's fractions; for f below
    the mean heights are 0 .05 .15 .3 .6 .9 1.1 1.15 1.05 (area 1.0469) and those of |1 - f|
    1 .95 .85 .7 .4 .1 .1 .15 .05 (area 0.1121).  No segment from 0: f = 1 gives 0.999."""
    f = [0, 0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.2, 1.1, 1.0]
    assert H.PERCENTAGES == (.001, .002, .005, .01, .02, .05, .1, .2, .5, 1)
    assert area_under(H.PERCENTAGES, f) == pytest.approx(1.0469, abs=1e-12)
    assert area_from_1(H.PERCENTAGES, f) == pytest.approx(0.1121, abs=1e-12)
    assert area_under(H.PERCENTAGES, [1.0] * 10) == pytest.approx(0.999, abs=1e-12)
    assert area_from_1(H.PERCENTAGES, [1.0] * 10) == 0
    with pytest.raises(ValueError, match="not finite"):
        area_under(H.PERCENTAGES, [math.nan] * 10)


def test_the_faithfulness_curve_uses_mibs_sizes_and_normalisation(tiny, bundled_plain64):
    model, pairs, scores = tiny
    curve = H.faithfulness_curve(model, pairs, scores)
    assert curve.requested == [0, 0, 2, 4, 9, 23, 47, 95, 239, 479]  # int(p * 479), by hand
    assert curve.faithfulness["absolute"][-1] == pytest.approx(1.0, abs=1e-12)
    assert curve.faithfulness["signed"][0] == pytest.approx(0.0, abs=1e-12)
    assert curve.cpr == area_under(curve.percentages, curve.faithfulness["signed"])
    assert curve.cmd == area_from_1(curve.percentages, curve.faithfulness["absolute"])
    # one point recomputed from the hooks reference: top 10% by |score|, pruned
    circuit = {tuple(e.split("->")) for e in H.top_edges(scores, 47).edge_names}
    ablated = rx.record(bundled_plain64, pairs.corrupted_ids)
    ld = rx.ablate(bundled_plain64, pairs.clean_ids, ablated, circuit, pairs.answer_ids, pairs.distractor_ids)
    full = rx.ablate(bundled_plain64, pairs.clean_ids, ablated, set(rx.edges_of(bundled_plain64)),
                     pairs.answer_ids, pairs.distractor_ids)
    empty = rx.ablate(bundled_plain64, pairs.clean_ids, ablated, set(), pairs.answer_ids, pairs.distractor_ids)
    want = float((ld.mean() - empty.mean()) / (full.mean() - empty.mean()))
    assert curve.faithfulness["absolute"][6] == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_the_curve_runs_under_mean_and_zero_ablation_from_0_to_1(tiny, ablation):
    model, pairs, scores = tiny
    curve = H.faithfulness_curve(model, pairs, scores, ablation, percentages=(0.0, 0.2, 1.0))
    assert curve.faithfulness["signed"][0] == pytest.approx(0.0, abs=1e-12)
    assert curve.faithfulness["signed"][-1] == pytest.approx(1.0, abs=1e-12)
    assert curve.ablation == ablation and curve.empty != curve.full


def test_node_level_curve_counts_nodes(tiny):
    model, pairs, scores = tiny
    curve = H.faithfulness_curve(model, pairs, scores, level="node", percentages=(0.1, 0.5, 1.0))
    assert curve.requested == [2, 10, 21]  # int(p * 21 sender nodes)
    assert curve.faithfulness["absolute"][-1] == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------ against a known circuit

def test_a_random_ranking_is_seeded_and_scores_near_chance(tiny):
    _, _, scores = tiny
    a, b = H.EdgeScores.random(scores.graph, seed=1), H.EdgeScores.random(scores.graph, seed=1)
    assert a.values.equal(b.values) and not a.values.equal(H.EdgeScores.random(scores.graph, seed=2).values)
    truth = H.top_edges(scores, 95)  # any fixed set of ~90 edges
    aucs = [H.score_against_truth(H.EdgeScores.random(scores.graph, seed=s), truth).roc_auc for s in range(20)]
    assert 0.4 < sum(aucs) / len(aucs) < 0.6


def test_roc_auc_and_curve_on_a_worked_example():
    s = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    pos = torch.tensor([True, False, True, False, False])
    assert roc_auc(s, pos) == pytest.approx(5 / 6)  # 0.9 beats 3 negatives, 0.7 beats 2: 5 of 6 pairs
    fpr, tpr = roc_curve(s, pos)
    assert fpr == pytest.approx([0, 0, 1 / 3, 1 / 3, 2 / 3, 1]) and tpr == pytest.approx([0, .5, .5, 1, 1, 1])
    assert roc_auc(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([True, False, False])) == 0.75  # a tie: one half


def _truth(g, edges, backups):
    c = H.circuit_from_edges(g, edges)
    c.backup_edges = torch.zeros(len(g.edges), dtype=torch.bool)
    c.backup_edges[g.edge_indices(backups)] = True
    return c


def test_scores_against_a_truth_with_a_backup_counted_three_ways(tiny):
    _, _, scores = tiny
    g = scores.graph
    order = [g.edges[i] for i in scores.values.abs().argsort(descending=True).tolist()]
    truth = _truth(g, [order[0], order[2]], [order[1]])  # positives rank 1 and 3, the backup 2
    n = len(g.edges)
    got = {b: H.score_against_truth(scores, truth, k=3, backups=b) for b in ("positive", "negative", "ignore")}
    assert (got["positive"].precision, got["positive"].recall) == (1.0, 1.0)
    assert got["positive"].roc_auc == 1.0 and got["positive"].n_positive == 3
    assert (got["negative"].precision, got["negative"].recall) == (pytest.approx(2 / 3), 1.0)
    assert got["negative"].roc_auc == pytest.approx(1 - 1 / (2 * (n - 2)))  # rank 3 loses to one negative
    assert got["ignore"].n_negative == n - 3 and got["ignore"].roc_auc == 1.0
    assert got["ignore"].precision == pytest.approx(2 / 3)  # the top 3 of what is counted: ranks 1, 3, 4
    found = H.top_edges(scores, 3, pruned=False)
    assert H.compare_circuits(found, truth)["precision"] == 1.0


# ------------------------------------------------------------------ MIB's circuit JSON

def test_the_edge_graph_names_every_edge_as_mibs_released_gpt2_circuit():
    ex = json.loads(FIXTURE.read_text())
    g = EdgeGraph(12, 12, 12, d_model=768)
    assert len(g.edges) == ex["n_edges"] == 32491
    assert hashlib.sha256("\n".join(g.edges).encode()).hexdigest() == ex["edge_names_sha256"]
    assert g.nodes == list(ex["nodes"]) and g.cfg == ex["cfg"]
    assert set(ex["edges"]) <= set(g.edges)


def test_mib_json_round_trips_and_matches_the_released_files_layout(tmp_path):
    ex = json.loads(FIXTURE.read_text())
    with pytest.raises(ValueError, match="missing"):
        H.load_mib_circuit({k: ex[k] for k in ("cfg", "nodes", "edges")})  # an excerpt lacks edges
    g = EdgeGraph(12, 12, 12, d_model=768)
    full = {"cfg": ex["cfg"], "nodes": ex["nodes"],
            "edges": {e: ex["edges"].get(e, {"score": 0.0, "in_graph": False}) for e in g.edges}}
    c = H.load_mib_circuit(full)
    assert set(c.edge_names) == {e for e, v in ex["edges"].items() if v["in_graph"]}
    assert c.scores[g.edge_position["input->a0.h0<q>"]] == ex["edges"]["input->a0.h0<q>"]["score"]
    saved = json.loads(H.save_mib_circuit(c, tmp_path / "c.json").read_text())
    assert list(saved) == ["cfg", "nodes", "edges"] and saved["cfg"] == ex["cfg"]
    assert list(saved["edges"]) == g.edges and saved["edges"]["input->a0.h0<q>"] == ex["edges"]["input->a0.h0<q>"]
    assert {k: v["in_graph"] for k, v in saved["nodes"].items()} == {k: v["in_graph"] for k, v in ex["nodes"].items()}
    again = H.load_mib_circuit(tmp_path / "c.json")
    assert again.edges.equal(c.edges) and again.scores.equal(c.scores)


def test_scores_and_circuits_save_for_mib(tiny, tmp_path):
    _, _, scores = tiny
    d = json.loads(H.save_mib_circuit(scores, tmp_path / "s.json").read_text())
    assert not any(v["in_graph"] for v in d["edges"].values()) and d["nodes"]["logits"]["in_graph"]
    back = H.load_mib_circuit(tmp_path / "s.json")
    assert torch.allclose(back.scores, scores.values) and torch.allclose(back.node_scores, scores.nodes)
    named = H.circuit_from_edges(scores.graph, ["a3.h0->logits"])
    d = json.loads(H.save_mib_circuit(named, tmp_path / "c.json").read_text())
    assert d["edges"]["a3.h0->logits"] == {"score": 1.0, "in_graph": True}
    assert d["edges"]["input->logits"] == {"score": 0.0, "in_graph": False}


def test_a_planted_truth_file_loads_with_its_backups_and_classes(tiny):
    _, _, scores = tiny
    d = json.loads(json.dumps(mib_dict(H.top_edges(scores, 10))))
    d["edges"]["a3.h1->logits"].update(backup=True, **{"class": "backup"})
    d["nodes"]["a3.h1"].update(backup=True)
    d["roles"] = {"name_mover": ["a3.h0"]}
    truth = H.load_mib_circuit(d)
    assert truth.backup_edges.sum() == 1 and bool(truth.backup_edges[truth.graph.edge_position["a3.h1->logits"]])
    assert truth.backup_nodes.sum() == 1
    assert truth.info["edges"]["a3.h1->logits"] == {"class": "backup"} and truth.info["roles"]


def test_bad_circuit_files_and_graphs_are_refused(tiny, llama_dir, tmp_path):
    _, _, scores = tiny
    d = mib_dict(scores)
    d["edges"]["input->logits"]["score"] = float("nan")
    with pytest.raises(ValueError, match="no finite score"):
        H.load_mib_circuit(d)
    with pytest.raises(ValueError, match="lacks"):
        H.load_mib_circuit({"cfg": d["cfg"]})
    model = H.load_model(llama_dir, dtype="float64")
    pairs = H.ioi_pairs(model.tokenizer, n=2, seed=3)
    grouped = H.edge_attribution(model, pairs, kv="kv")
    with pytest.raises(ValueError, match="kv='query'"):
        H.save_mib_circuit(grouped, tmp_path / "g.json")
    with pytest.raises(ValueError, match="unknown edge"):
        H.evaluate_edges(model, pairs, ["input->a9.h0<q>"])
