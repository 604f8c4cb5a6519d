#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and execute every notebook headlessly with papermill into
# outputs/executed/ (scripts/run_notebooks.py). Arguments go to run_notebooks.py, e.g.
#   bash scripts/run_all.sh --only 03 -p n_prompts 8
# Works from any directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
exec "$ROOT/.venv/bin/python" scripts/run_notebooks.py "$@"
