"""Train the bundled IOI model organism (``ioi-tiny``) from scratch.

    python -m helpers.organism.train_ioi --out helpers/organism/ioi     # ~5 min, one core

The recipe (why each piece is there is in ``ioi/MODEL_CARD.md``):

* a 4-layer, 4-head, d_model 64 ``GPT2LMHeadModel`` over a word-level vocabulary;
* synthetic IOI prompts from ``helpers.prompts.TRAIN_TEMPLATES`` with 0-2 name-free
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
import hashlib
import json
import random
import re
import time
from itertools import combinations
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers.prompts import (FILLERS, HELDOUT_TEMPLATES, NAMES, OBJECTS, PLACES,
                             TRAIN_TEMPLATES, ioi_prompt)

SPECIALS = ("<pad>", "<unk>", "<bos>")
WORD_RE = re.compile(r"\w+|[^\w\s]+")  # the same split as tokenizers' Whitespace pre-tokenizer


def vocabulary() -> list[str]:
    """Every word of the templates, fillers, names, places and objects, after the specials."""
    words: set[str] = set(NAMES) | set(PLACES) | set(OBJECTS)
    for text in TRAIN_TEMPLATES + HELDOUT_TEMPLATES + FILLERS:
        for slot in ("{A}", "{B}", "{S}", "{place}", "{object}"):
            text = text.replace(slot, " ")
        words |= set(WORD_RE.findall(text))
    return list(SPECIALS) + sorted(words)


def check_heldout_words() -> None:
    """Held-out templates must be new combinations of words seen in training."""
    seen = set()
    for text in TRAIN_TEMPLATES + FILLERS:
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


def build_tokenizer(vocab: list[str]):
    """A word-level ``PreTrainedTokenizerFast`` that prepends ``<bos>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(ids, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", ids["<bos>"])])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>",
                                   unk_token="<unk>", eos_token="<bos>")


def make_config(vocab_size: int, bos: int, pad: int):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=96, n_embd=64, n_layer=4, n_head=4,
                      n_inner=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=bos, eos_token_id=bos, pad_token_id=pad, tie_word_embeddings=True)


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
    width = max(map(len, seqs))
    x = torch.full((batch, width), ids["<pad>"], dtype=torch.long)
    for i, seq in enumerate(seqs):
        x[i, : len(seq)] = torch.tensor(seq)
    return x, torch.tensor(ends), torch.tensor(answers)


def train(out: Path, steps: int = 2000, batch: int = 64, lr: float = 3e-3, seed: int = 0,
          attn_drop: float = 0.25, threads: int = 1, log_every: int = 250) -> dict:
    """Train, save model + tokenizer + checksum into ``out``, return the training record."""
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    check_heldout_words()
    vocab = vocabulary()
    ids = {w: i for i, w in enumerate(vocab)}
    tokenizer = build_tokenizer(vocab)
    config = make_config(len(vocab), ids["<bos>"], ids["<pad>"])
    model = GPT2LMHeadModel(config)
    train_pairs, held_pairs = name_pair_split(seed)
    gen = torch.Generator().manual_seed(seed)
    drop_masks: dict[int, torch.Tensor] = {}

    def drop_hook(layer: int):
        def hook(module, args, output):
            keep = drop_masks[layer].to(output[0].dtype)[:, None, None]
            return (output[0] * keep,) + tuple(output[1:])
        return hook

    handles = [block.attn.register_forward_hook(drop_hook(i))
               for i, block in enumerate(model.transformer.h)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    start, history = time.time(), []
    model.train()
    for step in range(1, steps + 1):
        x, ends, answers = sample_batch(rng, batch, ids, train_pairs)
        for layer in range(config.n_layer):
            drop_masks[layer] = torch.rand(batch, generator=gen) >= attn_drop
        logits = model(x, attention_mask=(x != ids["<pad>"]).long()).logits[torch.arange(batch), ends]
        loss = F.cross_entropy(logits, answers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            acc = (logits.argmax(-1) == answers).float().mean().item()
            history.append({"step": step, "loss": round(loss.item(), 4), "acc": round(acc, 4)})
            print(f"step {step:5d}  loss {loss.item():.4f}  batch acc {acc:.3f}  "
                  f"{time.time() - start:.0f}s", flush=True)
    for h in handles:
        h.remove()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    (out / "checksum.txt").write_text(f"{digest}  model.safetensors\n")
    record = {
        "seed": seed, "steps": steps, "batch": batch, "lr": lr, "attn_drop": attn_drop,
        "threads": threads, "seconds": round(time.time() - start, 1), "vocab_size": len(vocab),
        "parameters": sum(p.numel() for p in model.parameters()),
        "heldout_name_pairs": [list(p) for p in held_pairs], "sha256": digest, "history": history,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


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
