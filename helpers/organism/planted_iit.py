"""The intervened runs of ``ioi-planted``'s recipe (``train_planted``): one strict-only row and one
interchange-intervention (IIT) row per clean row, in one batched ``forward``.

* strict rows: each non-designated head (and the decoy) and each MLP swapped from another group
  member with probability ``p_strict``; the logit difference must stay the clean one;
* IIT rows (``KINDS``): a designated head's output swapped (the duplicate-token / S-inhibition
  head from the twin: the answer flips; the name mover from another group member: the answer is
  that member's IO), or the name mover mean-ablated (``backup*``: the backup must answer, every
  non-designated component resampled), each with strictness noise ``p_strict_iit``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers.organism.planted_data import CAST, N_HEAD, N_LAYER
from helpers.organism.planted_losses import end_logits, forward, group_mean, mass, nll

#: IIT row kinds as flags: (duplicate-token swap, S-inhibition swap, name-mover swap, name mover
#: mean-ablated, donor of the duplicate-token / S-inhibition swap is another group member
#: (positional label) instead of the twin)
KINDS = {"dt": (1, 0, 0, 0, 0), "si": (0, 1, 0, 0, 0), "dt_pos": (1, 0, 0, 0, 1),
         "si_pos": (0, 1, 0, 0, 1), "nm": (0, 0, 1, 0, 0), "backup": (0, 0, 0, 1, 0),
         "backup_dt": (1, 0, 0, 1, 0), "backup_si": (0, 1, 0, 1, 0)}


def iit_rows(model, b: dict, clean: dict, c: dict, alpha: float, masks: dict, gen: torch.Generator,
             held_ids: set, scales: tuple) -> tuple[dict, dict]:
    """The strict and IIT rows (module docstring); returns their losses and accuracies."""
    (dt,), (si,), (nm,) = CAST["duplicate_token"], CAST["s_inhibition"], CAST["name_mover"]
    (dec,), (bk,), (neg,) = CAST["decoy"], CAST["backup_name_mover"], CAST["negative_name_mover"]
    x, end, io, s1, s2, io_id, s_id, src, twin = (b[k] for k in ("x", "end", "io", "s1", "s2", "io_id",
                                                                   "s_id", "source", "twin"))
    n_clean = len(x)
    rows = torch.arange(n_clean)
    logits = clean["logits"]
    ld_clean = (logits[rows, io_id] - logits[rows, s_id]).detach()
    z_clean = [z.detach() for z in clean["z"]]
    groups = int(b["group"].max()) + 1
    loo = group_mean(z_clean[nm[0]][:, :, nm[1]], b["group"], twin, groups)  # other names' mean
    kinds = list(c["kinds"])
    kind = [kinds[int(i)] for i in torch.randint(len(kinds), (n_clean,), generator=gen)]
    for i, k in enumerate(kind):  # a swapped name mover's label must not pair held-out names
        if k == "nm" and (frozenset((int(io_id[src[i]]), int(s_id[i]))) in held_ids
                          or frozenset((int(io_id[src[i]]), int(io_id[i]))) in held_ids):
            kind[i] = "dt"
    flags = torch.tensor([[0] * 5] * n_clean + [KINDS[k] for k in kind], dtype=torch.bool)
    r2 = torch.cat([rows, rows])
    n2 = len(r2)
    p_row = torch.full((n2, 1, 1), float(c["p_strict"]))
    p_row[n_clean:] = c["p_strict_iit"]
    # donors: the twin for the duplicate-token and S-inhibition swaps, a group member else
    from_twin = torch.zeros(n2, N_LAYER, N_HEAD, dtype=torch.bool)
    from_twin[:, dt[0], dt[1]] = flags[:, 0] & ~flags[:, 4]
    from_twin[:, si[0], si[1]] = flags[:, 1] & ~flags[:, 4]
    donor_z = [torch.where(from_twin[:, L, None, :, None], z[twin[r2]], z[src[r2]])
               for L, z in enumerate(z_clean)]
    backup_mode = flags[:, 3]
    # backup runs resample every non-designated component once strictness is on: only the
    # designated backup head may restore IO
    p_row[backup_mode] = c["p_strict_backup"]
    swap = masks["strict"][None] & (torch.rand(n2, N_LAYER, N_HEAD, generator=gen) < p_row)
    swap[:, bk[0], bk[1]] = (~backup_mode) & (torch.rand(n2, generator=gen) < p_row[:, 0, 0])
    swap[:, dt[0], dt[1]] = flags[:, 0]
    swap[:, si[0], si[1]] = flags[:, 1]
    swap[:, nm[0], nm[1]] = flags[:, 2]
    # the negative name mover: resampled in every IIT row but the backup's (so it can neither
    # help an answer nor act as a backup; in backup runs the backup must beat it), in strict rows
    # only while it is being phased in
    neg_swap = torch.rand(n2, generator=gen) < p_row[:, 0, 0] * (1 - alpha)
    neg_swap[n_clean:] = ~backup_mode[n_clean:]
    swap[:, neg[0], neg[1]] = neg_swap
    # off-role strictness (``off_role``): a designated head is designated only at its role's
    # position (duplicate token at S2, the others at END); elsewhere it is resampled like the rest
    seq_len = x.shape[1]
    pos = torch.arange(seq_len)[None]
    swap = swap[..., None].expand(n2, N_LAYER, N_HEAD, seq_len).clone()
    for h, role_pos in ((dt, s2), (si, end), (nm, end), (neg, end), (bk, end), (dec, end)):
        off = ((pos != role_pos[r2][:, None]) & (torch.rand(n2, 1, generator=gen) < p_row[:, 0])
               & c["off_role"])
        swap[:, h[0], h[1]] |= off
    mlp_swap = (torch.rand(n2, N_LAYER, generator=gen) < p_row[:, 0]) & masks["mlp_strict"][None]
    mlp_swap[:, nm[0]] &= ~backup_mode  # the MLP after the name mover may gate the backup
    mean_mask = torch.zeros(n2, N_LAYER, N_HEAD, dtype=torch.bool)
    mean_mask[:, nm[0], nm[1]] = backup_mode
    mean_z = [torch.zeros_like(donor_z[0]) for _ in range(N_LAYER)]
    mean_z[nm[0]][:, :, nm[1]] = loo[r2]
    run = forward(model, x[r2], swap, donor_z, mean_z, mean_mask, mlp_swap,
                  [m.detach()[src[r2]] for m in clean["mlp"]], *scales)
    logits2 = end_logits(model, run["resid"], end[r2])
    # labels from the high-level model: a twin's duplicate-token / S-inhibition output says the
    # other name is S, so the answer flips; a swapped name mover says the donor's IO (flipped
    # when the donor's S1 is in the other name slot)
    flipped = (flags[:, 0] | flags[:, 1]) & (~flags[:, 4] | (b["slot"][src[r2]] != b["slot"][r2]))
    label = torch.where(flipped, s_id[r2], io_id[r2])
    label = torch.where(flags[:, 2], io_id[src[r2]], label)
    ld2 = logits2[r2, io_id[r2]] - logits2[r2, s_id[r2]]
    scale = ld_clean.abs().mean().clamp(min=1.0)
    # the plain backup rows must keep ``takeover`` of the clean logit difference
    plain_backup = (backup_mode & ~flags[:, 0] & ~flags[:, 1]).float()
    backup_ld = (F.relu(c["takeover"] * ld_clean[r2].clamp(min=0) - ld2) / scale * plain_backup).sum() \
        / plain_backup.sum().clamp(min=1)
    # the movers attend to the answer's token: IO, or S1 and S2 when the answer flipped
    a2 = run["attn"]
    keys, use = [io[r2], s1[r2], s2[r2]], [~flipped, flipped, flipped]
    loss_att2 = (sum(mass(a2[h[0]], h[1], end[r2], keys, use) for h in (nm, neg, dec))
                 + nll(a2[si[0]], torch.arange(n2), end[r2], s2[r2], si[1]))
    bm = backup_mode.nonzero().flatten()
    loss_att_bk = (mass(a2[bk[0]][bm], bk[1], end[r2][bm], [k[bm] for k in keys], [u[bm] for u in use])
                   if len(bm) else torch.zeros(()))
    losses = {"iit": F.cross_entropy(logits2, label),
              "strict_ld": (((ld2[:n_clean] - ld_clean) / scale) ** 2).mean(),
              "att2": loss_att2, "att_bk": loss_att_bk, "backup_ld": backup_ld}
    hit = (logits2.argmax(-1) == label).float()
    stats = {"iit_acc": hit[n_clean:].mean().item(), "strict_acc": hit[:n_clean].mean().item()}
    for k in kinds:
        mask = torch.tensor([q == k for q in kind])
        stats[f"acc_{k}"] = hit[n_clean:][mask].mean().item() if mask.any() else float("nan")
    return losses, stats
