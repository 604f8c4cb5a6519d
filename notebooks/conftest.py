"""Settings for ``pytest --nbval notebooks/``.

0. Every cell of a notebook stays on one pytest-xdist worker (the hook at the end), so
   ``pytest -n 2 --dist loadgroup --nbval notebooks/`` works on its own.

1. The kernels nbval starts inherit these environment settings, so a check run sees what
   scripts/regenerate_notebooks.py stored (one thread, no progress bars, no hub access).

2. **How stored numbers are compared** (the one rule, for every notebook): a stored output and
   a fresh one match when they are equal after splitting them into numbers and the text between
   them, where
   * the text between numbers is equal up to whitespace (table columns widen when a "-"
     sign appears),
   * an integer (no decimal point, no exponent) is equal exactly — counts, indices, sizes —
     and never matches a decimal ("0" against "4.4e-08" is float noise printed with ``%g``),
   * a decimal number (``-11.380754``, ``0.74``, ``4.4e-08``) may differ by at most one unit
     in the last printed digit of the coarser of the two (``-11.380755`` matches
     ``-11.380754``; ``0.74`` matches ``0.75`` but not ``0.76``).
   Float rounding differs between CPU models (vector instruction sets change the order of
   additions), so the last printed digit may flip; anything larger is a real change.
   Remaining risk: a value on a rounding boundary of a coarse format can still flip one
   unit (allowed), but one printed as an integer ("93 %", a count from a threshold) would
   fail — the chapters print such quantities from exact computations or with a margin.
   ``PATCHLAB_NBVAL_EXACT=1`` turns the tolerance off (exact comparison, as plain nbval).
"""
from __future__ import annotations

import os
import re
from decimal import Decimal, InvalidOperation

import pytest

os.environ.update({"PATCHLAB_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_OFFLINE": "1"})

NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w])")


def _unit(text: str) -> Decimal:
    """One unit in the last printed digit of ``text`` ("0.740" -> 0.001, "4.4e-08" -> 1e-09)."""
    mantissa, _, exponent = text.lower().lstrip("+-").partition("e")
    decimals = len(mantissa.partition(".")[2])
    return Decimal(1).scaleb(-decimals + (int(exponent) if exponent else 0))


def numbers_match(a: str, b: str) -> bool:
    """Two printed numbers are the same value up to the rule in this module's docstring."""
    if a == b:
        return True
    is_int = lambda s: not re.search(r"[.eE]", s)  # noqa: E731
    if is_int(a) or is_int(b):  # "0" against "4.4e-08" is float noise printed with %g
        return is_int(a) and is_int(b) and int(a) == int(b)
    try:
        x, y = Decimal(a), Decimal(b)
    except InvalidOperation:
        return False
    return abs(x - y) <= max(_unit(a), _unit(b))


def texts_match(stored: str, fresh: str) -> bool:
    """``stored`` and ``fresh`` outputs match under the rule in this module's docstring."""
    if stored == fresh:
        return True
    split_a, split_b = NUMBER.split(stored), NUMBER.split(fresh)
    nums_a, nums_b = NUMBER.findall(stored), NUMBER.findall(fresh)
    if len(nums_a) != len(nums_b):
        return False
    squash = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
    if [squash(t) for t in split_a] != [squash(t) for t in split_b]:
        return False
    return all(numbers_match(x, y) for x, y in zip(nums_a, nums_b))


def _text(value):
    return "".join(value) if isinstance(value, list) else value


def _tolerant(compare):
    """Wrap nbval's ``compare_outputs``: where a fresh text output matches the stored one under
    the numeric rule, compare the stored text with itself; everything else is nbval's check."""

    def compare_outputs(self, test, ref, skip_compare=None):
        if os.environ.get("PATCHLAB_NBVAL_EXACT") != "1" and len(test) == len(ref):
            for fresh, stored in zip(test, ref):
                if (fresh.get("output_type"), fresh.get("name")) != (stored.get("output_type"),
                                                                     stored.get("name")):
                    continue
                if "text" in fresh and "text" in stored and texts_match(_text(stored["text"]), _text(fresh["text"])):
                    fresh["text"] = stored["text"]
                for mime, value in fresh.get("data", {}).items():
                    old = stored.get("data", {}).get(mime)
                    if mime.startswith("text/") and old is not None and texts_match(_text(old), _text(value)):
                        fresh["data"][mime] = old
        return compare(self, test, ref, skip_compare)

    return compare_outputs


try:
    from nbval.plugin import IPyNbCell

    if not getattr(IPyNbCell.compare_outputs, "_patchlab", False):
        IPyNbCell.compare_outputs = _tolerant(IPyNbCell.compare_outputs)
        IPyNbCell.compare_outputs._patchlab = True
except ImportError:  # nbval not installed: nothing to compare
    pass


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keep every cell of a notebook in one pytest-xdist group, and mark nbval cells.

    nbval starts one kernel per notebook and runs its cells in order, so all cells of a
    notebook must go to the same worker. ``scripts/test.sh`` uses ``--dist loadgroup``; this
    conftest is loaded whenever a notebook is collected, and
    gives each notebook's cells an ``xdist_group`` named after the notebook (it must run before
    xdist's own hook, hence ``tryfirst``). nbval cells are also marked ``notebooks``, and
    ``slow`` for a chapter whose default model is the real SmolLM2 (about five minutes a run),
    so the fast tier stays a few minutes; the full suite (CI) checks its stored outputs.
    """
    real: dict = {}
    for item in items:
        if type(item).__module__.startswith("nbval"):
            item.add_marker(pytest.mark.notebooks)
            item.add_marker(pytest.mark.xdist_group(f"nbval:{item.path.name}"))
            if item.path not in real:
                real[item.path] = '"smollm2-135m"' in _parameters_source(item.path)
            if real[item.path]:
                item.add_marker(pytest.mark.slow)


def _parameters_source(path) -> str:
    """The source of a notebook's ``parameters`` cell ("" if it has none)."""
    import nbformat

    cells = nbformat.read(path, as_version=4).cells
    return next((c.source for c in cells if "parameters" in c.metadata.get("tags", [])), "")
