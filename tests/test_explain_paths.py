"""Chapter 9's generated prose, figures and explorer: heads named L<block>H<head>, every number
in the prose equal to the one the results give, figures with readable numbers and no "-0.00"."""
from __future__ import annotations

import re
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

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


def test_qkv_prose_states_the_percentages_the_maps_show(results):
    _, _, _, late, into = results
    text = E.qkv(into, late).data
    sums = {}
    for kind, word in E.INPUTS.items():
        ch = into[kind].importance()
        l, h = divmod(int(ch.argmax()), ch.shape[1])
        sums[kind] = float(ch.sum())
        assert f"**{word}**: largest {head_name(l, h)} ({pct(ch[l, h], 1)}), sum over " \
               f"{ch.numel()} senders {pct(sums[kind], 1)}." in text
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
    if which == "qkv_maps":
        assert [t.get_text() for t in fig.axes[2].texts][:1] == [num(100 * into["v"].importance()[0, 0], 1)]
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
