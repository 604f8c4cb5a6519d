"""NDIF (the National Deep Inference Fabric): models that run remotely, for ``load_model(...,
remote=True)``.  The model is built here without weights; every trace in helpers is sent to
NDIF (``helpers.models.loaded.ModelHandle.trace_kwargs``).  Rules the traced code follows so that it survives
the trip: whatever leaves a trace is saved inside it (``nnsight.save``), nothing is appended
to containers made outside it, and no trace body calls into ``helpers`` (the server has no
such package): modules are looked up before the ``with`` block."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from helpers.models.anatomy import UnsupportedModelError, family_of
from helpers.models.loaded import attach
from helpers.models.sources import (NAMED_MODELS, TOKENIZER_FILES, ModelLoadError, hub_error,
                                    load_config, load_tokenizer, quiet_transformers, resolve)

__all__ = ["load_remote", "NDIF_KEY_HELP"]


NDIF_KEY_HELP = ("get an API key (free) at https://login.ndif.us, then set it as the environment "
                 "variable NDIF_API_KEY (e.g. os.environ['NDIF_API_KEY'] = '...' before load_model; "
                 "on Colab: add a secret named NDIF_API_KEY and give this notebook access to it), "
                 "or store it once with `import nnsight; nnsight.login()`")


def _ndif_api_key() -> str:
    """The NDIF API key: ``NDIF_API_KEY``, else (only inside Colab) the Colab secret of that
    name, else a key stored with ``nnsight.login()``; ``ModelLoadError`` if there is none."""
    import sys

    key = (os.environ.get("NDIF_API_KEY") or "").strip()
    if not key and "google.colab" in sys.modules:
        try:
            from google.colab import userdata

            key = (userdata.get("NDIF_API_KEY") or "").strip()
        except Exception:  # secret missing or the notebook has no access to it
            key = ""
    if not key:
        from nnsight import CONFIG

        key = (CONFIG.API.APIKEY or "").strip()
    if not key:
        raise ModelLoadError(f"remote=True runs the model on NDIF, which needs an API key: {NDIF_KEY_HELP}.")
    return key


def _ndif_status() -> dict | None:
    """NDIF's ``/status`` answer, or None when NDIF cannot be reached (no network, or down)."""
    import contextlib
    import io

    import nnsight

    with contextlib.redirect_stderr(io.StringIO()):  # nnsight prints "Down" itself when unreachable
        raw = nnsight.status(raw=True)
    return raw or None


def _ndif_deployment(repo_id: str) -> str:
    """The repo id NDIF runs ``repo_id`` under (its canonical spelling); ``ModelLoadError``
    when NDIF cannot be reached or does not have the model.  Asks NDIF now (``/status``,
    as ``nnsight.status()`` and ``nnsight.is_model_running`` do)."""
    import warnings

    from nnsight import CONFIG

    raw = _ndif_status()
    if raw is None:
        raise ModelLoadError(
            f"could not reach NDIF ({CONFIG.API.HOST}) to check that it runs {repo_id!r}: this "
            "machine has no network, or NDIF is down (see https://discuss.ndif.us). remote=True "
            "needs NDIF; to check your code offline, load a small model with remote='local'.")
    found = [d for d in (raw.get("deployments") or {}).values()
             if str(d.get("repo_id", "")).lower() == repo_id.lower()]
    running = [d for d in found if d.get("application_state") == "RUNNING"
               and d.get("deployment_level") in ("HOT", "WARM")]
    if running:
        return str(running[0]["repo_id"])
    if found:
        state = ", ".join(sorted({f"{d.get('deployment_level')}/{d.get('application_state')}"
                                  for d in found}))
        warnings.warn(f"NDIF has {found[0]['repo_id']!r} but it is not running now ({state}): "
                      "requests wait until it is up. nnsight.status() lists what runs now.",
                      stacklevel=3)
        return str(found[0]["repo_id"])
    live = sorted({str(d.get("repo_id")) for d in (raw.get("deployments") or {}).values()
                   if d.get("application_state") == "RUNNING"})
    listing = ", ".join(live[:12]) + (" ..." if len(live) > 12 else "") if live else "nothing"
    raise ModelLoadError(
        f"NDIF does not run {repo_id!r} (it runs now: {listing}). Pick one of those (print("
        "nnsight.status()) shows them), or run a model that fits here without remote=True.")


def load_remote(name: str | os.PathLike, device: Any, dtype: Any, ndif_id: str | None) -> Any:
    """``load_model(name, remote=True)``: the model's structure without weights, for NDIF."""
    import nnsight
    from nnsight import CONFIG
    from nnsight.modeling.transformers import TransformersModel

    text = str(name)
    if text in NAMED_MODELS:
        raise ModelLoadError(
            f"{text!r} is a model that runs on this machine; remote=True runs a model NDIF hosts "
            "(e.g. 'meta-llama/Llama-3.1-8B', see nnsight.status()). To check offline that code "
            f"would survive the trip to NDIF, use load_model({text!r}, remote='local').")
    if device is not None or dtype is not None:
        raise ModelLoadError("with remote=True NDIF chooses the device and dtype the model runs in "
                             "(bfloat16 on its GPUs): leave device= and dtype= unset")
    key = _ndif_api_key()
    source, local = resolve(name)
    if local and not ndif_id:
        raise ModelLoadError(
            f"the folder {text!r} gives the model's structure and tokenizer, but NDIF runs models "
            "by their hub id: say which one, e.g. load_model(folder, remote=True, "
            "ndif_id='meta-llama/Llama-3.1-8B')")
    if ndif_id is not None and (ndif_id.count("/") != 1 or ndif_id.startswith(("/", ".", "~"))
                                or ndif_id.endswith("/")):
        raise ModelLoadError(f"ndif_id must be a hub id 'organisation/name', got {ndif_id!r}")
    if local and not any((Path(source) / f).exists() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"the folder {text!r} has no tokenizer: save it next to config.json "
                             "(AutoTokenizer.from_pretrained(hub_id).save_pretrained(folder))")
    repo_id = ndif_id or source
    config = load_config(source, local, remote=True)
    try:
        family_of(config)
    except UnsupportedModelError as err:
        raise ModelLoadError(f"{text!r}: {err}") from None
    try:
        with quiet_transformers():
            tokenizer = load_tokenizer(source, local)
    except Exception as err:
        if local:
            raise ModelLoadError(f"could not load the tokenizer in {source!r}: {err}") from err
        raise hub_error(err, source, "tokenizer", remote=True) from err
    if not tokenizer("The cat", add_special_tokens=False)["input_ids"]:
        raise ModelLoadError(f"the tokenizer of {text!r} turns text into no tokens")
    canonical = _ndif_deployment(repo_id)
    with quiet_transformers():
        # No weights: nnsight builds the module tree on the meta device from the config.
        # Eager attention: nnsight sends the implementation with every request, so the server
        # returns attention weights (helpers.methods.observe.attention_patterns).
        model = TransformersModel(source, task="text-generation", tokenizer=tokenizer,
                                  attn_implementation="eager")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The model is named on NDIF by its canonical hub id (also for a folder); telling nnsight
    # the canonical spelling spares it a hub request per trace to look it up.
    model.repo_id = canonical
    ids = getattr(nnsight.modeling.huggingface, "_ID_CACHE", None)
    if isinstance(ids, dict):
        ids[canonical] = canonical
    # Never load the weights here: a trace sent without remote= would otherwise download the
    # whole checkpoint (16 GB for Llama-3.1-8B); marked dispatched, it runs on meta tensors.
    model.dispatched = True
    CONFIG.API.APIKEY = key
    attach(model, canonical, True)
    return model


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
