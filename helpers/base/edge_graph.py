"""The edge graph of a transformer, named as the Mechanistic Interpretability Benchmark names it.

MIB (Mueller et al. 2025, arXiv 2504.13151, circuit track; its code: ``hannamw/MIB-circuit-track``
with ``hannamw/EAP-IG``'s ``eap/graph.py``) splits a sequential-residual transformer into
**nodes** that write to the residual stream and **receivers** that read from it:

* senders (MIB's "forward" nodes), in forward order: ``input`` (the token embeddings), every
  attention head ``a{L}.h{H}`` (its slice of the output projection, without the projection's
  bias) and every MLP ``m{L}``;
* receivers (MIB's "backward" nodes): each head's query, key and value input ``a{L}.h{H}<q>`` /
  ``<k>`` / ``<v>`` (the residual stream as that head reads it, *before* the block's norm), each
  MLP's input ``m{L}`` (before its norm) and ``logits`` (the final residual stream, before the
  final norm);
* an **edge** ``u->v`` exists when sender u writes before receiver v reads: a head's q/k/v read
  ``input`` and every head and MLP of earlier blocks; an MLP also reads its own block's heads;
  ``logits`` reads every sender.  Names: ``input->a0.h0<q>``, ``a0.h3->m0``, ``m1->logits``.

Grouped-query attention (``n_kv_heads < n_heads``): key/value head g serves query heads
``g * n_heads // n_kv_heads`` up to the next group.  Two edge definitions, chosen by ``kv``:

* ``kv="query"`` (MIB, which scores such models with TransformerLens's
  ``ungroup_grouped_query_attention``): a receiver per **query head**, ``a3.h1<k>`` being the keys
  *as query head 1 reads them* (as if every query head had its own copy of its group's key/value
  head).  The model's graph is then the same as an ungrouped model's;
* ``kv="kv"``: a receiver per **key/value head**, ``a3.kv0<k>`` / ``a3.kv0<v>``: the shared key /
  value input itself, what ``helpers.path_patch`` patches as ``L3KV0.k``.  Its edge's effect is the
  joint one over every query head of the group (to first order the sum of the ``kv="query"``
  edges of those heads).  Not a graph MIB reads: export uses ``kv="query"``.

Indices follow MIB's ``Graph``: sender ``input`` 0, ``a{L}.h{H}`` ``1 + L*(H+1) + H``, ``m{L}``
``1 + L*(H+1) + n_heads``; receivers per block: the queries of every head, then the keys, the
values, then the MLP, and ``logits`` last.  Edges are listed in the order MIB's ``Graph.from_model``
adds them (and writes them to its circuit JSON).  This module only names and indexes: it runs no
model.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["EdgeGraph", "KV_MODES", "node_of"]

KV_MODES = ("query", "kv")


def node_of(receiver: str) -> str:
    """The node a receiver belongs to: ``"a3.h1<k>"`` -> ``"a3.h1"``; ``"m2"`` and ``"logits"``
    stay as they are (``"a3.kv0<k>"`` -> ``"a3.kv0"``)."""
    return receiver.split("<", 1)[0]


@dataclass(frozen=True)
class EdgeGraph:
    """The senders, receivers and edges of a model with these shapes (module docstring).

    ``senders`` (F names), ``receivers`` (B names) and ``edges`` (E names, MIB's order);
    ``edge_sender`` / ``edge_receiver`` ``[E]`` index them; ``real`` ``[F, B]`` marks the pairs
    that are edges.  ``receiver_kind[b]`` is ``"q"``, ``"k"``, ``"v"``, ``"mlp"`` or ``"logits"``,
    ``receiver_layer[b]`` its block (``n_layers`` for ``logits``) and ``receiver_head[b]`` its
    (query or key/value) head; ``reads[b]`` the number of senders before it (senders
    ``0 .. reads[b] - 1`` reach it)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    kv: str = "query"
    d_model: int = 0

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "n_kv_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.kv not in KV_MODES:
            raise ValueError(f"kv must be 'query' (a receiver per query head, MIB's graph) or 'kv' "
                             f"(a receiver per key/value head, as path_patch's L3KV0.k), got {self.kv!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{self.n_heads} query heads cannot share {self.n_kv_heads} key/value "
                             "heads evenly")

    @classmethod
    def of(cls, anatomy: Any, kv: str = "query") -> "EdgeGraph":
        """The graph of a model's anatomy (anything with ``n_layers``, ``n_heads``,
        ``n_kv_heads``, ``d_model``)."""
        return cls(int(anatomy.n_layers), int(anatomy.n_heads), int(anatomy.n_kv_heads), kv,
                   int(anatomy.d_model))

    # ------------------------------------------------------------------ shapes
    @property
    def grouped(self) -> bool:
        """True when key/value receivers are per key/value head (``kv="kv"`` on a GQA model)."""
        return self.kv == "kv" and self.n_kv_heads < self.n_heads

    @property
    def n_kv_receivers(self) -> int:
        """Key (and value) receivers per block: ``n_kv_heads`` when grouped, else ``n_heads``."""
        return self.n_kv_heads if self.grouped else self.n_heads

    @property
    def per_block(self) -> int:
        """Receivers per block: queries, keys, values, the MLP."""
        return self.n_heads + 2 * self.n_kv_receivers + 1

    @property
    def cfg(self) -> dict[str, Any]:
        """MIB's ``cfg`` block: ``n_layers``, ``n_heads``, ``parallel_attn_mlp``, ``d_model``."""
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "parallel_attn_mlp": False,
                "d_model": self.d_model}

    def head_index(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_index(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def first_receiver(self, layer: int) -> int:
        """Index of block ``layer``'s first receiver (its head 0 query); ``n_layers``: logits."""
        return layer * self.per_block

    # ------------------------------------------------------------------ names
    @functools.cached_property
    def senders(self) -> list[str]:
        out = ["input"]
        for layer in range(self.n_layers):
            out += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return out

    @functools.cached_property
    def nodes(self) -> list[str]:
        """MIB's node list: the senders, then ``logits``."""
        return self.senders + ["logits"]

    @functools.cached_property
    def _receiver_table(self) -> list[tuple[str, str, int, int | None]]:
        """(name, kind, layer, head) of every receiver, in index order."""
        out = []
        kvh = "kv" if self.grouped else "h"
        for layer in range(self.n_layers):
            out += [(f"a{layer}.h{h}<q>", "q", layer, h) for h in range(self.n_heads)]
            for kind in "kv":
                out += [(f"a{layer}.{kvh}{g}<{kind}>", kind, layer, g) for g in range(self.n_kv_receivers)]
            out.append((f"m{layer}", "mlp", layer, None))
        return out + [("logits", "logits", self.n_layers, None)]

    @property
    def receivers(self) -> list[str]:
        return [r[0] for r in self._receiver_table]

    @property
    def receiver_kind(self) -> list[str]:
        return [r[1] for r in self._receiver_table]

    @property
    def receiver_layer(self) -> list[int]:
        return [r[2] for r in self._receiver_table]

    @property
    def receiver_head(self) -> list[int | None]:
        return [r[3] for r in self._receiver_table]

    @functools.cached_property
    def reads(self) -> list[int]:
        """Per receiver: how many senders precede it."""
        out = []
        for _, kind, layer, _ in self._receiver_table:
            if kind == "logits":
                out.append(len(self.senders))
            elif kind == "mlp":
                out.append(self.mlp_index(layer))
            else:
                out.append(self.head_index(layer, 0))
        return out

    @functools.cached_property
    def _edge_table(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Edge names and (sender, receiver) indices, in MIB's ``Graph.from_model`` order."""
        names, snd, rcv = [], [], []
        table = self._receiver_table
        for layer in range(self.n_layers):
            first = self.first_receiver(layer)
            attn = list(range(first, first + self.per_block - 1))
            if not self.grouped:  # MIB: per sender, per head, q then k then v
                h, n = self.n_heads, self.n_heads
                attn = [first + kind * n + head for head in range(h) for kind in range(3)]
            for s in range(self.head_index(layer, 0)):
                for b in attn:
                    names.append(f"{self.senders[s]}->{table[b][0]}")
                    snd.append(s)
                    rcv.append(b)
            mlp = first + self.per_block - 1
            for s in range(self.mlp_index(layer)):
                names.append(f"{self.senders[s]}->{table[mlp][0]}")
                snd.append(s)
                rcv.append(mlp)
        for s in range(len(self.senders)):
            names.append(f"{self.senders[s]}->logits")
            snd.append(s)
            rcv.append(len(table) - 1)
        return names, torch.tensor(snd), torch.tensor(rcv)

    @property
    def edges(self) -> list[str]:
        return self._edge_table[0]

    @property
    def edge_sender(self) -> torch.Tensor:
        return self._edge_table[1]

    @property
    def edge_receiver(self) -> torch.Tensor:
        return self._edge_table[2]

    @functools.cached_property
    def edge_position(self) -> dict[str, int]:
        """Edge name -> its index in ``edges``."""
        return {name: i for i, name in enumerate(self.edges)}

    @functools.cached_property
    def real(self) -> torch.Tensor:
        """``[F, B]`` bool: True where sender -> receiver is an edge."""
        out = torch.zeros(len(self.senders), len(self.receivers), dtype=torch.bool)
        out[self.edge_sender, self.edge_receiver] = True
        return out

    def edge_nodes(self) -> tuple[list[str], list[str]]:
        """(sender node, receiver node) of every edge: ``a0.h1->a2.h0<q>`` gives
        ``("a0.h1", "a2.h0")``."""
        rec = [node_of(r) for r in self.receivers]
        return ([self.senders[int(s)] for s in self.edge_sender],
                [rec[int(b)] for b in self.edge_receiver])

    def edge_indices(self, names: Any) -> torch.Tensor:
        """Indices ``[k]`` of edge names (a clear error names the first unknown one)."""
        pos = self.edge_position
        names = [names] if isinstance(names, str) else list(names)
        bad = [n for n in names if n not in pos]
        if bad:
            kvh = "a3.kv0<k>" if self.grouped else "a3.h0<k>"
            raise ValueError(f"unknown edge {bad[0]!r} for this graph ({self.n_layers} blocks, "
                             f"{self.n_heads} heads, kv={self.kv!r}): write 'sender->receiver', e.g. "
                             f"'input->a0.h0<q>', 'a0.h1->m0', 'm1->logits' or 'input->{kvh}'")
        return torch.tensor([pos[n] for n in names], dtype=torch.long)

    def describe(self) -> str:
        return (f"{len(self.senders)} senders, {len(self.receivers)} receivers, {len(self.edges)} "
                f"edges ({self.n_layers} blocks x {self.n_heads} heads"
                + (f", {self.n_kv_heads} key/value heads, kv={self.kv!r})" if self.n_kv_heads < self.n_heads else ")"))


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
