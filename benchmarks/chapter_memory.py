#!/usr/bin/env python3
"""Peak memory of each chapter's kernel on the GPT-2 small stand-in, as a learner runs it.

    .venv/bin/python benchmarks/chapter_memory.py               # every chapter, ~15 minutes
    .venv/bin/python benchmarks/chapter_memory.py --only 03 08  # some chapters
    .venv/bin/python benchmarks/chapter_memory.py --quick       # the bundled models, a minute

Why: mybinder restarts a kernel whose container passes 2 GB, JupyterLab included; the target
is every chapter under ``--limit`` (1.5 GB) at its peak on GPT-2 small's shapes.

How: each chapter runs with papermill, default parameters except ``model_name`` (the stand-in:
GPT-2 small's real tokenizer and module tree, random weights, saved as safetensors in a
temporary folder), ``normalise=False`` (random weights leave no gap to normalise by) and
``show_widgets=False``, in a fresh Python process that starts the kernel
as its child.  When papermill returns, the kernel has exited and been reaped, so that process's
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is the kernel's peak resident set (the largest child;
papermill itself is the parent and not counted).  Chapter 7 (a refusal task GPT-2's random
weights cannot do) runs too: its sweeps still run, only unnormalised.

Prints a markdown table and writes outputs/benchmarks/chapter-memory.json; exits 1 if a chapter
fails or passes the limit.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

_CHILD = """
import json, resource, sys
import papermill as pm
nb, out, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
pm.execute_notebook(nb, out, parameters=params, cwd=sys.argv[4], progress_bar=False, log_output=False)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run_chapter(nb: Path, model_dir: str | None, output_dir: str) -> dict:
    """Run one chapter in a fresh process; its kernel's peak RSS in MB and the wall time."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    params = {"show_widgets": False, "output_dir": output_dir}
    if model_dir:   # random weights: no clean-corrupted gap to normalise by
        params.update(model_name=model_dir, normalise=False)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(nb), str(Path(output_dir) / nb.name),
                           json.dumps(params), str(ROOT / "notebooks")],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PATCHLAB_PROGRESS": "0"})
    seconds = time.perf_counter() - start
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed",
                "seconds": seconds}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", nargs="+", metavar="NN", help="chapter numbers, e.g. 03 08")
    ap.add_argument("--quick", action="store_true", help="the chapters' bundled models instead")
    ap.add_argument("--limit", type=float, default=1500.0, help="MB a chapter's peak must stay under")
    args = ap.parse_args()
    chapters = [nb for nb in NOTEBOOKS if not args.only or nb.name[:2] in args.only]
    sys.path.insert(0, str(ROOT / "tests"))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, label = None, "each chapter's bundled model"
        if not args.quick:
            from standin import build_gpt2_standin

            model_dir = str(build_gpt2_standin(Path(tmp) / "gpt2-standin"))
            label = "GPT-2 small stand-in (real tokenizer, random weights)"
        for nb in chapters:
            rows[nb.stem] = run_chapter(nb, model_dir, str(Path(tmp) / "out"))
            print(f"{nb.stem}: {rows[nb.stem]}", file=sys.stderr, flush=True)
    print(f"\nKernel peak resident memory per chapter, {label}, default parameters "
          f"(limit {args.limit:.0f} MB)\n")
    print("| chapter | peak RSS (MB) | under limit | run time (s) |\n|---|---|---|---|")
    failed = False
    for name, r in rows.items():
        if "error" in r:
            failed = True
            print(f"| {name} | failed: {r['error']} | - | {r['seconds']:.0f} |")
            continue
        ok = r["peak_mb"] < args.limit
        failed |= not ok
        print(f"| {name} | {r['peak_mb']:.0f} | {'yes' if ok else 'NO'} | {r['seconds']:.0f} |")
    out = ROOT / "outputs" / "benchmarks" / ("chapter-memory-quick.json" if args.quick else "chapter-memory.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": label, "limit_mb": args.limit, "chapters": rows}, indent=1))
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
