#!/usr/bin/env python3
"""The circuit-discovery scorecard: every method against a circuit known in advance (issue 27).

    .venv/bin/python benchmarks/scorecard.py                      # the bundled ioi-planted
    .venv/bin/python benchmarks/scorecard.py --model PATH         # any folder with a ground_truth.json

On a model whose circuit was planted by training (``ground_truth.json`` beside its weights: every
node and edge of MIB's graph with its role, the backup name mover marked ``backup``), on
``--pairs`` (16) S2-swap IOI pairs of ``--template`` (0), one name order each (``--order``),
one CPU thread:

* exact edge patching, EAP, EAP-IG "inputs" and "activations" (MIB's 5 steps), all over every edge
  (``helpers.edge_attribution``); the greedy circuit search (``helpers.minimal_circuit``: heads
  and MLPs by joint denoising to 0.8 of the gap; a *set of nodes*, turned into every edge among
  them, ``input`` and ``logits``, pruned; scored as a two-valued ranking); a seeded random ranking;
* ROC AUC against the truth over edges and over nodes, with the backup's items counted as
  positives (+) and as negatives (−) (``helpers.score_against_truth``);
* MIB's CPR and CMD (``helpers.faithfulness_curve``) under counterfactual and mean ablation (the
  scores computed once from the counterfactual pairs; for the greedy set, its circuit's
  faithfulness instead);
* wall and CPU time of each method's scoring (not of its evaluation), after one warm-up run.

The core is ``helpers.circuits.scorecard`` (tested in ``tests/test_scorecard.py``).  Prints a
markdown table and what the numbers say about the decoy and the backup, and writes
``outputs/benchmarks/scorecard.json``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="ioi-planted", help="a bundled name or a model folder with ground_truth.json")
    ap.add_argument("--pairs", type=int, default=16, help="IOI prompt pairs")
    ap.add_argument("--template", type=int, default=0, help="index into helpers.TEMPLATES")
    ap.add_argument("--order", default="ABBA", choices=("ABBA", "BABA"), help="name order of the pairs")
    ap.add_argument("--seed", type=int, default=0, help="prompts and the random ranking")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks" / "scorecard.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    import helpers as H
    from helpers.circuits import scorecard as sc

    truth = sc.load_truth(args.model)
    model = H.load_model(args.model)
    pairs = H.ioi_pairs(model.tokenizer, n=args.pairs, seed=args.seed, template=args.template, order=args.order)
    H.edge_attribution(model, pairs, "eap")  # warm-up: the first traced run pays one-off costs
    card = sc.scorecard(model, pairs, truth, seed=args.seed)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    print(f"Model: {args.model} ({len(truth.graph.edges)} edges, {len(truth.graph.senders)} sender nodes; "
          f"planted nodes {', '.join(card.positives())}); {pairs.summary().splitlines()[0]}, template "
          f"{args.template}, {args.order}.\nMachine: {cpu}, 1 thread, Python {platform.python_version()}, "
          f"torch {torch.__version__}.\n")
    print(card.table())
    print("\nAUROC: by |score|, ties counted half; (backup +) counts the backup name mover's nodes and edges as "
          "positives, (backup −) as negatives. CPR: area under the faithfulness curve of the signed ranking "
          "(higher is better); CMD: area of |1 − f| for the absolute ranking (0 is best). "
          "greedy is a set of nodes, not a ranking: its AUROC is that one cut's, and its circuit's faithfulness "
          "is shown instead of a curve.\n")
    print("What the numbers say:")
    for line in card.findings():
        print(f"- {line}")
    print("\nWhy these are the failures to look for: a decoy attends like a name mover but writes nothing, so a "
          "method that measures effects should rank it low and one that reads attention would rank it high; a "
          "backup name mover is trained to be silent while the name mover works, so every method here, which "
          "compares a clean and a corrupted run with the rest of the model intact, has no difference to see "
          "(finding it needs the name mover ablated first). A greedy node set that restores the behaviour when "
          "patched together can keep nothing as a circuit of edges: its downstream heads are outside it.")
    data = card.to_dict() | {"machine": cpu, "template": args.template, "order": args.order, "seed": args.seed,
                             "torch": torch.__version__}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from helpers.base.validate import json_text

    out.write_text(json_text(data))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
