"""Where everything lives in a model: one object per loaded model, for every family.

``anatomy(model)`` returns the model's ``ModelAnatomy``: its family, shapes and the module
behind each *site* a sweep can patch.  It is built once (``helpers.load_model`` builds it)
and carried with the model; no other module spells a module path.

Sites, the same in every family (``L`` = block index, ``0 .. n_layers - 1``):

==========  =========================================================  ====================
site        what it is                                                  shape
==========  =========================================================  ====================
``embed``   the input of block 0: token (+ position) embeddings, with   ``[batch, seq, d_model]``
            any model-specific scaling (Gemma multiplies by sqrt(d))
``resid``   the output of block L (the residual stream after it)       ``[batch, seq, d_model]``
``attn``    block L's attention output, before it joins the stream      ``[batch, seq, d_model]``
``mlp``     block L's MLP output                                        ``[batch, seq, d_model]``
``head``    the input of block L's attention output projection: the     ``[batch, seq, n_heads * d_head]``
            query heads' outputs side by side (head h is the slice
            ``h * d_head : (h + 1) * d_head``)
==========  =========================================================  ====================

Module names by family (blocks / attention / output projection / final norm / unembedding):

* gpt2: ``transformer.h`` / ``attn`` / ``attn.c_proj`` / ``transformer.ln_f`` / ``lm_head``
* gpt_neox: ``gpt_neox.layers`` / ``attention`` / ``attention.dense`` /
  ``gpt_neox.final_layer_norm`` / ``lm_head``
* Llama-style: ``model.layers`` / ``self_attn`` / ``self_attn.o_proj`` / ``model.norm`` / ``lm_head``

Path patching (``helpers.methods.path_patching``) also reads each head's query, key and value inputs:
``qkv_module`` / ``qkv_columns`` (GPT-2 ``attn.c_attn``, GPT-NeoX ``attention.query_key_value``,
Llama-style ``self_attn.q_proj`` / ``k_proj`` / ``v_proj``), and freezes a norm's scale with
``norm_linear_part``.

Llama-style covers Llama (Llama 2/3, SmolLM2, TinyLlama), Qwen2, Qwen3, Mistral, Gemma 2 and
Gemma 3.  On transformers 5 a decoder block returns a plain tensor: never write
``block.output[0]``, which is batch row 0.  To add a family, add a ``Family`` entry to
``FAMILIES`` (its config ``model_type`` values and the module paths above) and a tiny random
configuration to ``tests/tiny_models.py``; the reference tests then cover it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Family", "FAMILIES", "ModelAnatomy", "anatomy", "build_anatomy", "family_of",
           "UnsupportedModelError", "SITES"]

SITES = ("embed", "resid", "attn", "mlp", "head")


class UnsupportedModelError(ValueError):
    """A model whose family PatchLab does not know (the message lists the families)."""


@dataclass(frozen=True)
class Family:
    """Module paths of one architecture family (see the module docstring)."""

    name: str
    model_types: tuple[str, ...]
    blocks: str        # from the top model: the list of decoder blocks
    attn: str          # from a block
    mlp: str           # from a block
    o_proj: str        # from a block: its input holds the per-head outputs
    final_norm: str    # from the top model
    unembed: str       # from the top model
    fast: bool         # helpers.engine.fastpatch reproduces its blocks exactly
    # from a block: the projection(s) whose output holds the queries, keys and values, in
    # forward order: one fused module, or q_proj, k_proj, v_proj (see ``qkv_columns``)
    qkv: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    qkv_layout: str = "split"  # "split", "fused" (GPT-2: [q | k | v]), "per_head" (GPT-NeoX)
    norm: str = "rms"  # the norms: "layer" (LayerNorm), "rms" (RMSNorm), "rms1p" (Gemma: 1 + w)


_LLAMA_PATHS = dict(blocks="model.layers", attn="self_attn", mlp="mlp", o_proj="self_attn.o_proj",
                    final_norm="model.norm", unembed="lm_head")

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("gpt2", ("gpt2",), "transformer.h", "attn", "mlp", "attn.c_proj", "transformer.ln_f",
           "lm_head", fast=True, qkv=("attn.c_attn",), qkv_layout="fused", norm="layer"),
    Family("gpt_neox", ("gpt_neox",), "gpt_neox.layers", "attention", "mlp", "attention.dense",
           "gpt_neox.final_layer_norm", "lm_head", fast=False, qkv=("attention.query_key_value",),
           qkv_layout="per_head", norm="layer"),
    Family("llama", ("llama",), fast=True, **_LLAMA_PATHS),
    Family("qwen2", ("qwen2",), fast=True, **_LLAMA_PATHS),
    Family("qwen3", ("qwen3",), fast=True, **_LLAMA_PATHS),
    Family("mistral", ("mistral",), fast=True, **_LLAMA_PATHS),
    Family("gemma2", ("gemma2",), fast=False, norm="rms1p", **_LLAMA_PATHS),
    Family("gemma3", ("gemma3_text",), fast=False, norm="rms1p", **_LLAMA_PATHS),
)}


def family_of(config: Any) -> Family:
    """The ``Family`` of a transformers config, or ``UnsupportedModelError``."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise UnsupportedModelError(
        f"a {model_type!r} model is not supported: helpers knows the families {known}. To add "
        "one, add a Family entry (its config model_type and module paths) to "
        "helpers.models.anatomy.FAMILIES and a tiny random configuration to tests/tiny_models.py.")


def _get(root: Any, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), root)


@dataclass(frozen=True)
class ModelAnatomy:
    """A model's family, shapes and sites.  ``n_kv_heads < n_heads`` means grouped-query
    attention: several query heads share one key/value head, but every query head has
    its own output (the ``head`` site).  ``n_positions`` is the longest input the model reads."""

    name: str  # bundled name, hub id, or a local folder's name (never its full path)
    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    vocab_size: int
    n_positions: int
    device: torch.device
    dtype: torch.dtype
    logit_softcap: float | None = None  # Gemma 2: logits = cap * tanh(unembedding output / cap)
    parallel_residual: bool = False  # GPT-NeoX/Pythia: the MLP reads the block's input, not attn

    @property
    def paths(self) -> Family:
        return FAMILIES[self.family]

    @property
    def fast(self) -> bool:
        """True if ``helpers.engine.fastpatch`` covers this family (else sweeps run batched)."""
        return self.paths.fast

    # ---- modules: ``model`` is the nnsight model (inside a trace) or the plain torch model
    def block(self, model: Any, layer: int) -> Any:
        """Decoder block ``layer``: its ``.output`` is ``[batch, seq, d_model]`` (a tensor)."""
        return _get(model, self.paths.blocks)[layer]

    def attn(self, model: Any, layer: int) -> Any:
        """Block ``layer``'s attention: ``.output[0]`` its output, ``.output[1]`` the pattern."""
        return _get(self.block(model, layer), self.paths.attn)

    def mlp(self, model: Any, layer: int) -> Any:
        return _get(self.block(model, layer), self.paths.mlp)

    def o_proj(self, model: Any, layer: int) -> Any:
        """The output projection: ``.input`` is ``[batch, seq, n_heads * d_head]``."""
        return _get(self.block(model, layer), self.paths.o_proj)

    def final_norm(self, model: Any) -> Any:
        return _get(model, self.paths.final_norm)

    def unembed(self, model: Any) -> Any:
        return _get(model, self.paths.unembed)

    def logits(self, unembedded: torch.Tensor) -> torch.Tensor:
        """The model's logits from its unembedding's output (the same tensor, except for models
        that soft-cap their logits after the unembedding, such as Gemma 2).  Apply it outside
        a trace, to a saved value."""
        if self.logit_softcap is None:
            return unembedded
        return torch.tanh(unembedded / self.logit_softcap) * self.logit_softcap

    def qkv_module(self, model: Any, layer: int, kind: str) -> Any:
        """The module whose ``.output`` ``[batch, seq, width]`` holds block ``layer``'s queries
        (``kind="q"``), keys (``"k"``) or values (``"v"``), before rotary positions or per-head
        q/k norms: ``q_proj`` / ``k_proj`` / ``v_proj``, or the fused projection (GPT-2
        ``attn.c_attn``, GPT-NeoX ``attention.query_key_value``)."""
        if kind not in ("q", "k", "v"):
            raise ValueError(f"kind must be 'q', 'k' or 'v', got {kind!r}")
        paths = self.paths.qkv
        return _get(self.block(model, layer), paths[0] if len(paths) == 1 else paths["qkv".index(kind)])

    def qkv_columns(self, kind: str, head: int) -> slice:
        """The columns of ``qkv_module(..., kind)``'s output that are one head's query, key or
        value (``d_head`` wide).  ``head`` is a query head (``0 .. n_heads - 1``) for ``"q"``
        and a key/value head (``0 .. n_kv_heads - 1``) for ``"k"`` and ``"v"``: with
        grouped-query attention, key/value head ``g`` serves query heads
        ``g * n_heads // n_kv_heads`` up to the next group."""
        k, d = "qkv".index(kind), self.d_head
        layout = self.paths.qkv_layout
        if layout == "split":
            start = head * d
        elif layout == "fused":  # [q heads | k heads | v heads]
            start = k * self.n_heads * d + head * d
        elif layout == "per_head":  # per head [q | k | v]
            start = head * 3 * d + k * d
        else:
            raise ValueError(f"unknown q/k/v layout {layout!r} of family {self.family!r}")
        return slice(start, start + d)

    def norm_linear_part(self, norm: Any, x_base: torch.Tensor) -> tuple[bool, torch.Tensor]:
        """The norm module ``norm`` with its scale frozen at input ``x_base`` ``[..., d_model]``:
        ``(centre, scale)`` such that the frozen norm's change for an input change ``delta`` is
        ``(delta - delta.mean(-1) if centre else delta) * scale``, ``scale`` ``[..., d_model]``
        = weight / sqrt(variance (LayerNorm) or mean square (RMSNorm) of ``x_base`` + eps)
        (Gemma: 1 + weight)."""
        kind = self.paths.norm
        eps = getattr(norm, "variance_epsilon", None)
        eps = getattr(norm, "eps", None) if eps is None else eps
        if eps is None or getattr(norm, "weight", None) is None:
            raise ValueError(f"{type(norm).__name__} has no eps or weight: freezing its scale is "
                             f"not supported for the {self.family!r} family")
        x = x_base.to(norm.weight.dtype)
        centre = kind == "layer"
        spread = x.var(-1, unbiased=False, keepdim=True) if centre else x.pow(2).mean(-1, keepdim=True)
        weight = norm.weight.detach() + 1 if kind == "rms1p" else norm.weight.detach()
        return centre, weight / torch.sqrt(spread + eps)

    def module_name(self, site: str, layer: int | None = None) -> str:
        """The module path of a site, e.g. ``"model.layers[3].self_attn.o_proj"`` (for messages
        and for chapters that show module names side by side)."""
        p = self.paths
        block = f"{p.blocks}[{layer}]"
        return {"embed": f"{p.blocks}[0] (input)", "resid": block, "attn": f"{block}.{p.attn}",
                "mlp": f"{block}.{p.mlp}", "head": f"{block}.{p.o_proj} (input)",
                "final_norm": p.final_norm, "unembed": p.unembed}[site]

    def site(self, model: Any, site: str, layer: int | None) -> tuple[Any, str]:
        """(module, how to read it) for a site: ``"input"``, ``"output"`` or ``"output0"``
        (the first element of the attention module's output tuple)."""
        if site == "embed":
            return self.block(model, 0), "input"
        if site == "resid":
            return self.block(model, layer), "output"
        if site == "attn":
            return self.attn(model, layer), "output0"
        if site == "mlp":
            return self.mlp(model, layer), "output"
        if site == "head":
            return self.o_proj(model, layer), "input"
        raise ValueError(f"unknown site {site!r}; choose one of {SITES}")

    @staticmethod
    def order(site: str, layer: int | None) -> tuple[int, int]:
        """Forward order of sites (nnsight needs modules touched in this order)."""
        if site == "embed":
            return (-1, 0)
        return (layer, {"head": 0, "attn": 1, "mlp": 2, "resid": 3}[site])


def build_anatomy(hf: torch.nn.Module, name: str) -> ModelAnatomy:
    """Read a transformers causal LM's anatomy from its config and weights."""
    cfg = getattr(hf, "config", None)
    if cfg is None:
        raise TypeError(f"expected a transformers model, got {type(hf).__name__}")
    family = family_of(cfg)
    text = cfg
    n_heads = text.num_attention_heads
    d_model = text.hidden_size
    d_head = getattr(text, "head_dim", None) or d_model // n_heads
    n_positions = (getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
                   or 2048)
    p = next(hf.parameters())
    return ModelAnatomy(name=name, family=family.name, n_layers=text.num_hidden_layers,
                        n_heads=n_heads, n_kv_heads=getattr(text, "num_key_value_heads", None) or n_heads,
                        d_model=d_model, d_head=d_head, vocab_size=text.vocab_size,
                        n_positions=n_positions, device=p.device, dtype=p.dtype,
                        logit_softcap=getattr(text, "final_logit_softcapping", None),
                        parallel_residual=bool(getattr(text, "use_parallel_residual", False)))


def anatomy(model: Any) -> ModelAnatomy:
    """The anatomy carried by a model from ``helpers.load_model`` (built and attached on first
    use for other nnsight or transformers models).  It lives on the transformers module, not
    on the nnsight wrapper: remote requests pickle the wrapper, and an NDIF server has no
    ``helpers`` to unpickle it with."""
    inner = getattr(model, "_module", None)
    hf = inner if isinstance(inner, torch.nn.Module) else model
    if not isinstance(hf, torch.nn.Module) or getattr(hf, "config", None) is None:
        raise TypeError(f"expected a model from helpers.load_model, got {type(model).__name__}: "
                        "pass the model first, e.g. patch_residual(model, pairs)")
    found = getattr(hf, "_patchlab_anatomy", None)
    p = next(hf.parameters())
    if found is not None and (found.device, found.dtype) == (p.device, p.dtype):
        return found
    if found is not None:  # the model was moved or cast since: same anatomy, new device/dtype
        from dataclasses import replace

        built = replace(found, device=p.device, dtype=p.dtype)
    else:
        built = build_anatomy(hf, getattr(hf, "_patchlab_name", None) or hf.config.name_or_path or "model")
    hf._patchlab_anatomy = built
    return built


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
