"""Train the bundled IOI model organism (``ioi-tiny``) from scratch.

    python -m helpers.organism.train_ioi --out helpers/organism/ioi     # ~5 min, one core

The recipe (why each piece is there is in ``ioi/MODEL_CARD.md``):

* a 4-layer, 4-head, d_model 64 ``GPT2LMHeadModel`` over a word-level vocabulary;
* synthetic IOI prompts from ``helpers.data.prompts.TRAIN_TEMPLATES`` with 0-2 name-free
  filler sentences in front, both name orders, names from ``NAMES``;
* the loss is taken only on the answer token (the IO name after the final "to");
* during training only, each layer's whole attention output is dropped per sample
  with probability 0.25 (a forward hook, not saved with the model), which spreads
  the computation over layers and makes patching maps graded;
* held out: 15% of the unordered name pairs and all ``HELDOUT_TEMPLATES``.

With the same seed on one thread the weights are bit-identical from run to run
(``--threads 1`` is the default); the SHA-256 of ``model.safetensors`` is written
next to it in ``checksum.txt``.
"""
from __future__ import annotations

import argparse
import random
import re
from itertools import combinations
from pathlib import Path
from typing import Sequence

import torch

from helpers.data.prompts import (FILLERS, HELDOUT_TEMPLATES, NAMES, OBJECTS, PLACES,
                                  TRAIN_TEMPLATES, ioi_prompt)
from helpers.organism.training import (  # noqa: F401
    SPECIALS,
    WORD_RE,
    build_tokenizer,
    fit,
    make_config,
    pad_batch,
)


def vocabulary() -> list[str]:
    """Every word of the templates, fillers, names, places and objects, after the specials."""
    words: set[str] = set(NAMES) | set(PLACES) | set(OBJECTS)
    for text in TRAIN_TEMPLATES + HELDOUT_TEMPLATES + FILLERS:
        for slot in ("{A}", "{B}", "{S}", "{place}", "{object}"):
            text = text.replace(slot, " ")
        words |= set(WORD_RE.findall(text))
    return list(SPECIALS) + sorted(words)


def check_heldout_words(training: Sequence[str] = TRAIN_TEMPLATES + FILLERS) -> None:
    """Held-out templates must be new combinations of words seen in ``training`` (the templates
    and filler sentences trained on)."""
    seen: set[str] = set()
    for text in training:
        seen |= set(WORD_RE.findall(re.sub(r"\{\w+\}", " ", text)))
    for text in HELDOUT_TEMPLATES:
        new = set(WORD_RE.findall(re.sub(r"\{\w+\}", " ", text))) - seen
        if new:
            raise ValueError(f"held-out template {text!r} uses unseen words {new}")


def name_pair_split(seed: int = 0, heldout_fraction: float = 0.15) -> tuple[list, list]:
    """Unordered name pairs, split into (train, held-out).  Every name stays in train."""
    pairs = list(combinations(NAMES, 2))
    random.Random(seed).shuffle(pairs)
    k = int(len(pairs) * heldout_fraction)
    held, train = pairs[:k], pairs[k:]
    assert set(n for p in train for n in p) == set(NAMES)
    return train, held


def sample_batch(rng: random.Random, batch: int, ids: dict[str, int], name_pairs: list,
                 templates=TRAIN_TEMPLATES, max_fillers: int = 2):
    """Token ids [batch, seq] (right-padded), END positions [batch], answer ids [batch]."""
    seqs, ends, answers = [], [], []
    for _ in range(batch):
        io, s = rng.choice(name_pairs)
        if rng.random() < 0.5:
            io, s = s, io
        p = ioi_prompt(rng.choice(templates), io, s, rng.choice(("ABBA", "BABA")),
                       rng.choice(PLACES), rng.choice(OBJECTS))
        fillers = [rng.choice(FILLERS) for _ in range(rng.randint(0, max_fillers))]
        words = WORD_RE.findall(" ".join(fillers + [p.text]))
        seq = [ids["<bos>"]] + [ids[w] for w in words]
        seqs.append(seq)
        ends.append(len(seq) - 1)
        answers.append(ids[io])
    return pad_batch(seqs, ids["<pad>"]), torch.tensor(ends), torch.tensor(answers)


def train(out: Path, steps: int = 2000, batch: int = 64, lr: float = 3e-3, seed: int = 0,
          attn_drop: float = 0.25, threads: int = 1, log_every: int = 250) -> dict:
    """Train, save model + tokenizer + checksum into ``out``, return the training record."""
    check_heldout_words()
    train_pairs, held_pairs = name_pair_split(seed)

    def sample(rng: random.Random, size: int, ids: dict[str, int]):
        return sample_batch(rng, size, ids, train_pairs)

    return fit(out, vocabulary(), sample, steps, batch, lr, seed, attn_drop, threads, log_every,
               {"heldout_name_pairs": [list(p) for p in held_pairs]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder to write the model into")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attn-drop", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=250)
    a = ap.parse_args()
    rec = train(a.out, a.steps, a.batch, a.lr, a.seed, a.attn_drop, a.threads, a.log_every)
    print(f"saved to {a.out} in {rec['seconds']} s; sha256 {rec['sha256']}")


if __name__ == "__main__":
    main()
