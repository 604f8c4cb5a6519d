"""load_model: bundled, local folder, hub ids without network, and clear errors."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch
from tiny_models import save_random_bert, save_random_gpt2

import helpers as H
from helpers.models import ModelLoadError
from helpers.organism import BUNDLED_MODELS


def test_bundled_model_loads_offline_with_gpt2_module_names(bundled):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    facts = H.model_facts(bundled)
    assert (facts.n_layers, facts.n_heads, facts.d_model) == (4, 4, 64)
    inner = H.models.hf_model(bundled)
    assert type(inner).__name__ == "GPT2LMHeadModel"
    assert inner.transformer.h[0].attn.c_proj.weight.shape == (64, 64)
    assert not any(p.requires_grad for p in inner.parameters())


def test_shipped_weights_match_their_recorded_checksum():
    folder = BUNDLED_MODELS["ioi-tiny"]
    recorded = (folder / "checksum.txt").read_text().split()[0]
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == recorded


def test_bundled_weights_are_small():
    assert (BUNDLED_MODELS["ioi-tiny"] / "model.safetensors").stat().st_size < 5_000_000


def test_local_folder_loads_with_dtype_and_device(tmp_path):
    path = save_random_gpt2(tmp_path / "m", n_layer=2, n_head=2, n_embd=16, n_positions=64)
    model = H.load_model(path, device="cpu", dtype="float64")
    facts = H.model_facts(model)
    assert facts.dtype == torch.float64 and facts.device.type == "cpu" and facts.n_layers == 2
    assert facts.name == "m"  # results carry the folder's name, not a path of this machine


def test_hub_id_without_network_says_what_to_do_instead():
    with pytest.raises(ModelLoadError, match=r"cannot reach(.|\n)*load_model\('ioi-tiny'\)"):
        H.load_model("openai-community/gpt2")


def test_gpt2_alias_goes_to_the_hub_and_fails_clearly_offline():
    with pytest.raises(ModelLoadError, match="openai-community/gpt2"):
        H.load_model("gpt2")


def test_unknown_name_is_explained():
    with pytest.raises(ModelLoadError, match=r"unknown model 'no-such-model'(.|\n)*ioi-tiny"):
        H.load_model("no-such-model")


def test_unsupported_architecture_is_refused(tmp_path):
    path = save_random_bert(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match="'bert' model is not supported: helpers knows the families gpt2"):
        H.load_model(path)


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        H.load_model(tmp_path)


def test_bad_dtype_is_explained(tmp_path):
    path = save_random_gpt2(tmp_path / "m", n_layer=1, n_head=2, n_embd=8)
    with pytest.raises(ModelLoadError, match="unknown dtype 'float13'"):
        H.load_model(path, dtype="float13")


def test_words_outside_the_bundled_vocabulary_are_named(bundled):
    with pytest.raises(H.PromptError, match=r"\['Quetzalcoatl', 'spaceship', 'took'\]"):
        H.check_in_vocabulary(bundled.tokenizer, "John took the spaceship to Quetzalcoatl")
    H.check_in_vocabulary(bundled.tokenizer, "When John and Mary went to the store, Mary gave a drink to")
