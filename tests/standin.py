"""An offline stand-in for GPT-2 small, for the tests (a helper module, not a test file).

No machine here can download GPT-2 from a hub. GPT-2's original byte-level BPE files are
shipped in ``tests/fixtures/gpt2-tokenizer/`` (see NOTICE.md), so the tests can build:

* ``build_gpt2_tokenizer()``: GPT-2's exact tokenizer, as a ``transformers.GPT2TokenizerFast``;
* ``build_gpt2_standin(path)``: that tokenizer plus a *randomly initialised*
  ``GPT2LMHeadModel(GPT2Config())``, saved with ``save_pretrained``. It has GPT-2 small's
  tokenization, module tree, shapes and compute; only the weights differ. Its patching
  scores are meaningless (the clean-corrupted gap is tiny): compare raw logit differences.

Note: passing the two file paths to ``GPT2TokenizerFast(vocab_file=..., merges_file=...)``
produces an *empty* tokenizer with transformers 5.23, so the ``tokenizers`` objects are
built by hand here and wrapped with ``tokenizer_object=``.
"""

from __future__ import annotations

import json
from pathlib import Path

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "gpt2-tokenizer"
ENDOFTEXT = "<|endoftext|>"

# Facts the tests (and anyone using the stand-in) may rely on.
IOI_EXAMPLE = "After John and Mary went to the store, Mary gave a bottle of milk to"
IOI_EXAMPLE_N_TOKENS = 16
JOHN_ID = 1757  # " John"
MARY_ID = 5335  # " Mary"


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#version"):
                continue
            left, right = line.split(" ")
            merges.append((left, right))
    return merges


def build_gpt2_tokenizer(fixture_dir: str | Path = FIXTURE_DIR):
    """GPT-2's tokenizer from ``encoder.json`` + ``vocab.bpe``, offline.

    Returns a ``transformers.GPT2TokenizerFast`` whose bos/eos/unk token is
    ``<|endoftext|>`` (id 50256) and whose pad token is the eos token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GPT2TokenizerFast

    fixture_dir = Path(fixture_dir)
    with open(fixture_dir / "encoder.json", encoding="utf-8") as f:
        vocab = json.load(f)
    merges = _read_merges(fixture_dir / "vocab.bpe")

    bpe = models.BPE(
        vocab=vocab,
        merges=merges,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
    )
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)

    hf = GPT2TokenizerFast(
        tokenizer_object=tok,
        bos_token=ENDOFTEXT,
        eos_token=ENDOFTEXT,
        unk_token=ENDOFTEXT,
        add_prefix_space=False,
    )
    hf.pad_token = hf.eos_token
    hf.model_max_length = 1024
    if len(hf) != len(vocab):  # the failure mode of the path-based constructor
        raise RuntimeError(f"GPT-2 tokenizer has {len(hf)} tokens, expected {len(vocab)}")
    return hf


def build_gpt2_standin(path: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Save a randomly initialised GPT-2 (small, unless overridden) plus GPT-2's tokenizer.

    ``config_overrides`` go to ``GPT2Config`` (e.g. ``n_layer=2`` for a fast test model).
    The directory reloads offline with ``AutoTokenizer.from_pretrained(path)`` and
    ``GPT2LMHeadModel.from_pretrained(path)`` (or ``nnsight.TransformersModel(path)``).
    Returns ``path`` as a ``Path``.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = GPT2Config(**config_overrides)
    model = GPT2LMHeadModel(config)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    build_gpt2_tokenizer().save_pretrained(path)
    return path


#: SmolLM2-135M's shapes (Llama architecture): 30 blocks, 9 query heads sharing 3 key-value
#: heads, d_model 576, gated MLP 1536, tied embeddings, rotary positions (theta 100,000).
SMOLLM2_SHAPES = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)


def build_smollm2_standin(path: str | Path, seed: int = 0, **config_overrides) -> Path:
    """A randomly initialised Llama with SmolLM2-135M's shapes and GPT-2's tokenizer (its
    vocabulary of 50,257 against SmolLM2's 49,152): for benchmarks, where speed does not depend
    on the weights or the exact vocabulary.  Returns ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_gpt2_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **{**SMOLLM2_SHAPES, **config_overrides})
    LlamaForCausalLM(config).eval().save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
