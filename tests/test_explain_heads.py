"""Chapter 4's generated prose and figures: heads named L<block>H<head> (never 0.3), every
number equal to the one the results give."""
from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import helpers as H  # noqa: E402
from helpers.base.fmt import head_name, num, pct  # noqa: E402

E = H.explain.heads


@pytest.fixture(scope="module")
def results(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=4, seed=0)
    return pairs, H.patch_heads(bundled, pairs), H.patch_heads(bundled, pairs, by_position=True)


def test_top_heads_are_the_largest_cells_of_the_given_blocks(results):
    _, heads, _ = results
    g = heads.grid()
    (l, h), = E.top_heads(heads)
    assert g[l, h] == g.max()
    later = E.top_heads(heads, 2, n=2)
    assert all(lay >= 2 for lay, _ in later) and g[later[0]] >= g[later[1]]
    assert g[later[0]] == g[2:].max()


def test_head_map_names_heads_like_L0H3_with_their_values(results):
    _, heads, _ = results
    text = E.head_map(heads, 2).data
    (l, h), = E.top_heads(heads)
    assert f"**The top head is {head_name(l, h)}** ({num(heads.value(layer=l, head=h))})" in text
    assert not re.search(r"\b\d+\.\d+ \(", text.replace(num(heads.grid()[2:].min()), "")
                         .split("between")[0])   # no "0.3 (0.75)" head names
    for lay, k in E.top_heads(heads, 2, n=2):
        assert f"{head_name(lay, k)} ({num(heads.grid()[lay, k])})" in text
    assert f"between {num(heads.grid()[2:].min())} and {num(heads.grid()[2:].max())}" in text


def test_head_positions_table_matches_both_sweeps(results):
    pairs, heads, head_pos = results
    text = E.head_positions(head_pos, heads, pairs).data
    rows = re.findall(r"^\| (L\d+H\d+) \| (\S+) \| (\S+) \| (\S+) \|$", text, re.M)
    assert len(rows) == 6
    where = E.acts_at(head_pos)
    for name, all_pos, at, there in rows:
        lk = H.fmt.parse_head(name)
        assert all_pos == num(heads.grid()[lk])
        assert at == E.position_name(pairs, where[lk])
        assert there == num(head_pos.grid()[lk][where[lk]])


def test_roles_state_the_attention_weight_the_patterns_give(bundled, results):
    pairs, heads, head_pos = results
    chosen = E.top_heads(heads, 0, 1) + E.top_heads(heads, 2, n=2)
    patterns = {l: H.attention_patterns(bundled, pairs.clean_ids, l).mean(0) for l, _ in chosen}
    text = E.roles(patterns, chosen, head_pos, pairs).data
    for r in E.head_roles(patterns, chosen, head_pos, pairs):
        assert f"**{r['head']}** acts at {r['acts_at']} and from there puts {pct(r['weight'], 1)}" in text
    fig = H.figures.heads.attention_rows(patterns, chosen, E.acts_at(head_pos), pairs)
    assert [ax.get_title().split(":")[0] for ax in fig.axes[:len(chosen)]] == [head_name(*c) for c in chosen]
    plt.close(fig)


def test_head_map_figure_has_readable_numbers_and_a_fitting_colour_bar_label(results):
    _, heads, _ = results
    fig = H.figures.heads.head_map(heads)
    ax = fig.axes[0]
    assert len(ax.texts) == heads.grid().numel()
    assert all(t.get_fontsize() >= 8 for t in ax.texts)
    assert not any(t.get_text() == "-0.00" for t in ax.texts)
    assert "\n" in fig.axes[1].get_ylabel()   # wrapped to fit beside the map
    plt.close(fig)
