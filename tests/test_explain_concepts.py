"""Chapter 1's helpers: its prose states the numbers it is given (as the chapter prints them),
its figures read at a glance, its explorer prints what it promises, and the mistakes the
chapter demonstrates raise the error its prose describes."""
from __future__ import annotations

import re

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import helpers as H  # noqa: E402
from helpers.teach.explain import concepts as explain  # noqa: E402
from helpers.teach.figures import concepts as figures  # noqa: E402
from helpers.teach.widgets import concepts as widgets  # noqa: E402

NUMBER = re.compile(r"[+-]?\d+\.\d+")


@pytest.fixture(scope="module")
def pairs(bundled):
    return H.ioi_pairs(bundled.tokenizer, n=6, seed=2)


@pytest.fixture(scope="module")
def base(bundled, pairs):
    return H.baselines(bundled, pairs)


def _texts(fig) -> list:
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip()]


def test_baselines_prose_states_the_means_sems_and_gap_of_the_values_given():
    clean, corrupted = torch.tensor([10.0, 12.5, 9.0]), torch.tensor([-8.0, -11.0, -9.5])
    text = explain.baselines(clean, corrupted).data
    (cm, cs), (km, ks) = H.mean_and_sem(clean), H.mean_and_sem(corrupted)
    expected = [f"{cm:+.2f}", f"{cs:.2f}", f"{km:+.2f}", f"{ks:.2f}", f"{cm - km:.2f}"]
    assert NUMBER.findall(text) == expected
    assert "ruler" in text
    assert "normalise=False" in explain.baselines(clean, corrupted, normalise=False).data


def test_predictions_prose_says_whether_the_corruption_flipped_the_answer():
    flipped = explain.predictions([(" Mary", 0.9)], [(" John", 0.8)], "Mary").data
    assert "**Mary** (p = 0.9), the right answer" in flipped and "**John** (p = 0.8)" in flipped
    assert "changed the prediction" in flipped
    same = explain.predictions([(" John", 0.5)], [(" John", 0.6)], "Mary").data
    assert "not the right answer Mary" in same and "stays **John**" in same


def test_roles_prose_names_every_differing_position_and_the_first_difference(pairs):
    text = explain.roles(pairs).data
    differ = [p for p, (a, b) in enumerate(zip(pairs.tokens, pairs.corrupted_tokens)) if a != b]
    for p in differ:
        assert f"{pairs.position_labels[p]} (position {p})" in text
    assert f"before {pairs.first_difference} " in text


def test_spread_prose_percentages_are_computed_from_the_values_given():
    class Acc:
        n, accuracy = 40, 0.975
    clean, corrupted = torch.tensor([3.0, 2.0, -1.0, 4.0]), torch.tensor([-2.0, 1.0, -3.0, -4.0])
    text = explain.spread(Acc(), clean, corrupted).data
    assert "top prediction 97.5% of the time" in text
    assert "positive on 75.0% of the 4 prompts" in text and "negative on 75.0%" in text
    assert "overlap, so" in text  # 2.0 > -1.0: the clouds overlap


def test_probability_prose_reports_the_ranges_and_recognises_saturation():
    ld = torch.tensor([6.0, 9.5, 12.25])
    saturated = explain.probability(ld, torch.tensor([0.95, 0.99, 0.999])).data
    assert "from 6.00 to 12.25, a spread of 6.25 logits" in saturated
    assert "from 0.95 to 0.999" in saturated and "saturated" in saturated
    assert "flattens" in explain.probability(ld, torch.tensor([0.2, 0.5, 0.95])).data


def test_the_single_token_mistake_raises_the_single_token_error_not_the_vocabulary_one(bundled):
    with pytest.raises(H.PromptError, match="not a single token") as info:
        H.single_token_id(bundled.tokenizer, "Mary Kate")
    assert "vocabulary" not in str(info.value)


def test_chapter_figures_use_readable_fonts_and_never_minus_zero(base, pairs):
    clean, corrupted = base["clean"]["logit_diff"], base["corrupted"]["logit_diff"]
    figs = [figures.three_runs_diagram(pairs.clean[0], pairs.corrupted[0]),
            figures.pair_logit_diffs(clean, corrupted),
            figures.logit_diff_histogram(clean, corrupted, "t"),
            figures.probability_vs_logit_diff(base)]
    try:
        for fig in figs:
            texts = _texts(fig)
            assert texts
            assert all(t.get_fontsize() >= 8 for t in texts), [t.get_text() for t in texts
                                                              if t.get_fontsize() < 8]
            assert not any("-0.00" in t.get_text() for t in texts)
            for ax in fig.axes:
                if ax.axison:
                    assert ax.get_legend() is not None  # every colour explained
    finally:
        plt.close("all")


def test_the_diagram_shows_both_prompts_and_every_run(pairs):
    fig = figures.three_runs_diagram(pairs.clean[0], pairs.corrupted[0])
    try:
        shown = " ".join(t.get_text().replace("\n", " ") for t in _texts(fig))
        for text in (pairs.clean[0], pairs.corrupted[0]):
            assert text in shown
        for run in ("clean run", "corrupted run", "patched run", "metric"):
            assert run in shown
    finally:
        plt.close(fig)


def test_the_histogram_puts_both_runs_on_the_same_bins(base):
    fig = figures.logit_diff_histogram(base["clean"]["logit_diff"], base["corrupted"]["logit_diff"])
    try:
        edges = {round(p.get_x(), 9) for p in fig.axes[0].patches}
        assert len(edges) <= 40  # 41 shared edges: 40 bins, both runs on them
    finally:
        plt.close(fig)


def test_explain_prompt_prints_predictions_and_logit_differences(bundled, capsys):
    widgets.explain_prompt(bundled, "When Mary and John went to the park, John gave a book to")
    out = capsys.readouterr().out
    assert out.startswith("top 5: ") and "logit difference Mary − John: +" in out
    widgets.explain_prompt(bundled, "The teacher handed a book to")
    assert "no logit difference: could not find the roles" in capsys.readouterr().out
    widgets.explain_prompt(bundled, "When Zeus and Mary went")
    assert "PromptError" in capsys.readouterr().out


def test_prompt_explorer_runs_on_its_start_prompt(bundled, pairs, capsys):
    box = widgets.prompt_explorer(bundled, pairs.clean[0])
    # outside a kernel the Output widget does not capture: what it shows is printed
    assert "top 5: " in capsys.readouterr().out
    assert box.children[1].value == pairs.clean[0]
