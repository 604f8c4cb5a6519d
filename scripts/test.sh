#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the whole test suite:
#   pytest -n 2 --dist loadgroup tests/ notebooks/ --nbval ...
# - tests/: the unit, reference and notebook (papermill) tests;
# - notebooks/: every notebook's stored outputs checked cell by cell with nbval (each notebook's
#   cells stay together on one xdist worker: tests/conftest.py groups them).
# Extra arguments go to pytest:  bash scripts/test.sh -m "not slow"   (the fast tier)
#                                bash scripts/test.sh tests/test_standin.py -x
# Paths among them replace the default tests/ notebooks/. Works from any directory.
# Exits non-zero on failure, including when no test was collected (pytest's exit 5).
set -euo pipefail

CALLER_PWD="$PWD"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

PY="$ROOT/.venv/bin/python"
# One thread per process: two xdist workers on a 2-core machine; kernels inherit this too.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
# No progress bars in the kernels nbval and papermill start (the stored outputs have none).
export PATCHLAB_PROGRESS=0

# Find explicit paths among the arguments (skipping the values of options that take one).
takes_value=(-m -k -n -p -c -o -W -r --dist --maxprocesses --junitxml --junit-xml --rootdir
    --basetemp --deselect --ignore --ignore-glob --maxfail --durations --tb --log-level
    --confcutdir --nbval-sanitize-with --nbval-kernel-name --nbval-cell-timeout --import-mode)
paths=()      # explicit paths, absolute
args=()       # the arguments, with paths relative to the caller's folder made absolute
skip_next=0
for arg in "$@"; do
    if (( skip_next )); then skip_next=0; args+=("$arg"); continue; fi
    case "$arg" in
        -*=*) ;;
        -*) for opt in "${takes_value[@]}"; do [[ "$arg" == "$opt" ]] && skip_next=1; done ;;
        *)
            path="${arg%%::*}"
            rest="${arg:${#path}}"
            if [[ "$path" != /* && -e "$CALLER_PWD/$path" ]]; then
                path="$(cd "$(dirname "$CALLER_PWD/$path")" && pwd)/$(basename "$path")"
                path="${path%/.}"
                arg="$path$rest"
            fi
            if [[ -e "$path" ]]; then paths+=("$(cd "$(dirname "$path")" && pwd)/$(basename "$path")"); fi
            ;;
    esac
    args+=("$arg")
done

shopt -s nullglob
notebooks=(notebooks/*.ipynb)
shopt -u nullglob

targets=()
dist=loadgroup
if (( ${#paths[@]} == 0 )); then
    targets=(tests)
    (( ${#notebooks[@]} )) && targets+=(notebooks)
else
    # tests/conftest.py (which keeps a notebook's cells on one worker) is loaded only when a
    # path is inside tests/ or contains it; otherwise let xdist group by file instead.
    conftest_loaded=0
    for abs in "${paths[@]}"; do
        abs="${abs%/.}"
        if [[ "$abs" == "$ROOT/tests" || "$abs" == "$ROOT/tests/"* || "$ROOT/tests" == "$abs/"* ]]; then
            conftest_loaded=1
        fi
    done
    (( conftest_loaded )) || dist=loadscope
fi

nbval_args=(--nbval --nbval-current-env)
[[ -f tests/nbval_sanitize.cfg ]] && nbval_args+=(--nbval-sanitize-with tests/nbval_sanitize.cfg)

ci_args=()
[[ "${CI:-}" == "true" ]] && ci_args+=(--durations=20)

cmd=("$PY" -m pytest -n 2 --dist "$dist" -ra "${nbval_args[@]}" "${ci_args[@]}" "${targets[@]}" "${args[@]}")
echo "[test] ${cmd[*]}"
set +e
"${cmd[@]}"
rc=$?
set -e
if (( rc == 5 )); then
    echo "[test] error: no tests were collected (pytest exit 5): failing." >&2
fi
exit "$rc"
