"""One mechanism that applies the input rules of ``helpers.base.validate`` at every public edge.

``checked(fn)`` reads ``fn``'s signature once and builds a rule per parameter from

* its **annotation**: a ``typing.Literal`` is a choice (``check_choice``: case-sensitive, the
  nearest valid value named, every one listed); ``int`` an index (``as_index``: no bool, no
  float, no text); ``float`` a real number (no text: ``"0.05"`` is refused with the fix
  ``0.05``); ``bool`` True or False; ``str`` a string; ``Sequence[...]`` / ``list[...]`` a
  list that is **not** a string (a string would be read one character at a time), its items
  checked when they are strings or choices; a class (``PromptPairs``, ``PatchResult``,
  ``torch.Tensor``, ...) an instance of it; ``X | Y`` either;
* its **name** (``validate.NAME_RULES``, when the annotation admits a number): counts (``n``, ``n_boot``, ``k``, ``batch_size``, ...)
  at least 1, ``seed`` a whole number >= 0, thresholds and shares fractions in [0, 1], ``alpha``
  in (0, 1), ``min_gap`` >= 0, ``memory_mb`` > 0;

and checks every argument the caller gives (defaults are not re-checked) before the body runs.
``guard_module(globals())``, the last line of a module, applies it to every function of the
module's ``__all__`` and to the public methods of its classes, so the rules hold at every public
edge without one ``if`` per argument.  ``rules_of(fn)`` lists what a guarded function checks;
``check_argument(fn, name, value)`` runs one parameter's rules (what the tests use).
"""
from __future__ import annotations

import collections.abc as cabc
import functools
import inspect
import os
import types
import typing
from typing import Any, Callable, Literal, Union

from helpers.base.validate import NAME_RULES, InputTypeError, as_index, as_real, check_choice

__all__ = ["checked", "guard_module", "rules_of", "check_argument", "literal_values",
           "admits_number", "name_rule_applies"]

_SEQUENCES = (cabc.Sequence, list, tuple, cabc.Iterable, cabc.Collection)


def literal_values(annotation: Any) -> tuple[Any, ...]:
    """Every value of the ``Literal`` types inside ``annotation`` (through unions)."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return tuple(v for a in typing.get_args(annotation) for v in literal_values(a))
    return ()


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in typing.get_args(annotation)))
    if origin in _SEQUENCES or annotation in (list, tuple):
        return "a list"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is bool:
        return "True or False"
    if annotation is str:
        return "a string"
    return getattr(annotation, "__name__", str(annotation))


def _member_test(annotation: Any) -> Callable[[Any, str], None] | None:
    """A check of one annotation, raising on a mismatch; None when nothing can be checked."""
    origin = typing.get_origin(annotation)
    if annotation is Any or isinstance(annotation, (typing.TypeVar, str)) or annotation is object:
        return None
    if annotation is type(None):
        def none(value: Any, name: str) -> None:
            if value is not None:
                raise InputTypeError(f"{name} must be None, got {value!r}")
        return none
    if origin is Literal:
        choices = typing.get_args(annotation)
        return lambda value, name: check_choice(value, choices, name) and None
    if origin in (Union, types.UnionType):
        return _union_test(typing.get_args(annotation))
    if annotation is int:
        return lambda value, name: as_index(value, name) and None
    if annotation is float:  # any real number (NaN too: finiteness is its own rule)
        return lambda value, name: as_real(value, name, "a number") and None
    if annotation is bool:
        def boolean(value: Any, name: str) -> None:
            if not (isinstance(value, bool) or type(value).__name__ == "bool_"):
                raise InputTypeError(f"{name} must be True or False, got {value!r} "
                                     f"({type(value).__name__})")
        return boolean
    if annotation is str:
        def string(value: Any, name: str) -> None:
            if not isinstance(value, str):
                raise InputTypeError(f"{name} must be a string, got {value!r} ({type(value).__name__})")
        return string
    if origin in _SEQUENCES or annotation in (list, tuple):
        return _sequence_test(annotation)
    if origin in (dict, cabc.Mapping) or annotation is dict:
        return _mapping_test(annotation)
    if origin is not None and isinstance(origin, type):
        return _instance_test(origin, _describe(origin))
    if annotation is os.PathLike:
        return _instance_test(os.PathLike, "a path")
    if isinstance(annotation, type):
        return _instance_test(annotation, annotation.__name__)
    return None


def _instance_test(kind: type, what: str) -> Callable[[Any, str], None]:
    def test(value: Any, name: str) -> None:
        if not isinstance(value, kind):
            if hasattr(value, "trace") or hasattr(value, "_module"):  # a model where it is not wanted
                raise InputTypeError(f"{name} must be {what}, got a model ({type(value).__name__}): "
                                     "are the arguments in the wrong order? The model comes first, "
                                     "e.g. patch_residual(model, pairs)")
            shown = value if isinstance(value, (str, int, float, type(None))) else type(value).__name__
            raise InputTypeError(f"{name} must be {what}, got {type(value).__name__}: {shown!r:.80}")
    return test


def _mapping_test(annotation: Any) -> Callable[[Any, str], None]:
    args = typing.get_args(annotation)
    values = _member_test(args[1]) if len(args) == 2 else None

    def test(value: Any, name: str) -> None:
        if not isinstance(value, cabc.Mapping):
            raise InputTypeError(f"{name} must be a dict, got {type(value).__name__}: {value!r:.80}")
        if values is not None:
            for key, v in value.items():
                values(v, f"{name}[{key!r}]")
    return test


def _sequence_test(annotation: Any) -> Callable[[Any, str], None]:
    args = typing.get_args(annotation)
    item = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else None
    item_choices = literal_values(item) if item is not None else ()
    item_is_str = item is str

    def test(value: Any, name: str) -> None:
        if isinstance(value, str):
            raise InputTypeError(f"{name} must be a list, got the string {value!r}: a string would be "
                                 f"read one character at a time; wrap it in a list: [{value!r}]")
        if not isinstance(value, cabc.Iterable) or isinstance(value, (bytes, dict)):
            raise InputTypeError(f"{name} must be a list, got {type(value).__name__}: {value!r:.80}")
        if isinstance(value, cabc.Sequence):
            for i, v in enumerate(value):
                if item_choices:
                    check_choice(v, item_choices, f"{name}[{i}]")
                elif item_is_str and not isinstance(v, str):
                    raise InputTypeError(f"{name}[{i}] must be a string, got {v!r} ({type(v).__name__})")
    return test


def _union_test(members: tuple[Any, ...]) -> Callable[[Any, str], None] | None:
    tests = [_member_test(m) for m in members]
    if any(t is None for t in tests):
        return None  # Any (or something uncheckable) among the members: every value may pass
    choices = literal_values(Union[members]) if len(members) > 1 else ()
    wanted = " or ".join(dict.fromkeys(_describe(m) for m in members))

    only_words = [bool(literal_values(m)) and all(isinstance(v, str) for v in literal_values(m))
                  for m in members]

    def test(value: Any, name: str) -> None:
        errors = []
        for t, words in zip(tests, only_words):
            try:
                t(value, name)
                return
            except (TypeError, ValueError, IndexError) as err:
                if isinstance(value, str) or not words:  # a list is no misspelt word
                    errors.append(err)
        if isinstance(value, str) and choices:
            check_choice(value, choices, name)  # raises, naming the near miss
        if isinstance(value, str):
            split = [e for e in errors if "one character at a time" in str(e)]
            if split:
                raise split[0]
            hinted = [e for e in errors if "not the text" in str(e)]
            if hinted:
                raise InputTypeError(f"{name} must be {wanted}, got the string {value!r}: write "
                                     f"{name}={value.strip()} (a number, not the text {value!r})")
        indexed = [e for e in errors if str(e).startswith(f"{name}[")]  # one item of a list
        if indexed:
            raise indexed[0]
        specific = [e for e in errors if not isinstance(e, InputTypeError)]
        if specific:  # the right type, a bad value (out of range, a near miss): say that
            raise specific[0]
        raise InputTypeError(f"{name} must be {wanted}, got {value!r:.80} ({type(value).__name__})")
    return test


def _hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # an annotation that does not evaluate here: check by name only
        return {}


def admits_number(hint: Any) -> bool:
    """Can a parameter annotated ``hint`` be a number?  The name rules (``NAME_RULES``) apply
    only then: a ``k: torch.Tensor`` is keys, not a count."""
    if hint is None or hint is Any or hint in (int, float) or (isinstance(hint, type) and
                                                              issubclass(hint, (int, float))):
        return True
    if typing.get_origin(hint) in (Union, types.UnionType):
        return any(admits_number(a) for a in typing.get_args(hint))
    return False


def name_rule_applies(fn: Callable, name: str) -> bool:
    """Does ``NAME_RULES[name]`` check ``fn``'s parameter ``name`` (``admits_number``)?"""
    return name in NAME_RULES and admits_number(_hints(fn).get(name))


def _rules(fn: Callable, skip: frozenset[str]) -> dict[str, list[Callable[[Any, str], Any]]]:
    hints = _hints(fn)
    out: dict[str, list] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name in ("self", "cls") or name in skip:
            continue
        checks = []
        test = _member_test(hints[name]) if name in hints else None
        if test is not None:
            checks.append(test)
        if name in NAME_RULES and admits_number(hints.get(name)):
            checks.append(NAME_RULES[name])
        if checks:
            out[name] = checks
    return out


def checked(fn: Callable | None = None, *, skip: tuple[str, ...] = ()) -> Any:
    """``fn`` with its arguments checked by its annotations and ``NAME_RULES`` (module
    docstring) before it runs; ``skip`` names parameters left to ``fn`` itself."""
    if fn is None:
        return lambda f: checked(f, skip=skip)
    if getattr(fn, "__patchlab_rules__", None) is not None:
        return fn
    rules = _rules(fn, frozenset(skip))
    sig = inspect.signature(fn)
    where = fn.__qualname__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{where}(): {err}") from None
        for name, value in bound.arguments.items():
            for rule in rules.get(name, ()):
                if value is not None or rule is not NAME_RULES.get(name):
                    rule(value, name)
        return fn(*args, **kwargs)

    wrapper.__patchlab_rules__ = rules  # type: ignore[attr-defined]
    return wrapper


def rules_of(fn: Callable) -> dict[str, list[Callable]] | None:
    """The rules a guarded function checks, per parameter (None if it is not guarded)."""
    return getattr(fn, "__patchlab_rules__", None)


def check_argument(fn: Callable, name: str, value: Any) -> None:
    """Run the rules ``fn`` applies to its parameter ``name`` on ``value`` (raises if refused)."""
    for rule in (rules_of(fn) or {}).get(name, ()):
        if value is not None or rule is not NAME_RULES.get(name):
            rule(value, name)


def guard_module(namespace: dict[str, Any], skip: dict[str, tuple[str, ...]] | None = None) -> None:
    """Guard (``checked``) every function in the module's ``__all__`` that the module defines,
    and every public method of the classes it defines there.  ``skip`` maps a function (or
    ``"Class.method"``) to parameters it checks itself.  Call it as a module's last line:
    ``guard_module(globals())``."""
    skip = skip or {}
    module = namespace["__name__"]
    for public in namespace.get("__all__", ()):
        obj = namespace.get(public)
        if inspect.isfunction(obj) and obj.__module__ == module:
            namespace[public] = checked(obj, skip=skip.get(public, ()))
        elif inspect.isclass(obj) and obj.__module__ == module:
            for attr, member in list(vars(obj).items()):
                if attr.startswith("_") or not inspect.isfunction(member):
                    continue
                setattr(obj, attr, checked(member, skip=skip.get(f"{public}.{attr}", ())))
