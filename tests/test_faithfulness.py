"""Circuit evaluation (helpers.circuits.evaluation): identities, and the definitions recomputed
independently (plain hooks for faithfulness and minimality; ``ablate`` for the completeness
search).  Bundled IOI model in float64; every evaluation runs for both methods, ``"fast"``
(``helpers.engine.fastablate``) and ``"batched"`` (traced forwards)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from test_ablations import hook_cache, hook_run, ld

import helpers as H
from helpers.methods import ablations as A
from helpers.circuits import evaluation as F
from helpers.circuits.search import all_components

TOL = 1e-10
CIRCUIT = ["L0H1", "L1H2", "mlp0"]
METHODS = ("fast", "batched")


@pytest.fixture(scope="module")
def setup(bundled64):
    from transformers import GPT2LMHeadModel

    from helpers.organism import BUNDLED_MODELS

    plain = GPT2LMHeadModel.from_pretrained(BUNDLED_MODELS["ioi-tiny"], dtype=torch.float64,
                                            attn_implementation="eager").eval()
    pairs = H.ioi_pairs(bundled64.tokenizer, n=3, seed=1)
    abc = H.ioi_pairs(bundled64.tokenizer, n=4, seed=9, corruption="abc")
    return bundled64, plain, pairs, abc


@pytest.fixture(scope="module", params=METHODS)
def mean_eval(setup, request):
    model, _, pairs, abc = setup
    e = F.evaluate_circuit(model, pairs, CIRCUIT, "mean", reference=abc.corrupted_ids,
                           max_steps=2, method=request.param)
    assert e.method == request.param
    return e


def _hooks_metric(plain, pairs, abc, kept, universe):
    """M(kept) by plain hooks: every universe member outside ``kept`` mean-ablated (ABC mean)."""
    ablated = [c for c in universe if c not in kept]
    means = {c: v.mean(0, keepdim=True)
             for c, v in hook_cache(plain, "gpt2", abc.corrupted_ids, ablated).items()}
    return ld(hook_run(plain, "gpt2", pairs.clean_ids, means), pairs).mean().item()


def test_faithfulness_and_minimality_equal_the_hooks_reference(setup, mean_eval):
    model, plain, pairs, abc = setup
    universe = all_components(model)
    assert mean_eval.universe == universe and len(universe) == 20
    full = _hooks_metric(plain, pairs, abc, universe, universe)
    empty = _hooks_metric(plain, pairs, abc, [], universe)
    m_c = _hooks_metric(plain, pairs, abc, CIRCUIT, universe)
    assert abs(mean_eval.full - full) < TOL and abs(mean_eval.empty - empty) < TOL
    assert abs(mean_eval.circuit_metric - m_c) < TOL
    assert abs(mean_eval.faithfulness - (m_c - empty) / (full - empty)) < TOL
    assert abs(mean_eval.wang_ratio - m_c / full) < TOL
    for v in CIRCUIT:
        without = _hooks_metric(plain, pairs, abc, [c for c in CIRCUIT if c != v], universe)
        assert abs(mean_eval.minimality_drop[v] - (m_c - without)) < TOL
        assert abs(mean_eval.minimality[v] - (m_c - without) / (m_c - empty)) < TOL


def test_completeness_greedy_step_and_gaps_match_direct_ablations(setup, mean_eval):
    model, _, pairs, abc = setup
    universe = all_components(model)
    comp = mean_eval.completeness
    path = comp["path"]
    assert [len(p["K"]) for p in path] == [0, 1, 2]  # capped at max_steps=2
    # the gap of each candidate K = {v}, from ablate(): C - {v} keeps C without v (ablate the
    # rest of the universe); U - {v} ablates only v
    sets = [[c for c in universe if c not in CIRCUIT or c == v] for v in CIRCUIT] + \
           [[v] for v in CIRCUIT] + [[]]
    r = A.ablate(model, pairs, sets, "mean", reference=abc.corrupted_ids, method="batched")
    m = r.values["logit_diff"].mean(0).tolist()
    scale = abs(mean_eval.full - mean_eval.empty)
    gaps = [abs(m[i] - m[len(CIRCUIT) + i]) / scale for i in range(len(CIRCUIT))]
    best = max(range(len(CIRCUIT)), key=lambda i: gaps[i])
    assert path[1]["K"] == [CIRCUIT[best]] and abs(path[1]["gap"] - gaps[best]) < TOL
    assert abs(path[0]["gap"] - abs(mean_eval.circuit_metric - mean_eval.full) / scale) < TOL
    assert abs(m[-1] - mean_eval.full) < TOL  # ablating nothing is the full model
    assert comp["gap"] == max(p["gap"] for p in path)
    assert comp["K"] == max(path, key=lambda p: p["gap"])["K"]


def test_curve_adds_members_by_importance(mean_eval):
    curve = mean_eval.curve
    assert [p["size"] for p in curve] == list(range(len(CIRCUIT) + 1))
    assert curve[0]["faithfulness"] == 0.0 and curve[0]["components"] == []
    assert curve[-1]["faithfulness"] == mean_eval.faithfulness
    order = [p["added"] for p in curve[1:]]
    assert sorted(order) == sorted(CIRCUIT)
    drops = [mean_eval.minimality_drop[c] for c in order]
    assert drops == sorted(drops, reverse=True)
    assert all(curve[k]["components"] == order[:k] for k in range(len(curve)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", A.KINDS)
def test_full_set_is_exactly_one_and_empty_exactly_zero(setup, kind, method):
    model, _, pairs, abc = setup
    universe = ["L0H1", "L1H2", "L1H3", "mlp0", "mlp1"]
    ref = abc.corrupted_ids if kind == "mean" else None
    full = F.evaluate_circuit(model, pairs, universe, kind, universe=universe, reference=ref,
                              max_steps=1, method=method)
    empty = F.evaluate_circuit(model, pairs, [], kind, universe=universe, reference=ref,
                               method=method)
    assert full.faithfulness == 1.0 and empty.faithfulness == 0.0
    assert full.completeness["path"][0]["gap"] == 0.0  # C = U: the circuit is the model
    assert abs(full.full - full.empty) > 1e-3  # the universe's ablation matters at all
    assert empty.curve == [{"size": 0, "added": None, "components": [], "faithfulness": 0.0}]


@pytest.mark.parametrize("method", METHODS)
def test_compare_ablations_table(setup, method):
    model, _, pairs, abc = setup
    universe = ["L0H1", "L1H2", "L1H3", "mlp0", "mlp1"]
    table = F.compare_ablations(model, pairs, ["L1H2", "mlp0"], universe=universe,
                                reference=abc.corrupted_ids, max_steps=1, faithful_at=0.5,
                                method=method)
    assert list(table.index) == list(A.KINDS) and table.attrs["method"] == method
    other = "batched" if method == "fast" else "fast"
    for kind in A.KINDS:
        e = F.evaluate_circuit(model, pairs, ["L1H2", "mlp0"], kind, universe=universe,
                               reference=abc.corrupted_ids if kind == "mean" else None, max_steps=1,
                               method=other)
        row = table.loc[kind]
        assert abs(row["faithfulness"] - e.faithfulness) < TOL
        assert row["verdict"].startswith("faithful" if e.faithfulness >= 0.5 else "not faithful")
        assert abs(row["completeness_gap"] - e.completeness["gap"]) < TOL


def test_to_dict_is_json(mean_eval):
    d = json.loads(json.dumps(mean_eval.to_dict()))
    assert d["circuit"] == CIRCUIT and d["ablation"] == "mean"
    assert math.isclose(d["faithfulness"], mean_eval.faithfulness)
    assert set(d["minimality"]) == set(CIRCUIT)


def test_bad_circuit_inputs_say_how_to_fix_them(setup):
    model, _, pairs, _ = setup
    with pytest.raises(ValueError, match="not in the universe"):
        F.evaluate_circuit(model, pairs, ["L0H1", "mlp1"], universe=["L0H1", "mlp0"])
    with pytest.raises(ValueError, match="unknown component 'head7'"):
        F.evaluate_circuit(model, pairs, ["head7"])
    with pytest.raises(ValueError, match="ablation='noise' is not a valid choice"):
        F.evaluate_circuit(model, pairs, ["L0H1"], "noise")
    with pytest.raises(ValueError, match=r"ablations\[1\]='gauss' is not a valid choice"):
        F.compare_ablations(model, pairs, ["L0H1"], ["mean", "gauss"])
    with pytest.raises(ValueError, match="metric=.kl_to_clean. is not a valid choice"):
        F.evaluate_circuit(model, pairs, ["L0H1"], metric="kl_to_clean")
    with pytest.raises(ValueError, match="at least 2 prompts"):
        F.evaluate_circuit(model, pairs[:1], ["L0H1"], "resample")
