"""Chapter 10's pooled decisions (``helpers.circuits.pooled``, ``.stages``, ``.roles``,
``.search.greedy_faithful``): each checked against a plain computation written here (loops over
resamples, brute force over head sets) or an exact identity, on synthetic numbers and on the
bundled model."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import helpers as H
from helpers.circuits import ioi_classes as C
from helpers.circuits.pooled import Pooled
from helpers.circuits.search import kept_metric
from helpers.results.stats import adjust_p


def _pooled(values, gap=None, strata=None):
    values = np.asarray(values, float)
    n = len(values)
    strata = np.zeros(n, int) if strata is None else np.asarray(strata)
    return Pooled(values, None if gap is None else np.asarray(gap, float), strata, np.arange(n) % 2,
                  ["a", "b"])


def test_the_pooled_share_is_the_ratio_of_sums_and_the_mean_without_gaps():
    p = _pooled([[1.0, 2.0], [3.0, -2.0]], gap=[2.0, 6.0])
    assert np.allclose(p.estimate(), [4.0 / 8.0, 0.0])
    assert np.allclose(_pooled([[1.0], [3.0]]).estimate(), [2.0])


def test_resamples_stay_within_their_template_and_match_a_loop():
    """Every resample keeps each template's number of pairs; the ratio equals one recomputed by
    hand from the same counts."""
    rng = np.random.default_rng(0)
    values, gap = rng.normal(size=(9, 3)), rng.uniform(1, 2, size=9)
    strata = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    p = _pooled(values, gap, strata)
    boot = p.resamples(200, seed=4)
    # redo the draw: numpy's generator with the documented seed, stratum by stratum
    gen = np.random.default_rng([4, 2])
    counts = np.zeros((200, 9))
    for s in (0, 1, 2):
        members = np.flatnonzero(strata == s)
        draw = members[gen.integers(0, len(members), size=(200, len(members)))]
        for b in range(200):
            for i in draw[b]:
                counts[b, i] += 1
    for s in (0, 1, 2):
        assert (counts[:, strata == s].sum(1) == (strata == s).sum()).all()
    want = np.stack([(counts[b] @ values) / (counts[b] @ gap) for b in range(200)])
    assert np.allclose(boot, want)


def test_a_criterion_is_met_only_when_its_holm_adjusted_bootstrap_p_is_below_alpha():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, 4)) * 0.01
    values = base + np.array([0.30, 0.06, 0.02, -0.30])   # clearly above, borderline, below, negative
    p = _pooled(values, gap=np.ones(40))
    got = p.decide(0.05, sign=1, n_boot=2000, seed=0)
    boot = p.resamples(2000, 0)
    raw = (1 + (boot < 0.05).sum(0)) / 2001
    assert np.allclose(got["p"], raw)
    assert np.allclose(got["p_holm"], adjust_p(raw, "holm"))
    assert list(got["meets"]) == list(adjust_p(raw, "holm") < 0.05)
    assert got["meets"][0] and not got["meets"][2] and not got["meets"][3]
    neg = p.decide(0.05, sign=-1, n_boot=2000, seed=0)
    assert list(neg["meets"]) == [False, False, False, True]
    # Holm runs only over the cells tested: the others never meet the criterion
    only = p.decide(0.05, n_boot=2000, seed=0, among=np.array([False, True, True, True]))
    assert not only["meets"][0] and only["p_holm"][0] == 1.0


def _heads(values: dict, shape=(2, 3)) -> np.ndarray:
    out = np.zeros(shape)
    for name, v in values.items():
        out[H.fmt.parse_head(name)] = v
    return out


def test_decide_needs_both_criteria_and_counts_the_templates_that_select_a_head_alone():
    n, rng = 24, np.random.default_rng(2)
    strata = np.repeat([0, 1, 2], 8)
    att = np.stack([_heads({"L1H0": 0.8, "L1H1": 0.8, "L0H2": 0.1}) for _ in range(n)])
    eff = np.stack([_heads({"L1H0": 0.3, "L1H1": 0.0, "L0H2": 0.3}) for _ in range(n)])
    eff[strata == 2, 1, 0] = 0.0            # L1H0 carries no effect on template 2
    att += rng.normal(size=att.shape) * 0.01
    eff += rng.normal(size=eff.shape) * 0.01
    table = C.decide(C.CLASS["name mover"], _pooled(att, None, strata), _pooled(eff, np.ones(n), strata),
                     0.3, 0.05, n_boot=2000)
    rows = table.set_index("head")
    assert list(table[table["member"]]["head"]) == ["L1H0"]
    assert rows.loc["L1H0", "templates"] == "2/3"
    assert rows.loc["L0H2", "fails"] == "attention" and rows.loc["L1H1", "fails"] == "effect"
    assert rows.loc["L1H0", "tested"] == 6
    excluded = C.decide(C.CLASS["name mover"], _pooled(att, None, strata), _pooled(eff, np.ones(n), strata),
                        0.3, 0.05, exclude=["L1H0"], n_boot=2000).set_index("head")
    assert not excluded.loc["L1H0", "member"] and excluded.loc["L1H0", "fails"] == "excluded"


def test_candidates_are_the_attention_passers_and_the_top_of_the_map_before_the_receivers():
    att = _pooled(np.stack([_heads({"L0H1": 0.9, "L1H2": 0.9}, (3, 3))] * 10), None)
    screen = torch.tensor(_heads({"L0H0": 0.2, "L0H2": 0.1, "L1H1": 0.05, "L2H0": 0.9}, (3, 3)))
    got = C.candidates(screen, att, 0.3, top=2, before=2)
    assert set(got) == {"L0H1", "L1H2", "L0H0", "L0H2"} and got[:2] == ["L0H0", "L0H2"]


def test_a_group_matters_only_above_the_threshold_and_every_random_group():
    def group(rows):
        return _pooled(np.stack([rows] * 20) + np.random.default_rng(0).normal(size=(20, len(rows))) * 1e-3,
                       np.ones(20))
    assert C.group_matters(group([0.3, 0.0, 0.01]), 0.05)
    assert not C.group_matters(group([0.03, 0.0, 0.01]), 0.05)      # below the threshold
    assert not C.group_matters(group([0.3, 0.31, 0.0]), 0.05)       # a random group does as much
    assert not C.group_matters(None)


def test_unexplained_heads_meet_the_direct_criterion_either_way_and_are_in_no_class():
    eff = np.stack([_heads({"L1H0": 0.3, "L1H1": -0.2, "L0H2": 0.01, "L1H2": 0.4})] * 12)
    eff += np.random.default_rng(3).normal(size=eff.shape) * 1e-3
    table = C.evidence_table([C.decide(C.CLASS["name mover"],
                                       _pooled(np.stack([_heads({"L1H2": 0.9})] * 12)),
                                       _pooled(eff, np.ones(12)), 0.3, 0.05, n_boot=1000)])
    assert C.unexplained(_pooled(eff, np.ones(12)), table, 0.05, n_boot=1000) == ["L1H0", "L1H1"]


# --------------------------------------------------------------------------- on the bundled model

@pytest.fixture(scope="module")
def pooled(bundled):
    return C.pair_groups(bundled.tokenizer, [0, 2], n=3, seed=5)


def test_pair_groups_hold_every_template_in_both_orders_with_roles_in_place(bundled, pooled):
    assert pooled.names == ["t0 ABBA", "t0 BABA", "t2 ABBA", "t2 BABA"] and len(pooled) == 12
    assert list(pooled.strata) == [0] * 6 + [2] * 6
    for g, order in zip(pooled, pooled.orders):
        first = "IO" if order == "ABBA" else "S1"
        assert g.positions[first] < g.positions["S1" if first == "IO" else "IO"]


def test_a_pooled_readout_equals_the_separate_readouts_of_every_group(bundled, pooled):
    reads = C.pooled_readout(bundled, pooled)
    start = 0
    for g in pooled:
        att = C.attention_to_roles(bundled, g, per_prompt=True)
        dla = C.direct_logit_attribution(bundled, g)
        s = slice(start, start + len(g))
        assert np.allclose(reads.attention["END->S2"].values[s], att["END->S2"].double().numpy(), atol=1e-6)
        assert np.allclose(reads.dla["difference"].values[s], dla.double().numpy(), atol=1e-5)
        parts = reads.dla["answer"].values[s] - reads.dla["distractor"].values[s]
        assert np.allclose(parts, reads.dla["difference"].values[s], atol=1e-5)
        b = H.baselines(bundled, g)
        gap = (b["clean"]["logit_diff"] - b["corrupted"]["logit_diff"]).double().numpy()
        assert np.allclose(reads.gap[s], gap, atol=1e-4)
        assert np.allclose(reads.logit_diff.values[s], b["clean"]["logit_diff"].double().numpy(), atol=1e-4)
        start += len(g)


def test_pooled_paths_stack_every_groups_path_patching_per_pair(bundled64, pooled):
    got = C.pooled_paths(bundled64, pooled, ["L3H0"], "q", "END", senders=["L1H0", "L2H1"])
    start = 0
    for g in pooled:
        r = H.path_patch(bundled64, g, ["L1H0", "L2H1"], "L3H0.q@END", method="batched")
        eff = (r.values["logit_diff"][..., 0] - r.corrupted["logit_diff"][:, None]).double().numpy()
        assert np.allclose(got.values[start:start + len(g), 1, 0], eff[:, 0], atol=1e-10)
        assert np.allclose(got.values[start:start + len(g), 2, 1], eff[:, 1], atol=1e-10)
        start += len(g)
    assert got.values[:, 0].sum() == 0 and got.values[:, 3].sum() == 0   # not senders


def test_share_definitions_of_one_receiver_agree_summed_and_joint(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=3, seed=1)
    one = C.share_definitions(bundled, pairs, ["L1H0", "L0H3"], ["L3H0"], "q", "END")
    assert np.allclose(one["summed, later layers recomputed"], one["joint, later layers recomputed"])
    assert np.allclose(one["summed, later layers frozen"], one["joint, later layers frozen"])
    two = C.share_definitions(bundled, pairs, ["L1H0"], ["L3H0", "L3H1"], "q", "END")
    r = H.path_patch(bundled, pairs, ["L1H0"], ["L3H0.q@END", "L3H1.q@END"])
    gap = r.baseline("clean") - r.baseline("corrupted")
    assert two.loc["L1H0", "summed, later layers recomputed"] == pytest.approx(
        float(((r.mean() - r.baseline("corrupted")) / gap).sum()), abs=1e-6)


def test_the_backup_table_adds_up(bundled, pooled):
    bt = C.backup_by_template(bundled, pooled, ["L3H0", "L3H1"])
    t = bt.table()
    assert list(t.index) == [0, 2, "pooled"]
    assert np.allclose(t["change"], t["movers ablated"] - t["logit diff"])
    assert np.allclose(t["made up by the rest"], t["movers' direct contribution"] + t["change"])
    want = H.ablate(bundled, pooled.groups[0], [["L3H0", "L3H1"]], "mean").values["logit_diff"][:, 0]
    assert bt.after.logit_diff.values[:3] == pytest.approx(want.double().numpy(), abs=1e-4)
    rise = bt.rise().values
    assert (rise[:, 3, 0] == 0).all() and (rise[:, 3, 1] == 0).all()


def test_the_greedy_faithful_search_picks_at_each_step_the_best_head_by_brute_force(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=4, seed=2)
    pool = ["L0H3", "L1H1", "L2H2", "L3H0", "L0H2"]
    universe = [H.fmt.head_name(L, h) for L in range(4) for h in range(4)]
    got = C.greedy_faithful(bundled, pairs, pool, 2.0, ("mean", "resample"), max_size=3, universe=universe)
    assert len(got.members) == 3 and not got.reached and got.pool == 5

    def faith(kept, kind):
        full, empty, m = kept_metric(bundled, pairs, [universe, [], kept], universe, kind)
        return (m - empty) / (full - empty)
    chosen = []
    for step in got.history:
        rest = [h for h in pool if h not in chosen]
        scores = {h: min(faith(chosen + [h], k) for k in ("mean", "resample")) for h in rest}
        best = max(rest, key=lambda h: (scores[h], -rest.index(h)))
        assert step["added"] == best
        chosen.append(best)
    table = C.faithfulness_table(bundled, pairs, {"all": universe, "none": [], "greedy": got.members},
                                 ("mean",), universe=universe)
    assert table.loc["all", "mean"] == pytest.approx(1.0) and table.loc["none", "mean"] == pytest.approx(0.0)
    assert table.loc["greedy", "mean"] == pytest.approx(got.faithfulness["mean"])


def test_kept_metric_is_the_ablated_runs_mean_logit_difference(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=3, seed=3)
    universe = ["L0H3", "L1H0", "mlp0"]
    got = kept_metric(bundled, pairs, [["L0H3"], universe], universe, "mean")
    want = H.ablate(bundled, pairs, ["L1H0", "mlp0"], "mean").values["logit_diff"].mean().item()
    assert got[0] == pytest.approx(want, abs=1e-5)
    assert got[1] == pytest.approx(H.baselines(bundled, pairs)["clean"]["logit_diff"].mean().item(), abs=1e-5)


def test_random_sets_come_from_the_groups_blocks_and_avoid_its_heads():
    group = ["L2H4", "L5H6", "L8H0"]
    sets = C.random_sets(group, 6, seed=1, n_heads=9)
    assert len(sets) == 6 and all(len(s) == 3 for s in sets)
    for s in sets:
        assert {H.fmt.parse_head(h)[0] for h in s} <= {2, 5, 8} and not set(s) & set(group)
    assert sets == C.random_sets(group, 6, seed=1, n_heads=9)
    assert list(itertools.chain(*sets)) != list(itertools.chain(*C.random_sets(group, 6, seed=2, n_heads=9)))
