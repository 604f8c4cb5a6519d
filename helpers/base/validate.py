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
* **Choices** (a run, a metric, an ablation kind, ...) are case-sensitive strings checked
  against the allowed values; a near miss is named ("did you mean 'clean'?") and every valid
  value listed (``check_choice``).  Public functions declare them as ``typing.Literal``
  annotations and ``helpers.base.guard`` checks them at the edge, with the plain types
  (int, float, bool, str, a list that is not a string) and the bounds of ``NAME_RULES``.
* **Fractions** (thresholds, shares, ``alpha``) lie in [0, 1]; a percentage (80) is refused
  with its fraction (0.8) as the fix (``as_fraction``).
* **Sizes are bounded** by the memory they would take (``check_memory``, at most
  ``MAX_BYTES``), never left to run out of memory.
* **Every argument is used or refused**: one that has no effect in the chosen mode is an
  error (``refuse_unused``).
* **Things that belong together are checked together**: prompt pairs carry the fingerprint of
  the vocabulary they were tokenized with (``vocab_fingerprint``).

Each error says what was wrong and how to fix it.
"""
from __future__ import annotations

import difflib
import hashlib
import math
import numbers
import operator
from typing import Any, Literal, Sequence

import torch

__all__ = ["InputTypeError", "InputRangeError", "as_index", "norm_index", "as_count", "check_ids", "NonFiniteError", "check_finite",
           "first_non_finite", "json_text", "InputChoiceError", "InputSizeError", "UnusedArgumentError",
           "check_choice", "as_real", "as_number", "as_fraction", "as_seed", "check_memory", "refuse_unused",
           "vocab_fingerprint", "NAME_RULES", "MAX_BYTES", "Run", "Direction"]

#: The two runs of every prompt pair, and the two ways of patching between them.
Run = Literal["clean", "corrupted"]
Direction = Literal["denoise", "noise"]


class InputTypeError(TypeError, ValueError):
    """An argument of the wrong type (caught by ``except TypeError`` and ``except ValueError``)."""


class InputRangeError(IndexError, ValueError):
    """An index outside its range (caught by ``except IndexError`` and ``except ValueError``)."""


class InputChoiceError(ValueError):
    """A string choice that is not one of the allowed values (case-sensitive)."""


class InputSizeError(ValueError):
    """A size whose memory would exceed ``MAX_BYTES``: refused before anything is allocated."""


class UnusedArgumentError(ValueError):
    """An argument that would have no effect in the mode chosen by the other arguments."""


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


# --------------------------------------------------------------------------- choices, numbers, sizes

#: What a choice means, said beside it when a value is refused (the words every chapter uses)
CHOICE_MEANINGS = {"denoise": "clean into corrupted", "noise": "corrupted into clean",
                   "clean": "the clean prompts", "corrupted": "the corrupted prompts"}


def check_choice(value: Any, choices: Sequence[Any], name: str) -> Any:
    """``value`` if it is one of ``choices`` (strings compared case-sensitively), else
    ``InputChoiceError`` listing every choice and the nearest one ("did you mean ...?")."""
    if any(value is c or (type(value) is type(c) and value == c) for c in choices):
        return value
    listed = ", ".join(repr(c) + (f" ({CHOICE_MEANINGS[c]})" if isinstance(c, str) and c in
                                  CHOICE_MEANINGS else "") for c in choices)
    hint = ""
    if isinstance(value, str):
        words = [c for c in choices if isinstance(c, str)]
        same_case = [c for c in words if c.lower() == value.lower()]
        near = same_case or difflib.get_close_matches(value, words, n=1, cutoff=0.6)
        if near:
            hint = f" did you mean {near[0]!r}?" + (" (choices are case-sensitive)" if same_case else "")
    raise InputChoiceError(f"{name}={value!r} is not a valid choice:{hint} choose one of {listed}")


def as_real(value: Any, name: str, what: str = "a number") -> float:
    """``value`` as a float: Python and numpy numbers and one-element tensors pass (NaN too);
    ``bool``, ``None`` and text are refused (``"0.05"`` with the fix ``0.05``)."""
    if isinstance(value, bool) or value is None:
        raise InputTypeError(f"{name} must be {what}, got {value!r}")
    if hasattr(value, "numel") and hasattr(value, "item") and getattr(value, "numel")() == 1:
        value = value.item()
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        try:
            float(value)
            fix = f": write {name}={value.strip()} (a number, not the text {value!r})"
        except ValueError:
            fix = ""
        raise InputTypeError(f"{name} must be {what}, got the string {value!r}{fix}")
    raise InputTypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")


def as_number(value: Any, name: str, low: float | None = None, high: float | None = None,
              low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float inside ``[low, high]`` (an end open when ``*_open``)."""
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    span = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
    x = as_real(value, name, "a number" if low is None and high is None else f"a number in {span}")
    bad = (not math.isfinite(x) or (low is not None and (x < low or (low_open and x == low)))
           or (high is not None and (x > high or (high_open and x == high))))
    if bad:
        raise InputRangeError(f"{name}={value!r} is out of range: it must be a number in {span}")
    return x


def as_fraction(value: Any, name: str, open_ends: bool = False) -> float:
    """A fraction in [0, 1] (``(0, 1)`` with ``open_ends``): thresholds, shares, ``alpha``.
    A percentage such as 80 is refused with its fraction (0.8) as the fix."""
    x = as_real(value, name, "a fraction between 0 and 1")
    inside = 0 < x < 1 if open_ends else 0 <= x <= 1
    if not inside:
        fix = (f": it looks like a percentage; write {name}={x / 100:g}" if 1 < x <= 100 else
               f"; e.g. {name}=0.05" if name == "alpha" else "")
        span = "strictly between 0 and 1" if open_ends else "between 0 and 1"
        raise InputRangeError(f"{name}={value!r} is out of range: it must be a fraction {span}{fix}")
    return x


def as_seed(value: Any, name: str = "seed") -> int:
    """A random seed: a whole number >= 0 (``"abc"``, ``1.5`` and ``-1`` are refused)."""
    return as_count(value, name, 0)


#: The most memory one argument may ask for (an estimate, checked before allocating).
MAX_BYTES = 2 * 10 ** 9


def _size(n_bytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes:.0f} bytes"


def check_memory(n_bytes: float, what: str, fix: str) -> None:
    """Refuse (``InputSizeError``) a request whose memory estimate ``n_bytes`` exceeds
    ``MAX_BYTES``; ``what`` says what would be allocated, ``fix`` how to ask for less."""
    if n_bytes > MAX_BYTES:
        raise InputSizeError(f"{what} would take about {_size(n_bytes)} of memory (more than the "
                             f"{_size(MAX_BYTES)} allowed): {fix}")


def refuse_unused(name: str, value: Any, why: str, default: Any = None) -> None:
    """``UnusedArgumentError`` when ``value`` was given (is not ``default``) but has no effect:
    ``why`` says in which mode it would."""
    given = value is not default if default is None else not (value is default or value == default)
    if given:
        raise UnusedArgumentError(f"{name}= has no effect here: {why}")


# --------------------------------------------------------------------------- the same vocabulary

def vocab_fingerprint(tokenizer: Any) -> str | None:
    """A short, deterministic fingerprint of ``tokenizer``'s vocabulary (every token and its id):
    two tokenizers with the same vocabulary share it, whatever model they came with.  Computed
    once per tokenizer object (about 50 ms for 50,000 tokens) and kept on it.  None for an object
    without ``get_vocab``."""
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return None
    size = len(tokenizer)
    cached = getattr(tokenizer, "_patchlab_vocab", None)
    if cached is not None and cached[0] == size:
        return cached[1]
    vocab = tokenizer.get_vocab()
    text = "\n".join(f"{i}\t{t}" for t, i in sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])))
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    try:
        tokenizer._patchlab_vocab = (size, digest)
    except AttributeError:
        pass
    return digest


# --------------------------------------------------------------------------- rules by name

def _count(minimum: int) -> Any:
    return lambda value, name: as_count(value, name, minimum)


#: Parameters whose name means the same thing in every public function, and the rule for
#: it (applied by ``helpers.base.guard`` when the argument is given and not None).
NAME_RULES: dict[str, Any] = {
    **{name: _count(1) for name in ("n", "n_pairs", "n_prompts", "n_eval", "n_boot", "n_perm",
                                    "k", "top", "most", "max_steps", "batch_size")},
    "seed": lambda value, name: as_seed(value, name),
    **{name: (lambda value, name: as_fraction(value, name))
       for name in ("threshold", "faithful_at", "complete_within", "minimal_share", "min_share",
                    "min_attention", "share")},
    "alpha": lambda value, name: as_fraction(value, name, open_ends=True),
    "min_gap": lambda value, name: as_number(value, name, 0),
    "memory_mb": lambda value, name: as_number(value, name, 0, low_open=True),
}
