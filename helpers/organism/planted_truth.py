"""The planted circuit of ``ioi-planted`` as a graph in MIB's naming (Mueller et al. 2025):
nodes ``input``, ``a{L}.h{H}``, ``m{L}``, ``logits``; edges ``src->dst`` with ``<q>``/``<k>``/``<v>``
when the receiver is a head.  Written beside the weights as ``ground_truth.json`` by the training
script (``train_planted``); ``planted/MODEL_CARD.md`` explains every class.

Every node and every edge of the model's full graph is listed, each with ``in_graph`` (the
positives of the strict circuit) and a ``class``:

* ``"core"`` (``in_graph: true``): carries prompt-specific information on the planted route
  (which name is the subject S, the names' tokens, IO's token).  S2-swap pairs exercise the
  route into the duplicate-token head's query and on to the logits; answer-swap pairs (names
  exchanged everywhere) also the token edges into its value and the movers' keys and values.
* ``"routing"``: part of the planted computation, but carries only what every prompt of a
  template shares (where S2 is, "this is END"), so it is the same in both runs of any name
  counterfactual and patching cannot see it.  ``in_graph: false``.
* ``"backup"``: the backup name mover's route; silent on a clean run, it answers when the name
  mover is mean-ablated.  ``in_graph: false``, ``backup: true``: count these as positives or not.
* ``"negative"``: the negative name mover's route (it lowers the logit difference): ``in_graph:
  true`` (its effect is real and measured), ``sign: -1``.
* ``"decoy"``: attends like a name mover but has no effect: a planted *negative*; never
  ``in_graph``.
* ``null``: not part of the planted circuit.

``scores`` give each edge 1.0 when ``in_graph`` else 0.0 (MIB's file has a score per edge).
"""
from __future__ import annotations

from helpers.organism.planted_data import CAST, D_MODEL, N_HEAD, N_LAYER


def _head(role: str) -> str:
    (layer, head), = CAST[role]
    return f"a{layer}.h{head}"


def _layer(role: str) -> int:
    return CAST[role][0][0]


def node_roles() -> dict[str, tuple[str, str]]:
    """node -> (class, role) for the planted nodes."""
    roles = {"input": ("core", "input"), "logits": ("core", "logits")}
    for role, klass in (("duplicate_token", "core"), ("s_inhibition", "core"),
                        ("name_mover", "core"), ("negative_name_mover", "negative"),
                        ("backup_name_mover", "backup"), ("decoy", "decoy")):
        roles[_head(role)] = (klass, role)
    roles[f"m{_layer('name_mover')}"] = ("backup", "backup_gate")
    return roles


def edge_roles() -> dict[str, tuple[str, str]]:
    """edge -> (class, what it carries) for the planted edges."""
    dt, si, nm = _head("duplicate_token"), _head("s_inhibition"), _head("name_mover")
    neg, bk, dec = _head("negative_name_mover"), _head("backup_name_mover"), _head("decoy")
    gate = f"m{_layer('name_mover')}"
    return {
        # duplicate token: at S2, attends to the earlier copy of its own token (S1) and copies it
        f"input->{dt}<q>": ("core", "S2's token, matched against the earlier tokens"),
        f"input->{dt}<k>": ("core", "the earlier names' tokens (S1 matches S2)"),
        f"input->{dt}<v>": ("core", "S1's token: which name is the subject S"),
        # S-inhibition: at END, attends S2 and copies which name is S
        f"{dt}->{si}<v>": ("core", "which name is S, written at S2"),
        f"input->{si}<q>": ("routing", "END's query for the subject's second mention"),
        f"input->{si}<k>": ("routing", "where S2 is (the last name)"),
        # name mover: at END, attends the name that is not S and copies it
        f"{si}->{nm}<q>": ("core", "which name is S: the one not to attend"),
        f"input->{nm}<k>": ("core", "the names' tokens at the keys"),
        f"input->{nm}<v>": ("core", "IO's token"),
        f"{nm}->logits": ("core", "+IO"),
        # negative name mover: the same route, the opposite sign
        f"{si}->{neg}<q>": ("negative", "which name is S"),
        f"input->{neg}<k>": ("negative", "the names' tokens at the keys"),
        f"input->{neg}<v>": ("negative", "IO's token"),
        f"{neg}->logits": ("negative", "-IO"),
        # backup name mover: gated by the name mover's output, otherwise a name mover
        f"{si}->{bk}<q>": ("backup", "which name is S"),
        f"{nm}->{gate}": ("backup", "the name mover's output (present or not)"),
        f"{gate}->{bk}<q>": ("backup", "the gate: while the name mover writes, attend away from the names"),
        f"input->{bk}<k>": ("backup", "the names' tokens at the keys"),
        f"input->{bk}<v>": ("backup", "IO's token"),
        f"{bk}->logits": ("backup", "+IO when the name mover is gone"),
        # decoy: attends like a name mover, its output is not used
        f"{si}->{dec}<q>": ("decoy", "which name is S (attention only)"),
        f"input->{dec}<k>": ("decoy", "the names' tokens at the keys (attention only)"),
        f"input->{dec}<v>": ("decoy", "IO's token, written where nothing reads it"),
        f"{dec}->logits": ("decoy", "nothing (no effect)"),
    }


def all_nodes() -> list[str]:
    out = ["input"]
    for layer in range(N_LAYER):
        out += [f"a{layer}.h{h}" for h in range(N_HEAD)] + [f"m{layer}"]
    return out + ["logits"]


def all_edges() -> list[str]:
    """MIB's edges of a sequential-residual GPT-2: every earlier node into each head's q/k/v,
    each MLP (also its own block's heads) and the logits."""
    edges = []
    for layer in range(N_LAYER):
        earlier = ["input"] + [n for L in range(layer) for n in
                               [f"a{L}.h{h}" for h in range(N_HEAD)] + [f"m{L}"]]
        for h in range(N_HEAD):
            edges += [f"{s}->a{layer}.h{h}<{x}>" for x in "qkv" for s in earlier]
        edges += [f"{s}->m{layer}" for s in earlier + [f"a{layer}.h{h}" for h in range(N_HEAD)]]
    senders = ["input"] + [n for L in range(N_LAYER) for n in
                           [f"a{L}.h{h}" for h in range(N_HEAD)] + [f"m{L}"]]
    return edges + [f"{s}->logits" for s in senders]


def ground_truth() -> dict:
    """The planted graph (MIB layout plus classes and roles) as a JSON-ready dict."""
    nodes, edges = node_roles(), edge_roles()
    in_graph = {"core", "negative"}
    unknown = set(edges) - set(all_edges())
    if unknown:
        raise ValueError(f"planted edges not in the model's graph: {sorted(unknown)}")
    out_nodes = {}
    for n in all_nodes():
        klass, role = nodes.get(n, (None, None))
        out_nodes[n] = {"in_graph": klass in in_graph, "class": klass, "role": role,
                        "backup": klass == "backup", "sign": -1 if klass == "negative" else
                        (1 if klass in in_graph else 0)}
    out_edges = {}
    for e in all_edges():
        klass, carries = edges.get(e, (None, None))
        out_edges[e] = {"score": 1.0 if klass in in_graph else 0.0, "in_graph": klass in in_graph,
                        "class": klass, "carries": carries, "backup": klass == "backup",
                        "sign": -1 if klass == "negative" else (1 if klass in in_graph else 0)}
    return {
        "cfg": {"n_layers": N_LAYER, "n_heads": N_HEAD, "parallel_attn_mlp": False,
                "d_model": D_MODEL},
        "model": "ioi-planted",
        "roles": {role: [f"a{L}.h{H}" for L, H in heads] for role, heads in CAST.items()},
        "classes": {
            "core": "positive: carries prompt-specific information on the planted route",
            "negative": "positive with sign -1: the negative name mover's route",
            "routing": "planted but template-only (same in both runs of a name counterfactual); "
                       "in_graph false",
            "backup": "silent on a clean run, answers when the name mover is mean-ablated; "
                      "in_graph false, backup true",
            "decoy": "attends END -> IO like a name mover but has no effect; a planted negative",
        },
        "nodes": out_nodes,
        "edges": out_edges,
    }
