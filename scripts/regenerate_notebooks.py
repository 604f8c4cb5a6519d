#!/usr/bin/env python3
"""Re-execute the notebooks in place, storing the outputs that nbval checks in CI.

    .venv/bin/python scripts/regenerate_notebooks.py            # every notebook
    .venv/bin/python scripts/regenerate_notebooks.py 03 05      # those whose name contains 03 or 05

Each notebook runs top to bottom in a fresh ``python3`` kernel with its default
parameters, in the ``notebooks/`` folder (where nbval runs it), one torch thread,
progress bars off (``PATCHLAB_PROGRESS=0``), and with torch's **portable CPU kernels**
(``PORTABLE_KERNELS``: ``ATEN_CPU_CAPABILITY=default``, no AVX2/AVX-512 code paths, MKL and
oneDNN limited to SSE4): the stored outputs are those of a generic x86-64 CPU, so the test
suite's one nbval run, with the native kernels of whatever CPU runs it, compares two different
kernel sets and checks both that the outputs did not change and that they do not depend on
the CPU.  The notebook's metadata records the kernels they were stored with
(``metadata.patchlab.stored_with``; ``tests/test_portability.py`` checks it).  Volatile
metadata (execution timings) is dropped so that a rerun changes nothing but real differences.
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
#: torch's portable kernels: another CPU model's float rounding (no vector code paths in ATen)
PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                    "ONEDNN_MAX_CPU_ISA": "SSE41"}
ENV = {"PATCHLAB_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       **PORTABLE_KERNELS}


def regenerate(path: Path, timeout: int = 900) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("papermill", None)
    nb.metadata["patchlab"] = {"stored_with": dict(sorted(PORTABLE_KERNELS.items()))}
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
