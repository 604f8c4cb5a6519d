"""``helpers`` reads like a small library: one module per concern, none over ~400 lines.

The rule holds for every module, including the ones later work adds: a module that grows past
it is split along its concerns (as ``patching``/``pairs``/``runs`` and ``prompts``/``pairs``
were), not waved through here."""
from __future__ import annotations

from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parent.parent / "helpers"
MODULES = sorted(HELPERS.rglob("*.py"))
MAX_LINES = 400


@pytest.mark.parametrize("module", MODULES, ids=[str(m.relative_to(HELPERS)) for m in MODULES])
def test_helpers_module_stays_under_400_lines(module):
    n = len(module.read_text().splitlines())
    assert n <= MAX_LINES, f"helpers/{module.relative_to(HELPERS)} has {n} lines (> {MAX_LINES}): split it by concern"
