"""The input rules hold at every public edge, written as rules: each test below is one rule,
parametrised over every public function (every name ``helpers`` exports, every module's
``__all__``, the public methods of the classes there) whose parameters it covers.  The rules
come from the annotations and parameter names (``helpers.base.guard``); ``check_argument`` runs
exactly the rules the guarded function runs on a call, for one parameter.  End-to-end cases
with the bundled model are in ``tests/test_bad_inputs_api.py``."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing

import pytest

import helpers
from helpers.base import guard
from helpers.base.validate import (NAME_RULES, InputChoiceError, InputRangeError, InputTypeError)

NOT_EDGES = {"helpers.base.validate", "helpers.base.guard", "helpers.old_paths"}


def _modules() -> list:
    found = []
    for info in pkgutil.walk_packages(helpers.__path__, "helpers."):
        name = info.name
        if name in NOT_EDGES or name.startswith("helpers.organism") or "._" in name:
            continue
        module = importlib.import_module(name)
        if hasattr(module, "__all__"):
            found.append(module)
    return found


def _public() -> dict[str, object]:
    """``qualified name -> function`` for every public function and public method."""
    out: dict[str, object] = {}
    spaces = [(m.__name__, [(n, getattr(m, n)) for n in m.__all__]) for m in _modules()]
    spaces.append(("helpers", [(n, getattr(helpers, n)) for n in dir(helpers) if not n.startswith("_")]))
    for where, items in spaces:
        for name, obj in items:
            if inspect.isfunction(obj) and obj.__module__.startswith("helpers") \
                    and obj.__module__ not in NOT_EDGES:
                out[f"{obj.__module__}.{obj.__qualname__}"] = obj
            elif inspect.isclass(obj) and obj.__module__.startswith("helpers") \
                    and obj.__module__ not in NOT_EDGES:
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and inspect.isfunction(member):
                        out[f"{obj.__module__}.{obj.__qualname__}.{attr}"] = member
    return dict(sorted(out.items()))


PUBLIC = _public()


def _hints(fn) -> dict:
    return typing.get_type_hints(inspect.unwrap(fn))


def _params(predicate) -> list[tuple[str, str]]:
    """(function, parameter) for every public parameter whose annotation satisfies ``predicate``."""
    out = []
    for qual, fn in PUBLIC.items():
        for name, ann in _hints(fn).items():
            if name != "return" and name in (guard.rules_of(fn) or {}) and predicate(ann):
                out.append((qual, name))
    return out


def _members(ann) -> tuple:
    return typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, type(int | None)) else (ann,)


def _accepts(ann, kind) -> bool:
    return any(m is kind for m in _members(ann))


def _literal(ann):
    return guard.literal_values(ann)


def _seq_literal(ann) -> tuple:
    for m in _members(ann):
        if typing.get_origin(m) in (list, tuple, typing.Sequence.__origin__):
            args = typing.get_args(m)
            if args and _literal(args[0]):
                return _literal(args[0])
    return ()


def _is_sequence_without_str(ann) -> bool:
    seq = any(typing.get_origin(m) in (list, tuple, typing.Sequence.__origin__,
                                        typing.Iterable.__origin__) for m in _members(ann))
    return (seq and not _accepts(ann, str) and not _literal(ann)
            and not any(m is typing.Any for m in _members(ann)))


# --------------------------------------------------------------------------- coverage

def test_the_rules_cover_many_public_functions():
    assert len(PUBLIC) > 150, sorted(PUBLIC)


@pytest.mark.parametrize("qual", sorted(PUBLIC))
def test_every_public_function_checks_its_arguments_at_its_edge(qual):
    assert guard.rules_of(PUBLIC[qual]) is not None, \
        f"{qual} is public but not guarded: add guard_module(globals()) to its module"


@pytest.mark.parametrize("qual", sorted(PUBLIC))
def test_every_annotated_parameter_has_a_rule(qual):
    """A parameter is either checked (its annotation or its name gives a rule) or annotated
    ``Any`` (documented as taken as it comes), never silently unchecked."""
    fn = PUBLIC[qual]
    rules = guard.rules_of(fn) or {}
    sig = inspect.signature(fn)
    hints = _hints(fn)
    loose = [n for n, p in sig.parameters.items()
             if n not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
             and n not in rules and hints.get(n, typing.Any) is not typing.Any
             and not any(m is typing.Any for m in _members(hints.get(n)))]
    assert not loose, f"{qual}: parameters {loose} have an annotation but no rule"


# --------------------------------------------------------------------------- one test per rule

CHOICES = _params(lambda a: bool(_literal(a)))
LIST_CHOICES = _params(lambda a: bool(_seq_literal(a)))


def _typo(choices) -> str:
    word = next(c for c in choices if isinstance(c, str))
    return word.capitalize() if word != word.capitalize() else word.lower() + "x"


def test_string_choices_are_declared_across_the_api():
    names = {f"{q}.{p}" for q, p in CHOICES}
    for needed in ("PatchResult.baseline.run", "knockout_patterns.run", "PatchResult.mean.metric",
                   "PatchResult.score.metric", "PatchResult.importance.metric", "ablate.kind",
                   "ioi_pairs.corruption", "ioi_pairs.order", "cell_stats.correction",
                   "sweep.direction", "evaluate_circuit.ablation", "plot_patching.metric"):
        assert any(n.endswith(needed) for n in names), needed


@pytest.mark.parametrize("qual, param", CHOICES, ids=[f"{q}:{p}" for q, p in CHOICES])
def test_a_string_choice_with_a_typo_or_another_case_is_refused_listing_the_choices(qual, param):
    fn = PUBLIC[qual]
    choices = _literal(_hints(fn)[param])
    with pytest.raises(InputChoiceError) as err:
        guard.check_argument(fn, param, _typo(choices))
    assert f"{param}=" in str(err.value) and all(repr(c) in str(err.value) for c in choices)
    for good in choices:
        guard.check_argument(fn, param, good)


@pytest.mark.parametrize("qual, param", LIST_CHOICES, ids=[f"{q}:{p}" for q, p in LIST_CHOICES])
def test_a_list_of_choices_with_a_typo_is_refused(qual, param):
    fn = PUBLIC[qual]
    choices = _seq_literal(_hints(fn)[param])
    with pytest.raises(InputChoiceError, match=rf"{param}\[1\]="):
        guard.check_argument(fn, param, [choices[0], _typo(choices)])


INTS = _params(lambda a: _accepts(a, int) and not _accepts(a, str) and not _accepts(a, float))


@pytest.mark.parametrize("qual, param", INTS, ids=[f"{q}:{p}" for q, p in INTS])
def test_an_integer_parameter_refuses_text_floats_and_bools(qual, param):
    fn = PUBLIC[qual]
    for bad in ("abc", 1.5, True):
        with pytest.raises((InputTypeError, InputChoiceError), match=param):
            guard.check_argument(fn, param, bad)


FLOATS = _params(lambda a: _accepts(a, float) and not _accepts(a, str))


@pytest.mark.parametrize("qual, param", FLOATS, ids=[f"{q}:{p}" for q, p in FLOATS])
def test_a_number_given_as_text_is_refused_with_the_number_as_the_fix(qual, param):
    with pytest.raises(InputTypeError, match=rf"{param} must be .*not the text '0.05'"):
        guard.check_argument(PUBLIC[qual], param, "0.05")


BOOLS = _params(lambda a: _accepts(a, bool) and not _accepts(a, str))


@pytest.mark.parametrize("qual, param", BOOLS, ids=[f"{q}:{p}" for q, p in BOOLS])
def test_a_flag_refuses_anything_but_true_or_false(qual, param):
    with pytest.raises((InputTypeError, InputChoiceError), match=param):
        guard.check_argument(PUBLIC[qual], param, "yes")


STRS = _params(lambda a: _accepts(a, str) and not _literal(a) and not _accepts(a, int)
               and not _accepts(a, float) and not any(m is typing.Any for m in _members(a)))


@pytest.mark.parametrize("qual, param", STRS, ids=[f"{q}:{p}" for q, p in STRS])
def test_a_text_parameter_refuses_a_number(qual, param):
    with pytest.raises(InputTypeError, match=param):
        guard.check_argument(PUBLIC[qual], param, 3.5)


LISTS = _params(_is_sequence_without_str)


@pytest.mark.parametrize("qual, param", LISTS, ids=[f"{q}:{p}" for q, p in LISTS])
def test_a_list_given_as_one_string_is_refused_not_split_into_characters(qual, param):
    with pytest.raises(InputTypeError, match="one character at a time"):
        guard.check_argument(PUBLIC[qual], param, "L0H1 L1H2")


def _named(names) -> list[tuple[str, str]]:
    return [(q, p) for q, fn in PUBLIC.items() for p in (guard.rules_of(fn) or {})
            if p in names and guard.name_rule_applies(fn, p)]


COUNTS = _named({n for n in NAME_RULES if n.startswith("n") or n in ("k", "top", "most", "max_steps",
                                                                     "batch_size")})


@pytest.mark.parametrize("qual, param", COUNTS, ids=[f"{q}:{p}" for q, p in COUNTS])
def test_a_count_is_a_whole_number_of_at_least_one(qual, param):
    fn = PUBLIC[qual]
    with pytest.raises(ValueError, match=rf"{param} must be at least 1, got 0"):
        guard.check_argument(fn, param, 0)
    with pytest.raises(InputTypeError, match=rf"{param} must be an integer"):
        guard.check_argument(fn, param, "8")


FRACTIONS = _named({"threshold", "faithful_at", "complete_within", "minimal_share", "min_share",
                    "min_attention", "share", "alpha"})


@pytest.mark.parametrize("qual, param", FRACTIONS, ids=[f"{q}:{p}" for q, p in FRACTIONS])
def test_a_threshold_given_as_a_percentage_is_refused_with_the_fraction(qual, param):
    with pytest.raises(InputRangeError, match=rf"{param}=80 .* percentage; write {param}=0.8"):
        guard.check_argument(PUBLIC[qual], param, 80)
    with pytest.raises(InputRangeError, match=param):
        guard.check_argument(PUBLIC[qual], param, -0.1)


SEEDS = _named({"seed"})


@pytest.mark.parametrize("qual, param", SEEDS, ids=[f"{q}:{p}" for q, p in SEEDS])
def test_a_seed_is_a_whole_number_of_at_least_zero(qual, param):
    fn = PUBLIC[qual]
    with pytest.raises(InputTypeError, match="seed must be an integer, got 'abc'"):
        guard.check_argument(fn, param, "abc")
    with pytest.raises(ValueError, match="seed must be at least 0, got -1"):
        guard.check_argument(fn, param, -1)
    guard.check_argument(fn, param, 0)


PAIRS = _params(lambda a: any(getattr(m, "__name__", "") == "PromptPairs" for m in _members(a)))


@pytest.mark.parametrize("qual, param", PAIRS, ids=[f"{q}:{p}" for q, p in PAIRS])
def test_prompt_pairs_parameters_refuse_anything_else(qual, param):
    with pytest.raises(InputTypeError, match=rf"{param} must be PromptPairs, got list"):
        guard.check_argument(PUBLIC[qual], param, ["When John and Mary went to the store"])


def test_each_rule_covers_some_public_parameters():
    for rule in (CHOICES, INTS, FLOATS, BOOLS, STRS, LISTS, COUNTS, FRACTIONS, SEEDS, PAIRS):
        assert rule
