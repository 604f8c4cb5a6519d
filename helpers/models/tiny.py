"""A tiny random Llama with grouped-query attention, built here in a fraction of a second: for
showing what grouped-query attention changes (chapter 9) without a download or a conversion.

``tiny_llama()`` is a ``LlamaForCausalLM`` with 2 blocks, d_model 64, 4 query heads sharing 2
key/value heads (query heads 0-1 read key/value head 0, heads 2-3 key/value head 1), MLP width
128, random weights drawn from ``seed`` with standard deviation ``init_std`` (default 0.3, far
above a trained model's initial 0.02: heads then attend sharply and single paths have effects
large enough to read; the global torch generator is left as it was), eager
attention, and the bundled ``ioi-tiny`` word-level tokenizer, so ``helpers.ioi_pairs`` works on
it.  Its weights are random: it does not do IOI, so compare raw metric values on it, never
normalised scores.  Loaded like any model (anatomy attached, eval mode, no gradients).
"""
from __future__ import annotations

from typing import Any

import torch

from helpers.models.loaded import attach
from helpers.models.sources import ModelLoadError, load_tokenizer, quiet_transformers
from helpers.organism import BUNDLED_MODELS

__all__ = ["TINY_LLAMA", "tiny_llama"]

#: the label results and stamps carry
TINY_LLAMA = "tiny-gqa-llama"


def tiny_llama(seed: int = 0, *, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2,
               d_model: int = 64, init_std: float = 0.3, dtype: torch.dtype = torch.float64,
               remote: bool | str = False) -> Any:
    """A tiny random grouped-query Llama as an nnsight model (see the module docstring).

    ``n_heads`` must be a multiple of ``n_kv_heads`` and divide ``d_model``.  ``dtype``: float64
    by default (the model is tiny, and exact comparisons then agree to 1e-10).  ``remote``:
    ``False`` or ``"local"`` (nnsight's offline dry run of NDIF); ``True`` is refused, since a
    model built here with random weights does not exist on NDIF."""
    from nnsight.modeling.transformers import TransformersModel
    from transformers import LlamaConfig, LlamaForCausalLM

    if remote is True:
        raise ModelLoadError("tiny_llama() builds a random model here; NDIF cannot run it: use "
                             "remote=False, or remote='local' for nnsight's offline dry run")
    if remote not in (False, "local"):
        raise ModelLoadError(f"remote must be False or 'local' for a model built here, got {remote!r}")
    for name, value in (("n_layers", n_layers), ("n_heads", n_heads), ("n_kv_heads", n_kv_heads),
                        ("d_model", d_model)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if n_heads % n_kv_heads or d_model % n_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads} and "
                         f"divide d_model={d_model}, e.g. 4 heads, 2 key/value heads, d_model 64")
    with quiet_transformers():
        tokenizer = load_tokenizer(str(BUNDLED_MODELS["ioi-tiny"]), True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=2 * d_model,
                         num_hidden_layers=n_layers, num_attention_heads=n_heads,
                         num_key_value_heads=n_kv_heads, max_position_embeddings=64,
                         bos_token_id=pad, eos_token_id=pad, pad_token_id=pad,
                         initializer_range=float(init_std))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        with quiet_transformers():
            hf = LlamaForCausalLM._from_config(config, attn_implementation="eager", dtype=dtype)
    hf.eval().requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = TransformersModel(hf, tokenizer=tokenizer)
    attach(model, TINY_LLAMA, remote)
    return model


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
