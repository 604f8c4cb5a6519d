"""SmolLM2-135M's IOI circuit as chapter 10 finds it with its default parameters (16 S2-swap pairs of
template 0, seed 0; ABC pairs for the previous-token stage; attention >= 0.3, share >= 0.05): the
findings written into the model card (``helpers/organism/smollm2/MODEL_CARD.md``, "IOI circuit"),
asserted here so that a change in the tools that breaks them is caught.  Slow tier: the real model,
about two minutes on one core.
"""
from __future__ import annotations

import pytest

import helpers as H
from helpers.circuits import ioi_classes as C

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smollm2")]

MIN_ATTENTION, MIN_SHARE = 0.3, 0.05


@pytest.fixture(scope="module")
def search(smollm2_cache) -> dict:
    """The chapter's search, stage by stage, with its default parameters."""
    H.notebook.setup(0)
    model = H.load_model("smollm2-135m")
    f = H.model_facts(model)
    pairs = H.ioi_pairs(model.tokenizer, n=16, corruption="s2_swap", seed=0, template=0)
    abc = H.ioi_pairs(model.tokenizer, n=16, corruption="abc", seed=0, template=0)
    attention = C.attention_to_roles(model, pairs)
    direct = H.path_patch(model, pairs, "heads", "logits").change(True)
    shares = {"name mover": direct, "negative name mover": direct}

    def members(name: str) -> list[str]:
        return C.members(C.classify(attention, shares, MIN_ATTENTION, MIN_SHARE), name)

    into = lambda p, heads, kind, at, direction="denoise": C.head_grid(  # noqa: E731
        H.path_patch(model, p, "heads", C.receivers(heads, kind, at, f), direction), True,
        f.n_layers, f.n_heads)
    shares["S-inhibition"] = into(pairs, members("name mover"), "q", "END")
    shares["induction"] = shares["duplicate token"] = into(pairs, members("S-inhibition"), "v", "S2")
    shares["previous token"] = into(abc, members("induction"), "k", pairs.positions["S1"] + 1, "noise")
    table = C.classify(attention, shares, MIN_ATTENTION, MIN_SHARE)
    return {"model": model, "pairs": pairs, "attention": attention, "direct": direct, "table": table}


def test_the_name_movers_are_three_heads_of_block_23_that_attend_io(search):
    assert C.members(search["table"], "name mover") == ["L23H0", "L23H1", "L23H7"]


def test_the_negative_name_mover_is_l24h4(search):
    assert C.members(search["table"], "negative name mover") == ["L24H4"]


def test_s_inhibition_heads_l20h0_and_l19h2_act_through_the_name_movers_queries(search):
    assert C.members(search["table"], "S-inhibition") == ["L20H0", "L19H2"]


def test_l17h4_is_an_induction_head_feeding_the_s_inhibition_values(search):
    assert C.members(search["table"], "induction") == ["L17H4"]
    assert C.members(search["table"], "duplicate token") == []


def test_l16h0_is_a_previous_token_head_feeding_the_induction_keys(search):
    assert C.members(search["table"], "previous token") == ["L16H0"]


def test_the_strongest_direct_head_l23h3_attends_s2_and_fits_no_class(search):
    direct, attention = search["direct"], search["attention"]
    assert divmod(int(direct.flatten().argmax()), direct.shape[1]) == (23, 3)
    assert direct[23, 3] > 0.3 and attention["END->S2"][23, 3] > 0.6
    assert C.unclassified(search["table"], direct, MIN_SHARE)[0] == "L23H3"


def test_heads_of_the_classes_alone_are_not_faithful_with_the_unclassified_heads_they_are(search):
    table, direct = search["table"], search["direct"]
    classes = list(dict.fromkeys(h for c in C.CLASSES for h in C.members(table, c.name)))
    every_head = [H.fmt.head_name(L, h) for L in range(30) for h in range(9)]
    frame = C.compare_circuits(search["model"], search["pairs"],
                               {"classes": classes,
                                "all": classes + C.unclassified(table, direct, MIN_SHARE)},
                               ("mean",), universe=every_head, max_steps=1)
    assert frame.loc[("classes", "mean"), "faithfulness"] < 0.6
    assert frame.loc[("all", "mean"), "faithfulness"] > 0.8


def test_ablating_the_name_movers_costs_far_less_than_their_direct_contribution(search):
    movers = C.members(search["table"], "name mover")
    b = C.backup_test(search["model"], search["pairs"], movers)
    own = sum(float(b.before[H.fmt.parse_head(h)]) for h in movers)
    assert own > 0.5 and b.full_ld - b.ablated_ld < 0.5 * own  # the rest of the model makes up
    rise = b.rise()
    assert divmod(int(rise.flatten().argmax()), rise.shape[1]) == (24, 4)  # the negative mover backs off
