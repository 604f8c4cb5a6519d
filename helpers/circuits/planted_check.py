"""Measure every planted role of ``ioi-planted`` (or of a retrain of it) and judge it, criterion by
criterion: ``check_planted(model, folder) -> dict``.

The cast (which head plays which role) comes from the model folder's ``ground_truth.json``
(``roles``), the held-out name pairs and the training templates from its ``training.json``, so
the checker needs nothing from the training script.  Every number comes from the package's own
public tools on IOI prompt pairs (S2-swap corruption, denoising, normalised logit difference: 0 =
the corrupted run, 1 = the clean run), averaged over ``PAIR_SETS`` (three training and the three
held-out templates of ``helpers.data.prompts.TEMPLATES``, both name orders, ``n_pairs`` each):

* accuracy: share of fresh prompts with logit(IO) > logit(S) at END, on held-out name pairs
  (training templates) and on held-out templates (training name pairs);
* single-head denoising of every head (``patch_heads``) and of every MLP (``patch_components``);
* path patching of the planted edges and of every other head into the same receivers
  (``path_patch``);
* attention along each role's route and direct logit attributions (``circuits.readouts``), also
  with the name mover mean-ablated;
* mean ablations (``ablate``): the backup takeover, the negative mover and the decoy.

The thresholds (``THRESHOLDS``) were fixed with the recipe, before any shipped model was
trained; ``criteria`` holds each measured value, its threshold and whether it passes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import torch

from helpers.base.fmt import head_name
from helpers.circuits.readouts import attention_to_roles, direct_logit_attribution
from helpers.data.prompts import NAMES, ioi_pairs, random_ioi_prompts
from helpers.engine.runs import Patch, cache_activations, run_with_patches
from helpers.methods.ablations import ablate, ablation_source
from helpers.methods.observe import ioi_per_prompt
from helpers.methods.path_patching import path_patch
from helpers.methods.sweeps import patch_components, patch_heads
from helpers.models.loaded import ModelHandle, handle
from helpers.organism import BUNDLED_MODELS

__all__ = ["THRESHOLDS", "PAIR_SETS", "PlantedSpec", "planted_spec", "check_planted", "pair_sets",
           "heldout_prompts", "report", "result_json"]

#: (template index into helpers.data.prompts.TEMPLATES, order): three training and the three
#: held-out templates
PAIR_SETS = [(t, o) for t in (0, 4, 8, 12, 13, 14) for o in ("ABBA", "BABA")]

THRESHOLDS = {
    "accuracy_heldout_pairs": 0.99,      # IO > S, at least
    "accuracy_heldout_templates": 0.97,  # IO > S, at least
    "designated_effect": 0.5,            # single-head denoising of DT, SI, NM, at least
    "path_effect": 0.5,                  # each core edge's path-patching score, at least
    "negative_effect": -0.05,            # the negative mover's scores, at most
    "null_effect": 0.05,                 # |score| of every other head, MLP and of the decoy, at most
    "backup_clean": 0.1,                 # |backup's clean denoising| and |clean DLA| / LD, at most
    "attention": 0.5,                    # attention along each role's route, at least
    "takeover": 0.5,                     # LD with the name mover mean-ablated / clean LD, at least
    "takeover_without_backup": 0.2,      # LD with name mover and backup mean-ablated / clean LD, at most
    "backup_dla_ablated": 0.3,           # backup's DLA with the name mover ablated / clean LD, at least
}


@dataclass(frozen=True)
class PlantedSpec:
    """What a planted model was trained to be: ``cast`` (role -> (layer, head)), the held-out
    and training name pairs, the training and held-out templates."""

    cast: dict
    heldout_name_pairs: list
    train_name_pairs: list
    training_templates: list
    heldout_templates: list


def planted_spec(folder: str | Path = "ioi-planted") -> PlantedSpec:
    """The ``PlantedSpec`` of a bundled model (``"ioi-planted"``) or of a model folder written by
    ``helpers.organism.train_planted`` (from its ``ground_truth.json`` and ``training.json``)."""
    path = BUNDLED_MODELS.get(str(folder), Path(folder))
    files = [path / "ground_truth.json", path / "training.json"]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"{missing} not found: give the folder train_planted wrote, or a "
                                f"bundled name ({sorted(BUNDLED_MODELS)})")
    truth, record = (json.loads(f.read_text()) for f in files)
    cast = {}
    for role, heads in truth["roles"].items():
        if len(heads) != 1:
            raise ValueError(f"role {role!r} has {len(heads)} heads; the checker judges one per role")
        layer, head = heads[0][1:].split(".h")
        cast[role] = (int(layer), int(head))
    held = [tuple(p) for p in record["heldout_name_pairs"]]
    out = {frozenset(p) for p in held}
    train = [p for p in combinations(NAMES, 2) if frozenset(p) not in out]
    return PlantedSpec(cast, held, train, list(record["training_templates"]),
                       list(record["heldout_templates"]))


def _name(head: tuple[int, int]) -> str:
    """``(2, 0)`` -> ``"L2H0"`` (``helpers.base.fmt.head_name`` of a (block, head) pair)."""
    return head_name(*head)


def pair_sets(tokenizer: Any, n: int = 16, seed: int = 0) -> list:
    """The prompt pairs every patching number is averaged over (``PAIR_SETS``)."""
    return [ioi_pairs(tokenizer, n=n, seed=seed + i, template=t, order=o)
            for i, (t, o) in enumerate(PAIR_SETS)]


def heldout_prompts(spec: PlantedSpec, split: Literal["pairs", "templates"], n: int = 2000, seed: int = 0) -> list:
    """Fresh prompts of one held-out split: ``"pairs"`` (held-out name pairs, training
    templates) or ``"templates"`` (training name pairs, held-out templates)."""
    if split == "pairs":
        return random_ioi_prompts(n, seed=1000 + seed, templates=spec.training_templates,
                                  name_pairs=spec.heldout_name_pairs)
    if split == "templates":
        return random_ioi_prompts(n, seed=2000 + seed, templates=spec.heldout_templates,
                                  name_pairs=spec.train_name_pairs)
    raise ValueError(f"split must be 'pairs' or 'templates', got {split!r}")


def _mean(results: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([r.double() for r in results]).mean(0)


def _measure(mh: ModelHandle, spec: PlantedSpec, n_accuracy: int, n_pairs: int) -> dict[str, Any]:
    """Every number ``check_planted`` judges (see the module docstring)."""
    f = mh.anatomy
    nl, nh = f.n_layers, f.n_heads
    c = spec.cast
    dt, si, nm = c["duplicate_token"], c["s_inhibition"], c["name_mover"]
    neg, bk, dec = c["negative_name_mover"], c["backup_name_mover"], c["decoy"]
    out: dict[str, Any] = {}
    t0 = time.time()
    for split in ("pairs", "templates"):
        per = ioi_per_prompt(mh, heldout_prompts(spec, split, n_accuracy))
        out[f"accuracy_heldout_{split}"] = {
            "n": len(per["logit_diff"]), "io_over_s": per["io_over_s"].mean().item(),
            "top1": per["top1"].mean().item(), "mean_logit_diff": per["logit_diff"].mean().item()}

    sets = pair_sets(mh.tokenizer, n_pairs)
    heads, mlps, clean_ld, corrupt_ld = [], [], [], []
    paths: dict[str, list] = {}
    att, att_abl, dla, dla_abl, abl = [], [], [], [], []
    nmn, bkn, negn, decn = (_name(h) for h in (nm, bk, neg, dec))
    ablation_sets = [[nmn], [nmn, bkn], [bkn], [negn], [decn]]
    resample_sets = [[nmn], [nmn, bkn]]
    abl_res, abl_zero, gate = [], [], []
    path_calls = [
        (["embed"], [f"L{dt[0]}H{dt[1]}.{x}" for x in "qkv"]),
        ([f"L0H{h}" for h in range(nh)], [f"L{si[0]}H{si[1]}.{x}" for x in "qkv"]),
        ([f"L{L}H{h}" for L in range(nm[0]) for h in range(nh)],
         [f"L{nm[0]}H{nm[1]}.{x}" for x in "qkv"] + [f"L{dec[0]}H{dec[1]}.q"]),
        ([f"L{L}H{h}" for L in range(neg[0]) for h in range(nh)],
         [f"L{neg[0]}H{neg[1]}.q", f"L{bk[0]}H{bk[1]}.q"]),
        ([f"L{L}H{h}" for L in range(nl) for h in range(nh)] + [f"mlp{L}" for L in range(nl)],
         ["logits"]),
    ]
    for pairs in sets:
        r = patch_heads(mh, pairs)
        heads.append(r.score(min_gap=1e-9))
        clean_ld.append(r.baseline("clean"))
        corrupt_ld.append(r.baseline("corrupted"))
        mlps.append(patch_components(mh, pairs, [[Patch("mlp", L)] for L in range(nl)]).score(min_gap=1e-9))
        for k, (senders, receivers) in enumerate(path_calls):
            p = path_patch(mh, pairs, senders, receivers)
            paths.setdefault(k, []).append(p.score(min_gap=1e-9))
        routes = attention_to_roles(mh, pairs)
        att.append(torch.stack([routes[k].double() for k in ("S2->S1", "END->S2", "END->IO")]))
        att_abl.append(attention_to_roles(mh, pairs, ablate=[nmn])["END->IO"].double())
        dla.append(direct_logit_attribution(mh, pairs).double().mean(0))
        dla_abl.append(direct_logit_attribution(mh, pairs, ablate=[nmn]).double().mean(0))
        abl.append(ablate(mh, pairs, ablation_sets, "mean").mean("logit_diff").double())
        abl_res.append(ablate(mh, pairs, resample_sets, "resample").mean("logit_diff").double())
        abl_zero.append(ablate(mh, pairs, [[nmn]], "zero").mean("logit_diff").double())
        gate.append(_gate_held(mh, pairs, nm, bk))
    clean = sum(clean_ld) / len(clean_ld)
    out["clean_logit_diff"] = clean
    out["corrupted_logit_diff"] = sum(corrupt_ld) / len(corrupt_ld)
    out["heads"] = _mean(heads)                       # [layers, heads]
    out["mlps"] = _mean(mlps).flatten()               # [layers]
    labels = {}
    for k, (senders, receivers) in enumerate(path_calls):
        s = _mean(paths[k])
        labels[k] = {(a, b): s[i, j].item() for i, a in enumerate(senders) for j, b in enumerate(receivers)}
    out["paths"] = {f"{a}->{b}": v for k in labels for (a, b), v in labels[k].items()}
    a = _mean(att)
    out["attention"] = {"S2->S1": a[0], "END->S2": a[1], "END->IO": a[2]}
    out["attention_nm_ablated"] = _mean(att_abl)
    # DLA per set divided by that set's clean LD, then averaged: shares of the logit difference
    out["dla"] = _mean([d / c for d, c in zip(dla, clean_ld)])
    out["dla_nm_ablated"] = _mean([d / c for d, c in zip(dla_abl, clean_ld)])
    shares = _mean([x / c for x, c in zip(abl, clean_ld)])
    out["ablation_mean"] = {" + ".join(s): shares[i].item() for i, s in enumerate(ablation_sets)}
    shares = _mean([x / c for x, c in zip(abl_res, clean_ld)])
    out["ablation_resample"] = {" + ".join(s): shares[i].item() for i, s in enumerate(resample_sets)}
    out["ablation_zero"] = {nmn: _mean([x / c for x, c in zip(abl_zero, clean_ld)])[0].item()}
    out["gate_held"] = _mean([x / c for x, c in zip(gate, clean_ld)]).item()
    # answer-swap pairs (IO and S exchanged everywhere, same positions) exercise the token edges
    # S2-swap pairs cannot see: which name is S (into the duplicate-token head's value), the
    # names at the movers' keys and IO's token in their values
    swapped = [ioi_pairs(mh.tokenizer, n=n_pairs, seed=100 + i, template=t, order=o,
                           corruption="answer_swap") for i, (t, o) in enumerate(PAIR_SETS)]
    q = lambda h, x: f"L{h[0]}H{h[1]}.{x}"  # noqa: E731
    calls = [(["embed"], [q(dt, x) for x in "qkv"]),
             ([f"L0H{h}" for h in range(nh)], [q(si, x) for x in "qkv"]),
             (["embed"] + [f"L{L}H{h}" for L in range(nm[0]) for h in range(nh)],
              [q(nm, x) for x in "qkv"] + [q(neg, x) for x in "qkv"]),
             ([f"L{L}H{h}" for L in range(nl) for h in range(nh)] + [f"mlp{L}" for L in range(nl)],
              ["logits"])]
    out["paths_answer_swap"] = {}
    for senders, receivers in calls:
        got = _mean([path_patch(mh, pr, senders, receivers).score(min_gap=1e-9)
                     .reshape(len(senders), len(receivers)) for pr in swapped])
        out["paths_answer_swap"].update({f"{a}->{b}": got[i, j].item() for i, a in enumerate(senders)
                                         for j, b in enumerate(receivers)})
    heads_as = _mean([patch_heads(mh, pr).score(min_gap=1e-9) for pr in swapped])
    out["heads_answer_swap"] = heads_as
    out["seconds"] = round(time.time() - t0, 1)
    return out


def _gate_held(mh: ModelHandle, pairs: Any, nm: tuple[int, int], bk: tuple[int, int]) -> torch.Tensor:
    """Mean logit difference of the clean prompts with the name mover mean-ablated while the MLP
    of its block keeps its ordinary (name mover present) output: if that MLP is the backup's gate,
    the backup stays silent and the logit difference falls as with the backup ablated too."""
    source = ablation_source(mh, pairs, [_name(nm)], "mean")
    kept, _ = cache_activations(mh, pairs.clean_ids, [("mlp", nm[0])])
    source[("mlp", nm[0])] = kept[("mlp", nm[0])]
    patches = [Patch("head", nm[0], None, nm[1]), Patch("mlp", nm[0])]
    logits = run_with_patches(mh, pairs.clean_ids, source, [patches] * len(pairs))
    rows = torch.arange(len(pairs))
    a, d = pairs.answer_ids.to(logits.device), pairs.distractor_ids.to(logits.device)
    return (logits[rows, a] - logits[rows, d]).double().mean().cpu()


def _criterion(value: float, op: str, threshold: float) -> dict:
    ok = {">=": value >= threshold, "<=": value <= threshold}[op]
    return {"value": round(float(value), 4), "rule": f"{op} {threshold}", "pass": bool(ok)}


def check_planted(model: Any, folder: str | Path = "ioi-planted", n_accuracy: int = 2000,
                  n_pairs: int = 16) -> dict[str, Any]:
    """Measure ``model`` (an ``ioi-planted``-shaped model loaded with ``helpers.load_model``)
    and judge every planted role against ``THRESHOLDS``; ``folder``: the bundled name or the
    folder the model was trained into (its cast and held-out sets, ``planted_spec``);
    ``n_accuracy`` fresh prompts per held-out split, ``n_pairs`` pairs per pair set.  Returns
    ``{"measured": ..., "criteria": {name: {"value", "rule", "pass"}}, "passed": bool}``; values
    are shares of the clean logit difference or normalised patching scores."""
    mh = handle(model)
    spec = planted_spec(folder)
    t = THRESHOLDS
    m = _measure(mh, spec, n_accuracy, n_pairs)
    cast = spec.cast
    dt, si, nm = cast["duplicate_token"], cast["s_inhibition"], cast["name_mover"]
    neg, bk, dec = cast["negative_name_mover"], cast["backup_name_mover"], cast["decoy"]
    heads, dla, dla_abl = m["heads"], m["dla"], m["dla_nm_ablated"]
    n = _name
    c: dict[str, dict] = {}
    c["accuracy_heldout_pairs"] = _criterion(m["accuracy_heldout_pairs"]["io_over_s"], ">=",
                                             t["accuracy_heldout_pairs"])
    c["accuracy_heldout_templates"] = _criterion(m["accuracy_heldout_templates"]["io_over_s"], ">=",
                                                 t["accuracy_heldout_templates"])
    for role, h in (("duplicate_token", dt), ("s_inhibition", si), ("name_mover", nm)):
        c[f"{role}_denoising"] = _criterion(heads[h].item(), ">=", t["designated_effect"])
    c["negative_name_mover_denoising"] = _criterion(heads[neg].item(), "<=", t["negative_effect"])
    c["backup_name_mover_clean_denoising_abs"] = _criterion(abs(heads[bk].item()), "<=", t["backup_clean"])
    c["decoy_denoising_abs"] = _criterion(abs(heads[dec].item()), "<=", t["null_effect"])
    designated = set(cast.values())
    others = [(L, H_) for L in range(heads.shape[0]) for H_ in range(heads.shape[1])
              if (L, H_) not in designated]
    worst = max(others, key=lambda h: abs(heads[h].item()))
    c["other_heads_denoising_max_abs"] = _criterion(abs(heads[worst].item()), "<=", t["null_effect"])
    c["other_heads_denoising_max_abs"]["head"] = n(worst)
    c["mlps_denoising_max_abs"] = _criterion(m["mlps"].abs().max().item(), "<=", t["null_effect"])
    # paths
    p = m["paths"]
    q = lambda h, x: f"L{h[0]}H{h[1]}.{x}"  # noqa: E731
    core = {"input->DT.q": f"embed->{q(dt, 'q')}", "DT->SI.v": f"{n(dt)}->{q(si, 'v')}",
            "SI->NM.q": f"{n(si)}->{q(nm, 'q')}", "NM->logits": f"{n(nm)}->logits"}
    for name, key in core.items():
        c[f"path_{name}"] = _criterion(p[key], ">=", t["path_effect"])
    for name, key in {"SI->NEG.q": f"{n(si)}->{q(neg, 'q')}", "NEG->logits": f"{n(neg)}->logits"}.items():
        c[f"path_{name}"] = _criterion(p[key], "<=", t["negative_effect"])
    c["path_DECOY->logits_abs"] = _criterion(abs(p[f"{n(dec)}->logits"]), "<=", t["null_effect"])
    c["path_BACKUP->logits_abs"] = _criterion(abs(p[f"{n(bk)}->logits"]), "<=", t["backup_clean"])
    planted = set(core.values()) | {f"{n(si)}->{q(neg, 'q')}", f"{n(neg)}->logits",
                                     f"{n(si)}->{q(dec, 'q')}", f"{n(si)}->{q(bk, 'q')}",
                                     f"{n(dec)}->logits", f"{n(bk)}->logits"}
    rest = {k: v for k, v in p.items() if k not in planted and not k.startswith("embed->")
            and not k.endswith(".k") and not k.endswith(".v") or k.endswith(f"{q(si, 'v')}") and k not in planted}
    rest = {k: v for k, v in rest.items() if k not in planted}
    key = max(rest, key=lambda k: abs(rest[k]))
    c["path_other_edges_max_abs"] = _criterion(abs(rest[key]), "<=", t["null_effect"])
    c["path_other_edges_max_abs"]["edge"] = key
    # attention along the routes
    a = m["attention"]
    c["attention_duplicate_token_S2->S1"] = _criterion(a["S2->S1"][dt].item(), ">=", t["attention"])
    c["attention_s_inhibition_END->S2"] = _criterion(a["END->S2"][si].item(), ">=", t["attention"])
    for role, h in (("name_mover", nm), ("negative_name_mover", neg), ("decoy", dec)):
        c[f"attention_{role}_END->IO"] = _criterion(a["END->IO"][h].item(), ">=", t["attention"])
    c["attention_backup_END->IO_nm_ablated"] = _criterion(m["attention_nm_ablated"][bk].item(), ">=",
                                                          t["attention"])
    # backup takeover
    ab = m["ablation_mean"]
    c["takeover_nm_mean_ablated"] = _criterion(ab[n(nm)], ">=", t["takeover"])
    c["takeover_nm_and_backup_mean_ablated"] = _criterion(ab[f"{n(nm)} + {n(bk)}"], "<=",
                                                          t["takeover_without_backup"])
    c["backup_dla_clean_abs"] = _criterion(abs(dla[bk].item()), "<=", t["backup_clean"])
    c["backup_dla_nm_ablated"] = _criterion(dla_abl[bk].item(), ">=", t["backup_dla_ablated"])
    # negative name mover and decoy
    c["negative_name_mover_dla"] = _criterion(dla[neg].item(), "<=", t["negative_effect"])
    c["negative_name_mover_ablation_raises_ld"] = _criterion(ab[n(neg)] - 1, ">=", -t["negative_effect"])
    c["decoy_ablation_change_abs"] = _criterion(abs(ab[n(dec)] - 1), "<=", t["null_effect"])
    return {"measured": m, "criteria": c, "passed": all(v["pass"] for v in c.values())}


def _plain(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return [round(v, 4) for v in x.tolist()] if x.dim() == 1 else [_plain(r) for r in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, float):
        return round(x, 4)
    return x


def result_json(result: dict) -> dict:
    """``check_planted``'s result as plain JSON values (tensors as lists, floats to 4 places)."""
    return _plain(result)


def report(result: dict) -> str:
    """The check as text: every criterion with its value, rule and verdict, then the maps."""
    m = result["measured"]
    lines = [f"{'PASS' if v['pass'] else 'FAIL'}  {k:48s} {v['value']:>8}  ({v['rule']})"
             + (f"  [{v.get('head') or v.get('edge')}]" if v.get("head") or v.get("edge") else "")
             for k, v in result["criteria"].items()]
    lines.append(f"passed: {result['passed']}")
    for split in ("pairs", "templates"):
        a = m[f"accuracy_heldout_{split}"]
        lines.append(f"held-out {split}: n={a['n']} IO>S {a['io_over_s']:.4f} top-1 {a['top1']:.4f} "
                     f"mean LD {a['mean_logit_diff']:.2f}")
    lines.append(f"clean LD {m['clean_logit_diff']:.2f}, corrupted LD {m['corrupted_logit_diff']:.2f}")
    for key in ("heads", "dla", "dla_nm_ablated", "attention_nm_ablated"):
        lines.append(f"{key} (rows = layers):")
        lines += ["  " + " ".join(f"{v:7.3f}" for v in row) for row in m[key].tolist()]
    for route, t in m["attention"].items():
        lines.append(f"attention {route} (rows = layers):")
        lines += ["  " + " ".join(f"{v:7.3f}" for v in row) for row in t.tolist()]
    lines.append("mlps: " + " ".join(f"{v:.3f}" for v in m["mlps"].tolist()))
    lines.append(f"mean ablation (LD / clean LD): {_plain(m['ablation_mean'])}")
    lines.append(f"resample ablation (LD / clean LD): {_plain(m['ablation_resample'])}")
    lines.append(f"zero ablation (LD / clean LD): {_plain(m['ablation_zero'])}")
    lines.append(f"name mover mean-ablated, its block's MLP held at its usual output (LD / clean "
                 f"LD): {m['gate_held']:.4f}")
    lines.append("answer-swap single heads (rows = layers):")
    lines += ["  " + " ".join(f"{v:7.3f}" for v in row) for row in m["heads_answer_swap"].tolist()]
    lines.append("answer-swap paths (|score| >= 0.02): " + ", ".join(
        f"{k} {v:.3f}" for k, v in m["paths_answer_swap"].items() if abs(v) >= 0.02))
    lines.append("paths (|score| >= 0.02): " + ", ".join(
        f"{k} {v:.3f}" for k, v in m["paths"].items() if abs(v) >= 0.02))
    return "\n".join(lines)


def main() -> None:
    """``python -m helpers.circuits.planted_check [model folder] [--json FILE]``: the report."""
    import argparse

    from helpers.models.loading import load_model

    ap = argparse.ArgumentParser(description="Measure the planted roles of ioi-planted (or a retrain).")
    ap.add_argument("model", nargs="?", default="ioi-planted", help="bundled name or folder")
    ap.add_argument("--n-accuracy", type=int, default=2000)
    ap.add_argument("--json", help="also write the measurements and criteria to this file")
    a = ap.parse_args()
    torch.set_num_threads(1)
    result = check_planted(load_model(a.model), a.model, n_accuracy=a.n_accuracy)
    print(report(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result_json(result), indent=1) + "\n")


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())

if __name__ == "__main__":
    main()
