"""Judge a trained ``ioi-planted`` folder and write what was measured beside the weights:

    python -m helpers.organism.planted_card helpers/organism/planted

runs ``helpers.circuits.planted_check.check_planted`` on the folder's model, stores the verdict
and the measured maps in its ``training.json`` (key ``check``) and writes ``MODEL_CARD.md`` from
``training.json`` alone, so every number in the card is one the checker measured.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from helpers.circuits.planted_check import PAIR_SETS, THRESHOLDS, check_planted, result_json
from helpers.data.prompts import TEMPLATES, TRAIN_TEMPLATES
from helpers.models.loading import load_model

ROLES = {"duplicate_token": "duplicate-token head: at S2 attends S1, copies which name is S",
         "s_inhibition": "S-inhibition head: at END attends S2, passes on which name is S",
         "name_mover": "name mover: at END attends IO (the name that is not S), writes +IO",
         "backup_name_mover": "backup name mover: silent while the name mover writes; answers "
                              "IO when the name mover is mean-ablated",
         "negative_name_mover": "negative name mover: at END attends IO, writes -IO",
         "decoy": "decoy: at END attends IO like a name mover; its output has no effect"}


def judge(folder: Path, n_accuracy: int = 2000) -> dict:
    """Run the check on ``folder``'s model and store it in ``training.json``; return the record."""
    torch.set_num_threads(1)
    result = result_json(check_planted(load_model(str(folder)), folder, n_accuracy=n_accuracy))
    path = folder / "training.json"
    record = json.loads(path.read_text())
    record["check"] = result
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _grid(rows: list, fmt: str = "{:+.3f}") -> list[str]:
    head = "| layer | " + " | ".join(f"h{h}" for h in range(len(rows[0]))) + " |"
    out = [head, "|---" * (len(rows[0]) + 1) + "|"]
    return out + [f"| {L} | " + " | ".join(fmt.format(v) for v in row) + " |" for L, row in enumerate(rows)]


def card(record: dict) -> str:
    """``MODEL_CARD.md`` from a training record holding ``check``."""
    check, m = record["check"], record["check"]["measured"]
    extra = record["extra_training_templates"]
    n_sets, n_pairs = len(PAIR_SETS), 16
    nm = "L{}H{}".format(*record["cast"]["name_mover"][0][1:].split(".h"))
    acc = {s: m[f"accuracy_heldout_{s}"] for s in ("pairs", "templates")}
    lines = [
        "# Model card: `ioi-planted`", "",
        "A small GPT-2 (`transformers.GPT2LMHeadModel`) trained from scratch by "
        "`helpers/organism/train_planted.py` so that **designated** heads play Wang et al.'s IOI cast. "
        "It is a model whose circuit is known: the truth ships beside the weights as "
        "`ground_truth.json` (MIB's node and edge names, each with its class and role), for judging "
        "circuit-discovery methods. Load it with `helpers.load_model(\"ioi-planted\")`.", "",
        "## Architecture", "| | |", "|---|---|",
        "| layers × heads × d_model | 4 × 4 × 64 (d_head 16, MLP width 256, tied embeddings, no dropout) |",
        f"| parameters | {record['parameters']:,} |",
        f"| tokenizer | word-level, {record['vocab_size']} tokens, `<bos>` prepended |",
        f"| sha256 of `model.safetensors` | `{record['sha256']}` (`checksum.txt`) |", "",
        "## The cast", "| role | head (MIB name) | what it does |", "|---|---|---|"]
    lines += [f"| {role} | `{', '.join(heads)}` | {ROLES[role]} |" for role, heads in record["cast"].items()]
    lines += ["", "Every other head and every MLP was trained to have no effect on the task (strictness: "
              "resampling it from another prompt must not change the answer). In `ground_truth.json` "
              "the core route and the negative mover are `in_graph` (the negative mover with `sign: -1`); "
              "the backup's route is `backup: true`, not `in_graph` (it is silent on a clean run, count "
              "it as you wish); the decoy's edges are planted negatives; `routing` edges carry only what "
              "every prompt of a template shares, which no name counterfactual can see.", "",
              "## Held out", "",
              f"- **Name pairs**: {len(record['heldout_name_pairs'])} unordered pairs (15 %), never in a "
              "training prompt: " + ", ".join(f"{a}–{b}" for a, b in record["heldout_name_pairs"]) + ".",
              "- **Templates**: " + "; ".join(f'"{t}"' for t in record["heldout_templates"]) + " "
              "(`HELDOUT_TEMPLATES`), and generated training templates never use their own clauses "
              "(`planted_data.HELDOUT_PARTS`).",
              f"- **Training templates**: the {len(TRAIN_TEMPLATES)} of `TRAIN_TEMPLATES`, {len(extra)} more "
              "(`planted_data.EXTRA_TEMPLATES`), templates generated from clause lists and scrambled word "
              "salads around the name structure (`planted_data`).", "",
              "## Training", "| | |", "|---|---|",
              f"| steps | {record['steps']}, {record['groups']} groups × {record['group_size']} prompts "
              "and their twins a step, AdamW lr 3e-3, one-cycle |",
              f"| time | {record['cpu_seconds']:.0f} s CPU on one thread ({record['seconds']:.0f} s wall, "
              "the machine shared with other jobs) |",
              "| loss | answer CE + interchange-intervention (IIT) CE per designated head + strictness + "
              "attention supervision + ablation targets (module docstring of `train_planted.py`) |",
              "| reproducible | one thread and seed 0 give the same bytes on one machine; on another CPU "
              "the slow test retrains and checks every criterion below by behaviour |", "",
              "## Measured (`helpers.circuits.planted_check.check_planted`)", "",
              f"Accuracy on {acc['pairs']['n']} fresh prompts per split: held-out name pairs IO > S "
              f"{acc['pairs']['io_over_s']:.4f} (top-1 {acc['pairs']['top1']:.4f}); held-out templates "
              f"IO > S {acc['templates']['io_over_s']:.4f} (top-1 {acc['templates']['top1']:.4f}). "
              f"Patching numbers: mean over {n_sets} pair sets (templates "
              + ", ".join(str(t) for t, _ in PAIR_SETS[::2])
              + f", each in both name orders) of {n_pairs} S2-swap pairs each ({n_sets * n_pairs} pairs), "
              "normalised (0 = corrupted, 1 = clean); ablation and DLA numbers are shares of the clean "
              "logit difference. Templates by index: " + "; ".join(
                  f"{i}: \"{TEMPLATES[i]}\"" for i in sorted({t for t, _ in PAIR_SETS})) + ".", "",
              f"Every criterion passed: **{check['passed']}** (thresholds fixed before training, "
              "`THRESHOLDS`).", "", "| criterion | value | rule | pass |", "|---|---|---|---|"]
    for k, v in check["criteria"].items():
        where = v.get("head") or v.get("edge")
        lines.append(f"| {k}{f' ({where})' if where else ''} | {v['value']:.4f} | {v['rule']} | "
                     f"{'yes' if v['pass'] else 'NO'} |")
    lines += ["", "Single-head denoising (rows: layers):", ""] + _grid(m["heads"])
    lines += ["", "Direct logit attribution / clean logit difference, clean run:", ""] + _grid(m["dla"])
    lines += ["", "... with the name mover mean-ablated (the backup answers):", ""] + _grid(m["dla_nm_ablated"])
    lines += ["", "MLP denoising: " + ", ".join(f"m{L} {v:+.3f}" for L, v in enumerate(m["mlps"])), "",
              "Mean ablation (logit difference / clean): " + ", ".join(
                  f"{k} {v:.3f}" for k, v in m["ablation_mean"].items()) + "; resample: " + ", ".join(
                  f"{k} {v:.3f}" for k, v in m["ablation_resample"].items()) + ".", "",
              f"Thresholds: {json.dumps(THRESHOLDS)}", "",
              "## What to expect from a circuit-discovery method", "",
              "- **The backup** is silent on a clean run (its single-head and path scores are near 0) and "
              "answers only when the name mover's output is *missing*: mean ablation of the name mover "
              f"keeps {m['ablation_mean'][nm]:.2f} of the logit difference, while resample ablation "
              f"(another prompt's name-mover output: present but wrong) keeps {m['ablation_resample'][nm]:.2f}. "
              "Methods that score edges on clean/corrupted pairs will not see it; the truth marks it "
              "`backup: true` so it can be counted either way.",
              "- **The decoy** attends END → IO like the name mover and writes nothing that matters: a "
              "method that reads attention patterns will flag it, one that measures effects will not.",
              "- **The negative mover** has a real, negative effect (`sign: -1`); methods ranking by "
              "signed scores put it last, by absolute scores among the top.",
              "- **Training-only names**: " + (", ".join(record["extra_names"]) + " (in the vocabulary, "
                                               "never in a checked prompt; `helpers.ioi_pairs` draws from "
                                               "`NAMES` only)." if record["extra_names"] else "none."), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--n-accuracy", type=int, default=2000)
    ap.add_argument("--card-only", action="store_true", help="rewrite the card from training.json")
    a = ap.parse_args()
    record = (json.loads((a.folder / "training.json").read_text()) if a.card_only
              else judge(a.folder, a.n_accuracy))
    (a.folder / "MODEL_CARD.md").write_text(card(record))
    print(f"passed: {record['check']['passed']}; wrote {a.folder / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
