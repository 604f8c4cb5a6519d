"""Running a chapter inside the test process (a helper module for the tests, not a test file).

``run_chapter`` executes a chapter's code cells top to bottom in one namespace, the ``parameters``
cell followed by the given overrides (exactly where papermill injects them), with matplotlib's
non-interactive backend and every figure closed after its cell.  No kernel starts, so a run costs
what the chapter computes; the chapter's own code runs unchanged (each cell's source is registered
with ``linecache`` under its own name: nnsight reads a trace's body back from its source).
papermill's injection itself is checked by the papermill runs in ``tests/test_notebooks.py``.
"""
from __future__ import annotations

import ast
import linecache
import math
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))


def run_chapter(path: Path, overrides: dict) -> dict:
    """Execute ``path``'s code cells in this process; return the chapter's namespace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nbformat

    namespace: dict = {"__name__": "__chapter__"}
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type != "code":
            continue
        name = f"<{path.stem} cell {i}>"
        linecache.cache[name] = (len(cell.source), None, cell.source.splitlines(True), name)
        exec(compile(cell.source, name, "exec"), namespace)
        if "parameters" in cell.metadata.get("tags", []):
            namespace.update(overrides)
        plt.close("all")
    return namespace


def default_parameter(nb: Path, name: str):
    """The default a chapter's ``parameters`` cell gives ``name``."""
    import nbformat

    cell = next(c for c in nbformat.read(nb, as_version=4).cells
                if "parameters" in c.metadata.get("tags", []))
    for node in ast.parse(cell.source).body:
        target = getattr(node, "target", None) or (getattr(node, "targets", [None])[0])
        if getattr(target, "id", None) == name:
            return ast.literal_eval(node.value)
    raise KeyError(name)


def finite(value) -> bool:
    """No NaN or infinity anywhere in a JSON-like value."""
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(finite(v) for v in value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    return True
