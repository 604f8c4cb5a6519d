"""Every sweep on every model family equals the independent plain-hooks reference.

Tiny random models of each family (``tests/tiny_models.py``), float64, loaded with
``helpers.load_model`` like any local folder; the reference (``tests/reference_hooks.py``)
uses forward hooks on the plain transformers model and no helpers code.  Tolerance 1e-10.
The fast exact path runs where it applies (GPT-2, Llama, Qwen2, Qwen3; Mistral only when its
sliding window covers the prompt) and the batched path elsewhere; both are checked.
"""
from __future__ import annotations

import pytest
import reference_hooks as ref
import torch
from tiny_models import FAMILIES, save_random_model

import helpers as H

TOL = 1e-10
FAST = {"gpt2", "llama", "qwen2", "qwen3"}  # the tiny Mistral's window (6) is shorter than the prompts


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = save_random_model(tmp_path_factory.mktemp(request.param) / request.param, request.param)
    model = H.load_model(path, dtype="float64")
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64,
                                                 attn_implementation="eager").eval()
    pairs = H.ioi_pairs(model.tokenizer, n=2, seed=5)
    return request.param, model, plain, pairs


def _ld(logits: torch.Tensor, pairs) -> torch.Tensor:
    """Logit difference per pair from reference logits [..., batch, vocab] -> [batch, ...]."""
    a, d = pairs.answer_ids, pairs.distractor_ids
    diff = logits[..., torch.arange(len(a)), a] - logits[..., torch.arange(len(a)), d]
    return diff.movedim(-1, 0)


def test_anatomy_reads_the_family_and_its_shapes(family_model):
    family, model, plain, _ = family_model
    f = H.model_facts(model)
    assert f.family == family and f.n_layers == ref.n_layers_of(plain)
    assert f.n_heads == ref.n_heads_of(plain) and f.d_head == ref.d_head_of(plain)
    assert f.n_kv_heads == getattr(plain.config, "num_key_value_heads", f.n_heads)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_residual_sweep_equals_the_reference(family_model, direction):
    family, model, plain, pairs = family_model
    base, src = ((pairs.corrupted_ids, pairs.clean_ids) if direction == "denoise"
                 else (pairs.clean_ids, pairs.corrupted_ids))
    got = H.patch_residual(model, pairs, direction)
    assert got.method == ("fast" if family in FAST else "batched")
    want = torch.cat([_ld(ref.sweep(plain, family, base, src, "embed"), pairs)[:, None],
                      _ld(ref.sweep(plain, family, base, src, "resid"), pairs)], 1)
    assert got.labels["layer"][:2] == ["embed", "L0"]
    assert (got.values["logit_diff"] - want).abs().max() < TOL


@pytest.mark.parametrize("site, sweep", [("attn", H.patch_attn_out), ("mlp", H.patch_mlp_out)])
@pytest.mark.parametrize("method", ["fast", "batched"])
def test_attention_and_mlp_sweeps_equal_the_reference(family_model, site, sweep, method):
    family, model, plain, pairs = family_model
    got = sweep(model, pairs, method=method)
    want = _ld(ref.sweep(plain, family, pairs.corrupted_ids, pairs.clean_ids, site), pairs)
    assert (got.values["logit_diff"] - want).abs().max() < TOL


@pytest.mark.parametrize("by_position", [False, True])
def test_head_sweeps_equal_the_reference(family_model, by_position):
    family, model, plain, pairs = family_model
    got = H.patch_heads(model, pairs, by_position=by_position)
    want = _ld(ref.sweep(plain, family, pairs.corrupted_ids, pairs.clean_ids, "head",
                         per_position=by_position), pairs)
    assert (got.values["logit_diff"] - want).abs().max() < TOL


def test_a_joint_set_across_sites_equals_the_reference(family_model):
    family, model, plain, pairs = family_model
    s2, end = pairs.positions["S2"], pairs.positions["END"]
    patches = [H.Patch("embed", position=s2), H.Patch("head", 0, None, 1), H.Patch("mlp", 0, s2),
               H.Patch("attn", 1, end), H.Patch("resid", 0, end)]
    got = H.patch_components(model, pairs, patches).values["logit_diff"][:, 0]
    logits = ref.run_patched(plain, family, pairs.corrupted_ids,
                             [(p.site, p.layer, p.position, p.head) for p in patches], pairs.clean_ids)
    assert (got - _ld(logits, pairs)).abs().max() < TOL


def test_last_block_at_every_position_gives_the_clean_logits(family_model):
    _, model, _, pairs = family_model
    r = H.patch_components(model, pairs, [H.Patch("resid", -1)])
    assert (r.values["logit_diff"][:, 0] - r.clean["logit_diff"]).abs().max() < TOL
    assert r.values["kl_to_clean"].abs().max() < TOL


def test_positions_before_the_first_difference_change_nothing_on_the_loop(family_model):
    _, model, _, pairs = family_model
    first = pairs.first_difference
    r = H.patch_components(model, pairs, [[H.Patch("resid", 0, p)] for p in range(first)]
                           + [[H.Patch("embed", position=first - 1)]], method="loop")
    assert (r.values["logit_diff"] - r.corrupted["logit_diff"][:, None]).abs().max() < TOL


def test_attention_patterns_and_attribution_run_on_every_family(family_model):
    _, model, _, pairs = family_model
    f = H.model_facts(model)
    pattern = H.attention_patterns(model, pairs.clean_ids, -1)
    assert pattern.shape == (2, f.n_heads, pairs.seq_len, pairs.seq_len)
    assert torch.allclose(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
    attr = H.attribution_patching(model, pairs)
    early = attr["resid"].values["logit_diff"][:, :, :pairs.first_difference]
    base = attr["resid"].corrupted["logit_diff"][:, None, None]
    assert (early - base).abs().max() < TOL  # identical activations: a zero estimate


def test_an_unsupported_architecture_names_the_supported_families(tmp_path):
    from tiny_models import save_random_bert

    with pytest.raises(H.ModelLoadError, match=r"'bert' model is not supported(.|\n)*gpt2, gpt_neox, "
                                               r"llama(.|\n)*helpers.models.anatomy.FAMILIES"):
        H.load_model(save_random_bert(tmp_path / "bert"))
