#!/usr/bin/env python3
"""Re-execute the notebooks in place, storing the outputs that nbval checks in CI.

    .venv/bin/python scripts/regenerate_notebooks.py            # every notebook
    .venv/bin/python scripts/regenerate_notebooks.py 03 05      # those whose name contains 03 or 05

Each notebook runs top to bottom in a fresh ``python3`` kernel with its default
parameters, in the ``notebooks/`` folder (where nbval runs it), one torch thread,
progress bars off (``PATCHLAB_PROGRESS=0``).  Volatile metadata (execution
timings) is dropped so that a rerun changes nothing but real differences.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
ENV = {"PATCHLAB_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def regenerate(path: Path, timeout: int = 300) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("papermill", None)
    nbformat.write(nb, path)
    return time.time() - start


def main(patterns: list[str]) -> int:
    os.environ.update(ENV)
    paths = sorted(p for p in NOTEBOOKS.glob("[0-9]*.ipynb")
                   if not patterns or any(k in p.name for k in patterns))
    if not paths:
        print("no notebooks match", patterns)
        return 1
    for path in paths:
        print(f"{path.name:<40} {regenerate(path):6.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
