"""What the bundled organisms' training scripts share: a word-level tokenizer, a
small GPT-2 config, and one deterministic training loop with answer-token loss
and per-sample attention-output drop.

Reproducibility: with the same seed on one thread, ``fit`` produces bit-identical
weights on the same machine (seeded torch and python RNGs, deterministic
kernels, one thread).
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

SPECIALS = ("<pad>", "<unk>", "<bos>")
WORD_RE = re.compile(r"\w+|[^\w\s]+")  # the same split as tokenizers' Whitespace pre-tokenizer

#: rng, batch size, word->id -> (ids [batch, seq] right-padded, END positions [batch], answers [batch])
Sampler = Callable[[random.Random, int, dict], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


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


def make_config(vocab_size: int, bos: int, pad: int, n_layer: int = 4, n_head: int = 4,
                n_embd: int = 64, n_positions: int = 96):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd,
                      n_layer=n_layer, n_head=n_head, n_inner=4 * n_embd, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=bos, eos_token_id=bos,
                      pad_token_id=pad, tie_word_embeddings=True)


def pad_batch(seqs: list[list[int]], pad: int) -> torch.Tensor:
    width = max(map(len, seqs))
    x = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, seq in enumerate(seqs):
        x[i, : len(seq)] = torch.tensor(seq)
    return x


def fit(out: Path, vocab: list[str], sample: Sampler, steps: int, batch: int, lr: float, seed: int,
        attn_drop: float, threads: int, log_every: int, extra_record: dict | None = None,
        **config) -> dict:
    """Train a fresh model on ``sample``'s batches (loss on the answer token only),
    save model, tokenizer, ``checksum.txt`` and ``training.json`` into ``out``."""
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    ids = {w: i for i, w in enumerate(vocab)}
    tokenizer = build_tokenizer(vocab)
    cfg = make_config(len(vocab), ids["<bos>"], ids["<pad>"], **config)
    model = GPT2LMHeadModel(cfg)
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
        x, ends, answers = sample(rng, batch, ids)
        for layer in range(cfg.n_layer):
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
        "parameters": sum(p.numel() for p in model.parameters()), **(extra_record or {}),
        "sha256": digest, "history": history,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
