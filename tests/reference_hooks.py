"""Reference implementation of activation patching with plain PyTorch hooks.

This module is the ground truth that the project's nnsight-based engine is
tested against. It is deliberately simple: no nnsight, no imports from the
project's ``helpers`` package, no batching tricks, one forward pass per patch.

Model: ``transformers.GPT2LMHeadModel`` (checked on transformers 5.23.0).
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

All functions take 1-D token id tensors ``[seq]`` and return tensors without a
batch dimension.
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
