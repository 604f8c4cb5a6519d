"""The sweeps against an independent plain-PyTorch-hooks reference, the identities
patching must satisfy, and the errors bad input must raise."""
from __future__ import annotations

import pytest
import reference_hooks as ref
import torch
from tiny_models import save_random_gpt2

import helpers as H
from helpers.methods.sweeps import Patch

TOL = 1e-5
SWEEPS = {  # helpers sweep -> reference sweep
    "resid": (H.patch_residual, ref.sweep_resid),
    "attn": (H.patch_attn_out, ref.sweep_attn),
    "mlp": (H.patch_mlp_out, ref.sweep_mlp),
    "heads": (H.patch_heads, ref.sweep_heads),
    "head_pos": (lambda m, p, d, **kw: H.patch_heads(m, p, d, by_position=True, **kw),
                 ref.sweep_head_positions),
}


def _plain_model(path):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(path, dtype=torch.float64).eval()


def _reference_logit_diffs(plain, pairs, name, direction):
    """[N, *grid] logit differences from the hook reference, one prompt at a time."""
    out = []
    for i in range(len(pairs)):
        clean, bad = pairs.clean_ids[i], pairs.corrupted_ids[i]
        base, src = (bad, clean) if direction == "denoise" else (clean, bad)
        logits = SWEEPS[name][1](plain, base, src)
        out.append(logits[..., pairs.answer_ids[i]] - logits[..., pairs.distractor_ids[i]])
    return torch.stack(out)


def _compare(model, plain, pairs, name, direction, method="batched"):
    got = SWEEPS[name][0](model, pairs, direction, method=method, progress=False)
    want = _reference_logit_diffs(plain, pairs, name, direction)
    assert got.values["logit_diff"].shape == want.shape
    err = (got.values["logit_diff"] - want).abs().max().item()
    assert err < TOL, f"{name} {direction}: max difference {err:.3g}"
    return got


# --------------------------------------------------------------------------- reference agreement

@pytest.mark.parametrize("name", list(SWEEPS))
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_sweeps_match_hook_reference_on_bundled_model(bundled64, bundled_plain64, name, direction):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=2, seed=5, template=1)
    _compare(bundled64, bundled_plain64, pairs, name, direction)


@pytest.mark.parametrize("shape", [dict(n_layer=1, n_head=1, n_embd=8),
                                   dict(n_layer=3, n_head=4, n_embd=32),
                                   dict(n_layer=2, n_head=8, n_embd=64, n_inner=32)])
def test_sweeps_match_hook_reference_on_random_shapes(tmp_path, shape):
    path = save_random_gpt2(tmp_path / "m", seed=sum(shape.values()), n_positions=64, **shape)
    model, plain = H.load_model(path, dtype="float64"), _plain_model(path)
    pairs = H.ioi_pairs(model.tokenizer, n=2, seed=2, corruption="abc", template=3)
    for name in SWEEPS:
        for direction in ("denoise", "noise"):
            _compare(model, plain, pairs, name, direction)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWEEPS))
def test_sweeps_match_hook_reference_on_gpt2_standin(gpt2_standin_dir, name):
    """GPT-2 small's tokenizer and shapes, random weights: compare raw logit differences."""
    model, plain = H.load_model(gpt2_standin_dir, dtype="float64"), _plain_model(gpt2_standin_dir)
    pairs = H.pairs_from_prompt(model.tokenizer, "After John and Mary went to the store, Mary "
                                                 "gave a bottle of milk to")
    assert pairs.seq_len == 16
    if name != "head_pos":
        _compare(model, plain, pairs, name, "denoise")
        return
    # 144 heads x 16 positions: compare the engine's full sweep with the reference on a sample
    got = H.patch_heads(model, pairs, by_position=True, progress=False).values["logit_diff"][0]
    ref_cache = ref.cache_activations(plain, pairs.clean_ids[0])
    gen = torch.Generator().manual_seed(0)
    cells = torch.stack([torch.randint(0, 12, (24,), generator=gen), torch.randint(0, 12, (24,), generator=gen),
                         torch.randint(8, 16, (24,), generator=gen)], 1).tolist()
    for layer, head, pos in cells:
        logits = ref.run_with_patches(plain, pairs.corrupted_ids[0], ref_cache,
                                      [("head", layer, pos, head)])
        want = ref.logit_diff(logits, int(pairs.answer_ids[0]), int(pairs.distractor_ids[0]))
        assert abs(got[layer, head, pos].item() - want) < TOL


def test_joint_patch_of_a_set_matches_reference(bundled64, bundled_plain64):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=2, seed=9)
    s2, end = pairs.positions["S2"], pairs.positions["END"]
    components = [Patch("head", 0, None, 1), Patch("mlp", 1, s2), Patch("attn", 2, end),
                  Patch("resid", 3, s2), Patch("head", 3, end, 2)]
    got = H.patch_components(bundled64, pairs, components).values["logit_diff"][:, 0]
    for i in range(2):
        logits = ref.run_patched(bundled_plain64, "gpt2", pairs.corrupted_ids[i],
                                 [(p.site, p.layer, p.position, p.head) for p in components],
                                 pairs.clean_ids[i])
        want = logits[pairs.answer_ids[i]] - logits[pairs.distractor_ids[i]]  # logits: [vocab]
        assert abs(got[i].item() - want.item()) < TOL


def test_loop_and_batched_paths_agree(bundled64):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=3, seed=4)
    a = H.patch_heads(bundled64, pairs, method="loop")
    b = H.patch_heads(bundled64, pairs, batch_size=5)
    for m in H.metrics.METRICS:
        assert torch.allclose(a.values[m], b.values[m], atol=TOL)


# --------------------------------------------------------------------------- identities

def test_patching_every_position_of_the_last_block_gives_clean_logits(bundled64):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=4, seed=1)
    last = H.model_facts(bundled64).n_layers - 1  # the last block's output
    r = H.patch_components(bundled64, pairs, [Patch("resid", last)])
    assert torch.allclose(r.values["logit_diff"][:, 0], r.clean["logit_diff"], atol=TOL)
    assert torch.allclose(r.score()[0], torch.tensor(1.0, dtype=r.score().dtype), atol=TOL)
    assert r.values["kl_to_clean"].abs().max() < TOL


def test_noising_every_position_of_the_last_block_gives_corrupted_logits(bundled64):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=4, seed=1, corruption="answer_swap")
    r = H.patch_components(bundled64, pairs, [Patch("resid", -1)], "noise")  # the last block
    assert torch.allclose(r.values["logit_diff"][:, 0], r.corrupted["logit_diff"], atol=TOL)
    assert r.score()[0].abs() < TOL


@pytest.mark.parametrize("method", ["loop", "batched"])
def test_positions_before_the_first_difference_change_nothing(bundled64, method):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=2, seed=3)
    first = pairs.first_difference
    assert first == pairs.positions["S2"] > 0
    r = H.patch_residual(bundled64, pairs, method=method)
    early = r.score()[:, :first]
    assert early.abs().max() < TOL
    # and the loop really runs those patches (it has no shortcut): check one directly
    one = H.patch_components(bundled64, pairs, [Patch("resid", 1, first - 1)], method=method)
    assert torch.allclose(one.values["logit_diff"][:, 0], r.corrupted["logit_diff"], atol=TOL)


def test_embedding_row_at_s2_restores_everything_for_an_s2_swap(bundled64):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=4, seed=2, corruption="s2_swap")
    r = H.patch_residual(bundled64, pairs)
    s2 = pairs.positions["S2"]
    assert torch.allclose(r.values["logit_diff"][:, 0, s2], r.clean["logit_diff"], atol=TOL)
    assert abs(r.score()[0, s2].item() - 1) < TOL


def test_a_patch_really_replaces_the_activation(bundled64):
    """Inside the patched forward the activation equals the source and differs from the base."""
    pairs = H.ioi_pairs(bundled64.tokenizer, n=1, seed=0)
    s2 = pairs.positions["S2"]
    sites = [("resid", 0), ("attn", 1), ("mlp", 2), ("head", 2)]
    clean, _ = H.cache_activations(bundled64, pairs.clean_ids, sites)
    bad, _ = H.cache_activations(bundled64, pairs.corrupted_ids, sites)
    seen = {}
    inner = H.models.hf_model(bundled64)
    hooks = [inner.transformer.h[0].register_forward_hook(lambda m, a, o: seen.__setitem__("resid0", o.clone())),
             inner.transformer.h[1].attn.register_forward_hook(lambda m, a, o: seen.__setitem__("attn1", o[0].clone())),
             inner.transformer.h[2].mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("mlp2", o.clone())),
             # a forward (not pre-) hook sees the input c_proj really consumed, after every pre-hook
             inner.transformer.h[2].attn.c_proj.register_forward_hook(
                 lambda m, a, o: seen.update(z2=a[0].clone(), proj2=o.clone()))]
    try:
        for site, layer, key, head in [("resid", 0, "resid0", None), ("attn", 1, "attn1", None),
                                       ("mlp", 2, "mlp2", None), ("head", 2, "z2", 3)]:
            H.run_with_patches(bundled64, pairs.corrupted_ids, clean, [[Patch(site, layer, s2, head)]])
            got, src, base = seen[key][0, s2], clean[(site, layer)][0, s2], bad[(site, layer)][0, s2]
            if head is not None:
                # nnsight swaps c_proj's input inside its forward wrapper, so check what c_proj
                # produced: the base input with only this head's slice taken from the source
                d = H.model_facts(bundled64).d_head
                cols = slice(head * d, (head + 1) * d)
                expected = base.clone()
                expected[cols] = src[cols]
                proj = inner.transformer.h[2].attn.c_proj
                assert not torch.equal(src[cols], base[cols])
                assert torch.allclose(seen["proj2"][0, s2], proj(expected[None])[0], atol=1e-12)
                assert not torch.allclose(seen["proj2"][0, s2], proj(base[None])[0], atol=1e-6)
            else:
                assert torch.equal(got, src), site
                assert not torch.equal(src, base), site
    finally:
        for h in hooks:
            h.remove()


# --------------------------------------------------------------------------- results

def test_result_table_and_json_are_complete(bundled, tmp_path):
    pairs = H.ioi_pairs(bundled.tokenizer, n=3, seed=1)
    r = H.patch_attn_out(bundled, pairs)
    frame = r.to_frame()
    n_layers = H.model_facts(bundled).n_layers
    assert len(frame) == 3 * n_layers * pairs.seq_len
    assert {"logit_diff", "answer_prob", "kl_to_clean", "logit_diff_normalised", "layer",
            "position", "prompt", "direction"} <= set(frame.columns)
    assert frame["direction"].eq("denoise").all()
    mean_from_table = frame.groupby(["layer_index", "position_index"])["logit_diff"].mean()
    assert abs(mean_from_table.loc[(1, pairs.positions["END"])]
               - r.mean()[1, pairs.positions["END"]].item()) < 1e-4
    data = r.to_dict()
    assert data["dims"] == ["layer", "position"] and len(data["score"]) == n_layers
    assert data["baselines"]["clean"]["logit_diff"]["mean"] > data["baselines"]["corrupted"]["logit_diff"]["mean"]
    assert "S2" in " ".join(data["labels"]["position"])
    import json
    assert json.loads(r.save_json(tmp_path / "r.json").read_text())["site"] == "attn"


def test_normalised_score_is_one_for_clean_and_zero_for_corrupted_in_both_directions(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=2, seed=1)
    for direction in ("denoise", "noise"):
        r = H.patch_residual(bundled, pairs, direction)
        last, end = len(r.labels["layer"]) - 1, pairs.positions["END"]
        want = 1.0 if direction == "denoise" else 0.0
        assert abs(r.score()[last, end].item() - want) < 1e-4
        assert abs(r.score()[0, 0].item() - (1.0 - want)) < 1e-4


def test_tiny_gap_refuses_to_normalise(tmp_path):
    path = save_random_gpt2(tmp_path / "m", n_layer=1, n_head=2, n_embd=8, n_positions=64)
    model = H.load_model(path)
    r = H.patch_residual(model, H.ioi_pairs(model.tokenizer, n=2))
    with pytest.raises(H.GapTooSmallError, match="differ by only .* raw logit_diff"):
        r.score()
    assert r.to_dict()["score"] is None  # the summary still has the raw values
    assert torch.isfinite(r.mean()).all()


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("patch, message", [
    (dict(site="resid", layer=99), r"layer=99 is out of range: there are 4 blocks in this model"),
    (dict(site="resid", layer=-5), r"layer=-5 is out of range: there are 4 blocks"),
    (dict(site="mlp", layer=4), r"layer=4 is out of range: there are 4 blocks in this model \(0 .. 3, or -4 .. -1"),
    (dict(site="head", layer=1, head=7), r"head=7 is out of range: there are 4 heads per layer"),
    (dict(site="attn", layer=1, position=40), r"position=40 is out of range: there are \d+ token positions"),
    (dict(site="attn", layer=1, position=-40), r"position=-40 is out of range"),
])
def test_indices_outside_python_range_are_rejected_before_any_run(bundled, patch, message):
    pairs = H.ioi_pairs(bundled.tokenizer, n=1)
    with pytest.raises(IndexError, match=message):
        H.patch_components(bundled, pairs, [Patch(**patch)])
    with pytest.raises(ValueError, match=message):  # also a ValueError, for older callers
        H.run_with_patches(bundled, pairs.corrupted_ids, {}, [[Patch(**patch)]])


@pytest.mark.parametrize("patch, message", [
    (dict(site="head", layer=1), r"site 'head' needs head="),
    (dict(site="neurons", layer=1), r"unknown site 'neurons'"),
    (dict(site="mlp", layer=1, head=2), r"head= only applies to site 'head'"),
    (dict(site="mlp", layer=1.0), r"layer must be an integer, got the float 1.0: write 1"),
    (dict(site="mlp", layer=True), r"layer must be an integer, got True"),
    (dict(site="mlp", layer="1"), r"layer must be an integer, got '1'"),
    (dict(site="mlp", layer=torch.tensor([1, 2])), r"layer must be an integer, got a tensor of shape \(2,\)"),
])
def test_malformed_patches_are_rejected_when_built(patch, message):
    with pytest.raises(ValueError, match=message):
        Patch(**patch)


def test_numpy_and_tensor_integers_and_negative_indices_mean_what_python_means(bundled):
    import numpy as np

    pairs = H.ioi_pairs(bundled.tokenizer, n=2)
    seq = pairs.seq_len
    plain = H.patch_components(bundled, pairs, [[Patch("resid", 3, seq - 1)], [Patch("head", 3, 10, 2)]])
    odd = H.patch_components(bundled, pairs, [[Patch("resid", np.int64(-1), torch.tensor(-1))],
                                              [Patch("head", torch.tensor(3), np.int32(-5), -2)]])
    assert torch.equal(plain.values["logit_diff"], odd.values["logit_diff"])
    assert odd.patches == plain.patches  # stored with the non-negative indices the labels show


def test_bad_direction_is_rejected(bundled):
    with pytest.raises(ValueError, match="direction='.*' is not a valid choice.*'denoise'.*'noise'"):
        H.patch_residual(bundled, H.ioi_pairs(bundled.tokenizer, n=1), "forwards")


def test_pairs_from_another_tokenizer_are_rejected(bundled, gpt2_tokenizer):
    pairs = H.ioi_pairs(gpt2_tokenizer, n=1)
    with pytest.raises(H.PromptError, match="another vocabulary than this model's"):
        H.patch_residual(bundled, pairs)


def test_metric_argument_sets_the_results_default_metric(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=2, seed=1)
    r = H.patch_heads(bundled, pairs, metric="kl_to_clean")
    assert r.metric == "kl_to_clean" and torch.equal(r.mean(), r.values["kl_to_clean"].mean(0))
    assert "kl_to_clean" in r.title()
    with pytest.raises(ValueError, match="not among the computed metrics"):
        H.patch_heads(bundled, pairs, metric="answer_prob", metrics=("logit_diff",))
