"""Every chapter, run with non-default parameters and on other models than its default.

nbval (run by scripts/test.sh over notebooks/) checks the stored outputs of the default run;
these tests check that the parameters really drive the chapters. Each chapter runs:

* on its bundled model with another prompt set, seed, template and layer, with
  ``remote="local"`` and every trace served as NDIF would serve it with helpers hidden
  (``strict``): the parameters reach the results file and every hand-written trace survives the
  trip (chapters whose path patching runs on local models only stop there with the clear
  refusal, checked separately, and run their parameter check locally);
* on a tiny random Llama (another family: grouped-query attention, RMSNorm, rotary positions,
  GPT-2's byte-level tokenizer): every module a chapter touches by hand comes from the anatomy;
* (slow tier) on a random GPT-2 with GPT-2 small's grid (12 blocks x 12 heads, 1024 positions) and GPT-2's
  real tokenizer, narrow (d_model 96) so it runs in seconds: GPT-2's module paths with a
  byte-level vocabulary and GPT-2 small's figure and table shapes (the full-width stand-in's
  memory is measured by benchmarks/chapter_memory.py, not here);
* through papermill with a nonexistent model: the injected parameter reaches the chapter, which
  stops with the clear error (slow tier: the real SmolLM2, for the chapters listed in SMOLLM2).

The in-process runs (``tests/chapter_runner.py``) start no kernel; results go to a temporary
folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from chapter_runner import NOTEBOOKS, default_parameter, finite, run_chapter

IDS = [p.stem for p in NOTEBOOKS]
pytestmark = pytest.mark.notebooks

BUNDLED = ("ioi-tiny", "refusal-tiny")
#: chapters whose default model is the real pretrained SmolLM2 (nbval runs them on it with their
#: defaults); the parameter test runs them on the bundled ioi-tiny instead
REAL_MODEL = [nb for nb in NOTEBOOKS if default_parameter(nb, "model_name") == "smollm2-135m"]
#: chapters that stop, with this error, at a helper that does not run on remote models yet
LOCAL_ONLY = {"09": "path patching runs on a local model only for now",
              "10": "run on a local model only for now",
              "11": "run on a local model only"}


def _bundled(nb: Path) -> str:
    return "ioi-tiny" if nb in REAL_MODEL else default_parameter(nb, "model_name")


def _results(out: Path) -> dict:
    found = list(out.glob("*/results.json"))
    assert len(found) == 1, f"wrote {found}"
    return json.loads(found[0].read_text())


def test_there_are_six_or_more_chapters():
    assert len(NOTEBOOKS) >= 6, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_chapter_follows_its_parameters_and_runs_as_ndif_would(nb, tmp_path, strict):
    from helpers.models import remote_mode

    remote = "local" if nb.stem[:2] not in LOCAL_ONLY else False
    bundled = _bundled(nb)
    ns = run_chapter(nb, dict(seed=3, n_pairs=6, template=2, layer=1, model_name=bundled,
                              remote=remote, show_widgets=False, output_dir=str(tmp_path)))
    res = _results(tmp_path)
    assert res["chapter"] == nb.stem and bundled in BUNDLED
    assert (res["model"], res["seed"], res["n_pairs"], res["template"]) == (bundled, 3, 6, 2)
    assert res["layer"] in (1, None)
    assert res["clean_logit_diff"] > 2 and res["corrupted_logit_diff"] < -2
    assert finite(res)
    assert res["remote"] == remote and remote_mode(ns["model"]) == remote


@pytest.mark.parametrize("nb", [nb for nb in NOTEBOOKS if nb.stem[:2] in LOCAL_ONLY],
                         ids=[nb.stem for nb in NOTEBOOKS if nb.stem[:2] in LOCAL_ONLY])
def test_a_local_only_chapter_stops_with_the_clear_refusal_under_remote_local(nb, tmp_path, strict):
    """Its hand-written traces run as NDIF would; then the helper that needs the weights here
    refuses, saying so."""
    with pytest.raises(ValueError, match=LOCAL_ONLY[nb.stem[:2]]):
        run_chapter(nb, dict(remote="local", n_pairs=4, model_name=_bundled(nb), show_widgets=False,
                             output_dir=str(tmp_path)))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A tiny random Llama (2 blocks, d_model 64, 4 query heads sharing 2 key/value heads), seed 0,
    saved as safetensors with GPT-2's real tokenizer, so the IOI names and the refusal words are
    single tokens. The vocabulary is GPT-2's 50257 tokens, so d_model stays small: the embedding and
    the unembedding hold almost all of its 6.5 M weights. Built once per session (per xdist worker)."""
    from tiny_models import save_random_model

    eos = gpt2_tokenizer.eos_token_id
    return save_random_model(tmp_path_factory.mktemp("tiny-llama") / "tiny-llama", "llama", seed=0,
                             tokenizer=gpt2_tokenizer, vocab_size=len(gpt2_tokenizer), hidden_size=64,
                             intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256,
                             bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)


@pytest.fixture(scope="session")
def gpt2_grid_dir(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A random GPT-2 with GPT-2 small's 12 blocks x 12 heads and 1024 positions, d_model 96
    (d_head 8), GPT-2's real tokenizer and vocabulary, seed 0 (5 M weights, mostly embeddings)."""
    from tiny_models import save_random_model

    eos = gpt2_tokenizer.eos_token_id
    return save_random_model(tmp_path_factory.mktemp("gpt2-grid") / "gpt2-grid", "gpt2", seed=0,
                             tokenizer=gpt2_tokenizer, vocab_size=len(gpt2_tokenizer), n_embd=96,
                             n_layer=12, n_head=12, n_inner=384, n_positions=1024,
                             bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)


def _runs_on(nb: Path, tmp_path: Path, model_dir: Path) -> dict:
    run_chapter(nb, dict(model_name=str(model_dir), normalise=False, n_pairs=2, show_widgets=False,
                         output_dir=str(tmp_path)))
    res = _results(tmp_path)
    assert res["model"] == Path(model_dir).name  # a folder name, never a full path
    assert res["normalise"] is False and res["n_pairs"] == 2
    assert str(model_dir) not in json.dumps(res)
    assert finite(res)
    # random weights: the two runs differ, but only a little
    assert abs(res["clean_logit_diff"] - res["corrupted_logit_diff"]) < 2
    return res


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_chapter_runs_on_a_tiny_llama(nb, tmp_path, tiny_llama_dir):
    _runs_on(nb, tmp_path, tiny_llama_dir)


@pytest.mark.slow
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_chapter_runs_on_gpt2_with_gpt2_smalls_grid_and_tokenizer(nb, tmp_path, gpt2_grid_dir):
    _runs_on(nb, tmp_path, gpt2_grid_dir)


#: papermill starts a kernel per chapter (~10 s each): the fast tier keeps chapter 1's, the full
#: suite runs every chapter's
PAPERMILL_CASES = [pytest.param(nb, id=nb.stem, marks=() if i == 0 else pytest.mark.slow)
                   for i, nb in enumerate(NOTEBOOKS)]


@pytest.mark.parametrize("nb", PAPERMILL_CASES)
def test_notebook_with_a_nonexistent_model_fails_with_the_clear_error(nb, tmp_path):
    """Through papermill, as a researcher runs it: the injected parameter reaches the chapter."""
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as info:
        pm.execute_notebook(str(nb), str(tmp_path / nb.name), kernel_name="python3",
                            parameters={"model_name": "no-such-model", "show_widgets": False,
                                        "output_dir": str(tmp_path / "outputs")},
                            cwd=str(nb.parent), progress_bar=False)
    assert info.value.ename == "ModelLoadError"
    assert "unknown model 'no-such-model'" in info.value.evalue


#: Chapters run on the real SmolLM2 besides those whose default it is (nbval runs those). Chapter
#: 7 because SmolLM2's tokenizer splits " Sorry" in two: it must fall back to the task's one-token
#: alternatives (``answer_options``), say which it used, and still run. Chapter 1 because it is where
#: a real model's roles, tokens and behaviour are read first. The other chapters' code paths on a
#: Llama-family model are those of the tiny Llama above (every chapter), and a real pretrained
#: Llama's behaviour is chapter 10's (and chapter 11's second part).
SMOLLM2 = [nb for nb in NOTEBOOKS if nb.stem[:2] in ("01", "07")]


@pytest.mark.slow
@pytest.mark.xdist_group("smollm2")
@pytest.mark.parametrize("nb", SMOLLM2, ids=[nb.stem for nb in SMOLLM2])
def test_chapter_runs_on_smollm2(nb, tmp_path, smollm2_cache):
    import helpers as H

    run_chapter(nb, dict(model_name="smollm2-135m", n_pairs=2, show_widgets=False,
                         output_dir=str(tmp_path)))
    res = _results(tmp_path)
    assert res["model"] == "smollm2-135m" and res["n_pairs"] == 2 and finite(res)
    if nb.stem.startswith("07"):
        positive, negative = res["answers"]
        assert positive != "Sorry", "' Sorry' is two tokens for SmolLM2: it cannot be the answer"
        assert positive in H.REFUSAL.answer_options[0] and negative in (H.REFUSAL.answers[1],
                                                                         *H.REFUSAL.answer_options[1])
        return
    assert res["clean_logit_diff"] > 1 and res["corrupted_logit_diff"] < -1  # it does the task
