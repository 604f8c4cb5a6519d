"""Stored notebook outputs do not depend on the CPU, and a chapter prints the same twice.

* The chapters' outputs are stored with torch's **portable** CPU kernels
  (``scripts/regenerate_notebooks.py``: ``ATEN_CPU_CAPABILITY=default``, no AVX2/AVX-512 code
  paths in ATen, MKL limited to SSE4.2 and oneDNN to SSE4.1), a proxy for another CPU model.
  The suite's one nbval run of every chapter (``notebooks/``) uses the **native** kernels of the
  machine running it, so it compares two different kernel sets: one run checks both that the
  stored outputs did not change and that they hold on another CPU (under the one comparison
  rule of ``notebooks/conftest.py``). The tests below check that the outputs really were stored
  that way and that the proxy really switches torch's kernels.
* Run-to-run determinism: two runs of a small chapter in fresh kernels print identical text.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))
_spec = importlib.util.spec_from_file_location("regenerate_notebooks",
                                               REPO / "scripts" / "regenerate_notebooks.py")
regenerate_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regenerate_notebooks)
PORTABLE_KERNELS = regenerate_notebooks.PORTABLE_KERNELS

#: the chapter run twice: small, and through the sweeps' fast path, the batched path and a figure
TWICE = REPO / "notebooks" / "03_position_patching.ipynb"


def test_the_cpu_proxy_really_switches_torch_to_its_portable_kernels():
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **PORTABLE_KERNELS},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "DEFAULT"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_outputs_were_made_with_the_portable_kernels(nb):
    """So the native-kernel nbval run compares two kernel sets (the module docstring)."""
    stored = json.loads(nb.read_text())["metadata"].get("patchlab", {}).get("stored_with")
    assert stored == PORTABLE_KERNELS, (
        f"{nb.name} was not stored by scripts/regenerate_notebooks.py with the portable kernels "
        f"(metadata says {stored}): re-store it with that script")


_RUN = """
import json, os, sys, tempfile
import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
# Unix sockets, not TCP ports: no port picked here can be taken by another process first
km = KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(tempfile.mkdtemp(), "kernel"))
NotebookClient(nb, km=km, timeout=600, kernel_name="python3",
               resources={"metadata": {"path": sys.argv[2]}}).execute()
texts = []
for i, cell in enumerate(nb.cells):
    if cell.cell_type != "code" or "NBVAL_IGNORE_OUTPUT" in cell.source:
        continue
    pieces = []  # one string per cell: a kernel may split one print stream into messages
    for out in cell.get("outputs", []):
        pieces += [out.get("text", "")] + [v for k, v in out.get("data", {}).items() if k.startswith("text/")]
    texts.append(f"cell {i}: " + "".join(map(str, pieces)))
print(json.dumps(texts))
"""


def _texts(path: Path) -> list[str]:
    """Every text output of a fresh top-to-bottom run (cells marked NBVAL_IGNORE_OUTPUT skipped),
    in a process of its own, the kernel on Unix sockets: with TCP ports, a run beside another
    busy test worker has been seen to wait ten minutes on an idle kernel for a lost reply (CI:
    623 s for a chapter that runs in 15 s)."""
    run = subprocess.run([sys.executable, "-c", _RUN, str(path), str(path.parent)], capture_output=True,
                         text=True, env=os.environ.copy(), timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.notebooks
def test_a_chapter_prints_the_same_text_twice(monkeypatch):
    for name, value in {"PATCHLAB_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, value)
    first, second = _texts(TWICE), _texts(TWICE)
    assert sum(len(t) for t in first) > 1000, first  # the chapter really printed its tables
    assert first == second
