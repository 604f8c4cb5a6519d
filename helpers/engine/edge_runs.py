"""Runs over the edge graph (``helpers.engine.edge_model``): every sender's output, edge-level
ablation, single-edge patches, and the gradient at every receiver.

Edge ablation (MIB's ``evaluate_graph``, Mueller et al. 2025): in a run of the clean prompt, each
receiver v reads ``x_v = stream + sum over senders u outside the circuit of (ablated_u -
run_u)``, where ``stream`` is the run's own residual stream at v (the sum of every sender's
output in this run, plus the constants) and ``run_u`` u's output in this same run.  So an edge in
the circuit carries its sender's value of this run and an edge outside it the ablated value,
for every receiver separately; a sender whose own inputs were changed passes its changed output
along the edges kept.  Rows are (circuit, prompt) pairs, all in one batch.

The receivers' gradients: a run keeps ``d metric / d`` (the queries, keys, values per query head,
the MLP inputs after their norm, the final stream); a receiver's input gradient is carried back
through its projection and its norm: ``g_{h,q} = J_norm(x)^T W_Q[h]^T dm/dq_h`` (keys and values:
per query head, or summed over the query heads of a group for ``kv="kv"``), the norm's Jacobian
at the run's stream, by autograd on one copy of the stream per receiver.
"""
from __future__ import annotations

from typing import Any

import torch

from helpers.engine.edge_model import Capture, EdgeModel

__all__ = ["NodeRun", "Recorder", "node_values", "DenseAblation", "SingleEdges", "receiver_gradients",
           "scores_from", "positions_used"]


class NodeRun:
    """One plain run: ``values`` ``[R, F, S, d_model]`` every sender's output, ``streams``
    ``[R, n_layers + 1, S, d_model]`` the stream before each block (and the final one),
    ``logits`` its last-position logits (``[R, vocab]`` or the columns asked for)."""

    def __init__(self, values: torch.Tensor, streams: torch.Tensor, logits: torch.Tensor):
        self.values, self.streams, self.logits = values, streams, logits


class Recorder:
    """A policy that changes nothing and records every sender's output and the stream before
    every block (detached) into ``values`` ``[R, F, S, d]`` and ``streams`` ``[R, L + 1, S, d]``."""

    def __init__(self, em: EdgeModel, values: torch.Tensor, streams: torch.Tensor):
        self.g, self.values, self.streams = em.graph, values, streams

    def attn_inputs(self, layer: int, x: torch.Tensor) -> None:
        self.streams[:, layer] = x.detach()

    def heads(self, layer: int, out: torch.Tensor) -> None:
        i = self.g.head_index(layer, 0)
        self.values[:, i: i + self.g.n_heads] = out.detach()

    def mlp_input(self, layer: int, x_mid: torch.Tensor) -> torch.Tensor:
        return x_mid

    def mlp(self, layer: int, out: torch.Tensor) -> None:
        self.values[:, self.g.mlp_index(layer)] = out.detach()

    def logits_input(self, x: torch.Tensor) -> torch.Tensor:
        self.streams[:, -1] = x.detach()
        return x


@torch.no_grad()
def node_values(em: EdgeModel, ids: torch.Tensor, columns: torch.Tensor | None = None) -> NodeRun:
    """Every sender's output in the plain run of ``ids`` ``[R, S]``."""
    r, s = ids.shape
    f, g = em.f, em.graph
    a_in = em.embed(ids)
    values = a_in.new_zeros(r, len(g.senders), s, f.d_model)
    streams = a_in.new_zeros(r, f.n_layers + 1, s, f.d_model)
    values[:, 0] = a_in
    logits = em.forward(a_in + em.constant(s), Recorder(em, values, streams), columns=columns)
    return NodeRun(values, streams, logits)


def _bmm_corr(w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``sum_f w[r, f, b] d[r, f, ...]``: ``[R, F, b]`` x ``[R, F, S, d]`` -> ``[R, S, b, d]``."""
    r, f, s, dm = d.shape
    out = torch.bmm(w.transpose(1, 2), d.reshape(r, f, s * dm))  # [R, b, S*d]
    return out.view(r, -1, s, dm).transpose(1, 2)


class DenseAblation:
    """Receivers' inputs for edge ablation (module docstring): ``ablated`` ``[R, F, S, d]`` the
    ablated sender values per row, ``off`` ``[R, F, B]`` 1 where the edge is ablated (outside
    the row's circuit), ``run`` ``[R, F, S, d]`` the senders' outputs in this run wherever the
    run does not recompute them (those before its first block: the clean run's).  Only positions
    from ``first`` on can differ (counterfactual ablation: the prompts' first difference).

    A receiver's correction ``sum_{u off} d_u`` is summed over the off edges, or, when fewer
    senders have edges in the circuit, as ``sum_{u before it} d_u - sum_{u on} d_u`` (every
    earlier sender is an edge of every receiver of a block): the same sum, over fewer senders."""

    def __init__(self, em: EdgeModel, ablated: torch.Tensor, off: torch.Tensor, run: torch.Tensor,
                 first: int = 0):
        self.g, self.first = em.graph, first
        self.ablated = ablated[:, :, first:]
        self.d = self.ablated - run[:, :, first:]  # ablated - this run's output, updated as the run goes
        self.off = off.to(ablated.dtype)
        self.on = em.graph.real.to(off.device, ablated.dtype) - self.off
        self._total: dict[int, torch.Tensor] = {}

    def _corr(self, prev: int, b0: int, b1: int) -> torch.Tensor | None:
        """``[R, S', b, d]`` at positions ``first ..``, or None (nothing ablated)."""
        off, on = self.off[:, :prev, b0:b1], self.on[:, :prev, b0:b1]
        s_off, s_on = off.any(2).any(0).nonzero().flatten(), on.any(2).any(0).nonzero().flatten()
        if not len(s_off):
            return None
        if len(s_off) <= len(s_on) + 1:
            return self._sum(off, s_off, prev)
        if prev not in self._total:
            self._total = {prev: self.d[:, :prev].sum(1)}
        total = self._total[prev][:, :, None]
        return total if not len(s_on) else total - self._sum(on, s_on, prev)

    def _sum(self, w: torch.Tensor, senders: torch.Tensor, prev: int) -> torch.Tensor:
        """``sum_f w[:, f] d[:, f]`` over ``senders`` (gathered when they are few, else the
        zero weights of the others included: gathering costs as much as the product)."""
        if 2 * len(senders) > prev:
            return _bmm_corr(w, self.d[:, :prev])
        return _bmm_corr(w[:, senders], self.d[:, senders])

    def _add(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x`` ``[R, S, (n,) d]`` plus the correction at positions ``first ..``."""
        out = x.clone()
        out[:, self.first:] += c
        return out

    def attn_inputs(self, layer: int, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        g = self.g
        b0, h, nk, prev = g.first_receiver(layer), g.n_heads, g.n_kv_receivers, g.head_index(layer, 0)
        out = {}
        for kind, lo, n in (("q", b0, h), ("k", b0 + h, nk), ("v", b0 + h + nk, nk)):
            c = self._corr(prev, lo, lo + n)
            if c is not None:
                out[kind] = self._add(x[:, :, None].expand(-1, -1, n, -1), c)
        return out or None

    def heads(self, layer: int, out: torch.Tensor) -> None:
        i = self.g.head_index(layer, 0)
        self.d[:, i: i + self.g.n_heads] = self.ablated[:, i: i + self.g.n_heads] - out[:, :, self.first:]

    def mlp_input(self, layer: int, x_mid: torch.Tensor) -> torch.Tensor:
        b = self.g.first_receiver(layer) + self.g.per_block - 1
        c = self._corr(self.g.mlp_index(layer), b, b + 1)
        return x_mid if c is None else self._add(x_mid, c[:, :, 0])

    def mlp(self, layer: int, out: torch.Tensor) -> None:
        i = self.g.mlp_index(layer)
        self.d[:, i] = self.ablated[:, i] - out[:, self.first:]

    def logits_input(self, x: torch.Tensor) -> torch.Tensor:
        c = self._corr(len(self.g.senders), len(self.g.receivers) - 1, len(self.g.receivers))
        return x[:, -1:] if c is None else x[:, -1:] + c[:, -1:, 0]


class SingleEdges:
    """One patched edge per row: receiver ``receivers[r]`` (an index of ``graph.receivers``)
    reads the run's stream plus ``deltas[r]`` ``[S, d]``; every other receiver the stream."""

    def __init__(self, em: EdgeModel, receivers: torch.Tensor, deltas: torch.Tensor):
        self.g, self.recv, self.deltas = em.graph, receivers.to(deltas.device), deltas

    def _patched(self, x: torch.Tensor, lo: int, n: int) -> torch.Tensor | None:
        rows = ((self.recv >= lo) & (self.recv < lo + n)).nonzero().flatten()
        if not len(rows):
            return None
        out = x[:, :, None].expand(-1, -1, n, -1).clone()
        out[rows, :, self.recv[rows] - lo] += self.deltas[rows]
        return out

    def attn_inputs(self, layer: int, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        g = self.g
        b0, h, nk = g.first_receiver(layer), g.n_heads, g.n_kv_receivers
        out = {}
        for kind, lo, n in (("q", b0, h), ("k", b0 + h, nk), ("v", b0 + h + nk, nk)):
            p = self._patched(x, lo, n)
            if p is not None:
                out[kind] = p
        return out or None

    def heads(self, layer: int, out: torch.Tensor) -> None:
        pass

    def mlp_input(self, layer: int, x_mid: torch.Tensor) -> torch.Tensor:
        p = self._patched(x_mid, self.g.first_receiver(layer) + self.g.per_block - 1, 1)
        return x_mid if p is None else p[:, :, 0]

    def mlp(self, layer: int, out: torch.Tensor) -> None:
        pass

    def logits_input(self, x: torch.Tensor) -> torch.Tensor:
        rows = (self.recv == len(self.g.receivers) - 1).nonzero().flatten()
        last = x[:, -1:].clone()
        last[rows] += self.deltas[rows, -1:]
        return last


def _norm_vjp(em: EdgeModel, norm: Any, x: torch.Tensor, cot: torch.Tensor) -> torch.Tensor:
    """``J_norm(x)^T cot`` per receiver: ``x`` ``[R, S, d]``, ``cot`` ``[R, S, n, d]``.  With
    ``u = w * cot``: RMSNorm ``r u - (r^3 / d) x (u . x)``, ``r = (mean x^2 + eps)^-1/2``;
    LayerNorm ``(u - mean u - xh mean(u xh)) / sigma``, ``xh = (x - mean x) / sigma``."""
    kind = em.f.paths.norm
    eps = getattr(norm, "variance_epsilon", None)
    eps = norm.eps if eps is None else eps
    x = x.detach()[:, :, None]
    u = cot * norm.weight.detach()
    if kind == "rms":
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return r * u - (r.pow(3) / x.shape[-1]) * x * (u * x).sum(-1, keepdim=True)
    if kind == "layer":
        xc = x - x.mean(-1, keepdim=True)
        inv = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
        xh = xc * inv
        return inv * (u - u.mean(-1, keepdim=True) - xh * (u * xh).mean(-1, keepdim=True))
    raise ValueError(f"no norm Jacobian for {kind!r} norms (family {em.f.family!r})")


def receiver_gradients(em: EdgeModel, cap: Capture, grads: list[torch.Tensor | None], start: int = 0,
                       positions: torch.Tensor | None = None
                       ) -> tuple[list[torch.Tensor | None], torch.Tensor, dict[tuple[str, int], torch.Tensor]]:
    """From a gradient run's ``grads`` (of ``cap.tensors``): per block (``None`` before
    ``start``) the receivers' input gradients ``[R, S', per_block, d]`` (queries, keys, values,
    MLP, the graph's order), the logits receiver's ``[R, S', d]``, and the gradients at the
    senders' write points ``{("input" | "attn_out" | "mlp_out", layer): [R, S', d]}``, at
    ``positions`` only (``S'`` of them; default every position)."""
    g, f = em.graph, em.f
    pick = (lambda t: t) if positions is None else (lambda t: t[:, positions])  # noqa: E731
    got = {k: (t if t is None else pick(t.detach())) for k, t in zip(cap.keys, grads)}
    norm_in = {k: pick(v) for k, v in cap.norm_in.items()}
    ref = next(t for t in got.values() if t is not None)
    zero = lambda shape: ref.new_zeros(shape)  # noqa: E731  (a tensor no gradient reached)
    r, s = ref.shape[:2]
    blocks: list[torch.Tensor | None] = [None] * f.n_layers
    for layer in range(start, f.n_layers):
        w, norm1, norm2 = em.weights(layer), *em.blocks.norms(layer)
        n_att = g.per_block - 1
        if ("attn", layer) in norm_in:
            cots = []
            for kind in "qkv":
                gk = got.get((kind, layer))
                gk = zero((r, s, f.n_heads, f.d_head)) if gk is None else gk
                weight = w[kind][0]
                if kind != "q" and g.grouped:  # the shared key/value head: its query heads' sum
                    gk = gk.view(r, s, f.n_kv_heads, em.rep, f.d_head).sum(3)
                elif kind != "q" and weight.shape[0] != f.n_heads:
                    weight = weight.repeat_interleave(em.rep, 0)
                cots.append(torch.einsum("rsnk,nkd->rsnd", gk, weight))
            pre = _norm_vjp(em, norm1, norm_in[("attn", layer)], torch.cat(cots, 2))
        else:  # the block's attention output was given: its receivers read nothing
            pre = zero((r, s, n_att, f.d_model))
        gm = got.get(("mlp_in", layer))
        if gm is None or ("mlp", layer) not in norm_in:
            mlp = zero((r, s, 1, f.d_model))
        else:
            mlp = _norm_vjp(em, norm2, norm_in[("mlp", layer)], gm[:, :, None])
        blocks[layer] = torch.cat([pre, mlp], 2)
    nodes = {k: v for k, v in got.items() if k[0] in ("input", "attn_out", "mlp_out") and v is not None}
    return blocks, got[("final", f.n_layers)], nodes


def positions_used(delta: torch.Tensor) -> torch.Tensor:
    """Positions where any sender's difference ``delta`` ``[R, F, S, d]`` is non-zero (the others
    add exactly nothing to any score)."""
    return (delta != 0).flatten(3).any(3).any(1).any(0).nonzero().flatten()


def scores_from(em: EdgeModel, delta: torch.Tensor, blocks: list[torch.Tensor | None],
                logits: torch.Tensor, senders: slice = slice(None)) -> torch.Tensor:
    """``[F, B]``: ``sum over rows, positions, d of delta[u] . grad[v]`` for every edge u -> v
    (zero where no edge), from ``delta`` ``[R, F, S, d]`` and the receivers' gradients
    (``receiver_gradients``; ``None`` blocks are skipped); only senders in ``senders``."""
    g = em.graph
    r, n_f, s, dm = delta.shape
    out = delta.new_zeros(n_f, len(g.receivers))
    lo = senders.start or 0
    d2 = delta[:, senders].transpose(0, 1).reshape(-1, r * s * dm)  # [F', R*S*d], order (r, s, d)
    for layer, gl in enumerate(blocks):
        if gl is None:
            continue
        b0, pb = g.first_receiver(layer), g.per_block
        g2 = gl.permute(0, 1, 3, 2).reshape(r * s * dm, pb)
        for prev, cols in ((g.head_index(layer, 0), slice(0, pb - 1)), (g.mlp_index(layer), slice(pb - 1, pb))):
            hi = min(prev, lo + d2.shape[0])
            if hi > lo:
                out[lo:hi, b0 + cols.start: b0 + cols.stop] = d2[: hi - lo] @ g2[:, cols]
    out[lo: lo + d2.shape[0], -1] = d2 @ logits.reshape(r * s * dm)
    return out * em.graph.real.to(out.device)


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
