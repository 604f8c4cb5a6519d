"""Test-wide settings and shared fixtures.

At import (before torch / transformers are imported anywhere in the test run):
* every hub access is switched off (no machine here can download models);
* torch uses one thread per process: ``scripts/test.sh`` runs two pytest-xdist workers on a
  2-core machine, and one thread also makes results bit-reproducible. Jupyter kernels started
  by the tests (papermill, nbval) inherit ``OMP_NUM_THREADS=1`` / ``MKL_NUM_THREADS=1``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PATCHLAB_PROGRESS": "0",  # no progress bars in tests or in the kernels they start
}.items():
    os.environ[_name] = _value
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent

# `import standin` (and other helper modules in tests/) works whatever pytest's import mode.
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder (the one holding pyproject.toml)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def gpt2_standin_dir(tmp_path_factory) -> Path:
    """A saved, randomly initialised GPT-2 small (124M) with GPT-2's real tokenizer, seed 0.

    Built once per session; under pytest-xdist each worker builds its own copy in its own
    temporary folder (about 10 s and 0.5 GB of disk each). Load it offline with
    ``GPT2LMHeadModel.from_pretrained(path)`` / ``nnsight.TransformersModel(str(path))``.
    """
    from standin import build_gpt2_standin

    return build_gpt2_standin(tmp_path_factory.mktemp("gpt2-standin") / "gpt2-small", seed=0)


# --------------------------------------------------------------------------- NDIF, served here

@pytest.fixture
def helpers_by_reference(monkeypatch):
    """Requests refer to helpers by name, as from a pip-installed package: nnsight ships a
    package's code with a request (``nnsight.register``) when it finds it in the working tree
    rather than installed (``pull_env``), which would hide rule (c)'s violations."""
    import cloudpickle.cloudpickle as cp
    from nnsight.ndif import pull_env

    pull_env()  # once per process: done now, so it registers nothing later in the test
    kept = {m for m in cp._PICKLE_BY_VALUE_MODULES if m != "helpers" and not m.startswith("helpers.")}
    monkeypatch.setattr(cp, "_PICKLE_BY_VALUE_MODULES", kept)


@pytest.fixture
def strict(monkeypatch):
    """``remote="local"`` traces served like NDIF serves them, with helpers hidden
    (``tests/ndif_local.py``)."""
    from ndif_local import serve_strictly

    serve_strictly(monkeypatch)


# --------------------------------------------------------------------------- models

@pytest.fixture(scope="session")
def bundled():
    """The bundled IOI model (float32), loaded offline."""
    import helpers

    return helpers.load_model("ioi-tiny")


@pytest.fixture(scope="session")
def bundled64():
    """The bundled IOI model in float64, for comparisons at 1e-5."""
    import helpers

    return helpers.load_model("ioi-tiny", dtype="float64")


@pytest.fixture(scope="session")
def bundled_plain64():
    """The bundled model as a plain transformers model (no nnsight), float64: for the
    independent hook-based reference."""
    from transformers import GPT2LMHeadModel

    from helpers.organism import BUNDLED_MODELS

    return GPT2LMHeadModel.from_pretrained(BUNDLED_MODELS["ioi-tiny"], dtype=torch.float64).eval()


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """GPT-2's real tokenizer, built from the files in tests/fixtures/gpt2-tokenizer."""
    from standin import build_gpt2_tokenizer

    return build_gpt2_tokenizer()


@pytest.fixture(scope="session")
def random_models(tmp_path_factory, gpt2_tokenizer):
    """Saved folders of a random 3-block GPT-2 and a random 3-block Llama (grouped-query
    attention) with GPT-2's tokenizer: the path-patching and edge-attribution tests' models."""
    from tiny_models import save_random_model

    eos, vocab = gpt2_tokenizer.eos_token_id, len(gpt2_tokenizer)
    root = tmp_path_factory.mktemp("random-models")
    common = dict(tokenizer=gpt2_tokenizer, vocab_size=vocab, bos_token_id=eos, eos_token_id=eos,
                  pad_token_id=eos)
    return {"gpt2": save_random_model(root / "gpt2", "gpt2", seed=1, n_layer=3, **common),
            "llama": save_random_model(root / "llama", "llama", seed=2, num_hidden_layers=3, **common)}


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """A cache folder holding SmolLM2-135M converted, which ``PATCHLAB_CACHE`` then points at for
    this process and the kernels it starts. The cache ``scripts/setup.sh`` filled (the one
    ``load_model("smollm2-135m")`` uses) when it holds a current conversion: only read, never
    written (``prepare`` returns a current folder at once). Otherwise the model is converted
    once per session (per xdist worker) into a temporary cache, never the user's: about a
    minute. Needs the wheel that scripts/setup.sh installs."""
    from helpers.models import gguf

    name = "smollm2-135m"
    user = gguf.cache_root()
    if gguf._is_current(user / name, gguf.REGISTRY[name]):
        cache = user
    else:
        cache = tmp_path_factory.mktemp("patchlab-cache")
        gguf.prepare(name, cache_dir=cache, progress=lambda _: None)
    os.environ["PATCHLAB_CACHE"] = str(cache)
    return cache


# --------------------------------------------------------------------------- scheduling

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Long items first: the slow tier, then the chapter runs (nbval cells, papermill and
    in-process runs), then the rest, each in its collected order (a notebook's nbval cells stay
    in order). Two xdist workers then start on the long groups and fill in with short tests, so
    neither idles at the end while the other runs a long chapter."""
    def rank(item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return 1 if item.get_closest_marker("notebooks") else 2

    items.sort(key=rank)
