"""What a loaded model carries, read in one place: ``handle(model)``.

A model from ``helpers.load_model`` is an nnsight model wrapping a transformers module.  Its
label, anatomy (``helpers.models.anatomy``) and remote mode are attached to the transformers
module by ``attach`` when it is loaded: a remote request pickles the nnsight wrapper (its envoy
tree) by value but refers to the modules by name, and an NDIF server has no ``helpers`` package
to unpickle a ``ModelAnatomy`` with, so these facts must not live on the wrapper.

Every public function of ``helpers`` reads them once, at its edge, with ``handle(model)``, and
passes the ``ModelHandle`` down: internal functions take the handle (``handle(h)`` of a handle
is the handle itself), so one call never re-derives the facts step by step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from helpers.models.anatomy import ModelAnatomy, anatomy, build_anatomy

__all__ = ["ModelHandle", "handle", "attach", "hf_model", "model_facts", "remote_mode",
           "remote_kwargs", "input_device", "ModelFacts"]

#: The facts every sweep needs (shapes, family, where each site lives): see helpers.models.anatomy.
ModelFacts = ModelAnatomy


def attach(model: Any, label: str, remote: bool | str) -> None:
    """Attach the label, anatomy and remote mode to ``model``'s transformers module (see the
    module docstring for why there).  Reads such as ``model._patchlab_anatomy`` still work on
    the nnsight model: nnsight forwards unknown attributes to the module."""
    hf = model._module
    hf._patchlab_name = label
    hf._patchlab_anatomy = build_anatomy(hf, label)
    hf._patchlab_remote = remote


@dataclass(frozen=True)
class ModelHandle:
    """A loaded model and what it carries, read once.

    ``model`` is the nnsight model (trace with it; look modules up on it with ``anatomy``),
    ``hf`` the transformers module inside it, ``anatomy`` its ``ModelAnatomy``, ``remote``
    where traces run (``False`` here, ``True`` NDIF, ``"local"`` nnsight's dry run of NDIF),
    ``tokenizer`` its tokenizer (``None`` for a bare transformers model)."""

    model: Any
    hf: torch.nn.Module
    anatomy: ModelAnatomy
    remote: bool | str
    tokenizer: Any

    @property
    def device(self) -> torch.device:
        """Where a trace's inputs go: the model's device, or the CPU for a model on NDIF (its
        weights are not here; the server moves the inputs to its GPUs)."""
        return torch.device("cpu") if self.remote is True else self.anatomy.device

    @property
    def trace_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every ``model.trace(...)`` in helpers passes: ``{"remote": ...}`` for
        a remote model, else none (a plain nnsight model's trace takes no ``remote``)."""
        return {"remote": self.remote} if self.remote else {}


def _read(model: Any) -> ModelHandle:
    """Read what ``model`` carries (the one place that does)."""
    inner = getattr(model, "_module", None)  # nnsight keeps the torch module here
    hf = inner if isinstance(inner, torch.nn.Module) else model
    return ModelHandle(model=model, hf=hf, anatomy=anatomy(hf),
                       remote=getattr(hf, "_patchlab_remote", False),
                       tokenizer=getattr(model, "tokenizer", None))


def handle(model: Any) -> ModelHandle:
    """``model``'s ``ModelHandle``: read now for a model, the same handle for a handle.

    Raises ``TypeError`` (naming ``helpers.load_model``) for anything that is not a model."""
    if isinstance(model, ModelHandle):
        return model
    if isinstance(model, torch.nn.Module) and not hasattr(model, "trace"):
        raise TypeError(f"got the transformers model itself ({type(model).__name__}), not the model "
                        "helpers.load_model returns: pass that one (an nnsight model, which can "
                        "trace), e.g. model = helpers.load_model('ioi-tiny'); to use a transformers "
                        "model you built, wrap it: nnsight.LanguageModel(hf, tokenizer=tokenizer)")
    return _read(model)


def hf_model(model: Any) -> Any:
    """The ``transformers`` model inside an nnsight model (or the argument itself)."""
    if isinstance(model, ModelHandle):
        return model.hf
    inner = getattr(model, "_module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def model_facts(model: Any) -> ModelAnatomy:
    """The model's anatomy: family, shapes, device, dtype and where each site lives (of a model
    from ``helpers.load_model``, or of a plain transformers model)."""
    return model.anatomy if isinstance(model, ModelHandle) else anatomy(model)


def remote_mode(model: Any) -> bool | str:
    """Where helpers runs this model's forward passes: ``False`` here, ``True`` on NDIF,
    ``"local"`` here through nnsight's dry run of the remote protocol (see ``load_model``)."""
    return handle(model).remote


def remote_kwargs(model: Any) -> dict[str, Any]:
    """Keyword arguments every ``model.trace(...)`` in helpers passes (``ModelHandle.trace_kwargs``)."""
    return handle(model).trace_kwargs


def input_device(model: Any) -> torch.device:
    """Where the inputs of a trace go (``ModelHandle.device``)."""
    return handle(model).device


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
