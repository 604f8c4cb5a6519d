"""A model's forward pass as its edge graph sees it (``helpers.base.edge_graph``): every receiver
may read its own residual stream.  GPT-2 and Llama-style models (``fastpatch.supports_fast_path``),
in plain PyTorch outside any trace, on the model's own submodules (``fastpatch.Blocks``).

Per block L (rows ``R``, positions ``S``, ``[R, S, ...]`` tensors; x the stream before the block):

* each query head h projects its own input ``X[h]`` (``[R, S, n, d_model]``, n = heads), or the
  shared stream x when none is given: ``q_h = norm_L(X[h]) W_Q[h] + b``; keys and values alike,
  with one input per query head (the key/value head of its group applied to it: grouped-query
  attention ungrouped, MIB's receivers) or per key/value head (``EdgeGraph(kv="kv")``).  Without
  inputs the projections are the model's own modules applied to ``norm_L(x)``;
* q/k norms (Qwen3) and rotary positions as the model does them, causal softmax attention with one
  key and value per query head (``Blocks.attend`` of an anatomy with ``n_kv_heads = n_heads``);
* head h's output (a sender) is ``z_h W_O[h]`` ``[R, S, d_model]``, its slice of the output
  projection without the bias; the stream gets ``o_proj(z)``;
* the MLP reads its own input (default: the stream after the attention) through its norm;
* ``logits``: the final norm and unembedding of the final stream (or of its own input) at the
  last position.

The ``input`` sender is the token embedding (``get_input_embeddings()``); what else block 0
reads (GPT-2's position embeddings) is a constant of the run, as are the output projections'
biases: the senders are TransformerLens's ``hook_embed``, ``attn.hook_result`` and
``hook_mlp_out``, which MIB's graph uses.  A *policy* (``helpers.engine.edge_runs``) builds the
receivers' inputs and sees every sender's output as the run makes it.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch

from helpers.base.edge_graph import EdgeGraph
from helpers.engine.fastpatch import Blocks, supports_fast_path
from helpers.models.loaded import ModelHandle

__all__ = ["EdgeModel", "Capture", "check_edge_support"]


def check_edge_support(mh: ModelHandle, seq: int) -> None:
    """Edge methods run GPT-2 and Llama-style models locally; anything else gets a clear error."""
    if mh.remote:
        raise ValueError("edge attribution and edge ablation run on a local model only: load it "
                         "without remote=")
    if not supports_fast_path(mh, seq):
        raise ValueError(f"edge attribution and edge ablation support GPT-2 and Llama-style models "
                         f"(Llama, SmolLM2, Qwen2/3, Mistral within its sliding window); this is a "
                         f"{mh.anatomy.family!r} model on {seq} tokens")


def _rows(module: Any) -> torch.Tensor:
    """A projection's weight as ``[out, in]`` (transformers' GPT-2 ``Conv1D`` stores ``[in, out]``)."""
    return module.weight if isinstance(module, torch.nn.Linear) else module.weight.T


class Capture:
    """What a gradient run keeps: tensors to differentiate with respect to, in order, and the
    norm inputs (detached) their receivers' gradients are carried back through."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []
        self.keys: list[tuple[str, int]] = []
        self.norm_in: dict[tuple[str, int], torch.Tensor] = {}

    def add(self, key: tuple[str, int], tensor: torch.Tensor) -> None:
        self.keys.append(key)
        self.tensors.append(tensor)


class EdgeModel:
    """The model's blocks for edge runs (module docstring).  ``graph`` fixes the key/value mode."""

    def __init__(self, mh: ModelHandle, graph: EdgeGraph):
        f = mh.anatomy
        self.mh, self.f, self.graph = mh, f, graph
        self.blocks = Blocks(mh.hf, replace(f, n_kv_heads=f.n_heads))  # one key/value per query head
        self.rep = f.n_heads // f.n_kv_heads
        self.gpt2 = f.family == "gpt2"
        self._weights: dict[int, dict[str, Any]] = {}
        self._const: dict[int, torch.Tensor] = {}

    # ---------------------------------------------------------------- weights
    def weights(self, layer: int) -> dict[str, Any]:
        """Per head: ``"q"`` / ``"k"`` / ``"v"``: (W ``[n, d_head, d_model]``, bias ``[n, d_head]``
        or None), n query or key/value heads; ``"o"``: W_O ``[n_heads, d_model, d_head]``."""
        if layer not in self._weights:
            f, hf, out = self.f, self.mh.hf, {}
            for kind in "qkv":
                mod = f.qkv_module(hf, layer, kind)
                n = f.n_heads if kind == "q" else f.n_kv_heads
                cols = torch.stack([torch.arange(c.start, c.stop) for c in
                                    (f.qkv_columns(kind, h) for h in range(n))])
                w, b = _rows(mod).detach(), mod.bias
                out[kind] = (w[cols], None if b is None else b.detach()[cols], cols)
            w_o = _rows(f.o_proj(hf, layer)).detach()  # [d_model, n_heads * d_head]
            out["o"] = w_o.view(f.d_model, f.n_heads, f.d_head).permute(1, 0, 2)
            self._weights[layer] = out
        return self._weights[layer]

    # ---------------------------------------------------------------- embeddings
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The ``input`` sender: token embeddings ``[R, S, d_model]``."""
        return self.mh.hf.get_input_embeddings()(ids.to(self.f.device))

    def constant(self, seq: int) -> torch.Tensor:
        """What block 0 reads besides the token embeddings (GPT-2: position embeddings)
        ``[1, seq, d_model]``: block 0's input minus the token embeddings, from one traced row."""
        if seq not in self._const:
            mh = self.mh
            ids = torch.zeros(1, seq, dtype=torch.long)
            first = self.f.block(mh.model, 0)
            with torch.no_grad(), mh.model.trace(ids.to(mh.device), use_cache=False, logits_to_keep=1):
                x0 = first.input.clone().save()
            self._const[seq] = (x0 - self.embed(ids)).detach()
        return self._const[seq]

    # ---------------------------------------------------------------- one block
    def qkv(self, layer: int, x: torch.Tensor, inputs: dict[str, torch.Tensor] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``[R, S, n_heads, d_head]`` (one key and value per query head),
        before q/k norms and rotary positions, from the stream ``x`` ``[R, S, d_model]`` or the
        receivers' own ``inputs[kind]`` ``[R, S, n, d_model]``."""
        f, norm = self.f, self.blocks.norms(layer)[0]
        w, fused = self.weights(layer), len(f.paths.qkv) == 1
        h = projected = None
        out = []
        for kind in "qkv":
            own = None if inputs is None else inputs.get(kind)
            weight, bias, cols = w[kind]
            if own is None:  # the model's own projection of the shared stream
                h = norm(x) if h is None else h
                if projected is None or not fused:
                    projected = f.qkv_module(self.mh.hf, layer, kind)(h)
                t = projected[..., cols]  # [R, S, n, d_head]
            else:
                if own.shape[2] == f.n_heads and weight.shape[0] != f.n_heads:  # ungrouped k/v
                    weight = weight.repeat_interleave(self.rep, 0)
                    bias = None if bias is None else bias.repeat_interleave(self.rep, 0)
                t = torch.einsum("rsnd,nkd->rsnk", norm(own), weight)
                t = t if bias is None else t + bias
            if t.shape[2] != f.n_heads:
                t = t.repeat_interleave(self.rep, 2)
            out.append(t)
        return out[0], out[1], out[2]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``z`` ``[R, S, n_heads * d_head]``: q/k norms, rotary positions, causal attention."""
        attn = self.f.attn(self.mh.hf, layer)
        if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head's vector
            q, k = attn.q_norm(q), attn.k_norm(k)
        seq = q.shape[1]
        if not self.gpt2:
            pos = torch.arange(seq, device=q.device)[None]
            cos, sin = self.blocks.rotary(q[:, :, 0], pos)
            q, k = self.blocks.rope(q, k, cos, sin, unsqueeze_dim=2)
        causal = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
        return self.blocks.attend(layer, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal)

    def head_outputs(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """The heads' outputs ``[R, n_heads, S, d_model]`` (senders ``a{L}.h{H}``)."""
        r, s, _ = z.shape
        return torch.einsum("rshk,hdk->rhsd", z.view(r, s, self.f.n_heads, self.f.d_head), self.weights(layer)["o"])

    # ---------------------------------------------------------------- the run
    def forward(self, x: torch.Tensor, policy: Any = None, start: int = 0,
                capture: Capture | None = None, override: tuple[str, int, torch.Tensor] | None = None,
                final_norm: Callable | None = None, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Last-position logits ``[R, vocab]`` (or of ``columns`` ``[R, k]``) of a run that starts
        from the stream ``x`` ``[R, S, d_model]`` before block ``start``.

        ``policy`` (optional) has ``attn_inputs(layer, x)`` -> ``{kind: [R, S, n, d]}`` or None,
        ``heads(layer, outputs [R, H, S, d])``, ``mlp_input(layer, x_mid)`` -> ``[R, S, d]``,
        ``mlp(layer, out)`` and ``logits_input(x)``.  ``override`` = ("attn", L, out) or
        ("mlp", L, out) replaces block L's attention output (``[R, S, d_model]``, after the
        output projection: its receivers are then not computed) or its MLP output.  ``capture`` collects
        q/k/v, the MLP inputs (after the norm), the attention and MLP outputs and the final stream
        for a gradient run.  ``final_norm`` replaces the final norm."""
        for layer in range(start, self.f.n_layers):
            if override is not None and override[:2] == ("attn", layer):
                attn_out = override[2]  # the whole block's attention output, given
            else:
                inputs = policy.attn_inputs(layer, x) if policy is not None else None
                q, k, v = self.qkv(layer, x, inputs)
                if capture is not None:
                    capture.norm_in[("attn", layer)] = x.detach()
                    for kind, t in zip("qkv", (q, k, v)):
                        capture.add((kind, layer), t)
                z = self.attend(layer, q, k, v)
                if policy is not None:
                    policy.heads(layer, self.head_outputs(layer, z))
                attn_out = self.f.o_proj(self.mh.hf, layer)(z)
            if capture is not None:
                capture.add(("attn_out", layer), attn_out)
            x_mid = x + attn_out
            mlp_in = policy.mlp_input(layer, x_mid) if policy is not None else x_mid
            if override is not None and override[:2] == ("mlp", layer):
                mlp_out = override[2]
            elif capture is not None:
                capture.norm_in[("mlp", layer)] = mlp_in.detach()
                mlp_out = self.blocks.mlp(layer, mlp_in, edit=lambda t, L=layer: capture.add(("mlp_in", L), t))
            else:
                mlp_out = self.blocks.mlp(layer, mlp_in)
            if policy is not None:
                policy.mlp(layer, mlp_out)
            if capture is not None:
                capture.add(("mlp_out", layer), mlp_out)
            x = x_mid + mlp_out
        final = policy.logits_input(x) if policy is not None else x
        if capture is not None:
            capture.add(("final", self.f.n_layers), final)
        return self.blocks.logits(final[:, -1], columns, final_norm)


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
