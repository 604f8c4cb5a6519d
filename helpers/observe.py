"""Looking without intervening: predictions, task accuracy and attention patterns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from helpers.metrics import logit_diff
from helpers.models import model_facts
from helpers.prompts import IOIPrompt, PromptError, check_in_vocabulary, single_token_id

__all__ = ["encode", "top_predictions", "ioi_accuracy", "IOIAccuracy", "attention_patterns",
           "last_logits"]


def encode(model: Any, text: str | Sequence[str]) -> torch.Tensor:
    """Token ids ``[batch, seq]`` for one text or several of the same token length;
    words outside a word-level vocabulary raise ``PromptError``."""
    texts = [text] if isinstance(text, str) else list(text)
    rows = []
    for t in texts:
        check_in_vocabulary(model.tokenizer, t)
        rows.append(model.tokenizer(t)["input_ids"])
    if len({len(r) for r in rows}) > 1:
        raise PromptError(f"texts have different token lengths {[len(r) for r in rows]}; "
                          "run them one at a time or use prompts of equal length")
    return torch.tensor(rows, device=model_facts(model).device)


def last_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the last position, ``[batch, vocab]``, in one traced forward."""
    with torch.no_grad(), model.trace(ids, logits_to_keep=1, use_cache=False):
        out = model.lm_head.output[:, -1].clone().save()
    return out


def top_predictions(model: Any, text: str, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely next tokens after ``text`` with their probabilities."""
    probs = last_logits(model, encode(model, text))[0].float().softmax(-1)
    p, idx = probs.topk(k)
    return [(model.tokenizer.decode([int(i)]), float(q)) for q, i in zip(p, idx)]


@dataclass(frozen=True)
class IOIAccuracy:
    """Top-1 accuracy (the IO name is the most likely next token) and the mean
    logit difference IO - S over ``n`` prompts, with its standard error."""

    n: int
    accuracy: float
    mean_logit_diff: float
    sem_logit_diff: float


def ioi_accuracy(model: Any, prompts: Sequence[IOIPrompt], batch_size: int = 64) -> IOIAccuracy:
    """Evaluate IOI prompts of any lengths (grouped by length, no padding)."""
    tok = model.tokenizer
    groups: dict[int, list[tuple[list[int], int, int]]] = {}
    for p in prompts:
        check_in_vocabulary(tok, p.text)
        ids = tok(p.text)["input_ids"]
        groups.setdefault(len(ids), []).append((ids, single_token_id(tok, p.io),
                                                single_token_id(tok, p.s)))
    hits, diffs = [], []
    device = model_facts(model).device
    for items in groups.values():
        for j in range(0, len(items), batch_size):
            chunk = items[j: j + batch_size]
            logits = last_logits(model, torch.tensor([c[0] for c in chunk], device=device))
            io = torch.tensor([c[1] for c in chunk], device=device)
            s = torch.tensor([c[2] for c in chunk], device=device)
            hits.append(logits.argmax(-1) == io)
            diffs.append(logit_diff(logits, io, s))
    h, d = torch.cat(hits).double(), torch.cat(diffs).double()
    sem = (d.std() / len(d) ** 0.5).item() if len(d) > 1 else 0.0
    return IOIAccuracy(len(d), h.mean().item(), d.mean().item(), sem)


def attention_patterns(model: Any, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Attention weights of every head of ``layer``: ``[batch, n_heads, seq_q, seq_k]``.

    Needs the eager attention implementation (``load_model`` sets it): rows
    are query positions, columns the key positions they attend to.
    """
    f = model_facts(model)
    if not 0 <= layer < f.n_layers:
        raise ValueError(f"layer {layer} is out of range: this model has layers 0 .. {f.n_layers - 1}")
    with torch.no_grad(), model.trace(ids.to(f.device), logits_to_keep=1, use_cache=False):
        weights = model.transformer.h[layer].attn.output[1]
        pattern = weights.clone().save() if weights is not None else None
    if pattern is None:
        raise RuntimeError("this model's attention returns no weights: load it with "
                           "attn_implementation='eager' (helpers.load_model does)")
    return pattern
