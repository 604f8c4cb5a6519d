"""The staged IOI search of chapter 10, with every class decided on pooled prompt pairs.

Each stage has **receivers** (the logits, or the inputs of heads already found), **senders**
(the heads before them), a **map** (every sender's share on one template's pairs: the screen)
and a **decision**.  A decision pools ``PairGroups`` (several templates x both name orders,
``helpers.circuits.pooled``) and decides each criterion of ``helpers.circuits.ioi_classes.CLASSES``
on its bootstrap interval, Holm-corrected across the heads the stage tests:

* attention along the class's route at least ``min_attention``;
* effect through the class's route (a share of the gap) at least ``min_share`` with the class's
  sign (at most ``-min_share`` for negative classes).

A head is a member when both hold.  The heads a stage tests for the effect are its
**candidates**: every head for the direct paths to the logits (cheap), otherwise the heads
meeting the attention criterion plus the strongest heads of the screen map (``candidates``); the
screen uses other prompts than the decision (another seed), so choosing candidates on it does
not bias the decision.  **Stability**: the same rule on each template's pairs alone (both orders),
counted as "selected in k of n templates".

Receivers of several heads are patched **jointly** (one receiver run, ``"A+B"`` in
``helpers.path_patch``); grouped-query keys and values are the shared key/value head's
(``L20KV0.v``), as read by every query head of its group.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from helpers.base.fmt import head_name, parse_head
from helpers.circuits.pooled import N_BOOT, PairGroups, Pooled
from helpers.circuits.readouts import readout
from helpers.data.prompts import PromptPairs
from helpers.methods.path_patching import path_patch
from helpers.models.loaded import handle
from helpers.results.patch_result import PatchResult

__all__ = ["PooledReadout", "pooled_readout", "joint_receiver", "pooled_attention", "pooled_paths",
           "pooled_path_table", "pooled_dla",
           "pooled_ablation",
           "random_sets", "candidates", "decide", "unexplained", "group_paths", "group_matters",
           "evidence_table", "TABLE_COLUMNS"]

#: the columns of a ``decide`` table (``classify``'s five, then the intervals and the stability)
TABLE_COLUMNS = ["class", "head", "attention", "share", "member", "attention_low", "share_low",
                 "share_high", "p_holm", "templates", "fails", "tested"]


def _position(at: str | int, pairs: PromptPairs) -> str:
    """A receiver's ``@`` suffix: a role (``"END"``), ``"S1+1"`` (the token after S1) or an index."""
    if at == "S1+1":
        return str(pairs.positions["S1"] + 1)
    return str(at)


def joint_receiver(heads: Sequence[str], kind: str, at: str | int, pairs: PromptPairs, facts: Any,
                   per_query_head: bool = False) -> str:
    """One ``helpers.path_patch`` receiver patching ``heads``' ``kind`` input (``"q"``, ``"k"``,
    ``"v"``) at ``at`` together: ``"L23H0.q@END+L23H1.q@END"``; with grouped-query attention keys
    and values are the key/value heads' (``"L20KV0.v@S2"``, each named once), or with
    ``per_query_head`` the keys/values as read by each named query head only (``"L23H3.k@S2"``).
    ``at``: a role, ``"S1+1"`` or a token index."""
    if not heads:
        raise ValueError("no receiver heads: a stage needs the heads found by the stage before it")
    group = facts.n_heads // facts.n_kv_heads
    where, names = _position(at, pairs), []
    for h in heads:
        layer, head = parse_head(h)
        name = (f"L{layer}H{head}.{kind}" if kind == "q" or group == 1 or per_query_head
                else f"L{layer}KV{head // group}.{kind}") + f"@{where}"
        if name not in names:
            names.append(name)
    return "+".join(names)


def _gaps(result: PatchResult) -> torch.Tensor:
    return (result.clean["logit_diff"] - result.corrupted["logit_diff"]).double()


def _grid(result: PatchResult, n_layers: int, n_heads: int, direction: str) -> torch.Tensor:
    """Per-pair effect on every head, ``[n, n_layers, n_heads]``: denoising, patched - corrupted;
    noising, clean - patched (the share destroyed); 0 for heads that were not senders."""
    v = result.values["logit_diff"].double()
    base = (result.corrupted if direction == "denoise" else result.clean)["logit_diff"].double()
    out = torch.zeros(v.shape[0], n_layers, n_heads, dtype=torch.float64)
    if result.dims == ("layer", "head"):
        eff = v - base[:, None, None]
        out[:, :eff.shape[1]] = eff
    else:
        eff = v[..., 0] - base[:, None]
        for i, label in enumerate(result.labels["sender"]):
            out[:, parse_head(label.partition("@")[0])[0], parse_head(label.partition("@")[0])[1]] = eff[:, i]
    return out if direction == "denoise" else -out


@dataclass
class PooledReadout:
    """What one traced forward per group reads (``readouts.readout``), pooled: every head's
    attention along every route (``{route: Pooled [n_pairs, n_layers, n_heads]}``, plain means),
    its direct logit attribution (``{target: Pooled}`` in logits; ``share(target)``: as a share of
    the pooled gap), the run's logit difference (``Pooled [n_pairs]``) and the pairs' clean -
    corrupted gaps ``[n_pairs]`` (of the unablated model)."""

    attention: dict[str, Pooled]
    dla: dict[str, Pooled]
    logit_diff: Pooled
    gap: np.ndarray
    ablated: list[str]

    def share(self, target: str = "difference") -> Pooled:
        """The direct logit attribution as a share of the pooled gap."""
        return replace(self.dla[target], gap=self.gap, _boot={})


def pooled_readout(model: Any, groups: PairGroups, ablate: Sequence[str] = (),
                   gap: np.ndarray | None = None) -> PooledReadout:
    """``readouts.readout`` on every group (``ablate``: heads mean-ablated over each group's clean
    prompts), pooled; ``gap`` (the pairs' clean - corrupted logit differences, e.g. an unablated
    readout's) is measured when not given."""
    mh = handle(model)
    per = [readout(mh, g, ablate) for g in groups]
    if gap is None:
        gap = np.concatenate([(p["logit_diff"] - _pair_lds(mh, g, "corrupted")).numpy()
                              for p, g in zip(per, groups)])
    att = {r: Pooled.from_groups([p["attention"][r] for p in per], groups, None, f"attention {r}")
           for r in per[0]["attention"]}
    dla = {t: Pooled.from_groups([p["dla"][t] for p in per], groups, None, f"direct logit attribution ({t})")
           for t in per[0]["dla"]}
    ld = Pooled.from_groups([p["logit_diff"] for p in per], groups, None, "logit difference")
    return PooledReadout(att, dla, ld, np.asarray(gap, float), list(ablate))


def pooled_attention(model: Any, groups: PairGroups, ablate: Sequence[str] = ()) -> dict[str, Pooled]:
    """Every head's attention along every route on every clean prompt of ``groups``
    (``pooled_readout(...).attention``)."""
    return pooled_readout(model, groups, ablate, gap=np.zeros(len(groups))).attention


def pooled_paths(model: Any, groups: PairGroups, receiver_heads: Sequence[str] | None, kind: str = "q",
                 at: str | int = "END", senders: str | Sequence[str] = "heads",
                 direction: str = "denoise", later: str = "recompute") -> Pooled:
    """Path patching from ``senders`` (``"heads"``: every head before the receivers, or head
    names) to the joint receiver of ``receiver_heads`` (``joint_receiver``; ``None``: the
    logits) on every group, as per-pair effects ``[n_pairs, n_layers, n_heads]`` with the pairs'
    gaps: ``estimate()`` is each sender's share of the pooled gap (noising: the share destroyed)."""
    mh = handle(model)
    f = mh.anatomy
    effects, gaps = [], []
    for g in groups:
        recv = "logits" if receiver_heads is None else joint_receiver(receiver_heads, kind, at, g, f)
        send = senders if isinstance(senders, str) else list(senders)
        r = path_patch(mh, g, send, recv, direction, metrics=("logit_diff",), later=later)
        effects.append(_grid(r, f.n_layers, f.n_heads, direction))
        gaps.append(_gaps(r))
    what = "direct path to the logits" if receiver_heads is None else (
        f"paths into {', '.join(receiver_heads)} .{kind} at {at}")
    return Pooled.from_groups(effects, groups, gaps, what)


def pooled_path_table(model: Any, groups: PairGroups, senders: Sequence[str],
                      receivers: dict[str, tuple | None], direction: str = "denoise") -> dict[str, Pooled]:
    """Path patching from ``senders`` (head names or joint senders ``"L5H6+L8H1"``) to several
    receivers in one call per group: ``receivers`` maps a name to ``(heads, kind, at)`` (a joint
    receiver, ``joint_receiver``) or None (the logits).  Returns ``{name: Pooled [n_pairs,
    n_senders]}`` (``labels``: the senders) with the pairs' gaps: shares of the pooled gap
    (noising: the share destroyed).  A fourth element True in a receiver's tuple: keys/values as
    read by the named query heads only (``joint_receiver(per_query_head=True)``)."""
    mh = handle(model)
    f = mh.anatomy
    if not senders or not receivers:
        return {}
    names, per, gaps = list(receivers), {k: [] for k in receivers}, []
    for g in groups:
        recv = ["logits" if receivers[k] is None else
                joint_receiver(*receivers[k][:3], g, f, *receivers[k][3:]) for k in names]
        r = path_patch(mh, g, list(senders), recv, direction, metrics=("logit_diff",))
        base = (r.corrupted if direction == "denoise" else r.clean)["logit_diff"].double()
        eff = r.values["logit_diff"].double() - base[:, None, None]
        eff = eff if direction == "denoise" else -eff
        for j, k in enumerate(names):
            per[k].append(eff[:, :, j])
        gaps.append(_gaps(r))
    return {k: Pooled.from_groups(per[k], groups, gaps, f"paths into {k}", list(senders)) for k in names}


def pooled_dla(model: Any, groups: PairGroups, ablate: Sequence[str] = (), target: str = "difference"
               ) -> Pooled:
    """Every head's direct logit attribution on every pair as a share of the pooled gap
    (``pooled_readout(...).share(target)``)."""
    return pooled_readout(model, groups, ablate).share(target)


def pooled_ablation(model: Any, groups: PairGroups, sets: Sequence[Sequence[str]], kind: str = "mean",
                    reference: str = "clean", seed: int = 0) -> Pooled:
    """Ablate each set of heads jointly in the clean runs of every group (``helpers.ablate``;
    ``reference="corrupted"``: the mean over, or the donors among, the group's corrupted prompts,
    e.g. ABC prompts as Wang et al.; ``"clean"``: its clean prompts): per pair, how much the
    logit difference **drops**, ``[n_pairs, n_sets]``, with the pairs' gaps (``estimate()``: the
    share of the gap each set's ablation costs)."""
    from helpers.methods.ablations import ablate

    mh = handle(model)
    drops, gaps = [], []
    for g in groups:
        ref = g.corrupted_ids if reference == "corrupted" else None
        r = ablate(mh, g, [list(x) for x in sets], kind, reference=ref, seed=seed)
        drops.append(r.clean["logit_diff"].double()[:, None] - r.values["logit_diff"].double())
        gaps.append(_gaps(r))
    return Pooled.from_groups(drops, groups, gaps, f"{kind} ablation")


def random_sets(heads: Sequence[str], n_sets: int = 8, seed: int = 0, n_heads: int | None = None,
                avoid: Sequence[str] = ()) -> list[list[str]]:
    """``n_sets`` seeded random sets of ``len(heads)`` heads drawn from the same blocks as
    ``heads`` (every head of those blocks but ``heads`` and ``avoid``): the control for a group
    of heads.  ``n_heads``: heads per block."""
    blocks = sorted({parse_head(h)[0] for h in heads})
    width = n_heads or max(parse_head(h)[1] for h in heads) + 1
    pool = [head_name(L, h) for L in blocks for h in range(width)
            if head_name(L, h) not in set(heads) | set(avoid)]
    rng = np.random.default_rng([seed, 3])
    size = min(len(heads), len(pool))
    return [sorted((pool[i] for i in rng.choice(len(pool), size, replace=False)),
                   key=parse_head) for _ in range(n_sets)]


def _pair_lds(mh: Any, pairs: PromptPairs, run: str) -> torch.Tensor:
    """The clean or corrupted prompts' logit differences, ``[n]``."""
    from helpers.engine.runs import cache_activations
    from helpers.results.metrics import logit_diff

    logits = cache_activations(mh, pairs.clean_ids if run == "clean" else pairs.corrupted_ids, [])[1]
    return logit_diff(logits, pairs.answer_ids.to(logits.device),
                      pairs.distractor_ids.to(logits.device)).double().cpu()


def candidates(screen: Any, attention: Pooled, min_attention: float = 0.3, sign: int = 1,
               top: int = 4, before: int | None = None, alpha: float = 0.05,
               normalise: bool = True) -> list[str]:
    """The heads a stage tests for the effect: every head meeting the attention criterion (on
    ``attention``, decided as in ``decide``: Holm across every head) plus the ``top`` heads of the
    screen map (``screen``: ``[n_layers, n_heads]`` share of the gap, or a layer x head
    ``PatchResult``) in the class's direction (``sign``), all in blocks before ``before``;
    strongest on the screen first.  ``normalise=False``: rank a ``PatchResult`` screen by its raw
    effect (models whose clean - corrupted gap is too small to divide by)."""
    n_layers, n_heads = attention.cells
    grid = _screen_grid(screen, n_layers, n_heads, normalise) * sign
    meets = attention.decide(min_attention, 1, alpha)["meets"]
    limit = n_layers if before is None else before
    order = sorted(((L, h) for L in range(limit) for h in range(n_heads)),
                   key=lambda lh: (-float(grid[lh]), lh))
    keep = [lh for lh in order if meets[lh]] + order[:top]
    picked = sorted(set(keep), key=lambda lh: (-float(grid[lh]), lh))
    return [head_name(*lh) for lh in picked]


def _screen_grid(screen: Any, n_layers: int, n_heads: int, normalise: bool = True) -> np.ndarray:
    """A screen map as ``[n_layers, n_heads]`` shares (blocks after the senders: 0)."""
    if isinstance(screen, PatchResult):
        grid = screen.change(normalise).double().numpy()
    else:
        grid = np.asarray(screen.estimate() if hasattr(screen, "estimate") else screen, dtype=float)
    out = np.zeros((n_layers, n_heads))
    out[:grid.shape[0]] = grid
    return out


def decide(cls: Any, attention: Pooled, effect: Pooled, min_attention: float = 0.3,
           min_share: float = 0.05, tested: Sequence[str] | None = None, exclude: Sequence[str] = (),
           alpha: float = 0.05, n_boot: int = N_BOOT, seed: int = 0, runners_up: int = 3) -> Any:
    """One class's decision table (module docstring): for the ``tested`` heads (default every
    head), both criteria on their bootstrap intervals, Holm across the tested heads; members
    (not in ``exclude``) first, strongest share first, then up to ``runners_up`` heads that meet
    one criterion but not the other (else the strongest by share), and the best-attending tested
    head that is not a member; ``fails`` names the criterion a non-member fails.  ``cls``: a ``HeadClass``.
    Columns ``TABLE_COLUMNS``: attention and share (pooled estimates) with their lower bound /
    interval, the Holm-adjusted p of the effect, ``templates`` "k/n" (selected on k of n
    templates' pairs alone by the same rule)."""
    import pandas as pd

    shape = effect.cells
    mask = np.zeros(shape, bool)
    names = [head_name(L, h) for L in range(shape[0]) for h in range(shape[1])] if tested is None else list(tested)
    for name in names:
        mask[parse_head(name)] = True
    out = _meets(cls, attention, effect, min_attention, min_share, mask, alpha, n_boot, seed)
    member = out["member"] & ~_mask(exclude, shape)  # (excluded: already in another class)
    per_t = [(_meets(cls, a, e, min_attention, min_share, mask, alpha, n_boot, seed)["member"]
              & ~_mask(exclude, shape)) for a, e in zip(attention.by_template().values(),
                                                        effect.by_template().values())]
    k = np.sum(per_t, axis=0)
    share, att = out["effect"]["estimate"], out["attention"]["estimate"]
    signed = share * cls.sign
    cells = [tuple(int(x) for x in c) for c in np.argwhere(mask)]
    order = sorted(cells, key=lambda lh: (-signed[lh], lh))
    found = [lh for lh in order if member[lh]]
    one = [lh for lh in order if not member[lh]
           and (out["attention"]["meets"][lh] or out["effect"]["meets"][lh])][:runners_up]
    near = one or [lh for lh in order if not member[lh]][:runners_up]
    by_att = sorted((lh for lh in order if not member[lh]), key=lambda lh: (-att[lh], lh))
    if runners_up and by_att and by_att[0] not in near:
        near.append(by_att[0])


    def fails(lh: tuple) -> str:
        a, e = bool(out["attention"]["meets"][lh]), bool(out["effect"]["meets"][lh])
        if member[lh]:
            return ""
        if a and e:
            return "excluded"  # meets both, but is already in another class
        return "attention and effect" if not (a or e) else ("attention" if e else "effect")
    rows = [{"class": cls.name, "head": head_name(*lh), "attention": float(att[lh]),
             "share": float(share[lh]), "member": bool(member[lh]),
             "attention_low": float(out["attention"]["low_one"][lh]),
             "share_low": float(out["effect"]["low"][lh]), "share_high": float(out["effect"]["high"][lh]),
             "p_holm": float(out["effect"]["p_holm"][lh]), "templates": f"{int(k[lh])}/{len(per_t)}",
             "fails": fails(lh),
             "tested": int(mask.sum())} for lh in found + near]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _mask(heads: Sequence[str], shape: tuple[int, ...]) -> np.ndarray:
    m = np.zeros(shape, bool)
    for h in heads:
        m[parse_head(h)] = True
    return m


def _meets(cls: Any, attention: Pooled, effect: Pooled, min_attention: float, min_share: float,
           mask: np.ndarray, alpha: float, n_boot: int, seed: int) -> dict:
    a = attention.decide(min_attention, 1, alpha, n_boot, seed, among=mask)
    e = effect.decide(min_share, cls.sign, alpha, n_boot, seed, among=mask)
    # the attention's one-sided lower bound at the Holm level is what "meets" compares: report
    # the plain 95 % one-sided bound (5th percentile) beside it
    a["low_one"] = np.quantile(attention.resamples(n_boot, seed), alpha, axis=0)
    return {"attention": a, "effect": e, "member": a["meets"] & e["meets"]}


def unexplained(direct: Pooled, table: Any, min_share: float = 0.05, alpha: float = 0.05,
                n_boot: int = N_BOOT, seed: int = 0) -> list[str]:
    """Heads whose direct path to the logits meets the effect criterion in either direction (on
    its interval, Holm across every head: ``|share| >= min_share``) but that are members of no
    class in ``table``; largest ``|share|`` first."""
    members = set(table[table["member"]]["head"])
    est = direct.estimate()
    meets = (direct.decide(min_share, 1, alpha, n_boot, seed)["meets"]
             | direct.decide(min_share, -1, alpha, n_boot, seed)["meets"])
    cells = [tuple(int(x) for x in c) for c in np.argwhere(meets)]
    cells.sort(key=lambda lh: (-abs(float(est[lh])), lh))
    return [head_name(*lh) for lh in cells if head_name(*lh) not in members]


def group_paths(model: Any, groups: PairGroups, group: Sequence[str], receiver_heads: Sequence[str],
                kind: str = "v", at: str = "S2", n_random: int = 5, seed: int = 0,
                direction: str = "denoise") -> Pooled | None:
    """Path patching from ``group`` as one joint sender (its heads take their source values
    together) and from ``n_random`` random groups of as many heads from the same blocks
    (``random_sets``) into the joint receiver of ``receiver_heads``: ``Pooled [n_pairs,
    1 + n_random]`` (labels: the groups), or None for an empty group."""
    if not group:
        return None
    n_heads = handle(model).anatomy.n_heads
    sets = [list(group)] + random_sets(group, n_random, seed, n_heads)
    senders = ["+".join(s) for s in sets]
    return pooled_path_table(model, groups, senders, {"r": (receiver_heads, kind, at)}, direction)["r"]


def group_matters(test: Pooled | None, min_share: float = 0.05) -> bool:
    """Whether a ``group_paths`` test shows a group that carries its class's effect jointly: its
    lower bound (95 %) at least ``min_share`` and above every random group's upper bound."""
    if test is None:
        return False
    low, high = test.interval()
    return bool(low[0] >= min_share and low[0] > max(high[1:].max(initial=0.0), 0.0))


def evidence_table(tables: Sequence[Any]) -> Any:
    """Every class's ``decide`` table in one ``pandas.DataFrame`` (``members(table, name)`` works
    on it)."""
    import pandas as pd

    frames = [t for t in tables if t is not None and len(t)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TABLE_COLUMNS)


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
