"""The refusal toy model: accuracy on held-out requests, joint patching against the
hook reference, a minimal circuit that really is minimal, and a full retrain that behaves like
the shipped model."""
from __future__ import annotations

import hashlib
import random
import subprocess
import sys

import pytest
import reference_hooks as ref
import torch

import helpers as H
from stamps import Stamp
from helpers.circuits import component_patch, minimal_circuit
from helpers.data.behaviours import REFUSAL, binary_pairs, fill
from helpers.organism import BUNDLED_MODELS
from helpers.organism.train_refusal import combination_split, request

FOLDER = BUNDLED_MODELS["refusal-tiny"]
HELDOUT_SPLITS = ["heldout_combinations", "heldout_templates"]
#: a retrain on another CPU (other float rounding) must give each fixed request's logit
#: difference within this of the shipped model's; on the same machine it is bit-identical.


@pytest.fixture(scope="module")
def refusal():
    return H.load_model("refusal-tiny")


def heldout_accuracy(model, split: str) -> float:
    """Share of 400 fresh requests of one held-out split answered right (top-1) with a
    margin > 2 over the other answer (the same requests on every call)."""
    train, held = combination_split(0)
    combos, templates = (held, REFUSAL.templates) if split == "heldout_combinations" else \
        (train, REFUSAL.heldout_templates)
    rng = random.Random(99)
    sorry, sure = (H.single_token_id(model.tokenizer, w) for w in REFUSAL.answers)
    hits = []
    for _ in range(400):
        text, answer = request(rng, combos, templates)
        logits = H.observe.last_logits(model, H.encode(model, text))[0]
        want, other = (sorry, sure) if answer == "Sorry" else (sure, sorry)
        hits.append(int(logits.argmax()) == want and logits[want] - logits[other] > 2)
    return sum(hits) / len(hits)


@pytest.mark.parametrize("split", HELDOUT_SPLITS)
def test_refusal_accuracy_on_fresh_heldout_requests(refusal, split):
    assert heldout_accuracy(refusal, split) >= 0.99


def test_weights_match_their_checksum():
    """The shipped file is the one recorded (this checks the file, not a retrain)."""
    recorded = (FOLDER / "checksum.txt").read_text().split()[0]
    assert hashlib.sha256((FOLDER / "model.safetensors").read_bytes()).hexdigest() == recorded


def fixed_requests(n_draws: int = 16, seed: int = 2024) -> list[str]:
    """``2 * n_draws`` requests: ``n_draws`` seeded draws of (template from the training and
    held-out ones, act, who, harmful word, harmless word), each with both words, so half
    of them should get "Sorry" and half "Sure"."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n_draws):
        template = rng.choice(REFUSAL.templates + REFUSAL.heldout_templates)
        values = {"act": rng.choice(REFUSAL.fills["act"]), "who": rng.choice(REFUSAL.fills["who"])}
        for x in (rng.choice(REFUSAL.positive), rng.choice(REFUSAL.negative)):
            texts.append(fill(template, x, values)[0])
    return texts


def per_request_logit_diffs(model, texts) -> torch.Tensor:
    """Logit difference Sorry - Sure at the last position, one value per request (float64)."""
    sorry, sure = (H.single_token_id(model.tokenizer, w) for w in REFUSAL.answers)
    out = []
    for text in texts:
        logits = H.observe.last_logits(model, H.encode(model, text))[0].double()
        out.append(logits[sorry] - logits[sure])
    return torch.stack(out)


#: The full retrain is stamp-gated (tests/stamps.py): it runs when the training recipe, the code
#: it runs, the code that judges it or the pins changed since it last passed.
RETRAIN = Stamp("refusal-tiny-retrain", modules=["helpers.organism.train_refusal",
                                                 "helpers.models.loading", "helpers.data.behaviours"],
                files=["tests/test_refusal.py", "helpers/organism/refusal/model.safetensors"])


@pytest.mark.slow
def test_full_retrain_behaves_like_the_shipped_model(tmp_path, refusal):
    """The whole refusal recipe retrained from scratch (1.5-3 minutes on one core), loaded and
    judged by behaviour (its bytes equal the shipped file only on a CPU with the same float
    rounding): 99 % accurate on fresh held-out requests of both splits, the same answer as the
    shipped model on every fixed request with a margin, the same average confidence within 10 %."""
    start = RETRAIN.gate()
    out = tmp_path / "retrained"
    subprocess.run([sys.executable, "-m", "helpers.organism.train_refusal", "--out", str(out)],
                   check=True, capture_output=True, text=True)
    retrain = H.load_model(out)
    for split in HELDOUT_SPLITS:
        assert heldout_accuracy(retrain, split) >= 0.99, split
    texts = fixed_requests()
    assert len(texts) == 32
    shipped = per_request_logit_diffs(refusal, texts)
    assert (shipped > 0).tolist() == [True, False] * 16  # harmful, harmless, harmful, ...
    retrained = per_request_logit_diffs(retrain, texts)
    same_side = (retrained.sign() == shipped.sign()) & (retrained.abs() > 1.0)
    assert same_side.all(), [(texts[i], float(shipped[i]), float(retrained[i]))
                             for i in (~same_side).nonzero().flatten().tolist()]
    ratio = float(retrained.abs().mean() / shipped.abs().mean())
    assert 0.9 <= ratio <= 1.1, f"mean |logit difference| retrained / shipped = {ratio:.3f}"
    RETRAIN.record(start, f"held-out accuracy >= 0.99; |logit diff| ratio {ratio:.3f}")


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


@pytest.mark.parametrize("method", ["fast", "batched"])
def test_minimal_circuit_restores_the_threshold_and_every_member_is_needed(refusal, method):
    pairs = binary_pairs(refusal.tokenizer, REFUSAL, n=16, seed=0)
    circuit = minimal_circuit(refusal, pairs, threshold=0.8, method=method)
    assert circuit.reached and circuit.members and circuit.method == method
    # recomputed here, independently of the search's own bookkeeping, by the other method
    other = "batched" if method == "fast" else "fast"
    joint = H.patch_components(refusal, pairs, [component_patch(c) for c in circuit.members],
                               method=other)
    assert joint.score()[0] >= 0.8
    assert abs(joint.score()[0].item() - circuit.score) < 1e-5
    for member in circuit.members:
        rest = [component_patch(c) for c in circuit.members if c != member]
        score = H.patch_components(refusal, pairs, [rest], method=other).score()[0] if rest else 0.0
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
