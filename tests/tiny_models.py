"""Small random models for tests: any GPT-2 shape, saved with a tokenizer so that
``helpers.load_model(path)`` loads them like any local model."""
from __future__ import annotations

from pathlib import Path

import torch


def save_random_gpt2(path: Path, seed: int = 0, tokenizer=None, **config) -> Path:
    """A random ``GPT2LMHeadModel`` with the bundled model's word-level tokenizer
    (or ``tokenizer``) saved in ``path``.  ``config`` overrides GPT2Config fields."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from helpers.organism.train_ioi import build_tokenizer, vocabulary

    if tokenizer is None:
        vocab = vocabulary()
        tokenizer = build_tokenizer(vocab)
        config.setdefault("vocab_size", len(vocab))
        config.setdefault("bos_token_id", vocab.index("<bos>"))
        config.setdefault("eos_token_id", vocab.index("<bos>"))
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**config))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return Path(path)


def save_random_bert(path: Path) -> Path:
    """A tiny BERT: an architecture the helpers do not support."""
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32)).save_pretrained(path)
    return Path(path)
