"""Every notebook, run headlessly through papermill with non-default parameters.

nbval (run by scripts/test.sh over notebooks/) checks the stored outputs of the default
run; these tests check that the parameters really drive the notebooks: another prompt
set, seed and layer on the bundled model, the GPT-2 stand-in (real tokenizer, random
GPT-2-small weights, raw logit differences), a tiny random Llama (another model family: every
module a chapter touches by hand must come from the model's anatomy), and a nonexistent model
(the clear error). Results go to a temporary folder.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]

pytestmark = pytest.mark.notebooks


def _run(nb: Path, tmp_path: Path, **params) -> dict:
    import papermill as pm

    out_dir = tmp_path / "outputs"
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), parameters={"output_dir": str(out_dir),
                        "show_widgets": False, **params}, kernel_name="python3",
                        cwd=str(nb.parent), progress_bar=False)
    return json.loads((out_dir / nb.stem / "results.json").read_text())


def _default(nb: Path, name: str):
    """The default a notebook's parameters cell gives ``name``."""
    import ast

    import nbformat

    cell = next(c for c in nbformat.read(nb, as_version=4).cells
                if "parameters" in c.metadata.get("tags", []))
    for node in ast.parse(cell.source).body:
        target = getattr(node, "target", None) or (getattr(node, "targets", [None])[0])
        if getattr(target, "id", None) == name:
            return ast.literal_eval(node.value)
    raise KeyError(name)


def _finite(value) -> bool:
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


BUNDLED = ("ioi-tiny", "refusal-tiny")
#: chapters whose default model is the real pretrained SmolLM2 (nbval runs them on it with their
#: defaults); the parameter test runs them on the bundled ioi-tiny instead
REAL_MODEL = [nb for nb in NOTEBOOKS if _default(nb, "model_name") == "smollm2-135m"]


def test_there_are_six_or_more_chapters():
    assert len(NOTEBOOKS) >= 6, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_notebook_follows_its_parameters_on_the_bundled_model(nb, tmp_path):
    bundled = _default(nb, "model_name")
    if nb in REAL_MODEL:  # a chapter about the real model must still run on the bundled one
        bundled = "ioi-tiny"
    res = _run(nb, tmp_path, seed=3, n_pairs=6, template=2, layer=1, model_name=bundled)
    assert res["chapter"] == nb.stem
    assert bundled in BUNDLED
    assert (res["model"], res["seed"], res["n_pairs"], res["template"]) == (bundled, 3, 6, 2)
    assert res["layer"] in (1, None)
    assert res["clean_logit_diff"] > 2 and res["corrupted_logit_diff"] < -2
    assert _finite(res)


@pytest.mark.slow
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_notebook_runs_on_the_gpt2_standin(nb, tmp_path, gpt2_standin_dir):
    res = _run(nb, tmp_path, model_name=str(gpt2_standin_dir), normalise=False, n_pairs=2)
    assert res["model"] == Path(gpt2_standin_dir).name  # a folder name, never a full path
    assert res["normalise"] is False and res["n_pairs"] == 2
    assert str(gpt2_standin_dir) not in json.dumps(res)
    # random weights: the two runs differ, but only a little
    assert abs(res["clean_logit_diff"] - res["corrupted_logit_diff"]) < 2


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


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_notebook_runs_on_a_tiny_llama(nb, tmp_path, tiny_llama_dir):
    res = _run(nb, tmp_path, model_name=str(tiny_llama_dir), normalise=False, n_pairs=2)
    assert res["model"] == Path(tiny_llama_dir).name  # a folder name, never a full path
    assert res["normalise"] is False and res["n_pairs"] == 2
    assert str(tiny_llama_dir) not in json.dumps(res)
    assert _finite(res)
    # random weights: the two runs differ, but only a little
    assert abs(res["clean_logit_diff"] - res["corrupted_logit_diff"]) < 2


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_notebook_with_a_nonexistent_model_fails_with_the_clear_error(nb, tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as info:
        _run(nb, tmp_path, model_name="no-such-model")
    assert info.value.ename == "ModelLoadError"
    assert "unknown model 'no-such-model'" in info.value.evalue


@pytest.mark.slow
@pytest.mark.xdist_group("smollm2")  # one conversion of the real model per run
@pytest.mark.parametrize("nb", [nb for nb in NOTEBOOKS if nb not in REAL_MODEL],
                         ids=[nb.stem for nb in NOTEBOOKS if nb not in REAL_MODEL])
def test_notebook_runs_on_smollm2(nb, tmp_path, smollm2_cache):
    """A real pretrained Llama-family model (chapters whose default it is run on it in nbval,
    with their default parameters). Chapter 7's refusal task needs one-token answers,
    and SmolLM2's tokenizer splits " Sorry" in two: that chapter must fall back to the task's
    one-token alternatives (``answer_options``), say which it used, and still run."""
    import helpers as H

    res = _run(nb, tmp_path, model_name="smollm2-135m", n_pairs=2)
    assert res["model"] == "smollm2-135m" and res["n_pairs"] == 2 and _finite(res)
    if nb.stem.startswith("07"):
        positive, negative = res["answers"]
        assert positive != "Sorry", "' Sorry' is two tokens for SmolLM2: it cannot be the answer"
        assert positive in H.REFUSAL.answer_options[0] and negative in (H.REFUSAL.answers[1],
                                                                         *H.REFUSAL.answer_options[1])
        return
    assert res["clean_logit_diff"] > 1 and res["corrupted_logit_diff"] < -1  # it does the task
