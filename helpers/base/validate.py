"""The rules every public function applies to its inputs, written once.

* **Indices** (layers, positions, heads, counts) are Python integers or anything
  that behaves as one (``numpy.int64``, a 0-d integer tensor such as the result
  of ``argmax``).  Booleans, floats and strings are refused.
* **Negative indices mean what they mean in Python**: ``-1`` is the last layer,
  position or head, ``-size`` the first.  Anything outside ``-size .. size-1`` is
  an error, never wrapped around.
* **Token ids** are a ``[batch, seq]`` integer tensor with at least one token,
  inside the model's vocabulary and no longer than its context.
* **Every forward pass ends in finite logits**, or an error names the first
  module whose output is not finite (see ``helpers.methods.sweeps.locate_non_finite``).

Each error says what was wrong and how to fix it.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import torch

__all__ = ["InputTypeError", "InputRangeError", "as_index", "norm_index", "as_count", "check_ids", "NonFiniteError", "check_finite",
           "first_non_finite", "json_text"]


class InputTypeError(TypeError, ValueError):
    """An argument of the wrong type (caught by ``except TypeError`` and ``except ValueError``)."""


class InputRangeError(IndexError, ValueError):
    """An index outside its range (caught by ``except IndexError`` and ``except ValueError``)."""


class NonFiniteError(FloatingPointError):
    """A forward pass, a metric or a result produced NaN or infinity."""


def as_index(value: Any, name: str) -> int:
    """``value`` as a Python ``int``: ints, numpy integers and 0-d integer tensors pass."""
    if isinstance(value, bool) or value is None:
        raise InputTypeError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype.is_floating_point or value.dtype.is_complex:
            raise InputTypeError(f"{name} must be an integer, got a tensor of shape "
                            f"{tuple(value.shape)} and dtype {value.dtype}: use int(t) for one value")
        return int(value.item())
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, numbers.Real) and float(value).is_integer():
        raise InputTypeError(f"{name} must be an integer, got the float {value!r}: write "
                        f"{int(value)} (or int(...) around the expression)")
    raise InputTypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")


def norm_index(value: Any, size: int, name: str, what: str) -> int:
    """``value`` as an index into ``size`` items, Python style (negative counts from the
    end); ``what`` names the items in the error, e.g. ``"blocks of this model"``."""
    i = as_index(value, name)
    if not -size <= i < size:
        if size == 0:
            raise InputRangeError(f"{name}={i} is out of range: there are no {what}")
        raise InputRangeError(f"{name}={i} is out of range: there are {size} {what} (0 .. {size - 1}, "
                         f"or -{size} .. -1 counting from the end)")
    return i % size


def as_count(value: Any, name: str, minimum: int = 1) -> int:
    """A whole number ``>= minimum`` (numbers of prompts, top-k, batch sizes)."""
    n = as_index(value, name)
    if n < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {n}")
    return n


def check_ids(ids: Any, vocab_size: int, max_len: int | None, what: str = "token ids") -> torch.Tensor:
    """``ids`` as a ``[batch, seq]`` long tensor, checked against the model's vocabulary and
    context length."""
    if not isinstance(ids, torch.Tensor):
        raise InputTypeError(f"{what} must be a [batch, seq] tensor of token ids (e.g. from "
                        f"helpers.encode(model, text)), got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise InputTypeError(f"{what} must be integer token ids, got dtype {ids.dtype}")
    if ids.dim() == 1:
        raise ValueError(f"{what} must be [batch, seq], got one dimension {tuple(ids.shape)}: "
                         "add a batch axis with ids[None]")
    if ids.dim() != 2 or ids.shape[0] == 0:
        raise ValueError(f"{what} must be [batch, seq] with at least one row, got shape {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise ValueError(f"{what} contain no tokens: the text was empty (or only whitespace); "
                         "give the model some text")
    if max_len is not None and ids.shape[1] > max_len:
        raise ValueError(f"{what} have {ids.shape[1]} tokens but this model reads at most {max_len}: "
                         "shorten the prompt")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the model's vocabulary (0 .. {vocab_size - 1}): "
                         "were the ids made by another model's tokenizer?")
    return ids.long()


def first_non_finite(named: list[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first tensor in ``named`` (forward order) with a NaN or infinity."""
    for name, t in named:
        if not torch.isfinite(t).all():
            return name
    return None


def check_finite(values: torch.Tensor, what: str, locate: Any = None) -> torch.Tensor:
    """Return ``values`` if all finite; else raise ``NonFiniteError``. ``locate`` (no
    arguments) returns the name of the first non-finite site, for the message."""
    if values.is_floating_point() and not torch.isfinite(values).all():
        n_bad = int((~torch.isfinite(values)).sum())
        where = locate() if locate is not None else None
        origin = (f" The first activation that is not finite is {where}." if where else "")
        raise NonFiniteError(
            f"{what} contain {n_bad} NaN or infinite value(s).{origin} Check the model's weights "
            "(all(torch.isfinite(p).all() for p in model.parameters())) and the dtype (float16 "
            "overflows easily: load the model with dtype='float32').")
    return values


def _first_non_finite_path(data: Any, path: str = "") -> str | None:
    if isinstance(data, float) and not math.isfinite(data):
        return path or "(the value itself)"
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, (list, tuple)):
        items = enumerate(data)
    else:
        return None
    for key, value in items:
        found = _first_non_finite_path(value, f"{path}[{key!r}]")
        if found:
            return found
    return None


def json_text(data: Any, default: Any = None) -> str:
    """``data`` as indented JSON; a NaN or infinity anywhere raises ``NonFiniteError`` naming
    where it sits (JSON has no NaN: ``json.dumps`` would write a bare ``NaN`` that other
    tools reject)."""
    import json

    try:
        return json.dumps(data, indent=1, default=default, allow_nan=False) + "\n"
    except ValueError as err:
        plain = json.loads(json.dumps(data, default=default))  # NaN allowed: find where it is
        where = _first_non_finite_path(plain)
        raise NonFiniteError(f"cannot save a non-finite value (NaN or infinity) at {where}: "
                             "JSON has no such number. Find where it came from (a forward pass "
                             "with non-finite values, a division by zero) before saving.") from err
