"""Chapter 9's generated prose, figures and explorer: heads named L<block>H<head>, every number
in the prose equal to the one the results give, figures with readable numbers and no "-0.00"."""
from __future__ import annotations

import re
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import helpers as H  # noqa: E402
from helpers.base.fmt import head_name, num, pct  # noqa: E402

E, F = H.explain.paths, H.figures.paths


@pytest.fixture(scope="module")
def results(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=4, seed=0)
    heads = H.patch_heads(bundled, pairs)
    direct = H.path_patch(bundled, pairs, "heads", "logits")
    late = E.late_head(direct)
    into = {k: H.path_patch(bundled, pairs, "heads", r)
            for k, r in E.qkv_receivers(H.model_facts(bundled), *late).items()}
    return pairs, heads, direct, late, into


def test_late_head_is_the_strongest_direct_head_after_block_0(results):
    _, _, direct, late, _ = results
    g = direct.grid()
    assert late[0] >= 1 and g[late] == g[1:].max()
    assert E.late_head(direct, 2) == (2, int(g[2].argmax()))
    with pytest.raises(ValueError, match="from 1 to"):
        E.late_head(direct, 0)


def test_qkv_receivers_name_shared_key_value_heads_with_grouped_query_attention():
    plain = SimpleNamespace(n_heads=4, n_kv_heads=4)
    assert E.qkv_receivers(plain, 3, 1) == {"q": "L3H1.q@END", "k": "L3H1.k", "v": "L3H1.v"}
    gqa = SimpleNamespace(n_heads=4, n_kv_heads=2)
    assert E.qkv_receivers(gqa, 1, 3, "S2") == {"q": "L1H3.q@S2", "k": "L1KV1.k", "v": "L1KV1.v"}


def test_direct_vs_total_states_both_maps_numbers(results):
    _, heads, direct, _, _ = results
    text = E.direct_vs_total(direct, heads).data
    d, t = direct.grid(), heads.grid()
    (dl, dh) = divmod(int(d.argmax()), d.shape[1])
    (tl, th) = divmod(int(t.argmax()), t.shape[1])
    assert f"{head_name(dl, dh)} sends the most**: {num(d[dl, dh])} (its ordinary patching score: " \
           f"{num(t[dl, dh])})" in text
    if (tl, th) != (dl, dh):
        assert f"{head_name(tl, th)}, scores {num(t[tl, th])} but sends {num(d[tl, th])}" in text
    assert f"(largest difference {num((t[-1] - d[-1]).abs().max())})" in text
    assert not re.search(r"\b\d+\.\d+ (sends|scores)", text)  # heads are L3H0, never 3.0


def test_qkv_prose_states_the_shares_the_maps_show(results):
    _, _, _, late, into = results
    text = E.qkv(into, late).data
    sums = {}
    for kind, word in E.INPUTS.items():
        ch = into[kind].importance()
        l, h = divmod(int(ch.argmax()), ch.shape[1])
        sums[kind] = float(ch.sum())
        assert f"**{word}**: largest {head_name(l, h)} ({num(ch[l, h], 3)}), sum over " \
               f"{ch.numel()} senders {num(sums[kind], 3)}." in text
    best = max(sums, key=lambda k: abs(sums[k]))
    assert E.INPUTS[best] in text.split("\n\n")[-1]
    raw = E.qkv(into, late, normalise=False).data
    assert num(into["v"].effect().sum(), 3) in raw


def test_stats_prose_counts_the_cells_the_table_gives(results):
    _, _, direct, _, _ = results
    table = direct.stats()
    text = E.stats(table).data
    kept = int((table["p_adjusted"] < 0.05).sum())
    zero = int(((table["ci_low"] <= 0) & (table["ci_high"] >= 0)).sum())
    assert f"**{kept} of {len(table)} cells survive the Holm correction at 0.05**" in text
    assert (f"{zero} cell" in text) or (zero == 0 and "No cell's interval contains 0." in text)
    assert f"2 / 2^4 = {num(2 / 16, 6)}" in text   # 4 prompts: the exact test's floor


@pytest.mark.parametrize("which", ["direct_vs_total", "qkv_maps", "three_runs"])
def test_figures_have_readable_numbers_and_no_negative_zero(results, which):
    _, heads, direct, late, into = results
    fig = {"direct_vs_total": lambda: F.direct_vs_total(direct, heads),
           "qkv_maps": lambda: F.qkv_maps(into, late),
           "three_runs": lambda: F.three_runs("L0H3", "L3H0.v")}[which]()
    texts = [t for ax in fig.axes for t in ax.texts]
    assert texts and all(t.get_fontsize() >= 8 for t in texts)
    assert not any(re.fullmatch(r"-0(\.0+)?", t.get_text()) for t in texts)
    if which == "direct_vs_total":
        assert len(fig.axes[0].texts) == direct.grid().numel()
    if which == "qkv_maps":  # share of the gap on the fixed -1 .. 1 scale, every cell of a small map numbered
        value = fig.axes[2]
        assert [t.get_text() for t in value.texts][:1] == [num(into["v"].importance()[0, 0], 3)]
        assert len(value.texts) == into["v"].importance().numel()
        assert all(ax.images[0].get_clim() == (-1.0, 1.0) for ax in fig.axes[:3])
    plt.close(fig)


def test_path_explorer_builds_and_reports_a_path_or_the_error(bundled, results):
    pairs = results[0]
    facts = H.model_facts(bundled)
    W = H.widgets.paths
    assert W.senders(facts)[:2] == ["embed", "L0H0"] and "mlp3" in W.senders(facts)
    assert {"logits", "L3H0.q@END", "L3H0.v", "mlp2.in"} <= set(W.receivers(facts))
    line = W.path_report(bundled, pairs, "L0H3", "L3H0.v")
    row = H.path_patch(bundled, pairs, "L0H3", "L3H0.v").stats().iloc[0]
    assert f"effect {num(row['effect'], 4)} [95% interval {num(row['ci_low'], 4)}" in line
    assert W.path_report(bundled, pairs, "L3H3", "L0H0.v").startswith("no path: sender L3H3")
    widget = W.path_explorer(bundled, pairs, sender="L0H3", receiver="logits")
    assert widget.children[0].children[0].value == "L0H3"


def test_ablations_prose_states_each_kinds_faithfulness_and_verdict():
    import pandas as pd

    frame = pd.DataFrame([{"ablation": "mean", "faithfulness": 0.928, "completeness_gap": 1.0153,
                           "verdict": "faithful, incomplete, not minimal"},
                          {"ablation": "resample", "faithfulness": 0.5007, "completeness_gap": 0.41,
                           "verdict": "not faithful, incomplete, not minimal"}]).set_index("ablation")
    text = E.ablations(frame).data
    assert "**mean ablation**: faithfulness 0.93, completeness gap 1.02: faithful, incomplete" in text
    assert "**resample ablation**: faithfulness 0.50, completeness gap 0.41: not faithful" in text
    assert "disagree (faithfulness differs by 0.43)" in text


def test_by_hand_table_puts_each_receivers_hand_value_beside_the_helpers(results, bundled):
    pairs, _, _, late, _ = results
    receivers = E.qkv_receivers(H.model_facts(bundled), *late)
    helper = H.path_patch(bundled, pairs, "L0H3", list(receivers.values()))
    got = helper.mean("logit_diff").reshape(-1)
    hand = {k: float(got[i]) + (0.0 if k != "v" else 0.01) for i, k in enumerate(receivers)}
    table = E.by_hand(receivers, hand, helper)
    assert list(table.index) == ["query", "key", "value"]
    assert list(table["receiver"]) == list(receivers.values())
    assert list(table["same (1e-3)"]) == [True, True, False]     # the value was moved by 0.01
    assert table.loc["key", "H.path_patch"] == round(float(got[1]), 4)


def test_gqa_table_groups_each_shared_key_value_head_with_its_query_heads_and_their_sum():
    from helpers.results.patch_result import PatchResult

    labels = {"sender": ["L0H0", "L0H1"], "receiver": ["L1KV0.k", "L1H0.k", "L1H1.k", "L1KV1.v", "L1H3.v"]}
    values = torch.tensor([[[1.0, 2.0, -1.0, 0.5, 0.25], [0.0, -3.0, 4.0, 0.0, 0.0]]])  # one prompt
    result = PatchResult(site="path", direction="denoise", dims=("sender", "receiver"), labels=labels,
                         values={"logit_diff": values}, clean={"logit_diff": torch.tensor([2.0])},
                         corrupted={"logit_diff": torch.tensor([0.5])}, prompts=None, model_name="none")
    table = E.gqa_table(result, group=2)
    assert list(table.columns) == ["L1KV0.k", "L1H0.k", "L1H1.k", "sum of L1H0.k, L1H1.k",
                                   "L1KV1.v", "L1H3.v", "sum of L1H3.v"]
    assert table.loc["L0H1", "sum of L1H0.k, L1H1.k"] == 0.0 and table.loc["L0H0", "L1H0.k"] == 1.5
    text = E.gqa_edges(table).data
    assert "**L1KV0.k**: the largest shared edge is L0H0's (+0.5000)" in text
    assert "opposite signs for 2 of 2 senders" in text   # L0H0: +1.5 / -1.5; L0H1: -3.5 / +3.5


def test_ablations_prose_calls_a_minimality_negative_only_when_it_shows_as_negative():
    import pandas as pd

    rows = [{"ablation": "mean", "faithfulness": 0.9, "completeness_gap": 0.1, "worst_K": "L1H0",
             "least_minimality": -0.001, "verdict": "faithful, complete, not minimal"},
            {"ablation": "resample", "faithfulness": 0.8, "completeness_gap": 0.3, "worst_K": "(none)",
             "least_minimality": -0.2, "verdict": "faithful, incomplete, not minimal"}]
    text = E.ablations(pd.DataFrame(rows).set_index("ablation")).data
    assert "(worst K found: L1H0), least minimality 0.00" in text
    assert "least minimality -0.20" in text
    assert "Under resample ablation some member has a *negative* minimality" in text
