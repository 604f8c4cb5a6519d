"""Chapter 7's plumbing: answers chosen per tokenizer, the generated prose (every number it
states equals the value computed here from the same result), and the chapter's figures
(numbers >= 8 pt, never "-0.00", colours explained)."""
from __future__ import annotations

import re

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import helpers as H  # noqa: E402
from helpers.base.fmt import num  # noqa: E402
from helpers.circuits.search import CircuitSearch, decisive_heads  # noqa: E402
from helpers.data.behaviours import BinaryTask, choose_answers, decides, for_tokenizer  # noqa: E402
from helpers.teach.explain import refusal as explain  # noqa: E402
from helpers.teach.figures import refusal as figures  # noqa: E402


@pytest.fixture(scope="module")
def refusal():
    return H.load_model("refusal-tiny")


@pytest.fixture(scope="module")
def sweeps(refusal):
    task = for_tokenizer(H.REFUSAL, refusal.tokenizer)
    pairs = H.binary_pairs(refusal.tokenizer, task, n=4, seed=1)
    resid = {d: H.patch_residual(refusal, pairs, d, progress=False) for d in ("denoise", "noise")}
    heads = {d: H.patch_heads(refusal, pairs, d, progress=False) for d in ("denoise", "noise")}
    return {"task": task, "pairs": pairs, "resid": resid, "heads": heads}


@pytest.fixture
def found() -> CircuitSearch:
    return CircuitSearch(members=["L0H2", "mlp1"], score=0.9123, without={"L0H2": 0.1049, "mlp1": -0.0012},
                         threshold=0.8, reached=True,
                         history=[{"step": "add", "component": "L0H2", "score": 0.5},
                                  {"step": "add", "component": "mlp1", "score": 0.9123}])


def _table(text: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``text``."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]


def test_the_bundled_model_keeps_sorry_and_sure_and_every_word(refusal):
    task = for_tokenizer(H.REFUSAL, refusal.tokenizer)
    assert task.answers == ("Sorry", "Sure")
    assert task.positive == H.REFUSAL.positive and task.negative == H.REFUSAL.negative


def test_an_answer_that_is_not_one_token_falls_back_to_the_next_candidate(refusal):
    task = BinaryTask(templates=H.REFUSAL.templates, positive=H.REFUSAL.positive,
                      negative=H.REFUSAL.negative, answers=("Nope", "Sure"), fills=H.REFUSAL.fills,
                      answer_options=(("Unfortunately", "Sorry"), ()))
    assert choose_answers(refusal.tokenizer, task) == ("Sorry", "Sure")  # "Nope", "Unfortunately": unknown
    pairs = H.binary_pairs(refusal.tokenizer, task, n=2)
    assert pairs.answers == ["Sorry", "Sorry"] and pairs.distractors == ["Sure", "Sure"]
    with pytest.raises(H.PromptError, match="none of the answer words"):
        choose_answers(refusal.tokenizer, BinaryTask(**{**task.__dict__, "answer_options": ((), ())}))


def test_decides_needs_the_right_sign_on_both_kinds_of_prompt():
    assert decides(torch.tensor([3.0, 2.0]), torch.tensor([-1.0, -2.0]))
    assert not decides(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.0]))  # always "refuses"


def test_template_verdict_says_when_the_model_does_not_do_the_task():
    rows = [{"template": t, "text": "x {X}", "seen": t < 2, "clean": 1.5, "corrupted": 1.2, "right": 0.5}
            for t in range(3)]
    text = explain.templates(rows, H.REFUSAL).data
    assert "does not do the task" in text and "only 50% right decisions" in text
    assert "in 3 of 3 templates and on harmless ones in 3 of 3" in text
    good = [{**r, "corrupted": -1.2, "right": 1.0} for r in rows]
    assert "The model does the task: 100% right decisions" in explain.templates(good, H.REFUSAL).data


def test_residual_prose_states_the_numbers_of_the_maps(sweeps):
    resid = sweeps["resid"]
    text = explain.residual(resid).data
    gd, gn = resid["denoise"].grid(), resid["noise"].grid()
    x, end = sweeps["pairs"].positions["X"], sweeps["pairs"].positions["END"]
    for i, row in enumerate(_table(text)):
        assert row[0] == resid["denoise"].labels["layer"][i]
        assert row[1:] == [num(gd[i, x]), num(gd[i, end]), num(gn[i, x]), num(gn[i, end])]
    assert f"`END` alone carries it: {num(gd[-1, end])} denoising, {num(gn[-1, end])} noising" in text
    assert "-0.00" not in text


def test_heads_prose_names_the_decisive_heads_with_their_values(sweeps):
    heads = sweeps["heads"]
    decisive = decisive_heads(heads["denoise"])
    assert decisive and all(re.fullmatch(r"L\d+H\d+", h) for h in decisive)
    text = explain.heads(heads, decisive).data
    gd, gn = heads["denoise"].grid(), heads["noise"].grid()
    for name, den, noi in _table(text):
        l, h = H.fmt.parse_head(name)
        assert (den, noi) == (num(gd[l, h]), num(gn[l, h]))
    assert H.fmt.join(decisive) in text and "-0.00" not in text


def test_circuit_prose_and_tables_use_the_search_numbers(found):
    text = explain.circuit(found, n_components=15).data
    assert "restore 0.91 of the refusal together, out of 15 components" in text
    assert "between 0.00 and 0.10 — all below 0.80: every member is needed" in text
    tables = explain.circuit_tables(found).data
    assert _table(tables)[0] == ["L0H2", "0.10", num(0.9123 - 0.1049)]
    assert "-0.00" not in text + tables


def test_circuit_map_has_a_colour_bar_and_no_small_or_negative_zero_text(found):
    fig = figures.circuit_map(found, n_layers=3, n_heads=4)
    assert any("drop in joint score" in ax.get_ylabel() for ax in fig.axes)  # the colour bar
    texts = [t for ax in fig.axes for t in ax.texts]
    assert {"L0H2", "mlp1"} <= {t.get_text() for t in texts}
    assert all(t.get_fontsize() >= 8 for t in texts)
    assert not any("-0.00" in t.get_text() for t in texts)
    plt.close(fig)


def test_attention_rows_and_diagram_read_at_a_glance(found):
    rows = torch.tensor([[0.001, 0.999], [0.5, 0.5]])
    fig = figures.attention_rows(rows, ["L0H3", "L0H0"], ["a", "b (X)"], colours={"X": "tab:red"})
    texts = fig.axes[0].texts
    assert [t.get_text() for t in texts] == ["0.00", "1.00", "0.50", "0.50"]
    assert all(t.get_fontsize() >= 8 for t in texts)
    assert fig.axes[0].get_xticklabels()[1].get_color() == "tab:red"
    diagram = H.figures.refusal.circuit_diagram(found)
    shown = " ".join(t.get_text() for t in diagram.axes[0].texts)
    assert "L0H2\ndrop 0.81" in shown and "joint score 0.91" in shown
    plt.close("all")
