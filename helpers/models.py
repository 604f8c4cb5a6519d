"""Loading models: the bundled organism, a Hugging Face hub id, or a local folder.

``load_model`` returns an ``nnsight`` model wrapping a ``transformers``
``GPT2LMHeadModel`` in eval mode with gradients off, loaded from safetensors
and never with remote code.  ``model_facts`` reads the shapes every sweep needs.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from helpers.organism import BUNDLED_MODELS

__all__ = ["DEFAULT_MODEL", "ModelLoadError", "ModelFacts", "load_model", "model_facts",
           "hf_model", "SUPPORTED_MODEL_TYPES"]

DEFAULT_MODEL = "ioi-tiny"
SUPPORTED_MODEL_TYPES = ("gpt2",)
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


@dataclass(frozen=True)
class ModelFacts:
    """Shapes of a GPT-2-family model: ``d_head = d_model // n_heads``."""

    name: str  # bundled name, hub id, or a local folder's name (never its full path)
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    vocab_size: int
    n_positions: int
    device: torch.device
    dtype: torch.dtype


def _resolve(name: str | os.PathLike) -> tuple[str, bool]:
    """(where to load from, is it local?)"""
    text = str(name)
    if text in BUNDLED_MODELS:
        return str(BUNDLED_MODELS[text]), True
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"the folder {text!r} has no config.json: save a model there with "
                                 "model.save_pretrained(folder) and tokenizer.save_pretrained(folder)")
        return str(path), True
    if text in HUB_ALIASES:
        return HUB_ALIASES[text], False
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return text, False
    raise ModelLoadError(
        f"unknown model {text!r}: not a bundled model ({', '.join(BUNDLED_MODELS)}), not a folder, "
        f"and not a hub id of the form 'organisation/name'. Use load_model('{DEFAULT_MODEL}') for "
        "the bundled offline model, 'openai-community/gpt2' for GPT-2 small (needs the network or "
        "a cached copy), or the path of a folder written by save_pretrained.")


def _offline_hint(source: str) -> str:
    return (f"could not load {source!r} from the Hugging Face hub: this machine cannot reach it "
            f"and no cached copy was found. Use the bundled offline model with "
            f"load_model('{DEFAULT_MODEL}'), download the model on a machine with network access "
            "(it is then cached under ~/.cache/huggingface and loads with HF_HUB_OFFLINE=1), or "
            "pass the path of a folder written by save_pretrained.")


def _load_config(source: str, local: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=local)
    except Exception as err:  # the hub client raises many types; classify by message
        msg = f"{type(err).__name__}: {err}"
        if any(k in msg for k in ("RepositoryNotFound", "404", "is not a local folder and is not a "
                                  "valid model identifier")) and "connect" not in msg.lower():
            raise ModelLoadError(f"no model {source!r} on the Hugging Face hub (or it is private). "
                                 f"Check the spelling; the bundled model is '{DEFAULT_MODEL}'.") from err
        if local:
            raise ModelLoadError(f"could not read the model config in {source!r}: {err}") from err
        raise ModelLoadError(_offline_hint(source)) from err


def load_model(name: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None) -> Any:
    """Load a GPT-2-family language model as an ``nnsight`` model.

    Args:
        name: ``"ioi-tiny"`` (the bundled model, offline), a hub id such as
            ``"openai-community/gpt2"`` (or the alias ``"gpt2"``), or a local folder
            written by ``save_pretrained``.
        device: e.g. ``"cpu"``, ``"cuda"``; default CPU.
        dtype: e.g. ``torch.float32``, ``"float64"``, ``torch.bfloat16``; default float32.

    Returns:
        an ``nnsight.modeling.transformers.TransformersModel``; the underlying
        ``transformers`` model is ``hf_model(model)``, the tokenizer ``model.tokenizer``.

    Raises:
        ModelLoadError: unknown name, no network for a hub model, an architecture
            other than GPT-2 (the sweeps need ``transformer.h[i].attn.c_proj``).
    """
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoTokenizer, GPT2LMHeadModel

    source, local = _resolve(name)
    config = _load_config(source, local)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{str(name)!r} is a {config.model_type!r} model; helpers supports GPT-2-family models "
            f"({', '.join(SUPPORTED_MODEL_TYPES)}: GPT2LMHeadModel with transformer.h[i].attn.c_proj), "
            "because the sweeps patch those modules by name.")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""), None) or _bad_dtype(dtype)
    try:
        with _quiet_transformers():
            hf = GPT2LMHeadModel.from_pretrained(
                source, dtype=dtype or torch.float32, use_safetensors=True, trust_remote_code=False,
                local_files_only=local, attn_implementation="eager")
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local,
                                                      trust_remote_code=False)
    except ModelLoadError:
        raise
    except Exception as err:
        if local:
            raise ModelLoadError(f"could not load the model in {source!r}: {err}") from err
        raise ModelLoadError(_offline_hint(source)) from err
    hf.eval().requires_grad_(False)
    if device is not None:
        hf.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = TransformersModel(hf, tokenizer=tokenizer)
    # a short label for results and stamps: the folder's name, never a full path of this machine
    model._patchlab_name = Path(source).name if local and str(name) not in BUNDLED_MODELS else str(name)
    return model


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


def _bad_dtype(dtype: str) -> torch.dtype:
    raise ModelLoadError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'float64' or 'bfloat16'")


def hf_model(model: Any) -> Any:
    """The ``transformers`` model inside an nnsight model (or the argument itself)."""
    inner = getattr(model, "_module", None)  # nnsight keeps the torch module here
    return inner if isinstance(inner, torch.nn.Module) else model


def model_facts(model: Any) -> ModelFacts:
    """Shapes, device and dtype of a loaded GPT-2-family model."""
    hf = hf_model(model)
    cfg = hf.config
    if getattr(cfg, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(f"helpers supports GPT-2-family models, not {cfg.model_type!r}")
    p = next(hf.parameters())
    return ModelFacts(name=getattr(model, "_patchlab_name", cfg.name_or_path or "model"),
                      n_layers=cfg.n_layer, n_heads=cfg.n_head, d_model=cfg.n_embd,
                      d_head=cfg.n_embd // cfg.n_head, vocab_size=cfg.vocab_size,
                      n_positions=cfg.n_positions, device=p.device, dtype=p.dtype)
