#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh), then run pytest from the repository root:
#
#   bash scripts/test.sh                          # everything: tests/ and notebooks/ (nbval)
#   bash scripts/test.sh -m "not slow"            # the fast tier
#   bash scripts/test.sh tests/test_patching.py -x   # a path, relative to the repository root
#
# Every argument goes to pytest unchanged. With no path, pytest runs its `testpaths`
# (pyproject.toml: tests/ and notebooks/). Two xdist workers, `--dist loadgroup` (each
# notebook's cells stay on one worker: notebooks/conftest.py), nbval on. Exits non-zero on
# failure, including when no test was collected (pytest's exit 5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

# One thread per process: two workers on a 2-core machine; kernels inherit this too.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export PATCHLAB_PROGRESS=0   # no progress bars in kernels (the stored outputs have none)

opts=(-n 2 --dist loadgroup -ra --nbval --nbval-current-env)
[[ -f tests/nbval_sanitize.cfg ]] && opts+=(--nbval-sanitize-with tests/nbval_sanitize.cfg)
[[ "${CI:-}" == "true" ]] && opts+=(--durations=20)

echo "[test] .venv/bin/python -m pytest ${opts[*]} $*"
rc=0
.venv/bin/python -m pytest "${opts[@]}" "$@" || rc=$?
(( rc == 5 )) && echo "[test] error: no tests were collected (pytest exit 5): failing." >&2
exit "$rc"
