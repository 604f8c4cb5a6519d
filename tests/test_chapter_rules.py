"""The rules every chapter's code follows, checked on the notebooks' source (no execution):

* the code cells are the lesson: no function definitions (plumbing lives in ``helpers``), and no
  cell over 12 lines except a hand-written nnsight cell (one that opens a trace);
* NDIF-safe hand-written nnsight: no trace body touches ``helpers`` (the NDIF server does not
  have the package), whether as ``H.…`` or through the model anatomy object (``facts``) —
  modules are resolved before the ``with``;
* every chapter has a ``remote`` parameter and passes it to ``load_model`` and to each trace;
* no ``layer + 1`` row arithmetic: results are indexed by the names their labels show.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
MAX_LINES = 12
HELPER_NAMES = {"H", "helpers", "facts"}   # the package and the anatomy object it returns
TRACING = {"trace", "session", "generate"}


def _code_cells(nb: Path) -> list[tuple[int, str]]:
    cells = nbformat.read(nb, as_version=4).cells
    return [(i, c.source) for i, c in enumerate(cells) if c.cell_type == "code"]


def _parse(source: str) -> ast.Module:
    # IPython magics and shell escapes are not Python
    return ast.parse("\n".join("" if line.lstrip().startswith(("%", "!")) else line
                               for line in source.splitlines()))


def _trace_blocks(tree: ast.AST) -> list[ast.With]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.With)
            and any(isinstance(item.context_expr, ast.Call)
                    and isinstance(item.context_expr.func, ast.Attribute)
                    and item.context_expr.func.attr in TRACING for item in node.items)]


def _lines(source: str) -> int:
    return len(source.strip().splitlines())


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_chapter_defines_no_functions(nb):
    found = [(i, node.name) for i, src in _code_cells(nb) for node in ast.walk(_parse(src))
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    assert not found, f"functions defined in {nb.name} (cell, name): {found}: move them to helpers"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_code_cells_are_short_except_hand_written_nnsight(nb):
    long = [(i, _lines(src)) for i, src in _code_cells(nb)
            if _lines(src) > MAX_LINES and not _trace_blocks(_parse(src))]
    assert not long, f"code cells over {MAX_LINES} lines in {nb.name} (cell, lines): {long}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_no_trace_body_calls_into_helpers(nb):
    reached = []
    for i, src in _code_cells(nb):
        for block in _trace_blocks(_parse(src)):
            for stmt in block.body:
                for node in ast.walk(stmt):
                    if isinstance(node, ast.Name) and node.id in HELPER_NAMES:
                        reached.append((i, block.lineno, node.id))
    assert not reached, (f"trace bodies in {nb.name} use helpers (cell, line, name): {reached}; "
                         "resolve modules before the `with` (NDIF has no helpers package)")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_every_trace_and_the_model_load_take_the_remote_parameter(nb):
    cells = nbformat.read(nb, as_version=4).cells
    params = next(c.source for c in cells if "parameters" in c.metadata.get("tags", []))
    assert re.search(r"^remote\b.*=\s*False", params, re.M), f"{nb.name}: no `remote = False` parameter"
    missing = []
    for i, src in _code_cells(nb):
        tree = _parse(src)
        calls = [item.context_expr for block in _trace_blocks(tree) for item in block.items]
        calls += [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Attribute) and n.func.attr == "load_model"]
        missing += [(i, ast.unparse(c)[:60]) for c in calls
                    if isinstance(c, ast.Call) and "remote" not in {k.arg for k in c.keywords}]
    assert not missing, f"{nb.name}: calls without remote=remote (cell, call): {missing}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_no_row_arithmetic_on_layer_indices(nb):
    found = [(i, m.group(0)) for i, src in _code_cells(nb)
             for m in re.finditer(r"\blayer\s*\+\s*1\b", src)]
    assert not found, f"{nb.name}: `layer + 1` (cell, text): {found}: use result.index('layer', layer)"
