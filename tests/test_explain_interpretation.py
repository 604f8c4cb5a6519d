"""Chapter 6 (interpretation): the prose states the numbers of the results it is given, GPT-2's
heads are named L<block>H<head> and marked as GPT-2's, and the figures follow the rules (value
labels, a legend, near-zero bars visible, a dashed hypothesis edge explained)."""
from __future__ import annotations

import re

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import helpers as H  # noqa: E402
from helpers.base.fmt import num  # noqa: E402
from helpers.teach.explain import interpretation as X  # noqa: E402
from helpers.teach.figures import interpretation as F  # noqa: E402

DIRS = ("denoise", "noise")


@pytest.fixture(scope="module")
def run(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=4, corruption="s2_swap", seed=0, template=0)
    maps = {"residual": H.patch_residual(bundled, pairs), "attention": H.patch_attn_out(bundled, pairs),
            "MLP": H.patch_mlp_out(bundled, pairs)}
    heads = {d: H.patch_heads(bundled, pairs, d) for d in DIRS}
    n_l = heads["denoise"].shape[0]
    att = torch.stack([H.attention_patterns(bundled, pairs.clean_ids, l) for l in range(n_l)], 1).mean(0)
    S2 = pairs.positions["S2"]
    sets = [[H.Patch("mlp", 0, S2)], [H.Patch("attn", 0, 0)]]   # position 0 never differs: 0
    tests = {d: H.patch_components(bundled, pairs, sets, d, labels={"set": ["mlp0 at S2", "nothing"]})
             for d in DIRS}
    return dict(pairs=pairs, maps=maps, heads=heads, att=att, tests=tests)


def test_edge_table_states_the_map_values(run):
    text = X.edge_table(run["maps"], run["heads"], run["att"], 3).data
    pos = run["pairs"].positions
    mlp = run["maps"]["MLP"].grid()
    attn = run["maps"]["attention"].grid()
    assert f"| mlp0 at S2 | mlp0 at S2 | {num(mlp[0, pos['S2']])} |" in text
    assert f"| attn0 at S2 | {num(attn[0, pos['S2']])} |" in text
    hs, hn = run["heads"]["denoise"].grid(), run["heads"]["noise"].grid()
    assert f"{num(hs[0, 3])} / {num(hn[0, 3])}" in text


def test_knockout_prose_numbers_equal_the_results(run, bundled):
    n_l, n_h = run["heads"]["noise"].shape
    late = [H.Patch("head", l, None, h) for l in range(1, n_l) for h in range(n_h)]
    joint = H.patch_components(bundled, run["pairs"], late, "noise")
    text = X.knockout(run["heads"]["noise"], joint).data
    dmg = run["heads"]["noise"].importance()[1:]
    l, h = divmod(int(dmg.argmax()), n_h)
    assert f"{num(dmg.max())} (L{l + 1}H{h})" in text
    assert f"damage {num(joint.importance()[0])}" in text


def test_heads_are_written_L0H3_in_every_table(run):
    at_role = {r: run["heads"]["denoise"].grid() for r in ("S2", "END")}
    texts = [X.end_heads(run["heads"]["denoise"], run["att"]).data,
             X.census(run["att"], at_role, run["pairs"].positions, "ioi-tiny").data,
             X.evidence(run["maps"], run["heads"]["denoise"], run["att"], 3, 1, 0).data]
    for text in texts:
        assert re.search(r"L\dH\d", text)
        assert not re.search(r"(head|heads) \d+\.\d+", text)


def test_published_heads_are_gpt2_names_only_on_gpt2_shape():
    hs = torch.zeros(12, 12)
    text = X.published_heads(hs, {"END": hs, "S2": hs}, "gpt2", "gpt2").data
    assert "| name mover | L9H9 |" in text and "L11H10" in text
    other = X.published_heads(torch.zeros(4, 4), {"END": hs, "S2": hs}, "gpt2", "ioi-tiny").data
    assert "GPT-2 small's" in other and "L9H9" not in other


def test_circuit_bars_have_values_legend_and_visible_near_zero_bars(run):
    fig = F.plot_circuit_tests(run["tests"])
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    for d in DIRS:
        for v in run["tests"][d].grid():
            assert num(v) in labels
    assert "-0.00" not in " ".join(labels)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("restored" in t for t in legend) and any("destroyed" in t for t in legend)
    assert any("too short" in t for t in legend)      # the "nothing" set is 0
    ticks = [line for line in ax.lines if line.get_marker() == "|"]
    assert len(ticks) >= 2
    assert all(t.get_fontsize() >= 8 for t in ax.texts)


def test_circuit_diagram_explains_its_dashed_edge():
    fig = F.circuit_diagram(3, 4)
    notes = " ".join(t.get_text() for t in fig.texts)
    assert "dashed arrow" in notes and "hypothesis" in notes
    dashed = [p for p in fig.axes[0].patches if getattr(p, "get_linestyle", lambda: "-")() in ("--", "dashed")]
    assert dashed
    assert "L0H3" in " ".join(t.get_text() for t in fig.axes[0].texts)


def test_metric_explorer_builds_a_widget(run):
    widget = H.widgets.interpretation.metric_explorer(run["heads"], "logit_diff")
    controls = widget.children[0].children
    assert controls[0].value == "logit_diff" and controls[1].value == "denoise"


def test_negatives_lists_only_components_clearly_below_zero(run):
    text = X.negatives(run["heads"], run["maps"]).data
    values = [float(v) for v in re.findall(r": (-\d+\.\d+)\n", text + "\n")]
    assert all(v < -0.05 for v in values)
    if not values:
        assert "No component pushes clearly against the answer" in text
