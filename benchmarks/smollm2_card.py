#!/usr/bin/env python3
"""The numbers in SmolLM2-135M's model card (helpers/organism/smollm2/MODEL_CARD.md).

    .venv/bin/python benchmarks/smollm2_card.py        # about 5 minutes on one core

IOI behaviour on the project's 15 templates (20 random prompts each, both name orders, seed 0):
top-1 accuracy (IO is the most likely next token), how often IO beats S, and the mean logit
difference IO - S with its standard error; then the runtime of each sweep (default fast path,
one thread) on 4 S2-swap pairs of template 0, and where the residual stream hands the
information from S2 to END.
"""
from __future__ import annotations

import json
import time

import torch


def main() -> int:
    torch.set_num_threads(1)
    import helpers as H

    start = time.perf_counter()
    model = H.load_model("smollm2-135m")
    report = {"load_s": round(time.perf_counter() - start, 1)}
    prompts = [p for t in H.TEMPLATES for p in H.random_ioi_prompts(20, seed=0, templates=[t])]
    acc = H.ioi_accuracy(model, prompts)
    # IO beats S: the logit difference is positive (accuracy asks for IO to be the top token)
    tok = model.tokenizer
    wins = []
    for p in prompts:
        ids = H.encode(model, p.text)
        logits = H.observe.last_logits(model, ids)
        io, s = H.single_token_id(tok, p.io), H.single_token_id(tok, p.s)
        wins.append(float(logits[0, io] > logits[0, s]))
    report["ioi"] = {"prompts": acc.n, "top1_accuracy": round(acc.accuracy, 3),
                     "io_beats_s": round(sum(wins) / len(wins), 3),
                     "mean_logit_diff": round(acc.mean_logit_diff, 2), "sem": round(acc.sem_logit_diff, 2)}
    pairs = H.ioi_pairs(tok, n=4, seed=0, template=0)
    sweeps = {}
    for name, run in (("residual layer x position", H.patch_residual), ("attention output", H.patch_attn_out),
                      ("MLP output", H.patch_mlp_out), ("heads", H.patch_heads)):
        t = time.perf_counter()
        result = run(model, pairs, progress=False)
        sweeps[name] = {"seconds": round(time.perf_counter() - t, 1), "method": result.method,
                        "patches": int(result.values["logit_diff"][0].numel())}
        if name.startswith("residual"):
            score = result.score()
            s2, end = pairs.positions["S2"], pairs.positions["END"]
            report["handover"] = {"rows": result.labels["layer"],
                                  "S2": [round(float(x), 2) for x in score[:, s2]],
                                  "END": [round(float(x), 2) for x in score[:, end]]}
    report["sweeps_4_pairs"] = sweeps
    report["baselines"] = {"clean": round(result.baseline("clean"), 2),
                           "corrupted": round(result.baseline("corrupted"), 2)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
