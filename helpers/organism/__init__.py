"""The bundled model organisms: small GPT-2-architecture models trained by this
project on synthetic text, shipped with their tokenizers so they load offline.

* ``ioi`` - four layers, four heads, trained on IOI prompts (see ``ioi/MODEL_CARD.md``).
* ``refusal`` - three layers, four heads, a toy refusal behaviour (``refusal/MODEL_CARD.md``).
* ``planted`` - four layers, four heads, trained so that designated heads play Wang et al.'s IOI
  cast; its circuit ships as ``planted/ground_truth.json`` (``planted/MODEL_CARD.md``).
"""
from __future__ import annotations

from pathlib import Path

ORGANISM_DIR = Path(__file__).resolve().parent

#: short name -> folder holding config.json, model.safetensors, tokenizer.json, MODEL_CARD.md
BUNDLED_MODELS: dict[str, Path] = {
    "ioi-tiny": ORGANISM_DIR / "ioi",
    "refusal-tiny": ORGANISM_DIR / "refusal",
    "ioi-planted": ORGANISM_DIR / "planted",
}
