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
        f"unknown model {text!r}: not a bundled model ({', '.join(BUNDLED_MODELS)}), not a folder, "
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
    if local:
        _check_files(Path(source), str(name) if str(name) not in BUNDLED_MODELS else source)
    dtype, device = _dtype(dtype), _device(device)
    try:
        with _quiet_transformers():
            hf = GPT2LMHeadModel.from_pretrained(
                source, dtype=dtype, use_safetensors=True, trust_remote_code=False,
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
    if not tokenizer("The cat", add_special_tokens=False)["input_ids"]:
        raise ModelLoadError(f"the tokenizer of {str(name)!r} turns text into no tokens (is its "
                             "tokenizer.json empty?): save the model's real tokenizer next to it")
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


def hf_model(model: Any) -> Any:
    """The ``transformers`` model inside an nnsight model (or the argument itself)."""
    inner = getattr(model, "_module", None)  # nnsight keeps the torch module here
    return inner if isinstance(inner, torch.nn.Module) else model


def model_facts(model: Any) -> ModelFacts:
    """Shapes, device and dtype of a loaded GPT-2-family model."""
    hf = hf_model(model)
    cfg = getattr(hf, "config", None)
    if not isinstance(hf, torch.nn.Module) or cfg is None:
        raise TypeError(f"expected a model from helpers.load_model, got {type(model).__name__}: "
                        "pass the model first, e.g. patch_residual(model, pairs)")
    if getattr(cfg, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(f"helpers supports GPT-2-family models, not {cfg.model_type!r}")
    p = next(hf.parameters())
    return ModelFacts(name=getattr(model, "_patchlab_name", cfg.name_or_path or "model"),
                      n_layers=cfg.n_layer, n_heads=cfg.n_head, d_model=cfg.n_embd,
                      d_head=cfg.n_embd // cfg.n_head, vocab_size=cfg.vocab_size,
                      n_positions=cfg.n_positions, device=p.device, dtype=p.dtype)
