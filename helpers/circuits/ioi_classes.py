"""Finding a model's IOI circuit the way Wang et al. (2022) did, with every head class decided by a
number stated before the search.

**Head classes** (``CLASSES``; Wang et al. section 3).  A head belongs to a class when both of its
criteria hold, each against one threshold for every class:

* **attention**: the head's mean attention weight (clean prompts) from the position where the class
  writes to the token the class reads, at least ``min_attention`` (default 0.3);
* **effect**: its effect through the route the class is defined by, as a share of the clean -
  corrupted gap of the logit difference (denoising path patching: 1 = the whole gap), at least
  ``min_share`` (default 0.05), with the class's sign:

  ====================  ============  =========  ===================================================
  class                 writes at     attends    effect (share of the gap)
  ====================  ============  =========  ===================================================
  name mover            END           IO         direct path to the logits, positive
  negative name mover   END           IO         direct path to the logits, negative
  S-inhibition          END           S2         paths into the name movers' queries at END, summed
  induction             S2            S1+1       paths into the S-inhibition heads' values at S2
  duplicate token       S2            S1         paths into the S-inhibition heads' values at S2
  previous token        S1+1          S1         paths into the induction heads' keys at S1+1
                                                 (ABC pairs, noising: share of the clean run destroyed)
  backup name mover     END           IO         rise of its direct logit attribution when the
                                                 name movers are mean-ablated
  ====================  ============  =========  ===================================================

  (``attention`` for backup name movers is read with the name movers ablated, and a head that is
  already a name mover or a negative name mover is not counted as a backup.)  The search is
  staged: each route needs the class found before it; when a stage finds no head (in blocks 1 and
  later), ``stage`` lets the strongest candidate stand in and prints that it does.

``GPT2_SMALL`` is Wang et al.'s published circuit of GPT-2 small (12 blocks x 12 heads), as in
ARENA's IOI chapter.  The measurements (attention along the routes, direct logit attribution,
the backup test) live in ``helpers.circuits.readouts`` and are re-exported here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from helpers.base.fmt import head_name, parse_head
from helpers.base.validate import norm_index
from helpers.circuits.behaviour import Behaviour, behaviour
from helpers.circuits.evaluation import compare_ablations
from helpers.circuits.pooled import N_BOOT, PairGroups, Pooled, pair_groups
from helpers.circuits.search import FaithfulSearch, faithfulness_table, greedy_faithful
from helpers.circuits.roles import (BackupTest, ablation_table, backup_by_template, head_roles,
                                    knockout_table, share_definitions)
from helpers.circuits.stages import (PooledReadout, candidates, decide, evidence_table, group_matters,
                                     group_paths, joint_receiver,
                                     pooled_ablation, pooled_attention, pooled_dla, pooled_path_table,
                                     pooled_paths, pooled_readout, random_sets, unexplained)
from helpers.methods.ablations import AblationKind
from helpers.circuits.readouts import (ROUTES, Backup, attention_to_roles, backup_test,
                                       direct_logit_attribution, pairs_logit_diff)
from helpers.engine.runs import Patch
from helpers.methods.sweeps import sweep
from helpers.models.loaded import handle
from helpers.results.patch_result import PatchResult

__all__ = ["CLASSES", "GPT2_SMALL", "HeadClass", "Behaviour", "behaviour", "classify", "criteria_table",
           "compare_circuits", "gpt2_comparison", "head_grid", "heads_by_position", "members", "top_heads", "unclassified", "pick_head", "receivers", "stage",
           "CLASS",
           # re-exported, so a chapter finds the whole search in one place: helpers.circuits.readouts,
           # .pooled, .stages, .behaviour and the greedy faithfulness search
           "ROUTES", "Backup", "attention_to_roles", "backup_test", "direct_logit_attribution",
           "pairs_logit_diff", "N_BOOT", "PairGroups", "Pooled", "pair_groups", "candidates", "decide",
           "joint_receiver", "pooled_ablation", "pooled_attention", "pooled_dla", "pooled_paths",
           "pooled_path_table", "pooled_readout", "PooledReadout", "random_sets", "FaithfulSearch",
           "greedy_faithful", "faithfulness_table", "BackupTest", "ablation_table", "backup_by_template", "head_roles",
           "knockout_table", "share_definitions", "group_paths", "unexplained", "group_matters",
           "evidence_table"]

GPT2_SMALL = {  # Wang et al. 2022, Figure 2 (GPT-2 small, 12 blocks): (block, head)
    "name mover": [(9, 9), (10, 0), (9, 6)],
    "backup name mover": [(10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9)],
    "negative name mover": [(10, 7), (11, 10)],
    "S-inhibition": [(7, 3), (7, 9), (8, 6), (8, 10)],
    "induction": [(5, 5), (5, 8), (5, 9), (6, 9)],
    "duplicate token": [(0, 1), (0, 10), (3, 0)],
    "previous token": [(2, 2), (4, 11)],
}
GPT2_SMALL_LAYERS = 12

@dataclass(frozen=True)
class HeadClass:
    """A class of heads: where it writes (``query``), what it attends (``key``), the effect that
    defines it (``effect``) and the effect's sign."""

    name: str
    query: str
    key: str
    effect: str
    sign: int = 1

    @property
    def route(self) -> str:
        return f"{self.query}->{self.key}"


CLASSES = (
    HeadClass("name mover", "END", "IO", "direct path to the logits"),
    HeadClass("negative name mover", "END", "IO", "direct path to the logits", -1),
    HeadClass("S-inhibition", "END", "S2", "paths into the name movers' queries @END"),
    HeadClass("induction", "S2", "S1+1", "paths into the S-inhibition values @S2"),
    HeadClass("duplicate token", "S2", "S1", "paths into the S-inhibition values @S2"),
    HeadClass("previous token", "S1+1", "S1", "paths into the induction keys @S1+1 (ABC, noising)"),
    HeadClass("backup name mover", "END", "IO", "rise of its direct logit attribution, name movers ablated"),
)


#: the classes by name
CLASS = {c.name: c for c in CLASSES}


def criteria_table(min_attention: float = 0.3, min_share: float = 0.05) -> Any:
    """The classes and their two criteria as a pandas ``DataFrame`` (one row per class)."""
    import pandas as pd

    rows = [{"class": c.name, "writes at": c.query, f"attends (>= {min_attention})": c.key,
             "effect (share of the gap)": f"{c.effect}, {'<= -' if c.sign < 0 else '>= '}{min_share}"}
            for c in CLASSES]
    return pd.DataFrame(rows).set_index("class")


def head_grid(result: PatchResult, normalise: bool = True, n_layers: int | None = None,
              n_heads: int | None = None) -> torch.Tensor:
    """A path-patching result with head senders as a ``[n_layers, n_heads]`` grid of its
    importance (``normalise``) or raw effect, **summed over receivers**; heads that were not
    senders (blocks at or after a receiver) are 0."""
    if result.dims == ("layer", "head"):
        grid = result.change(normalise)
        if n_layers is not None and grid.shape[0] < n_layers:
            grid = torch.cat([grid, grid.new_zeros(n_layers - grid.shape[0], grid.shape[1])])
        return grid
    if n_layers is None or n_heads is None:
        raise ValueError("give n_layers and n_heads for a sender x receiver result")
    change = result.change(normalise)  # [senders, receivers]
    grid = torch.zeros(n_layers, n_heads, dtype=change.dtype)
    for i, label in enumerate(result.labels["sender"]):
        layer, head = parse_head(label.partition("@")[0])
        grid[layer, head] += change[i].sum()
    return grid


def receivers(heads: Sequence[str], kind: Literal["q", "k", "v"], at: str | int, facts: Any
              ) -> list[str]:
    """Path-patching receiver names for ``heads``' ``kind`` input (``"q"``, ``"k"``, ``"v"``) at
    ``at`` (a role of the prompts, ``"END"``, ``"S2"``, or a token index: ``S1 + 1`` is not a role): ``["L23H0.q@END"]``; with grouped-query attention keys and
    values are the key/value head's (``"L20KV0.v@S2"``), each named once."""
    group = facts.n_heads // facts.n_kv_heads
    names: list[str] = []
    for h in heads:
        layer, head = parse_head(h)
        name = (f"L{layer}H{head}.{kind}" if kind == "q" or group == 1
                else f"L{layer}KV{head // group}.{kind}")
        if f"{name}@{at}" not in names:
            names.append(f"{name}@{at}")
    return names


def classify(attention: dict[str, torch.Tensor], shares: dict[str, torch.Tensor],
             min_attention: float = 0.3, min_share: float = 0.05, runners_up: int = 2) -> Any:
    """The evidence table: for each class in ``CLASSES`` with its effect in ``shares``
    (``{class name: [n_layers, n_heads]}``, share of the gap), every head meeting both criteria
    (``member`` True), the ``runners_up`` best heads that do not (by their effect in the class's
    direction) and, if not among them, the non-member (of any class) with the highest attention along the
    class's route, so an empty class shows the evidence that would have found one.
    ``attention``: ``attention_to_roles`` (and ``"backup:END->IO"`` for backup name movers, the
    attention with the name movers ablated).  Columns: class, head, attention, share, member."""
    import pandas as pd

    rows: list[dict] = []
    taken: set[str] = set()  # heads already in a class (first pass), not offered as others' misses
    for first_pass in (True, False):
        rows = _classify_pass(attention, shares, min_attention, min_share, runners_up, taken)
        if first_pass:
            taken = {r["head"] for r in rows if r["member"]}
    return pd.DataFrame(rows, columns=["class", "head", "attention", "share", "member"])


def _classify_pass(attention: dict, shares: dict, min_attention: float, min_share: float,
                   runners_up: int, taken: set[str]) -> list[dict]:
    rows = []
    for c in CLASSES:
        if c.name not in shares:
            continue
        share = shares[c.name].double()
        att = attention.get(f"backup:{c.route}" if c.name == "backup name mover" else c.route,
                            attention[c.route]).double()
        signed = share * c.sign
        member = (att >= min_attention) & (signed >= min_share)
        if c.name == "backup name mover":  # a head already moving names is not a backup
            for other in CLASSES[:2]:
                if other.name in shares:
                    member &= ~((attention[other.route].double() >= min_attention)
                                & (shares[other.name].double() * other.sign >= min_share))
        order = sorted(((L, h) for L in range(share.shape[0]) for h in range(share.shape[1])),
                       key=lambda lh: (-float(signed[lh]), lh))
        found = [lh for lh in order if member[lh]]
        near = [lh for lh in order if not member[lh]][:runners_up]
        by_att = sorted((lh for lh in order if not member[lh] and head_name(*lh) not in taken),
                        key=lambda lh: (-float(att[lh]), lh))
        if runners_up and by_att and by_att[0] not in near:  # and the best-attending non-member
            near.append(by_att[0])
        for (L, h) in found + near:
            rows.append({"class": c.name, "head": head_name(L, h), "attention": float(att[L, h]),
                         "share": float(share[L, h]), "member": bool(member[L, h])})
    return rows


def unclassified(table: Any, direct: torch.Tensor, min_share: float = 0.05) -> list[str]:
    """Heads whose direct path to the logits (``direct``: ``[n_layers, n_heads]``, share of the
    gap) is at least ``min_share`` in size but that are members of no class, strongest first."""
    known = set(table[table["member"]]["head"])
    flat = direct.double().flatten().abs()
    n_heads = direct.shape[1]
    return [head_name(i // n_heads, i % n_heads) for i in torch.argsort(-flat, stable=True).tolist()
            if flat[i] >= min_share and head_name(i // n_heads, i % n_heads) not in known]


def members(table: Any, name: str) -> list[str]:
    """The heads of class ``name`` in a ``classify`` table."""
    return list(table[(table["class"] == name) & table["member"]]["head"])


def gpt2_comparison(table: Any, n_layers: int, groups: dict[str, Sequence[str]] | None = None) -> Any:
    """Each class's members here beside GPT-2 small's (``GPT2_SMALL``), with the blocks as a
    fraction of depth ((block + 1) / n_layers: 1.0 = the last block); ``groups``: classes with no
    single member that are present as a group (class -> heads), listed as "... (as a group)"."""
    import pandas as pd

    def depth(blocks: Sequence[int], n: int) -> str:
        return "-" if not blocks else (f"{(min(blocks) + 1) / n:.2f}" if min(blocks) == max(blocks)
                                       else f"{(min(blocks) + 1) / n:.2f}-{(max(blocks) + 1) / n:.2f}")
    rows = []
    for c in CLASSES:
        here = members(table, c.name)
        grouped = not here and bool((groups or {}).get(c.name))
        here = here or list((groups or {}).get(c.name, []))
        theirs = [head_name(*lh) for lh in GPT2_SMALL[c.name]]
        rows.append({"class": c.name,
                     "this model": (", ".join(here) + (" (as a group)" if grouped else "")) or "none found",
                     "depth": depth([parse_head(h)[0] for h in here], n_layers),
                     "GPT-2 small": ", ".join(theirs),
                     "GPT-2 depth": depth([lh[0] for lh in GPT2_SMALL[c.name]], GPT2_SMALL_LAYERS)})
    return pd.DataFrame(rows).set_index("class")


def pick_head(direct: PatchResult, movers: Sequence[str], layer: int | None = None,
              normalise: bool = True) -> tuple[int, int]:
    """The head to read by hand: the strongest name mover by direct path (``direct``: every head
    -> logits), or the head with the largest direct path of block ``layer``, or of the whole
    model when there is no name mover.  Returns ``(block, head)``."""
    grid = direct.change(normalise)
    if layer is not None:

        layer = norm_index(layer, grid.shape[0], "layer", "blocks in this model")
        return layer, int(grid[layer].argmax())
    cands = [parse_head(h) for h in movers] or [divmod(int(grid.flatten().argmax()), grid.shape[1])]
    return max(cands, key=lambda lh: (float(grid[lh]), -lh[0], -lh[1]))


def stage(found: Sequence[str], evidence: torch.Tensor, what: str) -> list[str]:
    """The receivers of the next stage: the heads ``found`` in blocks 1 and later (a head of
    block 0 has no earlier head to receive from); when there are none, the head with the largest
    ``evidence`` (``[n_layers, n_heads]``) in blocks 1 and later stands in, and a line says so."""
    usable = [h for h in found if parse_head(h)[0] >= 1]
    if usable:
        print(f"receivers: the {what} heads {', '.join(usable)}")
        return usable
    part = evidence[1:]
    i = int(part.flatten().argmax())
    name = head_name(1 + i // part.shape[1], i % part.shape[1])
    print(f"no {what} head in blocks 1 and later: the strongest candidate {name} stands in, so the "
          f"next stage tests paths into a stand-in, not into a {what} head")
    return [name]


def compare_circuits(model: Any, pairs: Any, circuits: dict[str, Sequence[str]],
                     ablations: Sequence[AblationKind] = ("mean", "resample"), **kw: Any) -> Any:
    """``helpers.circuits.evaluation.compare_ablations`` for each named circuit, as one ``DataFrame``
    indexed by (circuit, ablation); ``kw`` goes to it (``universe``, ``max_steps``, ...)."""
    mh = handle(model)
    import pandas as pd

    frames = {name: compare_ablations(mh, pairs, list(c), ablations, **kw) for name, c in circuits.items()}
    return pd.concat(frames, names=["heads kept", "ablation"])


def top_heads(result: PatchResult, k: int = 10, normalise: bool = True) -> list[str]:
    """The ``k`` heads with the largest |value| in a layer x head result, strongest first."""
    g = result.grid(normalise)
    n_heads = g.shape[1]
    return [head_name(i // n_heads, i % n_heads)
            for i in torch.argsort(-g.flatten().abs(), stable=True)[:k].tolist()]


def heads_by_position(model: Any, pairs: Any, heads: Sequence[str], **kw: Any) -> PatchResult:
    """Each of ``heads`` patched alone at each position (denoising by default; ``kw`` goes to
    ``helpers.sweep``): ``[n_prompts, len(heads), seq]`` on ``("head", "position")``."""
    mh = handle(model)

    places = [parse_head(h) for h in heads]
    sets = [[Patch("head", layer, p, head)] for layer, head in places for p in range(pairs.seq_len)]
    return sweep(mh, pairs, sets, dims=("head", "position"), site="head",
                 labels={"head": [head_name(*lh) for lh in places], "position": pairs.position_labels},
                 **kw)


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
