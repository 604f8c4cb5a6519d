"""Measurements for the heads a class search leaves open, on pooled prompt pairs
(``helpers.circuits.pooled.PairGroups``): what a head writes to each name's logit, what removing
heads does, where the name movers' backup comes from template by template, and how a
path-patching share depends on its definition.  Each returns a pandas ``DataFrame`` whose
numbers are pooled estimates with 95 % bootstrap intervals (pairs resampled within template,
``helpers.circuits.pooled``) where an interval applies."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from helpers.base.fmt import parse_head
from helpers.circuits.pooled import PairGroups, Pooled
from helpers.circuits.stages import PooledReadout, joint_receiver, pooled_readout
from helpers.data.prompts import PromptPairs
from helpers.methods.ablations import ablate, knockout
from helpers.methods.path_patching import path_patch
from helpers.models.loaded import handle

__all__ = ["head_roles", "ablation_table", "knockout_table", "BackupTest", "backup_by_template",
           "share_definitions"]


def _ci(p: Pooled, index: Any = ()) -> tuple[float, float, float]:
    est, (low, high) = p.estimate(), p.interval()
    return float(est[index]), float(low[index]), float(high[index])


def head_roles(reads: PooledReadout, heads: Sequence[str]) -> Any:
    """For each head: its direct logit attribution (clean prompts, final norm's scale frozen) to
    IO - S, to IO's logit alone and to S's logit alone (logits, with intervals), and its
    attention from END to IO, S1 and S2 (pooled means), from a ``pooled_readout``.  One row per
    head."""
    import pandas as pd

    rows = []
    for h in heads:
        lh = parse_head(h)
        row: dict[str, Any] = {"head": h}
        for t, name in (("difference", "IO - S"), ("answer", "IO"), ("distractor", "S")):
            est, low, high = _ci(reads.dla[t], lh)
            row.update({f"DLA {name}": est, f"DLA {name} low": low, f"DLA {name} high": high})
        for route in ("END->IO", "END->S1", "END->S2"):
            row[f"attention {route}"] = float(reads.attention[route].estimate()[lh])
        rows.append(row)
    return pd.DataFrame(rows, columns=["head"] + (list(rows[0])[1:] if rows else [])).set_index("head")


def ablation_table(model: Any, groups: PairGroups, sets: dict[str, Sequence[str]], kind: str = "mean"
                   ) -> Any:
    """Each named set of heads ablated jointly on the clean prompts of every group (each group's
    own mean, or donors among its prompts): the pooled logit difference with nothing ablated and
    with the set ablated, and the drop as a share of the gap with its interval."""
    import pandas as pd

    mh = handle(model)
    full, ablated, gaps = [], [], []
    names = list(sets)
    if not names:
        return pd.DataFrame(columns=["ablated", "heads", "logit diff", "logit diff ablated",
                                     "drop (share of gap)", "low", "high"]).set_index("ablated")
    for g in groups:
        r = ablate(mh, g, [list(sets[n]) for n in names], kind)
        full.append(r.clean["logit_diff"].double()[:, None].expand(-1, len(names)))
        ablated.append(r.values["logit_diff"].double())
        gaps.append((r.clean["logit_diff"] - r.corrupted["logit_diff"]).double())
    full_p = Pooled.from_groups(full, groups)
    abl_p = Pooled.from_groups(ablated, groups)
    drop = Pooled.from_groups([f - a for f, a in zip(full, ablated)], groups, gaps)
    est, (low, high) = drop.estimate(), drop.interval()
    rows = [{"ablated": n, "heads": ", ".join(sets[n]), "logit diff": float(full_p.estimate()[i]),
             "logit diff ablated": float(abl_p.estimate()[i]), "drop (share of gap)": float(est[i]),
             "low": float(low[i]), "high": float(high[i])} for i, n in enumerate(names)]
    return pd.DataFrame(rows).set_index("ablated")


def knockout_table(model: Any, groups: PairGroups, heads: Sequence[str], key: str = "IO") -> Any:
    """The END -> ``key`` attention edges of ``heads`` knocked out together (weights renormalised),
    per template (both orders) and pooled: the logit difference before and after."""
    import pandas as pd

    mh = handle(model)
    before, after = [], []
    for g in groups:
        r = knockout(mh, g, [(h, "END", key) for h in heads])
        before.append(r.clean["logit_diff"].double())
        after.append(r.values["logit_diff"].double()[:, 0])
    b, a = Pooled.from_groups(before, groups), Pooled.from_groups(after, groups)
    rows = [{"template": t, "logit diff": float(b.subset(b.strata == t).estimate()),
             "knocked out": float(a.subset(a.strata == t).estimate())} for t in b.templates()]
    rows.append({"template": "pooled", "logit diff": float(b.estimate()), "knocked out": float(a.estimate())})
    return pd.DataFrame(rows).set_index("template")


@dataclass
class BackupTest:
    """The name movers mean-ablated on every pooled pair: the readouts with all heads
    (``before``) and with the movers ablated (``after``, ``stages.PooledReadout``), and the movers.
    Direct logit attributions in logits; ``rise()`` as shares of the gap."""

    movers: list[str]
    before: PooledReadout
    after: PooledReadout

    def rise(self) -> Pooled:
        """Every head's rise in direct logit attribution (after - before), the movers' own set to
        0, with the pairs' gaps (``estimate()``: share of the gap)."""
        b, a = self.before.dla["difference"], self.after.dla["difference"]
        values = a.values - b.values
        for h in self.movers:
            values[(slice(None), *parse_head(h))] = 0.0
        return Pooled(values, self.before.gap, b.strata, b.group, b.group_names,
                      "rise of direct logit attribution")

    def table(self) -> Any:
        """Per template (both orders) and pooled: the logit difference with all heads and with the
        movers mean-ablated, its change, the movers' own direct contribution, and what the rest
        of the model makes up (own contribution + change: positive = compensation)."""
        import pandas as pd

        full, abl = self.before.logit_diff, self.after.logit_diff
        dla = self.before.dla["difference"].values
        own = (sum(dla[(slice(None), *parse_head(h))] for h in self.movers) if self.movers
               else np.zeros(len(full.values)))
        own_p = Pooled(np.asarray(own, float), None, full.strata, full.group, full.group_names)
        rows = []
        for t, keep in [(t, full.strata == t) for t in full.templates()] + [("pooled", None)]:
            pick = (lambda p: p) if keep is None else (lambda p, k=keep: p.subset(k))
            f, a, mine = (float(pick(p).estimate()) for p in (full, abl, own_p))
            rows.append({"template": t, "logit diff": f, "movers ablated": a, "change": a - f,
                         "movers' direct contribution": mine, "made up by the rest": mine + a - f})
        return pd.DataFrame(rows).set_index("template")


def backup_by_template(model: Any, groups: PairGroups, movers: Sequence[str],
                       before: PooledReadout | None = None) -> BackupTest:
    """Mean-ablate ``movers`` (each group's own mean over its clean prompts, every position) on
    every pooled pair and read what changes (Wang et al.'s backup test, per pair); ``before``:
    the unablated ``pooled_readout`` if already made."""
    mh = handle(model)
    before = before or pooled_readout(mh, groups)
    after = pooled_readout(mh, groups, list(movers), gap=before.gap)
    return BackupTest(list(movers), before, after)


def share_definitions(model: Any, pairs: PromptPairs, senders: Sequence[str],
                      receiver_heads: Sequence[str], kind: str = "q", at: str = "END") -> Any:
    """Each sender's path-patching share into several receiver heads, four ways: each receiver
    patched alone and the shares **summed**, or all receivers patched **jointly** in one run;
    with everything after the receivers **recomputed** (Wang et al.) or **frozen** (only the
    receiving heads' output change reaches the logits).  One row per sender (shares of the gap)."""
    import pandas as pd

    mh = handle(model)
    f = mh.anatomy
    parts = [joint_receiver([h], kind, at, pairs, f) for h in receiver_heads]
    joint = joint_receiver(receiver_heads, kind, at, pairs, f)
    out: dict[str, Any] = {}
    word = {"recompute": "recomputed", "frozen": "frozen"}
    for later in ("recompute", "frozen"):
        alone = path_patch(mh, pairs, list(senders), parts, metrics=("logit_diff",), later=later)
        together = path_patch(mh, pairs, list(senders), joint, metrics=("logit_diff",), later=later)
        gap = alone.baseline("clean") - alone.baseline("corrupted")
        base = alone.baseline("corrupted")
        out[f"summed, later layers {word[later]}"] = ((alone.mean() - base) / gap).sum(-1)
        out[f"joint, later layers {word[later]}"] = ((together.mean() - base) / gap)[:, 0]
    frame = pd.DataFrame({k: [float(x) for x in v] for k, v in out.items()}, index=list(senders))
    frame.index.name = "sender"
    return frame



from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
