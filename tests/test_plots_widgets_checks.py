"""Figures, explorers and exercise checks behave as the notebooks rely on."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import helpers as H  # noqa: E402


@pytest.fixture(scope="module")
def resid(bundled):
    return H.patch_residual(bundled, H.ioi_pairs(bundled.tokenizer, n=2, seed=1))


def test_heatmap_is_centred_on_zero_and_titled_with_direction_and_metric(resid):
    fig = H.plot_patching(resid)
    ax = fig.axes[0]
    mesh = ax.collections[0]
    assert mesh.norm.vmin == -mesh.norm.vmax
    assert "denoising" in ax.get_title() and "logit_diff" in ax.get_title()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert any(l.endswith("(S2)") for l in labels) and any(l.endswith("(END)") for l in labels)
    coloured = [t for t in ax.get_xticklabels() if t.get_text().endswith("(S2)")]
    assert coloured[0].get_color() == H.plotting.ROLE_COLOURS["S2"]
    plt.close(fig)


def test_head_position_and_attention_plots(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=2, seed=1)
    hp = H.patch_heads(bundled, pairs, by_position=True)
    fig = H.plot_head_positions(hp, top=5)
    assert len(fig.axes[0].get_yticklabels()) == 5
    pattern = H.attention_patterns(bundled, pairs.clean_ids, 0)
    assert pattern.shape == (2, 4, pairs.seq_len, pairs.seq_len)
    assert (pattern.sum(-1) - 1).abs().max() < 1e-5  # rows are distributions
    assert pattern[0, 0].triu(1).abs().max() == 0     # causal
    fig2 = H.plot_attention(pattern[0, 3], pairs.position_labels, "head 0.3")
    with pytest.raises(ValueError, match="two-axis results"):
        H.plot_patching(hp)
    plt.close("all")
    assert fig2 is not None


def test_position_explorer_redraws_when_the_slider_moves(bundled, monkeypatch, capsys):
    """Outside a kernel an Output widget captures nothing, so count the redraws instead."""
    drawn = []
    real = H.widgets.ioi.plot_patching
    monkeypatch.setattr(H.widgets.ioi, "plot_patching", lambda r, **kw: drawn.append(r) or real(r, **kw))
    box = H.position_explorer(bundled, "When John and Mary went to the store, Mary gave a drink to")
    slider = box.children[2]
    assert slider.options[0] == "embed" and len(slider.options) == 5 and len(drawn) == 1
    slider.value = "L2"
    assert len(drawn) == 2
    box.children[1].children[0].value = "MLP output"  # 4 rows: the slider follows
    assert list(slider.options) == ["L0", "L1", "L2", "L3"] and len(drawn) == 3
    box.children[0].value = "When John and Zorblax went to the store"
    assert "Cannot patch this prompt" in capsys.readouterr().out and len(drawn) == 3
    plt.close("all")


def test_head_explorer_builds_and_redraws(bundled, monkeypatch):
    drawn = []
    real = H.widgets.ioi.plot_attention
    monkeypatch.setattr(H.widgets.ioi, "plot_attention", lambda *a, **kw: drawn.append(a) or real(*a, **kw))
    box = H.head_explorer(bundled, "When John and Mary went to the store, Mary gave a drink to")
    box.children[1].children[1].value = 3
    assert len(drawn) == 2
    plt.close("all")


def test_checks_hint_when_unanswered_and_confirm_right_answers(resid, capsys):
    assert H.checks.check_normalised_score(None, 1.0, 3.0, -1.0) is False
    assert "Hint" in capsys.readouterr().out
    assert H.checks.check_normalised_score(0.5, 1.0, 3.0, -1.0) is True
    assert H.checks.check_normalised_score("not a number", 1.0, 3.0, -1.0) is False
    s2_row = resid.score()[1]  # after block 0 the signal is at S2
    assert int(s2_row.argmax()) == resid.prompts.positions["S2"]
    assert H.checks.check_peak_position("S2", resid, 0) is True      # block 0 = row "L0"
    assert H.checks.check_peak_position("S2", resid, "L0") is True
    assert H.checks.check_peak_position("END", resid, 0) is False
    assert H.checks.check_direction_word("noising", "necessity") is True
    assert H.checks.check_direction_word("denoise", "necessity") is False
    assert H.checks.check_direction_word(..., "sufficiency") is False
    assert "Correct!" in capsys.readouterr().out


def test_progress_bar_stays_quiet_when_asked(bundled, capsys):
    pairs = H.ioi_pairs(bundled.tokenizer, n=1)
    H.patch_residual(bundled, pairs, method="loop", progress=False)
    captured = capsys.readouterr()
    assert "it/s" not in captured.err and "it/s" not in captured.out
