"""Stored notebook outputs do not depend on the CPU, and a notebook prints the same twice.

* Another CPU model is simulated by forcing torch's portable kernels: ``ATEN_CPU_CAPABILITY=default``
  (no AVX2/AVX-512 code paths in ATen), MKL limited to SSE4.2 and oneDNN to SSE4.1.  nbval then
  checks every stored output under the one comparison rule of ``notebooks/conftest.py``.
* Two runs of each notebook on this machine, in fresh kernels, print identical text.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))
PROXY = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
         "ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

pytestmark = [pytest.mark.slow, pytest.mark.notebooks]


def test_the_cpu_proxy_really_switches_torch_to_its_portable_kernels():
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **PROXY},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "DEFAULT"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_outputs_hold_with_portable_cpu_kernels(nb):
    """One notebook per test, so the test workers share them (chapter 10 alone takes minutes)."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-q", "--nbval", "--nbval-current-env",
           "--rootdir", str(REPO), str(nb)]
    sanitize = REPO / "tests" / "nbval_sanitize.cfg"
    if sanitize.exists():
        cmd += ["--nbval-sanitize-with", str(sanitize)]
    run = subprocess.run(cmd, cwd=REPO, env={**os.environ, **PROXY}, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout.splitlines()[-1]


def _texts(path: Path) -> list[str]:
    """Every text output of a fresh top-to-bottom run (cells marked NBVAL_IGNORE_OUTPUT skipped)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    texts = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "NBVAL_IGNORE_OUTPUT" in cell.source:
            continue
        pieces = []  # one string per cell: a kernel may split one print stream into messages
        for out in cell.get("outputs", []):
            pieces += [out.get("text", "")] + [v for k, v in out.get("data", {}).items()
                                               if k.startswith("text/")]
        texts.append(f"cell {i}: " + "".join(map(str, pieces)))
    return texts


def _on_bundled_model(nb: Path) -> bool:
    import nbformat

    cell = next(c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    return '"smollm2-135m"' not in cell.source


#: Chapter 10 (SmolLM2, ~5 minutes a run) is not run twice more here: its stored text is already
#: compared with two fresh runs, by nbval and by the portable-kernel nbval above.
TWICE = [nb for nb in NOTEBOOKS if _on_bundled_model(nb)]


@pytest.mark.parametrize("nb", TWICE, ids=[p.stem for p in TWICE])
def test_a_notebook_prints_the_same_text_twice(nb, monkeypatch):
    for name, value in {"PATCHLAB_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, value)
    first, second = _texts(nb), _texts(nb)
    assert first == second
