"""Bad inputs at the API's edges get a clear error (what was wrong, how to fix it), never a
silent wrong result or a raw error from deep inside.  Each test checks the message's key
words.  The rules themselves live in ``helpers.base.validate`` and at each edge."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import helpers as H
from helpers.base.validate import NonFiniteError
from helpers.methods.sweeps import Patch
from helpers.models import ModelLoadError, hf_model
from helpers.organism import BUNDLED_MODELS


@pytest.fixture(scope="module")
def pairs(bundled):
    return H.ioi_pairs(bundled.tokenizer, n=3, seed=1)


@pytest.fixture(scope="module")
def broken():
    """The bundled model with one NaN weight in block 1's MLP."""
    model = H.load_model("ioi-tiny")
    with torch.no_grad():
        hf_model(model).transformer.h[1].mlp.c_fc.weight[0, 0] = float("nan")
    return model


def _folder_like_bundled(tmp_path, name="model"):
    folder = tmp_path / name
    shutil.copytree(BUNDLED_MODELS["ioi-tiny"], folder)
    return folder


# --------------------------------------------------------------------------- pairs

def test_pairs_whose_prompts_differ_at_different_positions_are_refused(bundled):
    a = H.ioi_pairs(bundled.tokenizer, n=1, template=2)
    b = H.ioi_pairs(bundled.tokenizer, n=1, template=6)  # same length, S2 elsewhere
    assert a.seq_len == b.seq_len and a.positions["S2"] != b.positions["S2"]
    with pytest.raises(H.PromptError, match=r"differ at different positions: pair 0 at \[\d+\], pair 1"):
        H.make_pairs(bundled.tokenizer, a.clean + b.clean, a.corrupted + b.corrupted,
                     a.answers + b.answers, a.distractors + b.distractors)


def test_identical_clean_and_corrupted_prompts_are_refused_when_built(bundled, pairs):
    with pytest.raises(H.PromptError, match="same tokens .* changes nothing"):
        H.make_pairs(bundled.tokenizer, pairs.clean[:1], pairs.clean[:1], pairs.answers[:1],
                     pairs.distractors[:1])


@pytest.mark.parametrize("run", [
    lambda m, p: H.patch_residual(m, p),
    lambda m, p: H.patch_heads(m, p),
    lambda m, p: H.minimal_circuit(m, p),
    lambda m, p: H.attribution_patching(m, p),
])
def test_sweeps_refuse_pairs_made_identical_by_hand(bundled, pairs, run):
    same = pairs[0:2]
    same.corrupted_ids = same.clean_ids.clone()
    with pytest.raises(H.PromptError, match=r"pair\(s\) \[0, 1\] have identical clean and corrupted"):
        run(bundled, same)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_prompts_are_refused_on_both_tokenizers(bundled, gpt2_tokenizer, text):
    for tok in (bundled.tokenizer, gpt2_tokenizer):
        with pytest.raises(H.PromptError, match="empty"):
            H.make_pairs(tok, [text], ["When John and Mary went"], ["John"], ["Mary"])
        with pytest.raises(H.PromptError, match="empty"):
            H.pairs_from_prompt(tok, text)
    with pytest.raises(H.PromptError, match="empty"):
        H.top_predictions(bundled, text)
    with pytest.raises(H.PromptError, match="empty"):
        H.single_token_id(bundled.tokenizer, text)


def test_one_string_where_a_list_is_needed_is_explained(bundled, pairs):
    with pytest.raises(TypeError, match="clean must be a list, got the string .* wrap it in a list"):
        H.make_pairs(bundled.tokenizer, pairs.clean[0], pairs.corrupted[0], "John", "Mary")


def test_numpy_integers_work_as_counts_and_template_indices(bundled):
    a = H.ioi_pairs(bundled.tokenizer, n=np.int64(3), template=np.int64(1), seed=np.int32(2))
    b = H.ioi_pairs(bundled.tokenizer, n=3, template=1, seed=2)
    assert a.clean == b.clean
    assert H.ioi_pairs(bundled.tokenizer, n=2, template=-1).clean[0].startswith("While")
    with pytest.raises(IndexError, match="template=15 is out of range: there are 15 templates"):
        H.ioi_pairs(bundled.tokenizer, template=15)
    with pytest.raises(TypeError, match="n must be an integer, got the float 2.0"):
        H.ioi_pairs(bundled.tokenizer, n=2.0)


# --------------------------------------------------------------------------- indices

def test_positions_past_the_end_are_refused_not_wrapped(bundled, pairs):
    seq = pairs.seq_len
    with pytest.raises(IndexError, match=f"position={seq} is out of range"):
        H.run_with_patches(bundled, pairs.corrupted_ids, {}, [[Patch("resid", 1, seq)]] * len(pairs))


def test_cache_activations_reads_negative_layers_as_python_does(bundled, pairs):
    n = H.model_facts(bundled).n_layers
    cache, _ = H.cache_activations(bundled, pairs.clean_ids, [("resid", -1), ("mlp", -1)])
    plain, _ = H.cache_activations(bundled, pairs.clean_ids, [("resid", n - 1), ("mlp", n - 1)])
    assert set(cache) == {("resid", n - 1), ("mlp", n - 1)}
    assert all(torch.equal(cache[k], plain[k]) for k in plain)


def test_cache_activations_refuses_a_layer_past_the_last(bundled, pairs):
    n = H.model_facts(bundled).n_layers
    with pytest.raises(IndexError, match=f"layer={n} is out of range: there are {n} blocks"):
        H.cache_activations(bundled, pairs.clean_ids, [("attn", n)])
    with pytest.raises(ValueError, match="unknown site 'attention'"):
        H.cache_activations(bundled, pairs.clean_ids, [("attention", 0)])


def test_one_dimensional_or_float_ids_are_explained(bundled, pairs):
    with pytest.raises(ValueError, match=r"add a batch axis with ids\[None\]"):
        H.cache_activations(bundled, pairs.clean_ids[0], [])
    with pytest.raises(TypeError, match="integer token ids, got dtype torch.float32"):
        H.cache_activations(bundled, pairs.clean_ids.float(), [])


def test_model_and_pairs_swapped_is_explained(bundled, pairs):
    with pytest.raises(TypeError, match=r"pairs must be PromptPairs, got a model .*wrong order"):
        H.patch_residual(pairs, bundled)


@pytest.mark.parametrize("call, message", [
    (lambda m, t: H.top_predictions(m, t), "reads at most 96"),
    (lambda m, t: H.attention_patterns(m, H.encode(m, t), 0), "reads at most 96"),
    (lambda m, t: H.ioi_accuracy(m, [H.prompts.ioi_prompt(t + " {A} and {B} met, {S} gave it to",
                                                         "John", "Mary")]), "reads at most 96"),
])
def test_prompts_longer_than_the_context_are_explained(bundled, call, message):
    long = " ".join(["the store"] * 60)
    with pytest.raises(ValueError, match=message):
        call(bundled, long)


def test_minimal_circuit_names_are_parsed_and_range_checked_first(bundled, pairs):
    with pytest.raises(ValueError, match=r"unknown component 'head3'(.|\n)*'L0H3'"):
        H.minimal_circuit(bundled, pairs, candidates=["head3"])
    with pytest.raises(IndexError, match="layer=9 is out of range"):
        H.minimal_circuit(bundled, pairs, candidates=["L0H1", "L9H0"])


def test_plot_head_positions_needs_at_least_one_row(bundled, pairs):
    r = H.patch_heads(bundled, pairs[:1], by_position=True)
    with pytest.raises(ValueError, match="top must be at least 1, got 0"):
        H.plot_head_positions(r, top=0)


def test_checks_print_a_hint_and_never_raise(bundled, pairs, capsys):
    r = H.patch_residual(bundled, pairs[:1])
    assert H.checks.check_peak_position("END", r, layer=99) is False
    assert H.checks.check_peak_position([1, 2], r, layer=1) is False
    assert H.checks.check_peak_position("END", None, layer=1) is False
    assert H.checks.check_top_head("L0H3", r) is False
    out = capsys.readouterr().out
    assert out.count("Not yet") == 4 and "Traceback" not in out
    best = int(r.score()[-1].argmax())
    assert H.checks.check_peak_position(np.int64(best), r, layer=-1) is True


# --------------------------------------------------------------------------- non-finite values

def test_a_nan_weight_is_reported_at_the_first_non_finite_site(broken, pairs):
    with pytest.raises(NonFiniteError, match=r"first activation that is not finite is block 1 MLP "
                                             r"output \(transformer.h\[1\].mlp\)"):
        H.patch_residual(broken, pairs)
    for call in (lambda: H.ioi_accuracy(broken, H.random_ioi_prompts(4)),
                 lambda: H.top_predictions(broken, pairs.clean[0]),
                 lambda: H.attribution_patching(broken, pairs),
                 lambda: H.patch_heads(broken, pairs, method="batched"),
                 lambda: H.path_patch(broken, pairs, "heads", "logits"),
                 lambda: H.ablate(broken, pairs, "L0H0", "mean")):
        with pytest.raises(NonFiniteError, match="block 1 MLP output"):
            call()


def test_normalising_non_finite_baselines_blames_the_values_not_the_task():
    with pytest.raises(NonFiniteError, match="not finite"):
        H.normalised(torch.tensor([1.0]), float("nan"), 0.0)


def test_json_files_never_receive_nan(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(NonFiniteError, match=r"at \['grid'\]\[1\]"):
        H.notebook.save_json({"grid": [1.0, float("nan")]}, path)
    assert not path.exists()


def test_a_figure_of_nan_values_is_refused(bundled, pairs):
    r = H.patch_residual(bundled, pairs[:1])
    r.values["logit_diff"][0, 1, 1] = float("inf")
    with pytest.raises(NonFiniteError, match="values to plot"):
        H.plot_patching(r, normalise=False)


# --------------------------------------------------------------------------- loading

def test_folder_with_weights_but_no_tokenizer_is_refused(tmp_path):
    folder = _folder_like_bundled(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(ModelLoadError, match="has weights but no tokenizer"):
        H.load_model(folder)


def test_pickled_weights_are_refused_with_the_conversion_to_safetensors(tmp_path):
    folder = _folder_like_bundled(tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"pytorch_model.bin(.|\n)*unpickling(.|\n)*safe_serialization=True"):
        H.load_model(folder)


def test_relative_path_typos_are_reported_as_missing_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _folder_like_bundled(tmp_path / "models", "ioi")
    with pytest.raises(ModelLoadError, match=r"no folder 'models/ioo'(.|\n)*which has: ioi"):
        H.load_model("models/ioo")
    with pytest.raises(ModelLoadError, match=r"no folder './ioi'"):
        H.load_model("./ioi")


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="cuda"), r"unknown dtype 'cuda'; use one of float32, float64"),
    (dict(dtype="int64"), r"unknown dtype 'int64'"),
    (dict(dtype=torch.int8), r"unknown dtype torch.int8"),
    (dict(device="banana"), r"unknown device 'banana'"),
    (dict(device="cuda:0" if not torch.cuda.is_available() else "cuda:99"), r"device 'cuda:\d+'"),
])
def test_bad_dtype_and_device_are_explained_by_load_model(kwargs, message):
    with pytest.raises(ModelLoadError, match=message):
        H.load_model("ioi-tiny", **kwargs)


# --------------------------------------------------------------------------- notebook parameters

@pytest.mark.parametrize("params, message", [
    ({"n_pairs": "abc"}, r"n_pairs='abc' \(str\) is not an integer: it must be a whole number >= 1, "
                         r"e.g. papermill -p n_pairs 16"),
    ({"n_pairs": 0}, r"n_pairs=0 \(int\) is out of range"),
    ({"corruption": "swap"}, r"corruption='swap' .* one of s2_swap, answer_swap, abc"),
    ({"metric": "accuracy"}, r"metric='accuracy' .* -r metric logit_diff"),
    ({"normalise": "no"}, r"normalise='no' \(str\) is not a bool"),
    ({"layer": 1.5}, r"layer=1.5 \(float\) is not an integer"),
    ({"template": 99}, r"template=99 \(int\) is out of range"),
])
def test_notebook_parameters_are_checked_with_a_valid_example(params, message):
    with pytest.raises(H.notebook.ParameterError, match=message):
        H.notebook.check_parameters(params)


def test_good_notebook_parameters_pass_and_layers_count_from_the_end():
    H.notebook.check_parameters({"n_pairs": 16, "layer": None, "seed": 0, "model_name": "ioi-tiny",
                                 "unrelated": object()})
    assert H.notebook.choose_layer(None, 4) == 2
    assert H.notebook.choose_layer(-1, 4) == 3
    with pytest.raises(H.notebook.ParameterError, match="needs a block from 1 to 3"):
        H.notebook.choose_layer(0, 4, low=1)
    with pytest.raises(H.notebook.ParameterError, match="layer=4 is out of range.*-p layer 2"):
        H.notebook.choose_layer(4, 4)
