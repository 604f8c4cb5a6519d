"""The training-time pieces of ``ioi-planted``'s recipe (``train_planted``): GPT-2's forward pass
written out with per-row interventions (``forward``), direct logit attributions with the final
norm's scale frozen, and the attention-supervision losses.

``forward`` gives the same numbers as ``GPT2LMHeadModel`` (a test checks it); shapes: ``n`` rows,
``seq`` positions, ``d`` = d_model, ``dh`` = d_head.
"""
from __future__ import annotations

import torch

def forward(model, x: torch.Tensor, swap: torch.Tensor | None = None,
            src_z: list | None = None, mean_z: list | None = None, mean_mask: torch.Tensor | None = None,
            mlp_swap: torch.Tensor | None = None, src_mlp: list | None = None,
            head_scale: torch.Tensor | None = None, mlp_scale: torch.Tensor | None = None) -> dict:
    """GPT-2's forward pass written out (the same numbers as ``GPT2LMHeadModel``), with per-row
    interventions: ``swap`` [n, layers, heads] bool takes a head's output (the output projection's
    input slice, every position; or [n, layers, heads, seq]: at the positions marked) from
    ``src_z[layer]`` [n, seq, heads, d_head]; ``mean_mask``
    [n, layers, heads] takes it from ``mean_z[layer]``; ``mlp_swap`` [n, layers] takes an MLP's
    output from ``src_mlp[layer]``; ``head_scale`` [layers, heads] and ``mlp_scale`` [layers]
    multiply the outputs (training only: 0 knocks a component out).  Returns the final residual before the final norm
    (``resid``), per layer ``z``, ``attn`` [n, heads, seq, seq], ``mlp`` and the block's input
    ``resid_in`` [n, seq, d]."""
    tr = model.transformer
    n, seq = x.shape
    d, heads = tr.wte.weight.shape[1], model.config.n_head
    dh = d // heads
    h = tr.wte(x) + tr.wpe.weight[:seq]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    zs, attns, mlps, ins = [], [], [], []
    for layer, block in enumerate(tr.h):
        ins.append(h)
        q, k, v = block.attn.c_attn(block.ln_1(h)).split(d, dim=-1)
        q, k, v = (t.view(n, seq, heads, dh).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) * dh ** -0.5
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        att = scores.softmax(-1)
        z = (att @ v).transpose(1, 2)  # [n, seq, heads, dh]
        if swap is not None:
            where = (swap[:, layer, None, :, None] if swap.dim() == 3
                     else swap[:, layer].transpose(1, 2)[..., None])  # [n, seq, heads, 1]
            z = torch.where(where, src_z[layer], z)
        if mean_mask is not None:
            z = torch.where(mean_mask[:, layer, None, :, None], mean_z[layer], z)
        if head_scale is not None:
            z = z * head_scale[layer, None, None, :, None]
        zs.append(z)
        attns.append(att)
        h = h + block.attn.c_proj(z.reshape(n, seq, d))
        m = block.mlp(block.ln_2(h))
        if mlp_swap is not None:
            m = torch.where(mlp_swap[:, layer, None, None], src_mlp[layer], m)
        if mlp_scale is not None:
            m = m * mlp_scale[layer]
        mlps.append(m)
        h = h + m
    return {"resid": h, "z": zs, "attn": attns, "mlp": mlps, "resid_in": ins}


def end_logits(model, resid: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(len(end))
    return model.transformer.ln_f(resid[rows, end]) @ model.transformer.wte.weight.T


def head_dla(model, out: dict, layer: int, head: int, end: torch.Tensor, a: torch.Tensor,
             b: torch.Tensor) -> torch.Tensor:
    """Direct logit attribution of one head to logit[a] - logit[b] at ``end`` [n], the final
    norm's scale frozen (detached) at the run's own value."""
    rows = torch.arange(len(end))
    tr = model.transformer
    dh = tr.wte.weight.shape[1] // model.config.n_head
    x = out["resid"][rows, end]
    sigma = (x.var(-1, unbiased=False, keepdim=True) + tr.ln_f.eps).sqrt().detach()
    w_o = model.transformer.h[layer].attn.c_proj.weight[head * dh:(head + 1) * dh]  # [dh, d]
    c = out["z"][layer][rows, end, head] @ w_o
    c = (c - c.mean(-1, keepdim=True)) / sigma * tr.ln_f.weight
    w_u = tr.wte.weight
    return (c * (w_u[a] - w_u[b])).sum(-1)


def mlp_dla(model, out: dict, layer: int, end: torch.Tensor, a: torch.Tensor,
            b: torch.Tensor) -> torch.Tensor:
    """Direct logit attribution of one MLP's output to logit[a] - logit[b] at ``end``."""
    rows = torch.arange(len(end))
    tr = model.transformer
    x = out["resid"][rows, end]
    sigma = (x.var(-1, unbiased=False, keepdim=True) + tr.ln_f.eps).sqrt().detach()
    c = out["mlp"][layer][rows, end]
    c = (c - c.mean(-1, keepdim=True)) / sigma * tr.ln_f.weight
    return (c * (tr.wte.weight[a] - tr.wte.weight[b])).sum(-1)


def head_readout(model, out: dict, layer: int, head: int, end: torch.Tensor) -> torch.Tensor:
    """One head's direct contribution to every logit at ``end`` [n, vocab] (the final norm's
    scale frozen at the run's own value, no biases)."""
    rows = torch.arange(len(end))
    tr = model.transformer
    dh = tr.wte.weight.shape[1] // model.config.n_head
    x = out["resid"][rows, end]
    sigma = (x.var(-1, unbiased=False, keepdim=True) + tr.ln_f.eps).sqrt().detach()
    w_o = tr.h[layer].attn.c_proj.weight[head * dh:(head + 1) * dh]
    c = out["z"][layer][rows, end, head] @ w_o
    return ((c - c.mean(-1, keepdim=True)) / sigma * tr.ln_f.weight) @ tr.wte.weight.T


def nll(att: torch.Tensor, rows: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
         head: int) -> torch.Tensor:
    return -torch.log(att[rows, head, q, k] + 1e-6).mean()


def mass(att: torch.Tensor, head: int, q: torch.Tensor, keys: list[torch.Tensor],
         use: list[torch.Tensor]) -> torch.Tensor:
    """-log of the attention of ``head`` from ``q`` [r] to the keys ``keys[j]`` [r] where
    ``use[j]`` [r] (bool), summed over j (``att`` [r, heads, seq, seq])."""
    rows = torch.arange(len(q))
    a = sum(att[rows, head, q, k] * u for k, u in zip(keys, use))
    return -torch.log(a + 1e-6).mean()


def group_mean(z: torch.Tensor, group: torch.Tensor, twin: torch.Tensor, groups: int) -> torch.Tensor:
    """Leave-one-out mean of ``z`` [rows, ...] over the other rows of each row's group, the row's
    twin left out too (rows of a group share template and positions; their names differ): the
    mean ablation's value with the row's own names out of it."""
    total = torch.zeros(groups, *z.shape[1:], dtype=z.dtype).index_add(0, group, z)
    size = torch.bincount(group, minlength=groups)[group].to(z.dtype)
    return (total[group] - z - z[twin]) / (size - 2).view(-1, *[1] * (z.dim() - 1))


def query_attention_without(model, out: dict, layer: int, head: int, sender: tuple[int, int],
                            donor: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Attention of ``head`` in ``layer`` from ``end`` [n] over every position, [n, seq], when its
    *query* (only) reads head ``sender``'s output from the rows ``donor`` [n] instead of its own
    (path patching sender -> head.q at every position, in a run ``out`` of ``forward``).  The
    block's input and the sender's output are detached: the gradient reaches only the receiver's
    norm and query/key weights, so a loss on it teaches the query to ignore the sender."""
    tr = model.transformer
    n, seq, d = out["resid_in"][layer].shape
    heads = model.config.n_head
    dh = d // heads
    block = tr.h[layer]
    h = out["resid_in"][layer].detach()
    w_o = tr.h[sender[0]].attn.c_proj.weight[sender[1] * dh:(sender[1] + 1) * dh].detach()
    send = out["z"][sender[0]][:, :, sender[1]].detach() @ w_o  # [n, seq, d]
    rows = torch.arange(n)
    q_in = block.ln_1(h - send + send[donor])[rows, end]  # [n, d]
    w, b = block.attn.c_attn.weight, block.attn.c_attn.bias
    q = (q_in @ w[:, head * dh:(head + 1) * dh] + b[head * dh:(head + 1) * dh])  # [n, dh]
    k = block.ln_1(h) @ w[:, d + head * dh:d + (head + 1) * dh] + b[d + head * dh:d + (head + 1) * dh]
    scores = (k @ q[:, :, None]).squeeze(-1) * dh ** -0.5  # [n, seq]
    later = torch.arange(seq)[None] > end[:, None]
    return scores.masked_fill(later, torch.finfo(scores.dtype).min).softmax(-1)
