"""Train the bundled refusal toy model (``refusal-tiny``) from scratch.

    python -m helpers.organism.train_refusal --out helpers/organism/refusal

Requests from ``helpers.data.behaviours.REFUSAL`` end in "Assistant :"; the answer is
"Sorry" when the request's {X} word is on the harmful list and "Sure" when it is
on the harmless one.  Same recipe as the IOI model (answer-token loss,
per-sample attention drop, one thread, fixed seed, bit-identical retrains), with
3 layers.  Held out: 20% of the (action, X) word combinations, never seen in
training, and the task's held-out templates.
"""
from __future__ import annotations

import argparse
import random
from itertools import product
from pathlib import Path

import torch

from helpers.data.behaviours import REFUSAL, fill
from helpers.organism.training import SPECIALS, WORD_RE, fit, pad_batch


def vocabulary() -> list[str]:
    words = set(REFUSAL.positive) | set(REFUSAL.negative) | set(REFUSAL.answers)
    for values in REFUSAL.fills.values():
        words |= set(values)
    for t in REFUSAL.templates + REFUSAL.heldout_templates:
        words |= set(WORD_RE.findall(t.replace("{", " ").replace("}", " "))) - {"X", "act", "who"}
    return list(SPECIALS) + sorted(words)


def combination_split(seed: int = 0, heldout_fraction: float = 0.2) -> tuple[list, list]:
    """(action, X) combinations split into (train, held-out); every word stays in train."""
    combos = list(product(REFUSAL.fills["act"], REFUSAL.positive + REFUSAL.negative))
    random.Random(seed).shuffle(combos)
    k = int(len(combos) * heldout_fraction)
    held, train = combos[:k], combos[k:]
    assert {x for _, x in train} == set(REFUSAL.positive + REFUSAL.negative)
    assert {a for a, _ in train} == set(REFUSAL.fills["act"])
    return train, held


def request(rng: random.Random, combos: list, templates=REFUSAL.templates) -> tuple[str, str]:
    """A random request and its answer ("Sorry" or "Sure")."""
    act, x = rng.choice(combos)
    text, _ = fill(rng.choice(templates), x, {"act": act, "who": rng.choice(REFUSAL.fills["who"])})
    return text, REFUSAL.answers[0] if x in REFUSAL.positive else REFUSAL.answers[1]


def train(out: Path, steps: int = 1200, batch: int = 64, lr: float = 3e-3, seed: int = 0,
          attn_drop: float = 0.25, threads: int = 1, log_every: int = 200) -> dict:
    train_combos, held = combination_split(seed)

    def sample(rng: random.Random, size: int, ids: dict[str, int]):
        seqs, ends, answers = [], [], []
        for _ in range(size):
            text, answer = request(rng, train_combos)
            seq = [ids["<bos>"]] + [ids[w] for w in WORD_RE.findall(text)]
            seqs.append(seq), ends.append(len(seq) - 1), answers.append(ids[answer])
        return pad_batch(seqs, ids["<pad>"]), torch.tensor(ends), torch.tensor(answers)

    return fit(out, vocabulary(), sample, steps, batch, lr, seed, attn_drop, threads, log_every,
               {"heldout_combinations": [list(c) for c in held]}, n_layer=3, n_positions=32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=200)
    a = ap.parse_args()
    rec = train(a.out, a.steps, a.batch, seed=a.seed, threads=a.threads, log_every=a.log_every)
    print(f"saved to {a.out} in {rec['seconds']} s; sha256 {rec['sha256']}")


if __name__ == "__main__":
    main()
