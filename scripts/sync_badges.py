#!/usr/bin/env python3
"""Write the "Open in Binder" / "Open in Colab" badges and the Colab install line
from the one repository setting, ``[tool.patchlab] repository`` in pyproject.toml.

    python scripts/sync_badges.py           # rewrite README.md and every notebook
    python scripts/sync_badges.py --check   # exit 1 if anything is out of date (the tests use it)

In each notebook, the first (markdown) cell's line starting with ``[![Open in Binder]``
is replaced; in README.md the line between ``<!-- badges -->`` markers.  The setup
cell's ``PATCHLAB_SOURCE = "..."`` line is set to the git URL Colab installs from.
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def setting() -> tuple[str, str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["patchlab"]
    return cfg["repository"], cfg.get("branch", "main")


def badges(notebook: str | None) -> str:
    repo, branch = setting()
    if notebook:
        binder = f"https://mybinder.org/v2/gh/{repo}/{branch}?urlpath=lab/tree/notebooks/{notebook}"
        colab = f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{notebook}"
    else:
        binder = f"https://mybinder.org/v2/gh/{repo}/{branch}?urlpath=lab/tree/notebooks"
        colab = f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/01_concepts.ipynb"
    return (f"[![Open in Binder](https://mybinder.org/badge_logo.svg)]({binder}) "
            f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab})")


def source_line() -> str:
    repo, branch = setting()
    return f'PATCHLAB_SOURCE = "patchlab @ git+https://github.com/{repo}@{branch}"'


def sync(check: bool) -> list[str]:
    stale = []
    for path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        changed = False
        first = nb.cells[0]
        lines = first.source.split("\n")
        new = [badges(path.name) if l.startswith("[![Open in Binder]") else l for l in lines]
        if not any(l.startswith("[![Open in Binder]") for l in lines):
            new.insert(1, badges(path.name))
        if new != lines:
            first.source, changed = "\n".join(new), True
        for cell in nb.cells:
            if cell.cell_type == "code" and "PATCHLAB_SOURCE = " in cell.source:
                fixed = re.sub(r'^PATCHLAB_SOURCE = ".*"$', source_line(), cell.source, flags=re.M)
                if fixed != cell.source:
                    cell.source, changed = fixed, True
        if changed:
            stale.append(path.name)
            if not check:
                nbformat.write(nb, path)
    readme = ROOT / "README.md"
    text = readme.read_text()
    fixed = re.sub(r"<!-- badges -->.*?<!-- /badges -->",
                   f"<!-- badges -->\n{badges(None)}\n<!-- /badges -->", text, flags=re.S)
    if fixed != text:
        stale.append("README.md")
        if not check:
            readme.write_text(fixed)
    return stale


if __name__ == "__main__":
    check = "--check" in sys.argv
    stale = sync(check)
    if stale:
        print(("out of date: " if check else "updated: ") + ", ".join(stale))
    sys.exit(1 if check and stale else 0)
