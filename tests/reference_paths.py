"""Path patching with plain PyTorch forward hooks: the ground truth ``helpers.methods.path_patching`` is tested
against.  No nnsight and nothing from ``helpers``; caching and the ``head``/``mlp``/``embed``
patch hooks come from ``reference_hooks`` (the independent patching reference).  One sender run
and one receiver run per (sender, receiver), no batching over senders or receivers.

The definition, written out literally (Wang et al. 2022): base run = the prompts patched into,
source run = the prompts values are taken from.

1. Cache both runs (``reference_hooks.cache``).
2. Sender run: the base prompts with the sender's output at its positions from the source run,
   and every head output (its slice of the output projection's input) and every MLP output that
   lies *strictly between* the sender and the receiver in forward order set to the base run's
   (the helpers freeze every component instead; the two agree because the others hold base
   values anyway or come after the receiver).  Norms are recomputed.  A hook records the
   receiver's input at its positions.
3. Receiver run: the base prompts with only the receiver's input at its positions replaced by
   the recorded value.  For ``logits`` the sender run's logits are the answer.

``freeze_final_norm=True``: a hook replaces the final norm's output by
``N(x_base) + J(x - x_base)``, ``J(d) = (d - mean d) * w / sqrt(var(x_base) + eps)`` for a
``LayerNorm`` and ``d * w / sqrt(mean(x_base^2) + eps)`` for an RMSNorm (``1 + w`` for Gemma), in
every patched run.

Senders are ``(kind, layer, head, positions)`` with kind ``embed`` / ``head`` / ``attn`` (all
heads of a block) / ``mlp``; receivers ``(kind, layer, head, positions)`` with kind ``q`` / ``k``
/ ``v`` (``head`` a key/value head for k and v) / ``mlp_in`` / ``logits``.  ``positions`` is a
list of token indices or None (every position).  A k/v receiver may carry a fifth element, a
query head of the key/value head's group: the keys/values *as read by that query head only*
(grouped-query attention, MIB's ungrouped edge): in the receiver run the group's other query
heads' outputs are set back to the base run's.
"""
from __future__ import annotations

import contextlib

import reference_hooks as ref
import torch

__all__ = ["QKV", "qkv_site", "path_patch", "path_patch_joint", "path_patch_later_frozen", "final_norm_io", "frozen_norm_part"]

_SPLIT = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
#: family -> (q/k/v module(s) from a block, layout).  GPT-2's c_attn output is [q | k | v];
#: GPT-NeoX's query_key_value output is per head [q k v]; Llama-style models have one each.
QKV = {"gpt2": (("attn.c_attn",), "fused"), "gpt_neox": (("attention.query_key_value",), "per_head"),
       **{f: (_SPLIT, "split") for f in ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3")}}


def qkv_site(model, family, layer, kind, head):
    """(module, columns) of a head's query / key / value input (``head`` a key/value head for
    ``k`` and ``v``)."""
    paths, layout = QKV[family]
    block = ref.module_for(model, family, "block", layer)
    k = "qkv".index(kind)
    module = ref._get(block, paths[0] if len(paths) == 1 else paths[k])
    d = ref.d_head_of(model, family)
    start = {"split": head * d, "fused": k * ref.n_heads_of(model) * d + head * d,
             "per_head": head * 3 * d + k * d}[layout]
    return module, slice(start, start + d)


def _place(kind, layer, parallel):
    """Forward order of sites (receivers' inputs and components' outputs)."""
    if kind in ("embed", "logits"):
        return {"embed": -1.0, "logits": float("inf")}[kind]
    return {"q": 3 * layer, "k": 3 * layer, "v": 3 * layer, "head": 3 * layer + 0.5,
            "attn": 3 * layer + 0.5, "mlp_in": 3 * layer + (0.25 if parallel else 1),
            "mlp": 3 * layer + 2}[kind]


def final_norm_io(model, family, ids):
    """The final norm's input and output [batch, seq, d_model] for ``ids`` [batch, seq]."""
    seen = {}
    norm = ref.module_for(model, family, "final_norm")

    def hook(module, args, output):
        seen["x"], seen["y"] = args[0].detach().clone(), output.detach().clone()

    handle = norm.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    return seen["x"], seen["y"]


def frozen_norm_part(model, family, x_base):
    """(centre, scale) of the final norm with its scale frozen at ``x_base``."""
    norm = ref.module_for(model, family, "final_norm")
    w = norm.weight.detach()
    if isinstance(norm, torch.nn.LayerNorm):
        var = ((x_base - x_base.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True)
        return True, w / (var + norm.eps) ** 0.5
    eps = norm.variance_epsilon if hasattr(norm, "variance_epsilon") else norm.eps
    w = 1 + w if family in ("gemma2", "gemma3") else w
    return False, w / ((x_base ** 2).mean(-1, keepdim=True) + eps) ** 0.5


@contextlib.contextmanager
def _frozen_final_norm(model, family, frozen):
    """While active, the final norm's scale is frozen (``frozen`` = (x_base, y_base)), or
    nothing happens (``frozen`` None)."""
    if frozen is None:
        yield
        return
    x_base, y_base = frozen
    centre, scale = frozen_norm_part(model, family, x_base)

    def hook(module, args, output):
        d = args[0] - x_base
        if centre:
            d = d - d.mean(-1, keepdim=True)
        return y_base + d * scale

    handle = ref.module_for(model, family, "final_norm").register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _receiver_hook(model, family, receiver, seq, value=None, store=None):
    """Register a hook that records (``store``) or replaces (``value``) the receiver's input."""
    kind, layer, head, positions = receiver
    pos = list(range(seq)) if positions is None else list(positions)
    if kind == "mlp_in":
        module = ref.module_for(model, family, "mlp", layer)

        def pre(module, args, kwargs):
            x = ref._linear_input(args, kwargs)
            if store is not None:
                store.append(x[:, pos].clone())
                return None
            x = x.clone()
            x[:, pos] = value
            return ref._with_linear_input(args, kwargs, x)

        return module.register_forward_pre_hook(pre, with_kwargs=True)
    module, cols = qkv_site(model, family, layer, kind, head)

    def post(module, args, output):
        if store is not None:
            store.append(output[:, pos, cols].clone())
            return None
        out = output.clone()
        out[:, pos, cols] = value
        return out

    return module.register_forward_hook(post)


@torch.no_grad()
def _sends(model, group):
    """The patches ``(site, layer, position, head)`` that give a (joint) sender its source values."""
    send = []
    for s_kind, s_layer, s_head, s_pos in group:
        positions = [None] if s_pos is None else list(s_pos)
        if s_kind == "embed":
            send += [("embed", None, p, None) for p in positions]
        elif s_kind in ("head", "attn"):
            heads = [s_head] if s_kind == "head" else range(ref.n_heads_of(model))
            send += [("head", s_layer, p, h) for h in heads for p in positions]
        else:
            send += [("mlp", s_layer, p, None) for p in positions]
    return send


def _frozen_between(model, family, here, there, parallel):
    """Every head and MLP strictly between places ``here`` and ``there``, to hold at the base run."""
    freeze = []
    for L in range(ref.n_layers_of(model, family)):
        if here < _place("head", L, parallel) < there:
            freeze += [("head", L, None, h) for h in range(ref.n_heads_of(model))]
        if here < _place("mlp", L, parallel) < there:
            freeze.append(("mlp", L, None, None))
    return freeze


def path_patch(model, family, base_ids, source_ids, sender, receiver, freeze_final_norm=False):
    """Last-position logits [batch, vocab] of path patching ``sender`` -> ``receiver`` for
    base prompts ``base_ids`` and source prompts ``source_ids`` ([batch, seq] each).  ``sender``
    may be a list of senders taking their source values together (a joint sender): every
    component from the earliest of them to the receiver is frozen, except them."""
    ref._check_model(model)
    family = ref._family(model, family)
    parallel = bool(getattr(model.config, "use_parallel_residual", False))
    group = sender if isinstance(sender, list) else [sender]  # a list: a joint sender's parts
    r_kind, r_layer = receiver[0], receiver[1]
    places = [_place(s[0], s[1], parallel) for s in group]
    here, there = min(places), _place(r_kind, r_layer, parallel)
    if not max(places) < there:
        raise ValueError(f"sender {sender} does not come before receiver {receiver}")
    base, source = ref.cache(model, family, base_ids), ref.cache(model, family, source_ids)
    frozen = final_norm_io(model, family, base_ids) if freeze_final_norm else None
    seq = base_ids.shape[1]
    send = _sends(model, group)
    freeze = _frozen_between(model, family, here, there, parallel)
    store = []
    handle = None if r_kind == "logits" else _receiver_hook(model, family, receiver[:4], seq, store=store)
    try:
        with ref.patched(model, family, base, freeze) as frozen_calls, \
                ref.patched(model, family, source, send) as send_calls, \
                _frozen_final_norm(model, family, frozen):
            logits = model(input_ids=base_ids, use_cache=False).logits[:, -1]
    finally:
        if handle is not None:
            handle.remove()
    if any(c != 1 for c in list(frozen_calls.values()) + list(send_calls.values())):
        raise RuntimeError("a patch hook did not run exactly once")
    if r_kind == "logits":
        return logits
    if len(store) != 1:
        raise RuntimeError(f"the receiver hook ran {len(store)} times")
    others = []  # a k/v receiver read by one query head: the group's other heads keep base outputs
    if len(receiver) == 5:
        group = ref.n_heads_of(model) // model.config.num_key_value_heads
        others = [("head", r_layer, None, h) for h in range(receiver[2] * group, (receiver[2] + 1) * group)
                  if h != receiver[4]]
    handle = _receiver_hook(model, family, receiver[:4], seq, value=store[0])
    try:
        with _frozen_final_norm(model, family, frozen), ref.patched(model, family, base, others):
            return model(input_ids=base_ids, use_cache=False).logits[:, -1]
    finally:
        handle.remove()


@torch.no_grad()
def path_patch_joint(model, family, base_ids, source_ids, sender, parts):
    """Path patching ``sender`` -> a joint receiver: the sender run records every part's input
    (q/k/v or mlp_in receivers, 4-tuples), then one receiver run replaces all of them."""
    ref._check_model(model)
    family = ref._family(model, family)
    parallel = bool(getattr(model.config, "use_parallel_residual", False))
    s_kind, s_layer, s_head, s_pos = sender
    here = _place(s_kind, s_layer, parallel)
    places = [_place(p[0], p[1], parallel) for p in parts]
    if not here < min(places):
        raise ValueError(f"sender {sender} does not come before every part of {parts}")
    there = max(places)
    base, source = ref.cache(model, family, base_ids), ref.cache(model, family, source_ids)
    seq = base_ids.shape[1]
    send = _sends(model, [sender])
    freeze = _frozen_between(model, family, here, there, parallel)
    stores = [[] for _ in parts]
    handles = [_receiver_hook(model, family, p, seq, store=st) for p, st in zip(parts, stores)]
    try:
        with ref.patched(model, family, base, freeze), ref.patched(model, family, source, send):
            model(input_ids=base_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    handles = [_receiver_hook(model, family, p, seq, value=st[0]) for p, st in zip(parts, stores)]
    try:
        return model(input_ids=base_ids, use_cache=False).logits[:, -1]
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def path_patch_later_frozen(model, family, base_ids, source_ids, sender, parts):
    """Path patching ``sender`` -> q/k/v ``parts`` -> logits with everything after the receiving
    heads frozen: each part's input (recorded in the sender run) is put back alone, the receiving
    heads' output change at the last position (their columns of the output projection's input)
    goes through the output projection (bias cancelled) into the base run's final stream, then the
    final norm and the unembedding, applied by hand to the last position."""
    parallel = bool(getattr(model.config, "use_parallel_residual", False))
    base = ref.cache(model, family, base_ids)
    seq, d = base_ids.shape[1], ref.d_head_of(model, family)
    n_heads = ref.n_heads_of(model)
    group = n_heads // getattr(model.config, "num_key_value_heads", n_heads)
    # the sender run's recorded inputs: the last forward of path_patch(..., logits) is its sender
    # run (the two before it cache the runs), so the last value the hook stores is the sender run's
    recorded = []
    for part in parts:
        rec = []
        handle = _receiver_hook(model, family, part[:4], seq, store=rec)
        try:
            path = path_patch(model, family, base_ids, source_ids, sender, ("logits", None, None, None))
        finally:
            handle.remove()
        del path
        recorded.append(rec[-1])
    x_base, _ = final_norm_io(model, family, base_ids)
    final = x_base[:, -1].clone()
    for part, value in zip(parts, recorded):
        kind, layer, head = part[0], part[1], part[2]
        heads = [head] if kind == "q" else ([part[4]] if len(part) == 5 else
                                             list(range(head * group, (head + 1) * group)))
        out_proj = ref.module_for(model, family, "o_proj", layer)
        seen = []
        pre = out_proj.register_forward_pre_hook(lambda m, a, kw: seen.append(ref._linear_input(a, kw).clone()),
                                                 with_kwargs=True)
        put = _receiver_hook(model, family, part[:4], seq, value=value)
        try:
            model(input_ids=base_ids, use_cache=False)
        finally:
            pre.remove()
            put.remove()
        z_new, z_base = seen[0][:, -1], base[("head", layer)][:, -1]
        dz = torch.zeros_like(z_new)
        for h in heads:
            dz[:, h * d:(h + 1) * d] = z_new[:, h * d:(h + 1) * d] - z_base[:, h * d:(h + 1) * d]
        final = final + out_proj(dz) - out_proj(torch.zeros_like(dz))
    del parallel
    norm = ref.module_for(model, family, "final_norm")
    return ref.module_for(model, family, "unembed")(norm(final))
