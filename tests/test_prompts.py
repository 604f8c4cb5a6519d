"""IOI prompt building, role positions, corruptions and validation errors."""
from __future__ import annotations

import pytest
import torch

import helpers as H
from helpers.data.prompts import (HELDOUT_TEMPLATES, TEMPLATES, TRAIN_TEMPLATES, PromptError,
                                  corrupt, ioi_prompt, make_pairs, pairs_from_prompt)


@pytest.fixture(scope="module")
def tok(bundled):
    return bundled.tokenizer


def test_roles_point_at_the_right_tokens_in_both_orders(tok):
    for order in ("ABBA", "BABA"):
        pairs = H.ioi_pairs(tok, n=6, order=order, seed=3)
        for i in range(len(pairs)):
            ids = pairs.clean_ids[i]
            word = lambda role: tok.decode([int(ids[pairs.positions[role]])]).strip()
            assert word("IO") == pairs.answers[i]
            assert word("S1") == pairs.distractors[i] == word("S2")
            assert pairs.positions["END"] == pairs.seq_len - 1
        first_name = min(pairs.positions["IO"], pairs.positions["S1"])
        assert (pairs.positions["IO"] == first_name) == (order == "ABBA")


def test_s2_swap_changes_exactly_one_token_and_flips_the_answer(tok):
    pairs = H.ioi_pairs(tok, n=8, corruption="s2_swap", seed=1)
    diff = (pairs.clean_ids != pairs.corrupted_ids)
    assert diff.sum(1).tolist() == [1] * 8
    assert diff.nonzero()[:, 1].unique().tolist() == [pairs.positions["S2"]]
    assert (pairs.corrupted_ids[:, pairs.positions["S2"]] == pairs.answer_ids).all()


def test_answer_swap_exchanges_the_two_names(tok):
    pairs = H.ioi_pairs(tok, n=4, corruption="answer_swap", seed=2)
    pos = pairs.positions
    assert (pairs.corrupted_ids[:, pos["IO"]] == pairs.clean_ids[:, pos["S1"]]).all()
    assert (pairs.corrupted_ids[:, pos["S2"]] == pairs.answer_ids).all()


def test_abc_uses_three_fresh_names(tok):
    pairs = H.ioi_pairs(tok, n=6, corruption="abc", seed=4)
    pos = pairs.positions
    for i in range(6):
        fresh = {int(pairs.corrupted_ids[i, pos[r]]) for r in ("IO", "S1", "S2")}
        assert len(fresh) == 3
        assert not fresh & {int(pairs.answer_ids[i]), int(pairs.distractor_ids[i])}


def test_pairs_are_reproducible_from_the_seed(tok):
    a, b = H.ioi_pairs(tok, n=5, seed=7), H.ioi_pairs(tok, n=5, seed=7)
    c = H.ioi_pairs(tok, n=5, seed=8)
    assert a.clean == b.clean and torch.equal(a.clean_ids, b.clean_ids)
    assert a.clean != c.clean


def test_learners_prompt_gets_an_aligned_corruption(tok):
    pairs = pairs_from_prompt(tok, "When Tom and Lisa went to the park, Lisa gave a book to")
    assert pairs.answers == ["Tom"] and pairs.distractors == ["Lisa"]
    assert pairs.corrupted == ["When Tom and Lisa went to the park, Tom gave a book to"]
    for c in ("answer_swap", "abc"):
        p = pairs_from_prompt(tok, "When Tom and Lisa went to the park, Lisa gave a book to",
                              corruption=c)
        assert p.seq_len == pairs.seq_len and p.corrupted[0] != p.clean[0]


def test_every_template_fills_and_records_spans():
    for t in TEMPLATES:
        p = ioi_prompt(t, "John", "Mary", "BABA")
        assert p.text[slice(*p.spans["IO"])] == "John"
        assert p.text[slice(*p.spans["S1"])] == p.text[slice(*p.spans["S2"])] == "Mary"
        assert corrupt(p, "s2_swap").text.count("John") == 2
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)


# --------------------------------------------------------------------------- errors

def test_pairs_of_different_length_show_both_tokenizations(tok):
    with pytest.raises(PromptError, match=r"same number of tokens(.|\n)*clean +\(\d+ tokens\)"
                                          r"(.|\n)*corrupted \(\d+ tokens\)"):
        make_pairs(tok, ["When John and Mary went to the store, Mary gave a drink to"],
                   ["When John and Mary went to the store, Mary gave a drink to the"],
                   ["John"], ["Mary"])


def test_multi_token_answer_is_rejected(gpt2_tokenizer):
    with pytest.raises(PromptError, match="not a single token"):
        H.single_token_id(gpt2_tokenizer, "Zyxwvutsr")


def test_unknown_words_are_named(tok):
    with pytest.raises(PromptError, match=r"not in the model's vocabulary: \['Zorblax'\]"):
        pairs_from_prompt(tok, "When John and Zorblax went to the store, Zorblax gave a drink to",
                          io="John", s="Zorblax")
    with pytest.raises(PromptError, match=r"\['Bartholomew'\]"):
        H.single_token_id(tok, "Bartholomew")


def test_roles_that_do_not_line_up_are_rejected(tok):
    a = ioi_prompt(TEMPLATES[0], "John", "Mary", "ABBA")
    b = ioi_prompt(TEMPLATES[0], "John", "Mary", "BABA")
    with pytest.raises(PromptError, match="roles do not line up"):
        make_pairs(tok, [a.text, b.text], [corrupt(a).text, corrupt(b).text], ["John"] * 2,
                   ["Mary"] * 2, [a.spans, b.spans])


def test_a_prompt_without_ioi_roles_is_explained(tok):
    with pytest.raises(PromptError, match="one name twice"):
        pairs_from_prompt(tok, "When John and Mary went to the store, Tom gave a drink to")


def test_unknown_corruption_is_rejected(tok):
    with pytest.raises(ValueError, match="corruption='gaussian' is not a valid choice.*'s2_swap'"):
        H.ioi_pairs(tok, n=2, corruption="gaussian")
