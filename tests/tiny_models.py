"""Small random models for tests, saved with a tokenizer so that
``helpers.load_model(path)`` loads them like any local model: any GPT-2 shape
(``save_random_gpt2``) and a tiny model of every supported family
(``save_random_model``, ``FAMILIES``)."""
from __future__ import annotations

from pathlib import Path

import torch


def save_random_gpt2(path: Path, seed: int = 0, tokenizer=None, **config) -> Path:
    """A random ``GPT2LMHeadModel`` with the bundled model's word-level tokenizer
    (or ``tokenizer``) saved in ``path``.  ``config`` overrides GPT2Config fields."""
    return save_random_model(path, "gpt2", seed=seed, tokenizer=tokenizer, **config)


def save_random_bert(path: Path) -> Path:
    """A tiny BERT: an architecture the helpers do not support."""
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32)).save_pretrained(path)
    return Path(path)


# --------------------------------------------------------------------------
# every supported family
# --------------------------------------------------------------------------

#: Family names accepted by ``save_random_model`` (the project's family names).
FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3")

#: Sliding windows of the tiny Mistral / Gemma 2 / Gemma 3 models, in tokens.  Shorter than an
#: IOI prompt (about 15 tokens with the word-level tokenizer), so the window really masks
#: something in the sliding layers.  Qwen2 / Qwen3 keep ``use_sliding_window=False`` (their
#: default, as in the released checkpoints): no sliding window.
SLIDING_WINDOW = 6

# Shapes: 2 layers, d_model 32, 4 query heads, MLP width 64, up to 64 positions.  Llama-style
# families get 2 key/value heads (grouped-query attention, 2 query heads per kv head).  Qwen3,
# Gemma 2 and Gemma 3 get head_dim 16, so n_heads * d_head = 64 != d_model = 32 (as in the real
# Qwen3 and Gemma checkpoints): the ``head`` site is wider than the residual stream.
_D, _LAYERS, _HEADS, _KV, _MLP, _POS = 32, 2, 4, 2, 64, 64
_LLAMA_STYLE = dict(hidden_size=_D, num_hidden_layers=_LAYERS, num_attention_heads=_HEADS,
                    num_key_value_heads=_KV, intermediate_size=_MLP, max_position_embeddings=_POS)
_GEMMA = dict(_LLAMA_STYLE, head_dim=16, query_pre_attn_scalar=16, sliding_window=SLIDING_WINDOW,
              layer_types=["sliding_attention", "full_attention"])

# family -> (config class name, default config fields)
_CONFIGS = {
    "gpt2": ("GPT2Config", dict(n_layer=_LAYERS, n_head=_HEADS, n_embd=_D, n_inner=_MLP,
                                n_positions=_POS)),
    # Pythia-like: parallel residual, rotary on 25% of each head's dimensions, biases.
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=_D, num_hidden_layers=_LAYERS,
                                       num_attention_heads=_HEADS, intermediate_size=_MLP,
                                       max_position_embeddings=_POS)),
    "llama": ("LlamaConfig", dict(_LLAMA_STYLE)),
    "qwen2": ("Qwen2Config", dict(_LLAMA_STYLE)),  # q/k/v biases, no o_proj bias
    "qwen3": ("Qwen3Config", dict(_LLAMA_STYLE, head_dim=16)),  # q_norm / k_norm per head
    "mistral": ("MistralConfig", dict(_LLAMA_STYLE, sliding_window=SLIDING_WINDOW)),
    # sqrt(d_model) embedding scale, tied embeddings, pre+post norms around attn and mlp,
    # attention-logit softcapping 50 and final-logit softcapping 30 (the defaults),
    # layer 0 sliding-window attention, layer 1 global.
    "gemma2": ("Gemma2Config", dict(_GEMMA)),
    # like Gemma 2 plus q_norm / k_norm, no softcapping, rope theta per layer type
    "gemma3": ("Gemma3TextConfig", dict(_GEMMA)),
}


def save_random_model(path: Path, family: str, seed: int = 0, tokenizer=None,
                      **config_overrides) -> Path:
    """Save a tiny random causal LM of ``family`` (one of ``FAMILIES``) in ``path``
    (safetensors) with a tokenizer beside it, loadable with
    ``AutoModelForCausalLM.from_pretrained(path)``.

    The tokenizer defaults to the bundled model's word-level tokenizer (as in
    ``save_random_gpt2``) and sets vocab size and bos/eos/pad ids from it; with a
    ``tokenizer`` given, set ``vocab_size`` (and the ids) yourself.  ``config_overrides``
    override the config fields (``_CONFIGS`` has the defaults).  The model is built with
    ``attn_implementation="eager"``; the weights are a function of ``seed`` only.

    Load the tokenizer with ``PreTrainedTokenizerFast.from_pretrained(path)``: for a
    ``"qwen2"`` folder, transformers 5.23's ``AutoTokenizer`` ignores the saved tokenizer
    class and builds a byte-level ``Qwen2Tokenizer`` that mangles the word-level vocabulary.
    """
    import transformers
    from transformers import AutoModelForCausalLM

    if family not in _CONFIGS:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    config_name, fields = _CONFIGS[family]
    fields = {**fields, **config_overrides}
    if tokenizer is None:
        from helpers.organism.train_ioi import build_tokenizer, vocabulary

        vocab = vocabulary()
        tokenizer = build_tokenizer(vocab)
        fields.setdefault("vocab_size", len(vocab))
        fields.setdefault("bos_token_id", vocab.index("<bos>"))
        fields.setdefault("eos_token_id", vocab.index("<bos>"))
        fields.setdefault("pad_token_id", vocab.index("<pad>"))
    config = getattr(transformers, config_name)(**fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return Path(path)
