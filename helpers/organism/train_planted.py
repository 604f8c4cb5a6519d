"""Train the planted-circuit IOI model organism (``ioi-planted``) from scratch.

    python -m helpers.organism.train_planted --out helpers/organism/planted   # ~6 CPU-minutes

A 4-layer, 4-head, d_model 64 ``GPT2LMHeadModel`` trained so that *designated* heads
(``planted_data.CAST``) play Wang et al.'s IOI cast: a duplicate-token head, an S-inhibition
head, a name mover, a backup name mover, a negative name mover and a decoy; every other head and
every MLP has no effect on the task.  Why each piece is there is in ``planted/MODEL_CARD.md``.

* **High-level model.**  The duplicate-token head at S2 attends S1 (the earlier copy of its
  token) and copies *which name is the subject S*; the S-inhibition head at END attends S2 and
  copies that on; the name mover at END attends the name that is not S and copies it; the
  negative name mover does the same with the opposite sign; the backup name mover does it only
  when the name mover's output is missing; the decoy attends like a name mover and is ignored.
* **Batches** (``planted_data.sample_step``): ``groups`` groups of ``group_size`` prompts sharing
  template, fillers, place and object (positions line up), names and order drawn independently,
  plus each prompt's *twin* (S2 replaced by IO: the answer flips).
* **Loss** = answer cross-entropy on the clean runs
  + IIT: cross-entropy of runs with a designated head's output swapped (every position), the
  label from the high-level model: duplicate-token or S-inhibition head from the twin (the
  answer flips), name mover from another group member (the answer is that prompt's IO);
  + backup: runs with the name mover mean-ablated (and every non-designated component
  resampled) must still answer IO, the backup's attention supervised END -> answer;
  + strictness: in every intervened run each non-designated head and each MLP is swapped from
  another group member with probability ``p_strict`` (the label does not change), and in the
  strict-only runs the logit difference must stay the clean run's (squared error);
  + **ablation targets** (``ablation_rows``), the measured quantities themselves, final norm
  included: with the name mover mean-ablated the logit difference keeps ``takeover`` of the
  clean one (the backup answers), with the backup mean-ablated too at most ``without_backup``
  of it, with the negative mover mean-ablated it rises by ``neg_gain``, with the negative
  mover's output taken from the twin by twice that (hinges, over the mean clean logit
  difference);
  + attention supervision (-log weight) on every role's route, a shortcut penalty on S2 -> IO
  for every head but the duplicate-token head, the negative mover's own readout ranking IO
  lowest (and still attending IO when its query reads the name mover's output from another
  prompt: ``w_neg_path``; the backup's attention unchanged then, KL), and a hinge on |direct
  logit attribution| above ``direct_tol`` (``late_direct_tol`` from the name mover's block on)
  for the duplicate-token and S-inhibition heads, the decoy, the last block's other heads and
  every MLP (``mlp_direct``; the name mover's block's MLP gates the backup, nothing else).
* **Names.**  With probability ``p_extra_names`` a prompt's pair has a training-only name
  (``planted_data.EXTRA_NAMES``): more distinct names make the name mover's comparison generic
  (held-out name pairs are pairs never seen together).
* **Curriculum.**  For the first ``strict_delay`` of the steps every non-designated component and
  the negative mover are knocked out (outputs times 0), so the task can only be learned by the
  cast; then they are ramped in (x alpha, 0 -> 1 over ``strict_ramp``) under strictness.

One thread and a fixed seed give bit-identical weights on one machine; the SHA-256 of
``model.safetensors`` goes to ``checksum.txt``, the planted graph to ``ground_truth.json``
(``planted_truth``); ``helpers.circuits.planted_check.check_planted`` measures every role.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers.data.prompts import HELDOUT_TEMPLATES
from helpers.organism.planted_data import (CAST, D_MODEL, EXTRA_NAMES, EXTRA_TEMPLATES, N_HEAD,
                                           N_LAYER, TRAINING_TEMPLATES, check_split, designated,
                                           extra_pairs, sample_step, vocabulary)
from helpers.organism.planted_iit import iit_rows
from helpers.organism.planted_losses import (end_logits, forward, group_mean, head_dla, head_readout,
                                             mlp_dla, nll, query_attention_without)
from helpers.organism.train_ioi import name_pair_split
from helpers.organism.training import build_tokenizer, make_config

#: the ablation rows (``ablation_rows``): name mover mean-ablated, name mover and backup
#: mean-ablated, negative mover mean-ablated, negative mover from the twin
ABLATIONS = ("nm", "nm_bk", "neg", "neg_twin")

DEFAULTS = dict(steps=2000, d_model=D_MODEL, p_listed=0.4, p_scrambled=0.25,
                kinds=("dt", "si", "nm", "backup", "backup_dt", "backup_si"), w_neg_readout=0.25,
                off_role=False, w_rest=0.0, groups=2, group_size=8, lr=3e-3, seed=0, threads=1,
                p_strict=0.5, p_strict_iit=0.5, w_iit=1.0, w_attn=0.5, w_shortcut=1.0,
                w_strict_ld=1.0, backup_tol=0.5, w_backup_silent=1.0, direct_tol=0.5,
                late_direct_tol=0.25, w_direct=1.0,
                mlp_strict=(0, 1, 2, 3), p_strict_backup=1.0, clip=1.0, strict_delay=0.25,
                strict_ramp=0.25, w_abl=2.0, takeover=0.75, without_backup=0.05, neg_gain=0.15,
                w_backup_ld=1.0, mlp_direct=(0, 1, 2, 3), w_neg_path=0.5, p_extra_names=0.5,
                log_every=100)


def ablation_rows(model, b: dict, clean: dict, kind: torch.Tensor, c: dict,
                  scales: tuple) -> tuple[torch.Tensor, dict]:
    """One run per clean row with the ablation ``ABLATIONS[kind[i]]`` (mean = the other group
    members' mean, ``group_mean``) and nothing else changed; returns the hinge loss (over the mean
    |clean logit difference|) and each kind's mean logit difference / clean one (for the log)."""
    (nm,), (bk,), (neg,) = CAST["name_mover"], CAST["backup_name_mover"], CAST["negative_name_mover"]
    n = len(kind)
    z = [t.detach() for t in clean["z"]]
    mean_z = [torch.zeros_like(t) for t in z]
    mask = torch.zeros(n, N_LAYER, N_HEAD, dtype=torch.bool)
    groups = int(b["group"].max()) + 1
    for h in (nm, bk, neg):
        mean_z[h[0]][:, :, h[1]] = group_mean(z[h[0]][:, :, h[1]], b["group"], b["twin"], groups)
    mean_z[neg[0]][:, :, neg[1]] = torch.where((kind == 3)[:, None, None], z[neg[0]][b["twin"], :, neg[1]],
                                               mean_z[neg[0]][:, :, neg[1]])
    mask[:, nm[0], nm[1]] = kind <= 1
    mask[:, bk[0], bk[1]] = kind == 1
    mask[:, neg[0], neg[1]] = kind >= 2
    run = forward(model, b["x"], mean_z=mean_z, mean_mask=mask, head_scale=scales[0], mlp_scale=scales[1])
    logits = end_logits(model, run["resid"], b["end"])
    rows = torch.arange(n)
    ld = logits[rows, b["io_id"]] - logits[rows, b["s_id"]]
    clean_ld_live = clean["logits"][rows, b["io_id"]] - clean["logits"][rows, b["s_id"]]
    ld_clean = clean_ld_live.detach()
    ref = ld_clean.clamp(min=0)
    scale = ld_clean.abs().mean().clamp(min=1.0)
    want_low = torch.tensor([0.0, 0.0, 1 + c["neg_gain"], 1 + 2 * c["neg_gain"]])[kind]
    want_low[kind == 0] = c["takeover"]
    hinge = torch.where(kind == 1, F.relu(ld - c["without_backup"] * ref), F.relu(want_low * ref - ld))
    # the negative mover's rows: the gain over the clean run *of this step* (gradient through both
    # runs, so the term moves what differs between them: the mover and what reads it), against a
    # target fixed by the clean logit difference; with the clean one detached the term could only
    # inflate the ablated run and the target would follow it up the next step
    gain = ld - clean_ld_live
    neg_hinge = F.relu((want_low - 1) * ref - gain)
    hinge = torch.where(kind >= 2, neg_hinge, hinge)
    shares = {a: float((ld[kind == i] / ld_clean[kind == i]).detach().mean()) if (kind == i).any() else float("nan")
              for i, a in enumerate(ABLATIONS)}
    return (hinge / scale).mean(), shares


def _masks(c: dict) -> dict:
    """Which components strictness swaps and the curriculum knocks out."""
    cast = designated()
    (dec,), (neg,), (nm,) = CAST["decoy"], CAST["negative_name_mover"], CAST["name_mover"]
    every = [(L, h) for L in range(N_LAYER) for h in range(N_HEAD)]
    strict = torch.zeros(N_LAYER, N_HEAD, dtype=torch.bool)
    knock = torch.zeros(N_LAYER, N_HEAD, dtype=torch.bool)
    for L, h in every:
        strict[L, h] = (L, h) not in cast or (L, h) == dec  # the answer must not need them
        knock[L, h] = (L, h) not in cast or (L, h) == neg   # knocked out in phase 1
    return {"strict": strict, "knock": knock,
            "mlp_strict": torch.tensor([L in c["mlp_strict"] for L in range(N_LAYER)]),
            "mlp_knock": torch.tensor([L != nm[0] for L in range(N_LAYER)])}


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean KL(p || q) of attention rows [n, seq]."""
    return (p * (torch.log(p + 1e-9) - torch.log(q + 1e-9))).sum(-1).mean()


def _clean_losses(model, b: dict, c: dict, alpha: float, scales: tuple) -> tuple[dict, dict]:
    """The clean run (bases and twins) and its losses: answer CE, attention, shortcut, silent
    backup, no direct effect outside the movers, the negative mover's readout."""
    (dt,), (si,), (nm,) = CAST["duplicate_token"], CAST["s_inhibition"], CAST["name_mover"]
    (dec,), (bk,), (neg,) = CAST["decoy"], CAST["backup_name_mover"], CAST["negative_name_mover"]
    x, end, io, s1, s2, io_id, s_id = (b[k] for k in ("x", "end", "io", "s1", "s2", "io_id", "s_id"))
    rows = torch.arange(len(x))
    clean = forward(model, x, head_scale=scales[0], mlp_scale=scales[1])
    logits = end_logits(model, clean["resid"], end)
    att = clean["attn"]
    zero = torch.zeros_like(io)
    # (a duplicate-token head with no earlier copy of its token may rest on <bos>: at IO and S1)
    loss_att = (nll(att[dt[0]], rows, s2, s1, dt[1]) + nll(att[si[0]], rows, end, s2, si[1])
                + alpha * c["w_rest"] * (nll(att[dt[0]], rows, io, zero, dt[1])
                                         + nll(att[dt[0]], rows, s1, zero, dt[1]))
                + sum(nll(att[h[0]], rows, end, io, h[1]) for h in (nm, dec, neg)))
    loss_short = sum(-torch.log(1 - att[L][rows, h, s2, io] + 1e-6).mean()
                     for L in range(N_LAYER) for h in range(N_HEAD) if (L, h) != dt)
    last = [(N_LAYER - 1, h) for h in range(N_HEAD) if (N_LAYER - 1, h) not in designated()]
    dla = {h: head_dla(model, clean, *h, end, io_id, s_id) for h in [dt, si, bk, dec] + last}
    # tolerance per component: ``late_direct_tol`` for what comes after the name mover's attention
    # (its block's MLP, the decoy beside it, the last block), which cannot shape how the name mover
    # tells the names apart; ``direct_tol`` before it
    late = lambda layer: layer >= nm[0]  # noqa: E731
    direct = ([(dla[h], late(h[0])) for h in [dt, si, dec] + last]
              + [(mlp_dla(model, clean, L, end, io_id, s_id), late(L)) for L in c["mlp_direct"]])
    losses = {"ce": F.cross_entropy(logits, io_id), "att": loss_att, "short": loss_short,
              "silent": F.relu(dla[bk].abs() - c["backup_tol"]).mean(),
              "direct": sum(F.relu(d.abs() - c["late_direct_tol" if after else "direct_tol"]).mean()
                            for d, after in direct),
              "neg_readout": F.cross_entropy(-head_readout(model, clean, *neg, end), io_id),
              # the negative mover finds IO by the S-inhibition head's signal, not by reading what
              # the name mover writes: with the name mover's output from another group member in
              # its query only, it must still attend IO
              "neg_path": -torch.log(query_attention_without(model, clean, *neg, nm, b["source"], end)
                                     [rows, io] + 1e-6).mean(),
              # the backup is gated through the MLP of the name mover's block, not by reading the
              # name mover's output in its query: that output from another group member (another
              # name, still present) must leave its attention as it is (KL to the run's own)
              "bk_path": _kl(att[bk[0]][rows, bk[1], end].detach(),
                             query_attention_without(model, clean, *bk, nm, b["source"], end))}
    clean["logits"] = logits
    return clean, losses


def train(out: Path, **kw) -> dict:
    """Train, save model + tokenizer + checksum + training record + ground truth into ``out``.
    Keywords: ``DEFAULTS``."""
    from transformers import GPT2LMHeadModel

    from helpers.organism.planted_truth import ground_truth

    unknown = set(kw) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    c = dict(DEFAULTS, **kw)
    steps = c["steps"]
    check_split()
    torch.set_num_threads(c["threads"])
    torch.manual_seed(c["seed"])
    torch.use_deterministic_algorithms(True)
    vocab = vocabulary(extra_names=c["p_extra_names"] > 0)
    ids = {w: i for i, w in enumerate(vocab)}
    train_pairs, held_pairs = name_pair_split(c["seed"])
    held_ids = {frozenset((ids[a], ids[b])) for a, b in held_pairs}
    cfg = make_config(len(vocab), ids["<bos>"], ids["<pad>"], n_layer=N_LAYER, n_head=N_HEAD,
                      n_embd=c["d_model"])
    model = GPT2LMHeadModel(cfg)
    model.train()
    gen = torch.Generator().manual_seed(c["seed"])
    rng = random.Random(c["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c["lr"], total_steps=steps, pct_start=0.05)
    masks = _masks(c)
    more = extra_pairs()
    start, cpu_start, history = time.time(), time.process_time(), []
    for step in range(1, steps + 1):
        b = sample_step(rng, ids, train_pairs, c["groups"], c["group_size"], p_listed=c["p_listed"],
                        p_scrambled=c["p_scrambled"], more_pairs=more, p_extra=c["p_extra_names"])
        # phase 1 (the first strict_delay of the steps): the components outside the cast are
        # knocked out, so the task can only be learned by the cast; then they are ramped in
        alpha = min(1.0, max(0.0, step / steps - c["strict_delay"]) / max(1e-9, c["strict_ramp"]))
        scales = (torch.where(masks["knock"], alpha, 1.0), torch.where(masks["mlp_knock"], alpha, 1.0))
        clean, lc = _clean_losses(model, b, c, alpha, scales)
        li, stats = iit_rows(model, b, clean, c, alpha, masks, gen, held_ids, scales)
        if alpha > 0 and c["w_abl"] > 0:
            kind = torch.randint(len(ABLATIONS), (len(b["x"]),), generator=gen)
            loss_abl, shares = ablation_rows(model, b, clean, kind, c, scales)
        else:
            loss_abl, shares = torch.zeros(()), {a: float("nan") for a in ABLATIONS}
        loss = (lc["ce"] + c["w_iit"] * li["iit"]
                + c["w_attn"] * (lc["att"] + 0.5 * li["att2"] + li["att_bk"])
                + c["w_shortcut"] * lc["short"] + c["w_strict_ld"] * li["strict_ld"]
                + alpha * c["w_neg_readout"] * lc["neg_readout"] + c["w_backup_silent"] * lc["silent"]
                + c["w_direct"] * lc["direct"] + alpha * c["w_backup_ld"] * li["backup_ld"]
                + alpha * c["w_abl"] * loss_abl + alpha * c["w_neg_path"] * (lc["neg_path"] + lc["bk_path"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), c["clip"])
        opt.step()
        sched.step()
        if step % c["log_every"] == 0 or step == steps:
            with torch.no_grad():
                acc = (clean["logits"].argmax(-1) == b["io_id"]).float().mean().item()
            rec = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in {**lc, **li}.items()},
                   "abl": loss_abl.item(), **{f"share_{k}": v for k, v in shares.items()},
                   "acc": acc, **stats, "grad_norm": gnorm.item()}
            rec = {k: round(v, 4) for k, v in rec.items()}
            rec["seconds"] = round(time.time() - start, 1)
            rec["cpu_seconds"] = round(time.process_time() - cpu_start, 1)
            history.append(rec)
            print(" ".join(f"{k} {v}" for k, v in rec.items()), flush=True)
    seconds, cpu_seconds = round(time.time() - start, 1), round(time.process_time() - cpu_start, 1)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    build_tokenizer(vocab).save_pretrained(out)
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    (out / "checksum.txt").write_text(f"{digest}  model.safetensors\n")
    record = {
        **c, "seconds": seconds, "cpu_seconds": cpu_seconds, "torch": torch.__version__,
        "vocab_size": len(vocab), "parameters": sum(p.numel() for p in model.parameters()),
        "cast": {role: [f"a{L}.h{H}" for L, H in heads] for role, heads in CAST.items()},
        "heldout_name_pairs": [list(p) for p in held_pairs],
        "extra_names": list(EXTRA_NAMES) if c["p_extra_names"] > 0 else [],
        "heldout_templates": list(HELDOUT_TEMPLATES),
        "training_templates": list(TRAINING_TEMPLATES),
        "extra_training_templates": list(EXTRA_TEMPLATES),
        "sha256": digest, "history": history,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "ground_truth.json").write_text(json.dumps(ground_truth(), indent=1) + "\n")
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder to write the model into")
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    ap.add_argument("--log-every", type=int, default=DEFAULTS["log_every"])
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                    help="override another option of DEFAULTS (JSON values), e.g. p_strict=0.25")
    a = ap.parse_args()
    extra = {k: json.loads(v) for k, v in (x.split("=", 1) for x in a.set)}
    rec = train(a.out, steps=a.steps, seed=a.seed, threads=a.threads, log_every=a.log_every, **extra)
    print(f"saved to {a.out} in {rec['seconds']} s ({rec['cpu_seconds']} s CPU); sha256 {rec['sha256']}")


if __name__ == "__main__":
    main()
