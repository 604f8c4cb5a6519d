"""The offline GPT-2 stand-in (tests/standin.py) behaves like GPT-2 small where it matters."""

from __future__ import annotations

import os

import pytest
import torch
from standin import (IOI_EXAMPLE, IOI_EXAMPLE_N_TOKENS, JOHN_ID, MARY_ID, build_gpt2_standin,
                     build_gpt2_tokenizer)
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

GPT2_SMALL_N_PARAMS = 124_439_808  # with the unembedding tied to the embedding


def _check_ioi_example(tok) -> None:
    ids = tok(IOI_EXAMPLE)["input_ids"]
    assert len(ids) == IOI_EXAMPLE_N_TOKENS == 16
    assert ids[1] == JOHN_ID == 1757
    assert ids[3] == ids[9] == MARY_ID == 5335
    assert tok.encode(" John") == [1757]
    assert tok.encode(" Mary") == [5335]
    assert tok.decode(ids) == IOI_EXAMPLE
    assert tok.eos_token == tok.bos_token == tok.unk_token == tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id == tok.pad_token_id == 50256
    assert len(tok) == 50257


def test_tokenizer_in_memory():
    _check_ioi_example(build_gpt2_tokenizer())


def test_saved_standin_round_trip(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest: nothing may hit a hub
    path = build_gpt2_standin(tmp_path / "gpt2-tiny", seed=0, n_layer=2, n_head=4, n_embd=128)
    assert path == tmp_path / "gpt2-tiny"
    assert (path / "model.safetensors").is_file()
    assert (path / "config.json").is_file()
    assert (path / "tokenizer.json").is_file()

    tok = AutoTokenizer.from_pretrained(path)
    _check_ioi_example(tok)

    model = GPT2LMHeadModel.from_pretrained(path)
    assert model.config.n_layer == 2
    assert model.config.vocab_size == 50257
    ids = torch.tensor([tok(IOI_EXAMPLE)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 16, 50257)
    assert torch.isfinite(logits).all()


def test_standin_is_deterministic_per_seed(tmp_path):
    small = dict(n_layer=1, n_head=2, n_embd=32)
    a = GPT2LMHeadModel.from_pretrained(build_gpt2_standin(tmp_path / "a", seed=3, **small))
    b = GPT2LMHeadModel.from_pretrained(build_gpt2_standin(tmp_path / "b", seed=3, **small))
    c = GPT2LMHeadModel.from_pretrained(build_gpt2_standin(tmp_path / "c", seed=4, **small))
    wa, wb, wc = (m.transformer.h[0].attn.c_attn.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_default_config_is_gpt2_small():
    config = GPT2Config()
    assert (config.n_layer, config.n_head, config.n_embd) == (12, 12, 768)
    assert config.vocab_size == 50257
    assert config.n_positions == 1024


def test_session_standin_is_gpt2_small(gpt2_standin_dir):
    """The session fixture other tests use: full-size GPT-2 small shape, reloadable offline."""
    model = GPT2LMHeadModel.from_pretrained(gpt2_standin_dir)
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd) == (12, 12, 768)
    assert sum(p.numel() for p in model.parameters()) == GPT2_SMALL_N_PARAMS
    _check_ioi_example(AutoTokenizer.from_pretrained(gpt2_standin_dir))


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return build_gpt2_tokenizer()


@pytest.mark.parametrize("name", [" John", " Mary", " Tom", " James", " Sarah"])
def test_common_names_are_single_tokens(gpt2_tokenizer, name):
    assert len(gpt2_tokenizer.encode(name)) == 1
