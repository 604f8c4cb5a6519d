"""Attribution patching equals the derivative of the patched metric (checked by
finite differences on the independent hook reference) and tracks exact patching
where the model is close to linear."""
from __future__ import annotations

import pytest
import reference_hooks as ref
import torch

import helpers as H
from helpers.methods.attribution import attribution_patching

EPS = 1e-6


@pytest.fixture(scope="module")
def setup(bundled64, bundled_plain64):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=2, seed=6)
    return pairs, attribution_patching(bundled64, pairs), bundled_plain64


def _slope(plain, pairs, i, patch, key):
    """d logit_diff / d t of the corrupted run with activation key moved t of the way to clean."""
    clean = ref.cache_activations(plain, pairs.clean_ids[i])
    bad = ref.cache_activations(plain, pairs.corrupted_ids[i])
    nudged = dict(bad)
    nudged[key] = bad[key] + EPS * (clean[key] - bad[key])
    a, d = int(pairs.answer_ids[i]), int(pairs.distractor_ids[i])
    base = ref.logit_diff(ref.run_with_patches(plain, pairs.corrupted_ids[i], bad, [patch]), a, d)
    moved = ref.logit_diff(ref.run_with_patches(plain, pairs.corrupted_ids[i], nudged, [patch]), a, d)
    return (moved - base) / EPS


@pytest.mark.parametrize("name, patch, key, index", [
    ("resid", ("resid", 2, "S2", None), ("resid", 2), lambda p: (2, p["S2"])),
    ("resid", ("resid", 0, "S2", None), ("resid", 0), lambda p: (0, p["S2"])),
    ("attn", ("attn", 1, "END", None), ("attn", 1), lambda p: (1, p["END"])),
    ("mlp", ("mlp", 0, "S2", None), ("mlp", 0), lambda p: (0, p["S2"])),
    ("heads", ("head", 0, None, 3), ("z", 0), lambda p: (0, 3)),
    ("head_pos", ("head", 2, "END", 1), ("z", 2), lambda p: (2, 1, p["END"])),
])
def test_attribution_is_the_derivative_of_the_patched_metric(setup, name, patch, key, index):
    pairs, attr, plain = setup
    pos = pairs.positions
    site, layer, where, head = patch
    patch = (site, layer, pos[where] if where else None, head)
    for i in range(len(pairs)):
        estimate = attr[name].values["logit_diff"][i][index(pos)] - attr[name].corrupted["logit_diff"][i]
        slope = _slope(plain, pairs, i, patch, key)
        assert abs(estimate.item() - slope) < 1e-4 * max(1.0, abs(slope)), (name, i, estimate, slope)


def test_attribution_tracks_exact_patching_on_attention_outputs(bundled64, setup):
    pairs, attr, _ = setup
    exact = H.patch_attn_out(bundled64, pairs).mean().flatten()
    approx = attr["attn"].mean().flatten()
    assert torch.corrcoef(torch.stack([exact, approx]))[0, 1] > 0.9


def test_attribution_results_have_the_exact_sweeps_axes(bundled, setup):
    pairs, attr, _ = setup
    f = H.model_facts(bundled)
    assert attr["resid"].values["logit_diff"].shape == (2, f.n_layers + 1, pairs.seq_len)
    assert attr["heads"].values["logit_diff"].shape == (2, f.n_layers, f.n_heads)
    assert attr["head_pos"].dims == ("layer", "head", "position")
    assert attr["heads"].method == "attribution"
    # positions before the first difference: the activations are equal, so exactly 0
    early = attr["resid"].effect()[:, : pairs.first_difference]
    assert early.abs().max() == 0


def test_attribution_computes_no_weight_gradients(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=1)
    attribution_patching(bundled, pairs)
    assert all(p.grad is None for p in H.models.hf_model(bundled).parameters())
