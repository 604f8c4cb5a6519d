"""Stamp-gated checks: a long check whose inputs have not changed since it last passed is skipped,
and says so.

A check (one test) names its inputs: helpers modules it runs (with every helpers module they
import, followed transitively through their import statements, functions included), other files
(its own test module, ``constraints.txt``, data) and ``pyproject.toml``'s dependencies. The stamp
``tests/stamps/<name>.stamp`` holds the sha256 of all of them as of the last time the check
passed, and is written only by that check, at its end, after every assertion held (so only a
passing run writes it). CI runs on a fresh clone: it skips the check when the committed stamp
matches, and runs it when any input changed. ``PATCHLAB_RUN_GATED=1`` (or
``PATCHLAB_RUN_GATED=<name>``) forces a run whatever the stamp says.

Used by the organisms' full retrains (tests/test_organism.py, tests/test_refusal.py,
tests/test_planted.py). The Colab-stack test keeps its own stamp (tests/test_colab_stack.py).
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAMPS = REPO / "tests" / "stamps"


def module_file(name: str) -> Path | None:
    """The source file of a helpers module (``helpers.data.prompts``), or None."""
    base = REPO / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def helpers_closure(modules: list[str]) -> list[Path]:
    """The files of ``modules`` and of every helpers module they import, transitively (imports
    inside functions included). A package's ``__init__`` counts only when it is imported by name;
    the top-level ``helpers/__init__.py`` (which imports everything) is not followed."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None or name == "helpers":
            continue
        seen[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("helpers.")]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                if base.startswith("helpers"):
                    todo.append(base)
                    todo += [f"{base}.{a.name}" for a in node.names]
    return sorted(seen.values())


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


@dataclass
class Stamp:
    """The stamp of one gated check (see the module docstring)."""

    name: str
    modules: list[str]
    files: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return STAMPS / f"{self.name}.stamp"

    def inputs(self) -> dict[str, str]:
        """Every input's repository path -> its sha256 (``pyproject.toml`` dependencies too)."""
        paths = helpers_closure(self.modules) + [REPO / f for f in self.files + ["constraints.txt"]]
        found = {_shown(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(set(paths))}
        deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        found["pyproject.toml [project] dependencies"] = hashlib.sha256(
            json.dumps(deps).encode()).hexdigest()
        return found

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.inputs(), sort_keys=True).encode()).hexdigest()

    def stamped(self) -> str | None:
        if not self.path.exists():
            return None
        for line in self.path.read_text().splitlines():
            if line.startswith("sha256 "):
                return line.split()[1]
        return None

    def forced(self) -> bool:
        value = os.environ.get("PATCHLAB_RUN_GATED", "")
        return value == "1" or self.name in value.split(",")

    def gate(self) -> float:
        """Skip (saying why) when the inputs are unchanged since the check last passed; else
        return the start time of this run."""
        if not self.forced() and self.stamped() == self.digest():
            pytest.skip(f"stamp-gated: {self.name}'s inputs ({len(self.inputs())} files) are unchanged "
                        f"since it last passed ({self.path.relative_to(REPO)}); "
                        f"PATCHLAB_RUN_GATED={self.name} runs it")
        return time.time()

    def record(self, start: float, note: str = "") -> None:
        """Write the stamp: call only at the end of the check, after every assertion held."""
        STAMPS.mkdir(exist_ok=True)
        inputs = self.inputs()
        lines = [f"# {self.name}: passed for these inputs (sha256 of each; the line 'sha256' is of",
                 "# them all). Written by the check itself when it passes; commit it with the change.",
                 f"sha256 {self.digest()}",
                 f"# took {(time.time() - start) / 60:.1f} min{'; ' + note if note else ''}"]
        lines += [f"# {h[:16]}  {p}" for p, h in sorted(inputs.items())]
        self.path.write_text("\n".join(lines) + "\n")
