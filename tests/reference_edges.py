"""Edge-level runs with plain PyTorch hooks: the ground truth ``helpers``' edge attribution and edge
ablation are tested against.  No nnsight and nothing from ``helpers``; module paths from
``reference_hooks``.  GPT-2 and Llama-style models (transformers 5.23).

The graph, written out here on its own (MIB, Mueller et al. 2025): senders ``input`` (the token
embeddings: the output of ``get_input_embeddings()``), ``a{L}.h{H}`` (head H's slice of block L's
output projection input times its columns of the projection's weight: no bias) and ``m{L}`` (the
MLP's output); receivers ``a{L}.h{H}<q|k|v>`` (the stream that head's query / key / value
projection reads, before the block's norm), ``m{L}`` (the stream the MLP's norm reads) and
``logits`` (the final norm's input).  A head's q/k/v reads ``input`` and every sender of earlier
blocks, an MLP also its own block's heads, the logits every sender.

A run with receiver inputs: ``x_v = stream + correction(v, run)``, the stream being what the
module reads in this run; the hooks rebuild the head's q/k/v columns from ``norm(x_v)`` with the
projection's own ``forward`` (no hooks), hand the MLP's norm and the final norm their ``x_v``, and
record every sender's output in this run as it is made.

Grouped-query attention: ``kv="query"`` uses an *ungrouped copy* of the model (``ungrouped``:
every query head given its own copy of its group's key/value projection: the same function, one
key/value head per query head), so ``a3.h1<k>`` is that copy's key head 1; ``kv="kv"`` names the
model's own key/value heads ``a3.kv0<k>``.

* ``first_order``: every edge's first-order term at once: ``x_v = stream + sum_e eps_e (a_u(abl) -
  a_u(clean))`` over the edges e = u -> v, ``eps = 0`` (the clean run, or one with the
  embeddings or a block's attention / MLP output replaced: the integrated-gradient points), and
  autograd's ``d m / d eps``; returned in MIB's sign, ``-mean_i d m_i / d eps_e``.
* ``ablate``: the edges outside a circuit ablated: ``x_v = stream + sum over u outside the circuit
  of (ablated_u - run_u)`` (MIB's ``evaluate_graph``); returns the logit differences ``[batch]``.
"""
from __future__ import annotations

import contextlib

import reference_hooks as ref
import torch

__all__ = ["NORMS", "ungrouped", "senders_of", "receivers_of", "edges_of", "record", "first_order",
           "ablate"]

#: family -> (the attention's norm, the MLP's norm), from a block
NORMS = {"gpt2": ("ln_1", "ln_2"), **{f: ("input_layernorm", "post_attention_layernorm")
                                      for f in ("llama", "qwen2", "qwen3", "mistral")}}
_QKV = {"gpt2": ("attn.c_attn",) * 3, **{f: ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
                                         for f in ("llama", "qwen2", "qwen3", "mistral")}}


def ungrouped(model):
    """A copy of a grouped-query model with one key/value head per query head (same function)."""
    import copy

    cfg = copy.deepcopy(model.config)
    h, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    rep = h // kv
    cfg.num_key_value_heads = h
    out = type(model)(cfg).to(next(model.parameters()).dtype).eval()
    state = dict(model.state_dict())
    for name, t in list(state.items()):
        if any(f"{p}." in name for p in ("k_proj", "v_proj")):
            state[name] = t.view(kv, -1, *t.shape[1:]).repeat_interleave(rep, 0).reshape(h * t.shape[0] // kv, *t.shape[1:])
    out.load_state_dict(state)
    return out


def _shape(model):
    c = model.config
    n_layers = c.num_hidden_layers if hasattr(c, "num_hidden_layers") else c.n_layer
    n_heads = ref.n_heads_of(model)
    n_kv = getattr(c, "num_key_value_heads", None) or n_heads
    return n_layers, n_heads, n_kv


def senders_of(model):
    n_layers, n_heads, _ = _shape(model)
    out = ["input"]
    for L in range(n_layers):
        out += [f"a{L}.h{h}" for h in range(n_heads)] + [f"m{L}"]
    return out


def receivers_of(model, kv="query"):
    """Receivers in forward order; ``kv="kv"``: key/value receivers per key/value head."""
    n_layers, n_heads, n_kv = _shape(model)
    out = []
    for L in range(n_layers):
        out += [f"a{L}.h{h}<q>" for h in range(n_heads)]
        for kind in "kv":
            out += ([f"a{L}.kv{g}<{kind}>" for g in range(n_kv)] if kv == "kv" and n_kv < n_heads
                    else [f"a{L}.h{h}<{kind}>" for h in range(n_heads)])
        out.append(f"m{L}")
    return out + ["logits"]


def _layer(name):
    return int(name[1:].split(".")[0]) if name[0] in "am" else None


def _reads(sender, receiver):
    """True if ``receiver`` reads ``sender`` (sender written before the receiver reads)."""
    if receiver == "logits" or sender == "input":
        return True
    ls, lr = _layer(sender), _layer(receiver)
    if receiver.startswith("m"):
        return ls < lr or (ls == lr and sender.startswith("a"))
    return ls < lr


def edges_of(model, kv="query"):
    """Every (sender, receiver) edge."""
    return [(s, r) for r in receivers_of(model, kv) for s in senders_of(model) if _reads(s, r)]


def _head_weights(o_proj, n_heads):
    """[H, d_head, d_model]: z_h @ W[h] is head h's output."""
    w = o_proj.weight.T if isinstance(o_proj, torch.nn.Linear) else o_proj.weight  # [H*dh, d]
    return w.reshape(n_heads, -1, w.shape[-1])


@contextlib.contextmanager
def _hooks(model, family, correction, run, kv):
    """Hooks that record senders into ``run`` and give receivers ``stream + correction``."""
    n_layers, n_heads, n_kv = _shape(model)
    grouped = kv == "kv" and n_kv < n_heads
    handles = []
    stream = {}
    d_head = ref.d_head_of(model, family)

    def hook_embed(module, args, output):
        run["input"] = output

    handles.append(model.get_input_embeddings().register_forward_hook(hook_embed))
    for L in range(n_layers):
        block = ref.module_for(model, family, "block", L)
        norm1, norm2 = (ref._get(block, p) for p in NORMS[family])

        def pre_norm1(module, args, L=L):
            stream[L] = args[0]

        handles.append(norm1.register_forward_pre_hook(pre_norm1))
        paths = _QKV[family]
        for k, kind in enumerate("qkv"):
            module = ref._get(block, paths[k])
            n = n_heads if kind == "q" or not grouped else n_kv
            names = [f"a{L}.{'kv' if kind != 'q' and grouped else 'h'}{h}<{kind}>" for h in range(n)]
            fused = len(set(paths)) == 1
            offset = k * n_heads * d_head if fused else 0

            def post(module, args, output, names=names, offset=offset, norm1=norm1, L=L):
                out = None
                for h, name in enumerate(names):
                    c = correction(name, run)
                    if c is None:
                        continue
                    out = output.clone() if out is None else out
                    cols = slice(offset + h * d_head, offset + (h + 1) * d_head)
                    out[..., cols] = module.forward(norm1.forward(stream[L] + c))[..., cols]
                return out

            handles.append(module.register_forward_hook(post))
        o_proj = ref.module_for(model, family, "o_proj", L)

        def pre_o(module, args, L=L):
            z = args[0]
            w = _head_weights(module, n_heads)
            for h in range(n_heads):
                run[f"a{L}.h{h}"] = z[..., h * d_head:(h + 1) * d_head] @ w[h]

        handles.append(o_proj.register_forward_pre_hook(pre_o))

        def pre_norm2(module, args, L=L):
            c = correction(f"m{L}", run)
            return None if c is None else (args[0] + c,) + tuple(args[1:])

        handles.append(norm2.register_forward_pre_hook(pre_norm2))

        def post_mlp(module, args, output, L=L):
            run[f"m{L}"] = output

        handles.append(ref.module_for(model, family, "mlp", L).register_forward_hook(post_mlp))

    def pre_final(module, args):
        c = correction("logits", run)
        return None if c is None else (args[0] + c,) + tuple(args[1:])

    handles.append(ref.module_for(model, family, "final_norm").register_forward_pre_hook(pre_final))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _ld(logits, answers, distractors):
    rows = torch.arange(logits.shape[0])
    return logits[rows, -1, answers] - logits[rows, -1, distractors]


@contextlib.contextmanager
def _replaced(model, family, embedding=None, outputs=None):
    """While active: the token embeddings replaced by ``embedding``, block L's attention output
    (after the output projection) by ``outputs[("attn", L)]``, its MLP output by
    ``outputs[("mlp", L)]`` (``[batch, seq, d]`` each)."""
    handles = []
    if embedding is not None:
        handles.append(model.get_input_embeddings().register_forward_hook(lambda m, a, o: embedding))
    for (kind, L), value in (outputs or {}).items():
        module = ref.module_for(model, family, kind, L)
        if kind == "attn":
            handles.append(module.register_forward_hook(lambda m, a, o, v=value: (v,) + tuple(o[1:])))
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, v=value: v))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def record(model, ids, kv="query"):
    """Every sender's output in the plain run of ``ids`` ``[batch, seq]``: {name: [batch, seq, d]},
    and each block's attention output (after the output projection) under ``("attn", L)``."""
    family = ref.family_of(model)
    run = {}
    handles = [ref.module_for(model, family, "attn", L).register_forward_hook(
        lambda m, a, o, L=L: run.__setitem__(("attn", L), o[0])) for L in range(_shape(model)[0])]
    try:
        with _hooks(model, family, lambda name, run: None, run, kv):
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {k: v.detach().clone() for k, v in run.items()}


def first_order(model, clean_ids, ablated, answers, distractors, kv="query", embedding=None,
                outputs=None):
    """``{(sender, receiver): score}``: ``-mean_i d m_i / d eps_e`` (module docstring) with
    ``ablated`` the senders' ablated values ``{name: [batch, seq, d]}``, in the clean run or in
    the run with ``embedding`` / ``outputs`` replaced (``_replaced``); the differences
    ``ablated - clean`` are always the clean run's."""
    family = ref.family_of(model)
    clean = record(model, clean_ids, kv)
    edges = edges_of(model, kv)
    eps = torch.zeros(len(edges), dtype=next(model.parameters()).dtype, requires_grad=True)
    into = {}
    for e, (s, r) in enumerate(edges):
        into.setdefault(r, []).append((e, s))

    def correction(name, run):
        return sum(eps[e] * (ablated[s] - clean[s]) for e, s in into[name])

    with torch.enable_grad(), _replaced(model, family, embedding, outputs), \
            _hooks(model, family, correction, {}, kv):
        logits = model(input_ids=clean_ids, use_cache=False).logits
        (grad,) = torch.autograd.grad(_ld(logits, answers, distractors).sum(), eps)
    return {edge: -float(g) / clean_ids.shape[0] for edge, g in zip(edges, grad)}


@torch.no_grad()
def ablate(model, clean_ids, ablated, circuit, answers, distractors, kv="query"):
    """Logit differences ``[batch]`` of the clean prompts with every edge outside ``circuit``
    (a set of (sender, receiver)) ablated to ``ablated`` ``{name: [batch, seq, d]}``."""
    family = ref.family_of(model)
    out_of = {}
    for s, r in edges_of(model, kv):
        if (s, r) not in circuit:
            out_of.setdefault(r, []).append(s)

    def correction(name, run):
        senders = out_of.get(name)
        return None if not senders else sum(ablated[s] - run[s] for s in senders)

    with _hooks(model, family, correction, {}, kv):
        logits = model(input_ids=clean_ids, use_cache=False).logits
    return _ld(logits, answers, distractors)
