"""The refusal toy model: accuracy on held-out requests, joint patching against the
hook reference, and a minimal circuit that really is minimal."""
from __future__ import annotations

import hashlib
import random

import pytest
import torch

import helpers as H
import reference_hooks as ref
from helpers.behaviours import REFUSAL, binary_pairs, fill
from helpers.circuits import component_patch, minimal_circuit
from helpers.organism import BUNDLED_MODELS
from helpers.organism.train_refusal import combination_split, request

FOLDER = BUNDLED_MODELS["refusal-tiny"]


@pytest.fixture(scope="module")
def refusal():
    return H.load_model("refusal-tiny")


@pytest.mark.parametrize("split", ["heldout_combinations", "heldout_templates"])
def test_refusal_accuracy_on_fresh_heldout_requests(refusal, split):
    train, held = combination_split(0)
    combos, templates = (held, REFUSAL.templates) if split == "heldout_combinations" else \
        (train, REFUSAL.heldout_templates)
    rng = random.Random(99)
    sorry, sure = (H.single_token_id(refusal.tokenizer, w) for w in REFUSAL.answers)
    hits = []
    for _ in range(400):
        text, answer = request(rng, combos, templates)
        logits = H.observe.last_logits(refusal, H.encode(refusal, text))[0]
        want, other = (sorry, sure) if answer == "Sorry" else (sure, sorry)
        hits.append(int(logits.argmax()) == want and logits[want] - logits[other] > 2)
    assert sum(hits) / len(hits) >= 0.99


def test_weights_match_their_checksum():
    recorded = (FOLDER / "checksum.txt").read_text().split()[0]
    assert hashlib.sha256((FOLDER / "model.safetensors").read_bytes()).hexdigest() == recorded


def test_pairs_differ_in_the_decisive_word_only(refusal):
    pairs = binary_pairs(refusal.tokenizer, REFUSAL, n=8, seed=2, template=2)
    diff = pairs.clean_ids != pairs.corrupted_ids
    assert diff.sum(1).tolist() == [1] * 8
    assert diff.nonzero()[:, 1].unique().tolist() == [pairs.positions["X"]]
    assert all(w in REFUSAL.positive for w in (refusal.tokenizer.decode([int(i)]).strip()
                                                 for i in pairs.clean_ids[:, pairs.positions["X"]]))


def test_template_without_a_slot_value_is_explained():
    with pytest.raises(H.PromptError, match=r"slot \{who\} has no value"):
        fill("User : my {who} wants a {X} . Assistant :", "cake", {})


def test_joint_patch_of_a_set_matches_the_hook_reference(refusal):
    from transformers import GPT2LMHeadModel

    model = H.load_model("refusal-tiny", dtype="float64")
    plain = GPT2LMHeadModel.from_pretrained(FOLDER, dtype=torch.float64).eval()
    pairs = binary_pairs(model.tokenizer, REFUSAL, n=3, seed=5)
    components = ["L0H2", "L0H0", "MLP2", "L1H3"]
    got = H.patch_components(model, pairs, [component_patch(c) for c in components])
    for i in range(3):
        cache = ref.cache_activations(plain, pairs.clean_ids[i])
        logits = ref.run_with_patches(plain, pairs.corrupted_ids[i], cache,
                                      [(p.site, p.layer, p.position, p.head)
                                       for p in map(component_patch, components)])
        want = ref.logit_diff(logits, int(pairs.answer_ids[i]), int(pairs.distractor_ids[i]))
        assert abs(got.values["logit_diff"][i, 0].item() - want) < 1e-5


def test_minimal_circuit_restores_the_threshold_and_every_member_is_needed(refusal):
    pairs = binary_pairs(refusal.tokenizer, REFUSAL, n=16, seed=0)
    circuit = minimal_circuit(refusal, pairs, threshold=0.8)
    assert circuit.reached and circuit.members
    # recomputed here, independently of the search's own bookkeeping
    joint = H.patch_components(refusal, pairs, [component_patch(c) for c in circuit.members])
    assert joint.score()[0] >= 0.8
    assert abs(joint.score()[0].item() - circuit.score) < 1e-5
    for member in circuit.members:
        rest = [component_patch(c) for c in circuit.members if c != member]
        score = H.patch_components(refusal, pairs, [rest]).score()[0] if rest else 0.0
        assert score < 0.8, (member, float(score))
    assert "flowchart" in circuit.mermaid()


def test_binary_pairs_skip_words_that_are_several_tokens(gpt2_tokenizer):
    pairs = binary_pairs(gpt2_tokenizer, REFUSAL, n=12, seed=0)
    words = {gpt2_tokenizer.decode([int(i)]).strip() for i in pairs.corrupted_ids[:, pairs.positions["X"]]}
    assert "kite" not in words  # " kite" is two GPT-2 tokens
    with pytest.raises(H.PromptError, match="single token"):
        binary_pairs(gpt2_tokenizer, REFUSAL, n=2, negative=["kite"])


def test_circuit_search_on_a_model_that_cannot_do_the_task_says_so(tmp_path):
    from tiny_models import save_random_gpt2

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(FOLDER)
    model = H.load_model(save_random_gpt2(tmp_path / "m", tokenizer=tok, vocab_size=len(tok),
                                          n_layer=1, n_head=2, n_embd=8, n_positions=64))
    pairs = binary_pairs(model.tokenizer, REFUSAL, n=2, seed=0)
    with pytest.raises(H.GapTooSmallError, match="differ by only"):
        minimal_circuit(model, pairs)
