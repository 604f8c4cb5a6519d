"""The bundled IOI model: accuracy on held-out prompts, reproducible training, and
the circuit its model card describes."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch

import helpers as H
from helpers.organism import BUNDLED_MODELS
from helpers.organism.train_ioi import name_pair_split
from helpers.prompts import HELDOUT_TEMPLATES, TRAIN_TEMPLATES

FOLDER = BUNDLED_MODELS["ioi-tiny"]


def test_heldout_split_in_training_record_is_the_scripts_split():
    record = json.loads((FOLDER / "training.json").read_text())
    _, held = name_pair_split(record["seed"])
    assert [list(p) for p in held] == record["heldout_name_pairs"]


@pytest.mark.parametrize("split", ["heldout_pairs", "heldout_templates"])
def test_accuracy_on_fresh_heldout_prompts(bundled, split):
    train_pairs, held_pairs = name_pair_split(0)
    if split == "heldout_pairs":  # new pairings of trained names, trained templates
        prompts = H.random_ioi_prompts(600, seed=1234, templates=TRAIN_TEMPLATES, name_pairs=held_pairs)
    else:  # trained pairs, templates never seen in training
        prompts = H.random_ioi_prompts(600, seed=4321, templates=HELDOUT_TEMPLATES, name_pairs=train_pairs)
    acc = H.ioi_accuracy(bundled, prompts)
    assert acc.n == 600
    assert acc.accuracy >= 0.99, acc
    assert acc.mean_logit_diff - 3 * acc.sem_logit_diff > 5.0, acc


def _train(out, steps):
    subprocess.run([sys.executable, "-m", "helpers.organism.train_ioi", "--out", str(out),
                    "--steps", str(steps), "--batch", "16", "--log-every", "10"],
                   check=True, capture_output=True, text=True)
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


def test_short_training_run_is_bit_identical(tmp_path):
    a, b = _train(tmp_path / "a", 20), _train(tmp_path / "b", 20)
    assert a == b
    assert a != hashlib.sha256((FOLDER / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_full_retrain_reproduces_the_shipped_weights(tmp_path):
    """The whole recipe (minutes on one core; time in training.json) regenerates the shipped file bit for bit."""
    out = tmp_path / "retrained"
    subprocess.run([sys.executable, "-m", "helpers.organism.train_ioi", "--out", str(out)],
                   check=True, capture_output=True, text=True)
    recorded = (FOLDER / "checksum.txt").read_text().split()[0]
    assert hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest() == recorded


# --------------------------------------------------------------------------- the circuit

@pytest.fixture(scope="module")
def circuit(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=16, seed=0, template=0)
    return {"pairs": pairs, "resid": H.patch_residual(bundled, pairs),
            "attn": H.patch_attn_out(bundled, pairs), "mlp": H.patch_mlp_out(bundled, pairs),
            "heads": H.patch_heads(bundled, pairs), "heads_noise": H.patch_heads(bundled, pairs, "noise")}


def test_information_sits_at_s2_early_and_at_end_late(circuit):
    s = circuit["resid"].score()
    pos = circuit["pairs"].positions
    s2, end = s[:, pos["S2"]], s[:, pos["END"]]
    # rows: embed, L0..L3.  Graded hand-over from S2 to END across layers 1-3.
    assert s2[0] > 0.99 and s2[1] > 0.99 and end[:2].abs().max() < 0.02
    assert 0.4 < s2[2] < 0.9 and 0.1 < end[2] < 0.5      # after block 1: mostly still at S2
    assert 0.05 < s2[3] < 0.5 and 0.5 < end[3] < 0.95    # after block 2: mostly at END
    assert s2[4].abs() < 0.02 and end[4] > 0.99
    others = [p for p in range(s.shape[1]) if p not in (pos["S2"], pos["END"])]
    assert s[:, others].abs().max() < 0.1  # positions after S2 carry a little (< 0.05 measured)


def test_layer0_attention_and_mlp0_write_at_s2_later_attention_at_end(circuit):
    pos = circuit["pairs"].positions
    attn, mlp = circuit["attn"].score(), circuit["mlp"].score()
    assert attn[0, pos["S2"]] > 0.9 and mlp[0, pos["S2"]] > 0.4
    assert (attn[1:, pos["END"]] > 0.15).all()
    assert mlp[1:].abs().max() < 0.05


def test_two_head_roles_found_by_patching_and_attention(bundled, circuit):
    pairs, heads = circuit["pairs"], circuit["heads"].score()
    pos = pairs.positions
    top = int(heads[0].argmax())
    assert heads[0, top] > 0.5 and heads.flatten().argmax() == top  # one strong layer-0 head
    assert circuit["heads_noise"].score()[0, top] < 0.5  # and it is necessary too
    p0 = H.attention_patterns(bundled, pairs.clean_ids, 0).mean(0)
    assert p0[top, pos["S2"], pos["IO"]] > 0.9  # role 1: at S2, reads the other name
    late = torch.stack([H.attention_patterns(bundled, pairs.clean_ids, l).mean(0)
                        for l in (1, 2, 3)])  # [3 layers, heads, q, k]
    assert late[:, :, pos["END"], pos["S2"]].mean() > 0.8  # role 2: at END, reads S2
    assert (heads[1:] > 0).all() and heads[1:].max() < 0.3  # spread over many heads
