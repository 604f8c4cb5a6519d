"""Reference implementation of activation patching with plain PyTorch hooks.

This module is the ground truth that the project's nnsight-based engine is
tested against. It is deliberately simple: no nnsight, no imports from the
project's ``helpers`` package, no batching tricks, one forward pass per patch.

Two interfaces:

* GPT-2 only (``cache_activations``, ``run_with_patches``, ``sweep_*``; described
  below): its own numbering, ``("resid", 0)`` = embeddings.
* Every family (``cache``, ``run_patched``, ``run_with_source_cache``, ``sweep``;
  section "Every family" at the end): GPT-2, GPT-NeoX/Pythia, Llama, Qwen2,
  Qwen3, Mistral, Gemma 2, Gemma 3 text, with the project-wide sites ``embed``,
  ``resid``, ``attn``, ``mlp``, ``head``.

GPT-2-only part.  Model: ``transformers.GPT2LMHeadModel`` (checked on transformers 5.23.0).
Internals it relies on (verified on that version):

* ``model.transformer.h[L]`` (``GPT2Block``) is called with the residual stream
  as its FIRST POSITIONAL argument and returns a plain tensor
  ``[batch, seq, d_model]`` (not a tuple, unlike transformers 4).
* ``block.attn`` (``GPT2Attention``) returns a tuple
  ``(attn_output, attn_weights)``; ``attn_weights`` is ``None`` with the
  default sdpa attention.
* ``block.mlp`` (``GPT2MLP``) returns a tensor.
* The per-head outputs are the input of ``block.attn.c_proj``:
  ``[batch, seq, n_head * d_head]``, head ``h`` is the slice
  ``h*d_head:(h+1)*d_head``.

Site names (``kind``, ``layer``) used in caches and patches:

* ``("resid", 0)``: input of block 0 (token + position embeddings).
  ``("resid", L)`` for ``1 <= L <= n_layer``: output of block ``L-1``.
  So there are ``n_layer + 1`` residual rows; the last one is the output of
  the last block, before ``ln_f``.
* ``("attn", L)``: attention output (first element of the attention tuple).
* ``("mlp", L)``: MLP output.
* ``("z", L)`` (cache only): input of ``attn.c_proj``, i.e. all heads'
  outputs concatenated. Patch kind ``"head"`` replaces one head's slice of it.

The GPT-2-only functions take 1-D token id tensors ``[seq]`` and return tensors
without a batch dimension; the family-generic ones take ``[seq]`` or ``[batch, seq]``.
"""

from __future__ import annotations

import contextlib
import itertools

import torch

__all__ = [
    "cache_activations",
    "patching",
    "run_with_patches",
    "logit_diff",
    "sweep_resid",
    "sweep_attn",
    "sweep_mlp",
    "sweep_heads",
    "sweep_head_positions",
    # every family (project-wide site names; see the section "Every family" below)
    "SITES",
    "FAMILY_MODULES",
    "MODEL_TYPE_FAMILY",
    "family_of",
    "module_for",
    "n_layers_of",
    "n_heads_of",
    "d_head_of",
    "full_logits",
    "cache",
    "patched",
    "run_with_source_cache",
    "run_patched",
    "sweep",
]

PATCH_KINDS = ("resid", "attn", "mlp", "head")


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def _check_model(model):
    if model.training:
        raise ValueError("model must be in eval mode (dropout would make patching random)")


def _as_batch(ids):
    """[seq] -> [1, seq]."""
    ids = torch.as_tensor(ids)
    if ids.ndim != 1:
        raise ValueError(f"expected token ids of shape [seq], got {tuple(ids.shape)}")
    return ids.unsqueeze(0)


def _forward_logits(model, ids):
    """One forward pass; returns logits [seq, vocab]."""
    out = model(input_ids=_as_batch(ids), use_cache=False)
    return out.logits[0]


def _n_layer(model):
    return model.config.n_layer


def _d_head(model):
    return model.config.n_embd // model.config.n_head


def _positions(position):
    """Index for the sequence dimension: None = all positions."""
    return slice(None) if position is None else position


# --------------------------------------------------------------------------
# caching
# --------------------------------------------------------------------------

@torch.no_grad()
def cache_activations(model, ids):
    """Run ``ids`` once and record every site. Returns a dict of [seq, ...] tensors."""
    _check_model(model)
    blocks = model.transformer.h
    cache = {}
    handles = []

    def block0_input_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        cache[("resid", 0)] = hidden[0].detach().clone()

    def save_output(key, take_first=False):
        def hook(module, args, output):
            value = output[0] if take_first else output
            cache[key] = value[0].detach().clone()
        return hook

    def save_c_proj_input(key):
        def hook(module, args):
            cache[key] = args[0][0].detach().clone()
        return hook

    try:
        handles.append(blocks[0].register_forward_pre_hook(block0_input_hook, with_kwargs=True))
        for L, block in enumerate(blocks):
            handles.append(block.register_forward_hook(save_output(("resid", L + 1))))
            handles.append(block.attn.register_forward_hook(save_output(("attn", L), take_first=True)))
            handles.append(block.mlp.register_forward_hook(save_output(("mlp", L))))
            handles.append(block.attn.c_proj.register_forward_pre_hook(save_c_proj_input(("z", L))))
        _forward_logits(model, ids)
    finally:
        for h in handles:
            h.remove()
    return cache


# --------------------------------------------------------------------------
# patching
# --------------------------------------------------------------------------

def _replaced(current, source_value, position, columns=slice(None)):
    """Copy of ``current`` [1, seq, d] with [0, position, columns] taken from ``source_value`` [seq, d]."""
    pos = _positions(position)
    new = current.clone()
    new[0, pos, columns] = source_value[pos, columns].to(new.dtype)
    return new


def _check_patch(model, patch):
    if len(patch) != 4:
        raise ValueError(f"a patch is (kind, layer, position, head), got {patch!r}")
    kind, layer, position, head = patch
    if kind not in PATCH_KINDS:
        raise ValueError(f"unknown patch kind {kind!r}; expected one of {PATCH_KINDS}")
    n_rows = _n_layer(model) + 1 if kind == "resid" else _n_layer(model)
    if not 0 <= layer < n_rows:
        raise ValueError(f"layer {layer} out of range for kind {kind!r} (0..{n_rows - 1})")
    if kind == "head":
        if head is None or not 0 <= head < model.config.n_head:
            raise ValueError(f"kind 'head' needs a head index in 0..{model.config.n_head - 1}, got {head!r}")
    elif head is not None:
        raise ValueError(f"head must be None for kind {kind!r}, got {head!r}")


def _make_hook(model, source_cache, patch):
    """Return (module, hook, hook_type) that performs one patch."""
    kind, layer, position, head = patch
    blocks = model.transformer.h

    if kind == "resid" and layer == 0:
        source_value = source_cache[("resid", 0)]

        def hook(module, args, kwargs):
            if args:  # transformers 5 passes hidden_states positionally
                return (_replaced(args[0], source_value, position),) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = _replaced(kwargs["hidden_states"], source_value, position)
            return args, kwargs

        return blocks[0], hook, "pre_with_kwargs"

    if kind == "resid":  # output of block layer-1
        source_value = source_cache[("resid", layer)]

        def hook(module, args, output):
            return _replaced(output, source_value, position)

        return blocks[layer - 1], hook, "forward"

    if kind == "attn":
        source_value = source_cache[("attn", layer)]

        def hook(module, args, output):
            return (_replaced(output[0], source_value, position),) + tuple(output[1:])

        return blocks[layer].attn, hook, "forward"

    if kind == "mlp":
        source_value = source_cache[("mlp", layer)]

        def hook(module, args, output):
            return _replaced(output, source_value, position)

        return blocks[layer].mlp, hook, "forward"

    # kind == "head": one head's slice of c_proj's input
    source_value = source_cache[("z", layer)]
    d_head = _d_head(model)
    columns = slice(head * d_head, (head + 1) * d_head)

    def hook(module, args):
        return (_replaced(args[0], source_value, position, columns),) + tuple(args[1:])

    return blocks[layer].attn.c_proj, hook, "pre"


@contextlib.contextmanager
def patching(model, source_cache, patches):
    """Context manager: while active, every forward pass of ``model`` applies ``patches``.

    Exposed so tests can register extra (read-only) hooks AFTER the patch hooks
    (hooks on one module run in registration order) and look at patched values.
    """
    handles = []
    try:
        for patch in patches:
            _check_patch(model, patch)
            module, hook, hook_type = _make_hook(model, source_cache, patch)
            if hook_type == "forward":
                handles.append(module.register_forward_hook(hook))
            elif hook_type == "pre":
                handles.append(module.register_forward_pre_hook(hook))
            else:
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def run_with_patches(model, base_ids, source_cache, patches):
    """Run ``base_ids`` once with all ``patches`` applied jointly. Returns logits [seq, vocab].

    ``patches``: list of ``(kind, layer, position, head)``; kind in
    {"resid", "attn", "mlp", "head"}; position an int or None (all positions);
    head an int for kind "head", otherwise None.
    """
    _check_model(model)
    seq = _as_batch(base_ids).shape[1]
    if source_cache[("resid", 0)].shape[0] != seq:
        raise ValueError("source and base prompts must have the same length")
    with patching(model, source_cache, patches):
        return _forward_logits(model, base_ids)


def logit_diff(logits, answer_id, distractor_id):
    """logits[-1, answer] - logits[-1, distractor] as a Python float."""
    return float(logits[-1, answer_id] - logits[-1, distractor_id])


# --------------------------------------------------------------------------
# sweeps: one patched forward per entry, last-position logits returned
# --------------------------------------------------------------------------

def _check_pair(base_ids, source_ids):
    if _as_batch(base_ids).shape != _as_batch(source_ids).shape:
        raise ValueError("base and source prompts must have the same length")


@torch.no_grad()
def _sweep(model, base_ids, source_ids, shape, patch_for_index):
    """Loop over every index of ``shape``; entry = last-position logits of one patched run."""
    _check_model(model)
    _check_pair(base_ids, source_ids)
    source_cache = cache_activations(model, source_ids)
    result = torch.empty(*shape, model.lm_head.out_features, dtype=model.lm_head.weight.dtype)
    for index in itertools.product(*[range(n) for n in shape]):
        logits = run_with_patches(model, base_ids, source_cache, [patch_for_index(*index)])
        result[index] = logits[-1]
    return result


def sweep_resid(model, base_ids, source_ids):
    """[n_layer+1, seq, vocab]: residual row L patched at one position."""
    seq = len(base_ids)
    return _sweep(model, base_ids, source_ids, (_n_layer(model) + 1, seq),
                  lambda L, p: ("resid", L, p, None))


def sweep_attn(model, base_ids, source_ids):
    """[n_layer, seq, vocab]: attention output of layer L patched at one position."""
    seq = len(base_ids)
    return _sweep(model, base_ids, source_ids, (_n_layer(model), seq),
                  lambda L, p: ("attn", L, p, None))


def sweep_mlp(model, base_ids, source_ids):
    """[n_layer, seq, vocab]: MLP output of layer L patched at one position."""
    seq = len(base_ids)
    return _sweep(model, base_ids, source_ids, (_n_layer(model), seq),
                  lambda L, p: ("mlp", L, p, None))


def sweep_heads(model, base_ids, source_ids):
    """[n_layer, n_head, vocab]: head (L, h) patched at all positions."""
    return _sweep(model, base_ids, source_ids, (_n_layer(model), model.config.n_head),
                  lambda L, h: ("head", L, None, h))


def sweep_head_positions(model, base_ids, source_ids):
    """[n_layer, n_head, seq, vocab]: head (L, h) patched at one position."""
    seq = len(base_ids)
    return _sweep(model, base_ids, source_ids, (_n_layer(model), model.config.n_head, seq),
                  lambda L, h, p: ("head", L, p, h))


# ==========================================================================
# Every family (GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3 text)
# ==========================================================================
#
# The functions above keep the GPT-2-only numbering (``("resid", 0)`` = embeddings,
# ``("resid", L)`` = output of block L-1, cache key ``"z"``).  The functions below use the
# project-wide site names instead; for GPT-2 the two agree as
#
#     family-generic             GPT-2-only (above)
#     ("embed", None)      ==    ("resid", 0)
#     ("resid", L)         ==    ("resid", L + 1)
#     ("attn", L), ("mlp", L)    the same
#     ("head", L)          ==    ("z", L)            (cache: all heads side by side)
#
# (tests/test_family_reference.py checks this on a random GPT-2.)
#
# Sites and the hook that reads / replaces each (``blocks``, ``attn``, ``o_proj``, ``mlp`` are
# the per-family paths in ``FAMILY_MODULES``; ``L`` = 0 .. n_layers-1):
#
# * ``embed``: the hidden_states argument of ``blocks[0]``: token (+ position) embeddings with
#   any model-specific scaling (Gemma's sqrt(d_model)).  Forward PRE-hook with kwargs on
#   ``blocks[0]`` (transformers 5.23 passes hidden_states positionally in every family; the
#   hook also accepts it as the ``hidden_states`` keyword).
# * ``resid`` L: the output of ``blocks[L]``, a plain tensor [batch, seq, d_model] in every
#   family on transformers 5.23 (a tuple's first element is handled too).  Forward hook.
# * ``attn`` L: ``blocks[L].<attn>`` output[0] (the module returns (output, weights)): the
#   value before it joins the residual stream; for Gemma 2/3 before post_attention_layernorm.
#   Forward hook replacing element 0 of the tuple.
# * ``mlp`` L: ``blocks[L].mlp`` output (a tensor; for Gemma 2/3 before
#   post_feedforward_layernorm).  Forward hook.
# * ``head`` L h: columns h*d_head:(h+1)*d_head of the INPUT of the attention output projection
#   ``blocks[L].<o_proj>`` ([batch, seq, n_heads*d_head], the query heads' outputs; with
#   grouped-query attention still one slice per QUERY head).  Forward PRE-hook.  The cache
#   stores the whole input under ``("head", L)``.
#
# A patch is ``(site, layer, position, head)``: ``layer`` None (or 0) for ``embed``;
# ``position`` an int or None (all positions), the same for every batch row; ``head`` an int
# for ``head`` and None otherwise.  Several patches are applied jointly, in list order for
# patches on the same module.  Every hook counts its calls and a patched run fails unless
# each hook ran exactly once, so a hook on a module the model never calls cannot pass
# silently.

SITES = ("embed", "resid", "attn", "mlp", "head")

_LLAMA_STYLE_MODULES = dict(blocks="model.layers", attn="self_attn", o_proj="self_attn.o_proj",
                            mlp="mlp", final_norm="model.norm", unembed="lm_head")

#: Module paths per family (checked on transformers 5.23.0).  ``blocks``, ``final_norm`` and
#: ``unembed`` from the top (``*ForCausalLM``) model; ``attn``, ``o_proj``, ``mlp`` from a block.
#: GPT-NeoX's unembedding is ``lm_head`` on transformers 5 (hub checkpoints' ``embed_out.*``
#: weights are renamed to ``lm_head.*`` when loading).
FAMILY_MODULES = {
    "gpt2": dict(blocks="transformer.h", attn="attn", o_proj="attn.c_proj", mlp="mlp",
                 final_norm="transformer.ln_f", unembed="lm_head"),
    "gpt_neox": dict(blocks="gpt_neox.layers", attn="attention", o_proj="attention.dense",
                     mlp="mlp", final_norm="gpt_neox.final_layer_norm", unembed="lm_head"),
    "llama": dict(_LLAMA_STYLE_MODULES),
    "qwen2": dict(_LLAMA_STYLE_MODULES),
    "qwen3": dict(_LLAMA_STYLE_MODULES),
    "mistral": dict(_LLAMA_STYLE_MODULES),
    "gemma2": dict(_LLAMA_STYLE_MODULES),
    "gemma3": dict(_LLAMA_STYLE_MODULES),
}

#: config.model_type -> family.  Gemma 3 text-only checkpoints (``Gemma3ForCausalLM``) have
#: model_type "gemma3_text"; "gemma3" is the multimodal ``Gemma3ForConditionalGeneration``
#: (blocks under ``model.language_model.layers``), not covered here.
MODEL_TYPE_FAMILY = {"gpt2": "gpt2", "gpt_neox": "gpt_neox", "llama": "llama", "qwen2": "qwen2",
                     "qwen3": "qwen3", "mistral": "mistral", "gemma2": "gemma2",
                     "gemma3_text": "gemma3"}


def family_of(model):
    """The family name of a transformers causal LM, from ``config.model_type``."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPE_FAMILY:
        raise ValueError(f"no reference for model_type {model_type!r}; known: {sorted(MODEL_TYPE_FAMILY)}")
    return MODEL_TYPE_FAMILY[model_type]


def _family(model, family):
    if family is None:
        family = family_of(model)
    if family not in FAMILY_MODULES:
        raise ValueError(f"unknown family {family!r}; choose one of {tuple(FAMILY_MODULES)}")
    return family


def _get(root, path):
    for name in path.split("."):
        root = getattr(root, name)
    return root


def module_for(model, family, what, layer=None):
    """The module ``what`` ("blocks", "block", "attn", "o_proj", "mlp", "final_norm", "unembed")."""
    paths = FAMILY_MODULES[_family(model, family)]
    if what in ("blocks", "final_norm", "unembed"):
        return _get(model, paths[what])
    block = _get(model, paths["blocks"])[layer]
    return block if what == "block" else _get(block, paths[what])


def n_layers_of(model, family=None):
    return len(module_for(model, family, "blocks"))


def n_heads_of(model):
    config = model.config
    return getattr(config, "num_attention_heads", None) or config.n_head


def d_head_of(model, family=None):
    """Width of one query head in the ``head`` site: the output projection's input width
    divided by the number of query heads (read from the weights, not from config.head_dim)."""
    o_proj = module_for(model, family, "o_proj", 0)
    if isinstance(o_proj, torch.nn.Linear):
        width = o_proj.in_features
    else:  # transformers' Conv1D (GPT-2): weight is [in, out]
        width = o_proj.weight.shape[0]
    n_heads = n_heads_of(model)
    if width % n_heads:
        raise ValueError(f"output projection input width {width} is not a multiple of {n_heads} heads")
    return width // n_heads


def _ids_batch(ids):
    """[seq] or [batch, seq] -> ([batch, seq], had_batch_dim)."""
    ids = torch.as_tensor(ids)
    if ids.ndim == 1:
        return ids.unsqueeze(0), False
    if ids.ndim == 2:
        return ids, True
    raise ValueError(f"expected token ids [seq] or [batch, seq], got {tuple(ids.shape)}")


def full_logits(model, ids):
    """Plain forward pass: logits [batch, seq, vocab] ([seq, vocab] for 1-D ids)."""
    batch, had_batch = _ids_batch(ids)
    with torch.no_grad():
        logits = model(input_ids=batch, use_cache=False).logits
    return logits if had_batch else logits[0]


# ---- reading / replacing the value a hook sees -----------------------------

def _hidden_from_pre(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, value):
    if args:
        return (value,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = value
    return args, kwargs


def _linear_input(args, kwargs):
    if args:
        return args[0]
    (value,) = kwargs.values()  # nn.Linear.forward(input) / Conv1D.forward(x) by keyword
    return value


def _with_linear_input(args, kwargs, value):
    if args:
        return (value,) + tuple(args[1:]), kwargs
    (name,) = kwargs
    return args, {name: value}


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _with_first(output, value):
    return (value,) + tuple(output[1:]) if isinstance(output, tuple) else value


def _site_hook(model, family, site, layer):
    """(module, kind, read, write) for a site: ``kind`` "pre" (forward pre-hook with kwargs,
    read(args, kwargs) / write(args, kwargs, value) -> (args, kwargs)) or "post" (forward hook,
    read(output) / write(output, value) -> output)."""
    if site == "embed":
        return module_for(model, family, "block", 0), "pre", _hidden_from_pre, _with_hidden
    if site == "resid":
        return module_for(model, family, "block", layer), "post", _first, _with_first
    if site == "attn":
        return module_for(model, family, "attn", layer), "post", _first, _with_first
    if site == "mlp":
        return module_for(model, family, "mlp", layer), "post", _first, _with_first
    if site == "head":
        return module_for(model, family, "o_proj", layer), "pre", _linear_input, _with_linear_input
    raise ValueError(f"unknown site {site!r}; choose one of {SITES}")


def _register(module, kind, fn):
    if kind == "pre":
        return module.register_forward_pre_hook(fn, with_kwargs=True)
    return module.register_forward_hook(fn)


def _site_keys(model, family):
    keys = [("embed", None)]
    for L in range(n_layers_of(model, family)):
        keys += [("head", L), ("attn", L), ("mlp", L), ("resid", L)]
    return keys


# ---- cache -----------------------------------------------------------------

@torch.no_grad()
def cache(hf_model, family, ids):
    """Run ``ids`` ([seq] or [batch, seq]) once; return every site's value.

    Keys: ``("embed", None)``, and for each layer L ``("resid", L)``, ``("attn", L)``,
    ``("mlp", L)`` ([batch, seq, d_model]) and ``("head", L)`` (the output projection's whole
    input, [batch, seq, n_heads * d_head]).  No batch dimension for 1-D ``ids``.
    """
    _check_model(hf_model)
    family = _family(hf_model, family)
    batch, had_batch = _ids_batch(ids)
    values, handles = {}, []

    def saver(key, kind, read):
        if kind == "pre":
            def hook(module, args, kwargs):
                if key in values:
                    raise RuntimeError(f"{key} was called twice in one forward pass")
                values[key] = read(args, kwargs).detach().clone()
        else:
            def hook(module, args, output):
                if key in values:
                    raise RuntimeError(f"{key} was called twice in one forward pass")
                values[key] = read(output).detach().clone()
        return hook

    try:
        for site, layer in _site_keys(hf_model, family):
            module, kind, read, _ = _site_hook(hf_model, family, site, layer)
            handles.append(_register(module, kind, saver((site, layer), kind, read)))
        hf_model(input_ids=batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    missing = set(_site_keys(hf_model, family)) - set(values)
    if missing:
        raise RuntimeError(f"hooks never ran for {sorted(missing, key=str)}")
    return values if had_batch else {k: v[0] for k, v in values.items()}


# ---- patching --------------------------------------------------------------

def _check_family_patch(model, family, patch):
    if len(patch) != 4:
        raise ValueError(f"a patch is (site, layer, position, head), got {patch!r}")
    site, layer, position, head = patch
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {SITES}")
    n_layers = n_layers_of(model, family)
    if site == "embed":
        if layer not in (None, 0):
            raise ValueError(f"site 'embed' takes layer None (or 0), got {layer!r}")
    elif not (isinstance(layer, int) and 0 <= layer < n_layers):
        raise ValueError(f"layer {layer!r} out of range for site {site!r} (0..{n_layers - 1})")
    if site == "head":
        n_heads = n_heads_of(model)
        if not (isinstance(head, int) and 0 <= head < n_heads):
            raise ValueError(f"site 'head' needs a head index in 0..{n_heads - 1}, got {head!r}")
    elif head is not None:
        raise ValueError(f"head must be None for site {site!r}, got {head!r}")
    if position is not None and not isinstance(position, int):
        raise ValueError(f"position must be an int or None, got {position!r}")


def _replace(current, source, position, columns):
    """Copy of ``current`` [batch, seq, d] with [:, position, columns] from ``source``."""
    if current.shape[:2] != source.shape[:2]:
        raise ValueError(f"source value {tuple(source.shape)} does not match the run's "
                         f"{tuple(current.shape)} (same batch size and length needed)")
    pos = slice(None) if position is None else position
    new = current.clone()
    new[:, pos, columns] = source[:, pos, columns].to(new.dtype)
    return new


@contextlib.contextmanager
def patched(hf_model, family, source_cache, patches):
    """While active, every forward pass of ``hf_model`` applies ``patches`` with values from
    ``source_cache`` (a ``cache(...)`` of a [batch, seq] run).  Yields a dict counting each
    patch hook's calls (index in ``patches`` -> calls)."""
    family = _family(hf_model, family)
    calls = {i: 0 for i in range(len(patches))}
    handles = []
    try:
        for i, patch in enumerate(patches):
            _check_family_patch(hf_model, family, patch)
            site, layer, position, head = patch
            key = ("embed", None) if site == "embed" else (site, layer)
            source = source_cache[key]
            if source.ndim == 2:  # cache of 1-D ids
                source = source.unsqueeze(0)
            columns = slice(None)
            if site == "head":
                d_head = d_head_of(hf_model, family)
                columns = slice(head * d_head, (head + 1) * d_head)
            module, kind, read, write = _site_hook(hf_model, family, site, layer)

            def make(i=i, source=source, position=position, columns=columns, kind=kind,
                     read=read, write=write):
                if kind == "pre":
                    def hook(module, args, kwargs):
                        calls[i] += 1
                        return write(args, kwargs, _replace(read(args, kwargs), source, position, columns))
                else:
                    def hook(module, args, output):
                        calls[i] += 1
                        return write(output, _replace(read(output), source, position, columns))
                return hook

            handles.append(_register(module, kind, make()))
        yield calls
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def run_with_source_cache(hf_model, family, ids, patches, source_cache):
    """Run ``ids`` with ``patches`` (values from ``source_cache``) applied jointly.
    Returns ALL logits [batch, seq, vocab] ([seq, vocab] for 1-D ids)."""
    _check_model(hf_model)
    family = _family(hf_model, family)
    batch, had_batch = _ids_batch(ids)
    with patched(hf_model, family, source_cache, patches) as calls:
        logits = hf_model(input_ids=batch, use_cache=False).logits
    not_once = {patches[i]: n for i, n in calls.items() if n != 1}
    if not_once:
        raise RuntimeError(f"patch hooks did not run exactly once: {not_once}")
    return logits if had_batch else logits[0]


def run_patched(hf_model, family, ids, patches, source_ids):
    """Last-position logits [batch, vocab] ([vocab] for 1-D ids) of ``ids`` with ``patches``
    applied jointly, each value taken from a separate (hooked) run of ``source_ids``
    (same shape as ``ids``).  ``family`` None = from the config."""
    family = _family(hf_model, family)
    if torch.as_tensor(ids).shape != torch.as_tensor(source_ids).shape:
        raise ValueError("ids and source_ids must have the same shape")
    source_cache = cache(hf_model, family, source_ids)
    return run_with_source_cache(hf_model, family, ids, patches, source_cache)[..., -1, :]


def sweep(hf_model, family, base_ids, source_ids, site, per_position=True):
    """One patched run per entry, last-position logits.  Shapes (``...`` = [batch, vocab], or
    [vocab] for 1-D ids):

    * ``embed``: [seq, ...] (one position each; ``per_position`` must be True)
    * ``resid`` / ``attn`` / ``mlp``: [n_layers, seq, ...], or [n_layers, ...] with
      ``per_position=False`` (all positions at once)
    * ``head``: [n_layers, n_heads, seq, ...], or [n_layers, n_heads, ...] with
      ``per_position=False``
    """
    _check_model(hf_model)
    family = _family(hf_model, family)
    if torch.as_tensor(base_ids).shape != torch.as_tensor(source_ids).shape:
        raise ValueError("base_ids and source_ids must have the same shape")
    seq = torch.as_tensor(base_ids).shape[-1]
    n_layers, n_heads = n_layers_of(hf_model, family), n_heads_of(hf_model)
    positions = [range(seq)] if per_position else []
    if site == "embed":
        if not per_position:
            raise ValueError("site 'embed' at all positions is the source run; sweep per position")
        shape, make = (seq,), lambda p: ("embed", None, p, None)
    elif site in ("resid", "attn", "mlp"):
        ranges = [range(n_layers)] + positions
        shape = tuple(len(r) for r in ranges)
        make = lambda L, p=None: (site, L, p, None)  # noqa: E731
    elif site == "head":
        ranges = [range(n_layers), range(n_heads)] + positions
        shape = tuple(len(r) for r in ranges)
        make = lambda L, h, p=None: ("head", L, p, h)  # noqa: E731
    else:
        raise ValueError(f"unknown site {site!r}; choose one of {SITES}")
    source_cache = cache(hf_model, family, source_ids)
    entries = {}
    for index in itertools.product(*[range(n) for n in shape]):
        logits = run_with_source_cache(hf_model, family, base_ids, [make(*index)], source_cache)
        entries[index] = logits[..., -1, :]
    first = next(iter(entries.values()))
    result = torch.empty(*shape, *first.shape, dtype=first.dtype)
    for index, value in entries.items():
        result[index] = value
    return result
