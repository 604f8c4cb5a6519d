"""The newer API refuses bad input as clearly as the sweeps do (issue 25): ablations, knockout,
statistics, circuit evaluation, prompt generation, results and the chapters' parameters, each
called as a new user would, with the bundled model.  Every case is one bad input and the words
its error must contain (what was wrong, and the fix); the rules themselves are tested over
every public function in ``tests/test_input_rules.py``."""
from __future__ import annotations

import pytest
import torch

import helpers as H
from helpers.base.validate import InputSizeError, UnusedArgumentError
from helpers.circuits import ioi_classes
from helpers.models import hf_model
from helpers.results import stats as S
from helpers.results.stats import TooFewPromptsError


@pytest.fixture(scope="module")
def pairs(bundled):
    return H.ioi_pairs(bundled.tokenizer, n=4, seed=1)


@pytest.fixture(scope="module")
def resid(bundled, pairs):
    return H.patch_residual(bundled, pairs, metrics=("logit_diff",))


def _other_order(bundled, pairs):
    """ABC prompts of the same template and length as ``pairs`` with IO and S1 swapped places."""
    other = H.ioi_pairs(bundled.tokenizer, n=2, corruption="abc", order="BABA")
    assert other.seq_len == pairs.seq_len and other.positions != pairs.positions
    return other


CASES = {
    # string choices: case and typos refused, the valid ones listed
    "baseline('Clean')": (lambda m, p, r: r.baseline("Clean"), ValueError,
                          r"run='Clean' is not a valid choice: did you mean 'clean'\?.*case-sensitive"),
    "knockout_patterns run typo": (lambda m, p, r: H.knockout_patterns(m, p, [("L1H0", "END", "S2")], 1,
                                                                       run="corupted"),
                                   ValueError, r"did you mean 'corrupted'\?"),
    "mean('logit-diff')": (lambda m, p, r: r.mean("logit-diff"), ValueError,
                           r"did you mean 'logit_diff'\?.*'answer_prob'"),
    "score of a metric not computed": (lambda m, p, r: r.score("kl_to_clean"), ValueError,
                                       r"this result has no metric 'kl_to_clean'; it has \['logit_diff'\]"),
    "importance metric typo": (lambda m, p, r: r.importance("answer-prob"), ValueError,
                               "did you mean 'answer_prob'"),
    "ablate kind 'Mean'": (lambda m, p, r: H.ablate(m, p, ["L0H1"], "Mean"), ValueError,
                           r"kind='Mean' .* did you mean 'mean'\?"),
    "stats correction typo": (lambda m, p, r: r.stats(correction="Holm"), ValueError,
                              "did you mean 'holm'"),
    # arguments used or refused
    "reference with the zero ablation": (lambda m, p, r: H.ablate(m, p, ["L0H1"], "zero", reference=p),
                                         UnusedArgumentError, r"reference= has no effect.*kind='zero'"),
    "seed with the mean ablation": (lambda m, p, r: H.ablate(m, p, ["L0H1"], "mean", seed=3),
                                    UnusedArgumentError, "seed= has no effect"),
    "resample_reference without resample": (lambda m, p, r: H.compare_ablations(
        m, p, ["L0H1"], ("mean",), resample_reference=p), UnusedArgumentError, "resample_reference="),
    "knockout edge to a later key": (lambda m, p, r: H.knockout(m, p, [("L1H0", "S1", "END")]),
                                     ValueError, "cannot attend to the later key"),
    # thresholds are fractions
    "faithful_at=80": (lambda m, p, r: H.compare_ablations(m, p, ["L0H1"], faithful_at=80),
                       ValueError, "faithful_at=80 .* percentage; write faithful_at=0.8"),
    "minimal_circuit threshold=80": (lambda m, p, r: H.minimal_circuit(m, p, threshold=80),
                                     ValueError, "write threshold=0.8"),
    # statistics and ablations that cannot mean anything
    "stats of one prompt": (lambda m, p, r: H.patch_residual(m, p[:1]).stats(), TooFewPromptsError,
                            "at least 2 prompts, got 1"),
    "mean ablation over one prompt": (lambda m, p, r: H.ablate(m, p[:1], ["L0H1"], "mean"), ValueError,
                                      "needs at least 2 prompts: the mean of one prompt is that prompt"),
    # inputs that must belong together
    "mean reference with its roles elsewhere": (lambda m, p, r: H.ablate(
        m, p, ["L0H1"], "mean", reference=_other_order(m, p)), ValueError,
        "roles at .* these pairs at .* same template and order"),
    "reference given as text": (lambda m, p, r: H.ablate(m, p, ["L0H1"], "mean", reference="John"),
                                TypeError, "reference must be PromptPairs .* or a \\[n_ref, seq\\] tensor"),
    # sizes bounded by the memory they would take
    "ioi_pairs(n=10**7)": (lambda m, p, r: H.ioi_pairs(m.tokenizer, n=10**7), InputSizeError,
                           r"n=10000000 prompt pairs would take about .* GB of memory"),
    "n_boot=10**9": (lambda m, p, r: r.stats(n_boot=10**9), InputSizeError,
                     r"n_boot=1000000000 .* would take about 64 GB of memory"),
    "random_ioi_prompts(10**9)": (lambda m, p, r: H.random_ioi_prompts(10**9), InputSizeError, "prompts"),
    # raw errors from below become clear ones
    "seed='abc' (ablate)": (lambda m, p, r: H.ablate(m, p, ["L0H1"], "resample", seed="abc"), TypeError,
                            "seed must be an integer, got 'abc'"),
    "seed='abc' (random prompts)": (lambda m, p, r: H.random_ioi_prompts(4, seed="abc"), TypeError,
                                    "seed must be an integer"),
    "alpha='0.05'": (lambda m, p, r: r.stats(alpha="0.05"), TypeError,
                     r"alpha must be .* write alpha=0.05 \(a number, not the text '0.05'\)"),
    "an edge written as one string": (lambda m, p, r: H.knockout(m, p, "L1H0 END S2"), TypeError,
                                      "edges must be a list, got the string .* one character at a time"),
    "a circuit written as one string": (lambda m, p, r: ioi_classes.compare_circuits(m, p, {"c": "L0H1 L1H0"}),
                                        TypeError, r"circuits\['c'\] must be a list, got the string"),
    "the transformers model itself": (lambda m, p, r: H.patch_residual(hf_model(m), p), TypeError,
                                      "got the transformers model itself .* helpers.load_model"),
    "bootstrap of zero resamples": (lambda m, p, r: S.bootstrap_indices(4, n_boot=0), ValueError,
                                    "n_boot must be at least 1, got 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_a_clear_error(bundled, pairs, resid, case):
    call, kind, message = CASES[case]
    with pytest.raises(kind, match=message):
        call(bundled, pairs, resid)


def test_one_prompt_results_save_without_statistics_and_say_why(bundled, pairs):
    out = H.patch_residual(bundled, pairs[:1]).to_dict()
    assert out["stats"] is None and "at least 2" in out["stats_note"]


def test_pairs_built_for_another_vocabulary_are_refused(bundled, pairs, gpt2_tokenizer):
    other = H.ioi_pairs(gpt2_tokenizer, n=2)
    with pytest.raises(H.PromptError, match="another vocabulary than this model's"):
        H.patch_residual(bundled, other)
    ids = other[:]
    ids.clean_ids = ids.clean_ids % H.model_facts(bundled).vocab_size  # ids in range, wrong words
    ids.corrupted_ids = ids.corrupted_ids % H.model_facts(bundled).vocab_size
    with pytest.raises(H.PromptError, match="another vocabulary"):
        H.ablate(bundled, ids, ["L0H1"])


def test_the_fingerprint_belongs_to_the_vocabulary_not_to_the_tokenizer_object(bundled, pairs):
    from transformers import AutoTokenizer

    from helpers.base.validate import vocab_fingerprint
    from helpers.organism import BUNDLED_MODELS

    twin = AutoTokenizer.from_pretrained(BUNDLED_MODELS["ioi-tiny"])
    assert twin is not bundled.tokenizer
    assert vocab_fingerprint(twin) == vocab_fingerprint(bundled.tokenizer) == pairs.vocab
    built = H.ioi_pairs(twin, n=2, seed=1)
    H.baselines(bundled, built)  # same vocabulary: accepted
    twin.add_tokens(["zzzqx"])
    assert vocab_fingerprint(twin) != pairs.vocab


def test_a_mean_reference_from_the_same_template_and_order_is_accepted(bundled, pairs):
    abc = H.ioi_pairs(bundled.tokenizer, n=3, corruption="abc", seed=5)
    r = H.ablate(bundled, pairs, ["L0H1"], "mean", reference=abc)
    assert r.values["logit_diff"].shape == (len(pairs), 1)


@pytest.mark.parametrize("params, chapter, message", [
    ({"n_pairs": 1}, "09_path_patching", r"n_pairs=1 \(int\) is too small for this chapter: it must be "
                                         r"at least 2 here, e.g. papermill -p n_pairs 16"),
    ({"n_pairs": 1}, "10_real_model_circuit", "at least 2 here"),
    ({"threshold": 80}, "07_refusal_circuit", r"threshold=80 \(int\) is out of range"),
])
def test_chapter_parameters_are_checked_for_what_that_chapter_needs(params, chapter, message):
    with pytest.raises(H.notebook.ParameterError, match=message):
        H.notebook.check_parameters(params, chapter)
    H.notebook.check_parameters({**params, "n_pairs": 2, "threshold": 0.8}, chapter)


@pytest.mark.parametrize("layer, chapter", [(99, "09_path_patching"), (0, "09_path_patching"),
                                            (99, "10_real_model_circuit"), (-9, "05_noising")])
def test_a_chapters_layer_is_checked_against_the_model_right_after_it_loads(bundled, layer, chapter):
    H.notebook.check_parameters({"layer": layer}, chapter)  # no model yet: any integer may fit
    with pytest.raises(H.notebook.ParameterError, match=f"layer={layer}"):
        H.notebook.check_parameters({"layer": layer}, chapter, bundled)
    H.notebook.check_parameters({"layer": 1}, chapter, bundled)


def test_the_output_folder_is_checked_first_and_only_created_by_the_first_save(tmp_path):
    out = H.notebook.output_dir(tmp_path / "outputs", "09_path_patching")
    assert not out.exists()
    H.notebook.save_json({"a": 1}, out / "results.json")
    assert out.is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(H.notebook.ParameterError, match="cannot be created .* is a file"):
        H.notebook.output_dir(tmp_path / "file" / "outputs", "09_path_patching")


def test_a_dtype_typo_is_reported_before_any_conversion(monkeypatch):
    from helpers.models import loading

    monkeypatch.setattr(loading, "prepare", lambda name: pytest.fail("converted before checking"))
    with pytest.raises(H.ModelLoadError, match="unknown dtype 'flaot32'"):
        H.load_model("smollm2-135m", dtype="flaot32")


def test_an_impossible_cache_is_one_error_naming_patchlab_cache(tmp_path, monkeypatch):
    import helpers.models.gguf as gm

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("PATCHLAB_CACHE", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(gm, "_installed", lambda entry: (tmp_path / "x.gguf", entry.version))
    monkeypatch.setattr(gm, "_sha256", lambda path: gm.REGISTRY["smollm2-135m"].sha256)
    monkeypatch.setattr(gm, "_missing_converters", lambda: [])
    monkeypatch.setattr(gm, "_convert", lambda gguf, out: pytest.fail("converted"))
    with pytest.raises(H.ModelLoadError, match=r"cannot write the model cache .* PATCHLAB_CACHE"):
        gm.prepare("smollm2-135m", progress=lambda _: None)


def test_truncated_or_damaged_cache_files_are_found_from_their_stamp(tmp_path):
    """Without the wheel the damaged copy is reported with the command that clears it; the
    check reads sizes and the safetensors header only."""
    import json

    import helpers.models.gguf as gm
    from safetensors.torch import save_file

    entry = gm.REGISTRY["smollm2-135m"]
    folder = tmp_path / "smollm2-135m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer.json").write_text("{}")
    save_file({"w": torch.zeros(64)}, str(folder / "model.safetensors"))
    (folder / gm.MANIFEST).write_text(json.dumps({**gm._manifest(entry), "sizes": gm._sizes(folder)}))
    assert gm._problem(folder, entry) is None
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-16])  # cut short
    assert "other sizes" in gm._problem(folder, entry)
    (folder / gm.MANIFEST).write_text(json.dumps({**gm._manifest(entry), "sizes": gm._sizes(folder)}))
    assert "cut short or damaged" in gm._problem(folder, entry)  # a stamp rewritten to match
    (folder / "config.json").write_text('{"model_type": ')
    assert "config.json cannot be read" in gm._problem(folder, entry)
