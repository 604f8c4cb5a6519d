"""SmolLM2-135M's IOI circuit as chapter 10 finds it with its default parameters: maps on 8 S2-swap
pairs of template 0 (seed 0), decisions on 8 pairs of templates 0-3 in both name orders (seed 1;
ABC pairs for the previous-token stage and the open head's inputs), attention >= 0.3 and share >=
0.05 decided on bootstrap intervals with Holm.  The findings written into the model card
(``helpers/organism/smollm2/MODEL_CARD.md``, "IOI circuit") are asserted here, so that a change
in the tools that breaks them is caught.  Slow tier: the real model, a few minutes on one core.
"""
from __future__ import annotations

import numpy as np
import pytest

import helpers as H
from helpers.circuits import ioi_classes as C

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smollm2")]

MIN_ATTENTION, MIN_SHARE = 0.3, 0.05
DUP_GROUP = ["L2H4", "L5H6", "L8H0", "L8H1", "L9H2", "L14H3", "L15H7"]


@pytest.fixture(scope="module")
def search(smollm2_cache) -> dict:
    """The chapter's staged search with its default parameters."""
    H.notebook.setup(0)
    model = H.load_model("smollm2-135m")
    f = H.model_facts(model)
    pairs = H.ioi_pairs(model.tokenizer, n=8, seed=0, template=0)
    pooled = C.pair_groups(model.tokenizer, [0, 1, 2, 3], 8, seed=1)
    abc = C.pair_groups(model.tokenizer, [0, 1, 2, 3], 8, "abc", seed=1)
    reads = C.pooled_readout(model, pooled)
    att = reads.attention
    direct = C.pooled_paths(model, pooled, None)
    decide = lambda name, route, effect, tested=None: C.decide(  # noqa: E731
        C.CLASS[name], att[route], effect, MIN_ATTENTION, MIN_SHARE, tested=tested)
    movers = decide("name mover", "END->IO", direct)
    negative = decide("negative name mover", "END->IO", direct)
    screen = H.path_patch(model, pairs, "heads", C.joint_receiver(C.members(movers, "name mover"), "q", "END",
                                                                  pairs, f), metrics=("logit_diff",))
    cands = C.candidates(screen, att["END->S2"], MIN_ATTENTION, before=23)
    into_q = C.pooled_paths(model, pooled, C.members(movers, "name mover"), "q", "END", senders=cands)
    inhibition = decide("S-inhibition", "END->S2", into_q, cands)
    si = C.members(inhibition, "S-inhibition")
    v_cands = sorted(set(["L17H4", "L17H5", "L18H6"] + DUP_GROUP), key=H.fmt.parse_head)
    into_v = C.pooled_paths(model, pooled, si, "v", "S2", senders=v_cands)
    induction = decide("induction", "S2->S1+1", into_v, v_cands)
    duplicate = decide("duplicate token", "S2->S1", into_v, v_cands)
    k_cands = ["L16H0", "L16H2", "L3H8", "L11H1", "L1H2"]
    into_k = C.pooled_paths(model, abc, ["L17H4"], "k", "S1+1", senders=k_cands, direction="noise")
    previous = decide("previous token", "S1+1->S1", into_k, k_cands)
    return {"model": model, "pairs": pairs, "pooled": pooled, "abc": abc, "reads": reads, "direct": direct,
            "movers": movers, "negative": negative, "inhibition": inhibition, "induction": induction,
            "duplicate": duplicate, "previous": previous, "si": si}


def test_the_name_movers_are_l23h0_and_l23h1_and_l23h2_fails_only_the_attention_test(search):
    t = search["movers"]
    assert C.members(t, "name mover") == ["L23H0", "L23H1"]
    rows = t.set_index("head")
    assert rows.loc["L23H2", "fails"] == "attention" and rows.loc["L23H2", "share_low"] >= MIN_SHARE
    assert rows.loc["L23H2", "attention"] >= MIN_ATTENTION   # above the threshold, not by its interval


def test_the_negative_name_mover_is_l24h4(search):
    assert C.members(search["negative"], "negative name mover") == ["L24H4"]


def test_s_inhibition_heads_l20h0_and_l19h2_act_through_the_name_movers_queries(search):
    assert search["si"] == ["L20H0", "L19H2"]


def test_l17h4_is_the_induction_head_and_no_single_duplicate_token_head_carries_the_class(search):
    assert C.members(search["induction"], "induction") == ["L17H4"]
    assert C.members(search["duplicate"], "duplicate token") == []


def test_the_duplicate_token_candidates_carry_the_class_as_a_group_and_random_groups_do_not(search):
    meets = search["reads"].attention["S2->S1"].decide(MIN_ATTENTION)["meets"]
    group = [H.fmt.head_name(L, h) for L, h in zip(*meets.nonzero()) if L < 19]
    assert group == DUP_GROUP
    test = C.group_paths(search["model"], search["pooled"], group, search["si"], "v", "S2", n_random=5)
    assert C.group_matters(test, MIN_SHARE)
    assert np.abs(test.estimate()[1:]).max() < 0.02


def test_l16h0_is_the_previous_token_head(search):
    assert C.members(search["previous"], "previous token") == ["L16H0"]


def test_l23h3_lowers_s_and_gets_its_input_through_its_keys_at_s2_from_the_duplicate_and_induction_heads(search):
    roles = C.head_roles(search["reads"], ["L23H3"]).loc["L23H3"]
    assert roles["DLA S"] < -2 and abs(roles["DLA IO"]) < 0.3 and roles["attention END->S2"] > 0.6
    inputs = {"q": (["L23H3"], "q", "END"), "k": (["L23H3"], "k", "S2")}
    senders = ["L20H0+L19H2", "L17H4", "+".join(DUP_GROUP)]
    got = C.pooled_path_table(search["model"], search["abc"], senders, inputs, "noise")
    q, k = got["q"].estimate(), got["k"].estimate()
    assert k[2] > 0.1 and k[1] > 0.03          # the duplicate-token group, then the induction head
    assert k[2] > 3 * q[0]                      # more than the S-inhibition heads give its query


def test_removing_the_name_movers_raises_the_pooled_logit_difference_but_not_on_template_0(search):
    table = C.backup_by_template(search["model"], search["pooled"], ["L23H0", "L23H1"], search["reads"]).table()
    assert table.loc["pooled", "change"] > 0 and table.loc[0, "change"] < 0
    assert (table["made up by the rest"] > 0).all()


def test_the_classes_keep_under_half_and_with_the_open_heads_the_circuit_is_faithful(search):
    classes = ["L23H0", "L23H1", "L24H4", "L20H0", "L19H2", "L17H4", "L16H0"]
    others = C.unexplained(search["direct"], C.evidence_table([search["movers"], search["negative"]]), MIN_SHARE)
    assert others[0] == "L23H3"
    every = [H.fmt.head_name(L, h) for L in range(30) for h in range(9)]
    faith = C.faithfulness_table(search["model"], search["pooled"],
                                 {"classes": classes, "all": classes + [h for h in others if h not in classes]},
                                 ("mean", "resample"), universe=every)
    assert (faith.loc["classes", ["mean", "resample"]] < 0.6).all()
    assert (faith.loc["all", ["mean", "resample"]] > 0.8).all()
