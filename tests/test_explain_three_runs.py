"""Chapter 2's helpers: the prose states the numbers of the results it is given (as the chapter
prints them) and names blocks and rows by the one naming scheme; the figures label every bar
and place the hand-written loop on the block rows; the explorer draws the three runs."""
from __future__ import annotations

import re

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import helpers as H  # noqa: E402
from helpers.teach.explain import three_runs as explain  # noqa: E402
from helpers.teach.figures import three_runs as figures  # noqa: E402

NUMBER = re.compile(r"[+-]?\d+\.\d+")


@pytest.fixture(scope="module")
def pairs(bundled):
    return H.ioi_pairs(bundled.tokenizer, n=4, seed=5)


@pytest.fixture(scope="module")
def resid(bundled, pairs):
    return H.patch_residual(bundled, pairs)


@pytest.fixture(scope="module")
def one_patch(bundled, pairs):
    return H.patch_components(bundled, pairs, [H.Patch("resid", 1, pairs.positions["S2"])])


def _texts(fig) -> list:
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip()]


def test_patch_prose_states_the_means_effect_and_score_of_the_values_given():
    clean, corrupted, patched = (torch.tensor([10.0, 11.0]), torch.tensor([-9.0, -10.0]),
                                 torch.tensor([-2.0, -3.0]))
    text = explain.patch(clean, corrupted, patched, 2, "Mary (S2)").data
    c, k, p = 10.5, -9.5, -2.5
    assert NUMBER.findall(text) == [f"{k:+.2f}", f"{p:+.2f}", f"{p - k:+.2f}", f"{(p - k) / (c - k):.2f}"]
    assert "residual row L2 (block 2's output) at Mary (S2)" in text
    assert "blocks L0 … L2" in text and "part of the clean behaviour" in text


def test_patch_prose_reads_full_and_no_restoration_and_raw_effects():
    clean, corrupted = torch.tensor([10.0]), torch.tensor([-10.0])
    assert "alone brings the clean behaviour back" in explain.patch(
        clean, corrupted, torch.tensor([9.9]), 3, "to (END)").data
    assert "after block L0, what decides" in explain.patch(
        clean, corrupted, torch.tensor([-10.0]), 0, "Mary (S2)").data
    raw = explain.patch(clean, corrupted, torch.tensor([0.0]), 1, "Mary (S2)", normalise=False).data
    assert "raw effect of +10.00 logits" in raw and "gap of +20.00" in raw


def test_metrics_prose_states_each_metrics_score(one_patch):
    text = explain.metrics(one_patch).data
    scores = [f"{one_patch.score(m).reshape(-1)[0].item():.2f}" for m in H.metrics.METRICS]
    assert NUMBER.findall(text) == [s.lstrip("-") if float(s) == 0 else s for s in scores]
    assert explain.metrics(one_patch, normalise=False).data == ""


def test_hand_over_names_the_block_where_s2_falls_most_by_its_row_label(resid):
    text = explain.hand_over(resid, 0.0).data
    labels = resid.labels["layer"]
    grid = resid.grid()
    s2 = grid[:, resid.index("position", "S2")].tolist()
    end = grid[:, resid.index("position", "END")].tolist()
    drop = max(range(1, len(labels)), key=lambda r: s2[r - 1] - s2[r])
    gain = max(range(1, len(labels)), key=lambda r: end[r] - end[r - 1])
    assert (f"from row {labels[drop - 1]} to row {labels[drop]} "
            f"({H.fmt.num(s2[drop - 1])} → {H.fmt.num(s2[drop])})") in text
    assert f"({H.fmt.num(end[gain - 1])} → {H.fmt.num(end[gain])})" in text
    assert f"block {labels[drop][1:]} ({labels[drop]})" in text
    assert f"{H.fmt.num(s2[0])} (embed)" in text and "agree point for point" in text
    assert "-0.00" not in text
    assert "Careful" in explain.hand_over(resid, 0.5).data


def test_hand_over_without_normalising_reports_raw_ranges(resid):
    text = explain.hand_over(resid, 0.0, normalise=False).data
    s2 = resid.mean()[:, resid.index("position", "S2")]
    assert f"from {H.fmt.signed(s2.min())} to {H.fmt.signed(s2.max())}" in text


def test_three_run_bars_are_labelled_with_their_means_never_minus_zero():
    runs = torch.tensor([10.0, 12.0]), torch.tensor([-11.0, -9.0]), torch.tensor([-0.001, 0.0])
    fig = figures.three_runs(*runs, "title")
    try:
        texts = [t.get_text() for t in _texts(fig)]
        for label in ("+11.00", "-10.00", "0.00", "score 0.48"):   # (0 + 10) / 21
            assert any(label in t for t in texts), (label, texts)
        assert not any("-0.00" in t for t in texts)
        assert all(t.get_fontsize() >= 8 for t in _texts(fig))
    finally:
        plt.close(fig)


def test_layer_curves_put_the_loop_on_the_block_rows_with_the_helpers_values(resid, pairs):
    pos = {role: resid.index("position", role) for role in ("S2", "END")}
    by_hand = {role: [resid.mean()[resid.index("layer", i), p].item()
                      for i in range(len(resid.labels["layer"]) - 1)] for role, p in pos.items()}
    fig = figures.layer_curves(resid, by_hand)
    try:
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == resid.labels["layer"]
        dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
        assert len(dots) == 2
        for line, (role, p) in zip(dots, pos.items()):
            rows = [resid.index("layer", i) for i in range(len(by_hand[role]))]
            assert list(line.get_xdata()) == rows
            expected = resid.grid()[rows, p].double()
            assert torch.allclose(torch.as_tensor(line.get_ydata()), expected, atol=1e-5)
        assert all(t.get_fontsize() >= 8 for t in _texts(fig))
        assert ax.get_legend() is not None
    finally:
        plt.close(fig)


def test_explorer_draws_the_three_runs_of_the_chosen_patch(bundled, pairs, monkeypatch):
    drawn = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: drawn.append(plt.gcf()))
    box = H.widgets.three_runs.three_run_explorer(bundled, pairs, 1, pairs.positions["S2"])
    block, _ = box.children[0].children
    block.value = 2
    titles = [f.axes[0].get_title() for f in drawn]
    assert titles == [f"patching residual row L1 at {pairs.position_labels[pairs.positions['S2']]}",
                      f"patching residual row L2 at {pairs.position_labels[pairs.positions['S2']]}"]
    plt.close("all")
