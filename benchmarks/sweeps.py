#!/usr/bin/env python3
"""Speed and memory of the patching sweeps, measured side by side in one run.

    .venv/bin/python benchmarks/sweeps.py                   # GPT-2 small stand-in, about 5 minutes
    .venv/bin/python benchmarks/sweeps.py --model smollm2   # SmolLM2-135M's shapes (Llama), ~15 minutes
    .venv/bin/python benchmarks/sweeps.py --quick           # the bundled model, seconds

Model: GPT-2 small's shapes and real tokenizer with random weights (the stand-in
the tests use; speed does not depend on the weights), or a random Llama with
SmolLM2-135M's shapes (30 blocks, 9 query / 3 key-value heads, d_model 576) and
GPT-2's tokenizer; one CPU thread, the
canonical S2-swap pair "After John and Mary went to the store, Mary/John gave a
bottle of milk to".  Each method runs in its own child process, so its peak
memory (max RSS) is its own.  Printed per sweep and method: wall time, speed-up
over the textbook loop, ratio to the floor, peak memory, and the largest
difference from the loop's logit differences.  Then a float64 check that the
default path equals the loop within 1e-5.

The floor is the least work any exact method needs: a patch entering block L
at position p must recompute blocks L .. n-2 at positions p.. and the last
block at the final position (nothing before the first position where the
prompts differ), priced at the per-(layer, position) throughput of one plain
batched forward pass measured in the same child.  A ratio below 1 means the
method beats that estimate (larger batches run faster per position).

Results: printed as a markdown table and written to outputs/benchmarks/sweeps.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "After John and Mary went to the store, Mary gave a bottle of milk to"
QUICK_PROMPT = "After John and Mary went to the store, Mary gave a drink to"  # in ioi-tiny's vocabulary
METHODS = [  # (label, sweep method, metrics)
    ("textbook loop (one traced forward per patch)", "loop", None),
    ("batched nnsight (many patches per forward)", "batched", None),
    ("fast exact, default (all metrics)", "fast", None),
    ("fast exact, logit difference only", "fast", ("logit_diff",)),
    ("attribution patching (estimate)", "attribution", None),
]
SWEEPS = ("resid", "heads")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(model_dir: str, sweep: str, method: str, metrics: str, dtype: str) -> dict:
    import torch

    torch.set_num_threads(1)
    import helpers as H

    model = H.load_model(model_dir, dtype=dtype)
    pairs = H.pairs_from_prompt(model.tokenizer, QUICK_PROMPT if model_dir == "ioi-tiny" else PROMPT)
    f = H.model_facts(model)
    # per-(layer, position) throughput of a plain batched forward, for the floor
    batch = pairs.corrupted_ids.repeat(16, 1)
    with torch.no_grad():
        H.models.hf_model(model)(batch, use_cache=False)
        t = time.perf_counter()
        H.models.hf_model(model)(batch, use_cache=False)
        per_unit = (time.perf_counter() - t) / (16 * f.n_layers * pairs.seq_len)
    loaded = _rss_mb()
    kw = {"progress": False}
    if metrics:
        kw["metrics"] = tuple(metrics.split(","))
    start = time.perf_counter()
    if method == "attribution":
        result = H.attribution_patching(model, pairs)["resid" if sweep == "resid" else "heads"]
    elif sweep == "resid":
        result = H.patch_residual(model, pairs, method=method, **kw)
    else:
        result = H.patch_heads(model, pairs, method=method, **kw)
    seconds = time.perf_counter() - start
    first, seq, n = pairs.first_difference, pairs.seq_len, f.n_layers
    def needed(layer: int, p: int) -> int:
        """(layer, position) computations a patch entering block ``layer`` at position
        ``p`` needs: blocks layer .. n-2 at positions p.., the last block at the end only."""
        return 0 if layer >= n else max(0, n - 1 - layer) * (seq - p) + 1

    if sweep == "resid":  # stream index L = input of block L: embed is 0, block L's output L + 1
        units = sum(needed(row, p) for row in range(n + 1) for p in range(first, seq))
    else:
        units = sum(needed(layer, first) for layer in range(n) for _ in range(f.n_heads))
    return {"seconds": seconds, "floor_seconds": units * per_unit, "peak_mb": _rss_mb(),
            "loaded_mb": loaded, "logit_diff": result.values["logit_diff"][0].flatten().tolist(),
            "patches": result.values["logit_diff"][0].numel()}


def run_child(model_dir: str, sweep: str, method: str, metrics, dtype: str) -> dict:
    cmd = [sys.executable, __file__, "--child", model_dir, sweep, method, ",".join(metrics or ()), dtype]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATCHLAB_PROGRESS": "0",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{sweep}/{method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} cores (1 thread used), {platform.system()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the bundled model instead of GPT-2 small")
    ap.add_argument("--model", choices=("gpt2", "smollm2"), default="gpt2",
                    help="the shapes to measure: GPT-2 small (default) or SmolLM2-135M (Llama)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    sys.path.insert(0, str(ROOT / "tests"))
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            model_dir, model_label = "ioi-tiny", "ioi-tiny (bundled)"
        elif args.model == "smollm2":
            from standin import build_smollm2_standin

            model_dir = str(build_smollm2_standin(Path(tmp) / "smollm2-standin"))
            model_label = "SmolLM2-135M's shapes (Llama, random weights, GPT-2's tokenizer)"
        else:
            from standin import build_gpt2_standin

            model_dir = str(build_gpt2_standin(Path(tmp) / "gpt2-standin"))
            model_label = "GPT-2 small stand-in (real tokenizer, random weights)"
        rows, report = [], {"machine": machine(), "model": model_label, "sweeps": {},
                            "prompt": QUICK_PROMPT if args.quick else PROMPT}
        for sweep in SWEEPS:
            res = {label: run_child(model_dir, sweep, method, metrics, "float32")
                   for label, method, metrics in METHODS}
            loop = res[METHODS[0][0]]
            check64 = {m: run_child(model_dir, sweep, m, None, "float64") for m in ("loop", "fast")}
            err64 = max(abs(a - b) for a, b in zip(check64["loop"]["logit_diff"], check64["fast"]["logit_diff"]))
            report["sweeps"][sweep] = {"methods": res, "float64_max_difference_fast_vs_loop": err64}
            for label, _, _ in METHODS:
                r = res[label]
                diff = max(abs(a - b) for a, b in zip(r["logit_diff"], loop["logit_diff"]))
                rows.append((sweep, label, r["seconds"], loop["seconds"] / r["seconds"],
                             r["seconds"] / r["floor_seconds"], r["peak_mb"], diff, r["patches"]))
            print(f"[{sweep}] float64 check: default fast path vs loop, max |difference| = {err64:.2e}",
                  flush=True)
    names = {"resid": "residual layer x position", "heads": "layer x head"}
    print(f"\nMachine: {report['machine']}\nModel: {model_label}\n")
    print("| sweep | method | time (s) | speed-up vs loop | x floor | peak memory (MB) | max diff vs loop |")
    print("|---|---|---|---|---|---|---|")
    for sweep, label, sec, speed, floor, peak, diff, n in rows:
        print(f"| {names[sweep]} ({n} patches) | {label} | {sec:.2f} | {speed:.1f}x | {floor:.1f} | "
              f"{peak:.0f} | {diff:.1e} |")
    out = ROOT / "outputs" / "benchmarks" / f"sweeps-{'quick' if args.quick else args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for sweep in report["sweeps"].values():
        for r in sweep["methods"].values():
            r.pop("logit_diff")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
