"""``helpers.circuits.ioi_classes`` (finding the IOI circuit the way Wang et al. did) against independent
computations and exact identities.

* ``direct_logit_attribution``: the heads' direct contributions plus the embeddings', every MLP's,
  every output-projection bias's and the final norm's bias (all through the final norm with its
  scale frozen at the run's final-norm input) add up to the run's logit difference.  Every term
  but the heads' is computed here with plain ``register_forward_(pre_)hook`` on the transformers
  modules inside the nnsight model (``helpers.models.hf_model``), module paths spelled out below;
  the per-head values are also compared with a head-by-head reference.  float64, tolerance 1e-8.
  Models: the bundled GPT-2-family ``ioi-tiny`` and a tiny random Llama with grouped-query
  attention (4 query heads, 2 key/value heads; ``tests/tiny_models.py``).
* ``attention_to_roles`` against ``helpers.attention_patterns`` read at the roles' positions.
* ``classify`` / ``gpt2_comparison`` on small hand-made tensors (3 blocks x 2 heads), boundary
  values included; ``GPT2_SMALL`` against Wang et al.'s Figure 2 typed in again here.
* ``receivers`` (grouped-query naming) and that ``path_patch`` accepts what it names.
* ``head_grid`` against the result's own ``change`` placed by hand.
* ``behaviour`` against an independent plain forward of the same prompts.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import helpers as H
from helpers.circuits import ioi_classes as C
from helpers.models import hf_model

TOL = 1e-8

# module paths, spelled out here (not read from helpers' anatomy)
PATHS = {"gpt2": dict(blocks="transformer.h", o_proj="attn.c_proj", mlp="mlp",
                      norm="transformer.ln_f", unembed="lm_head"),
         "llama": dict(blocks="model.layers", o_proj="self_attn.o_proj", mlp="mlp",
                       norm="model.norm", unembed="lm_head")}


def _get(root, path):
    for name in path.split("."):
        root = getattr(root, name)
    return root


def _ld(logits, pairs):
    rows = torch.arange(len(pairs))
    return logits[rows, pairs.answer_ids] - logits[rows, pairs.distractor_ids]


def _o_weight(mod):
    """The output projection as ``z @ W (+ b)``: ``W`` ``[n_heads * d_head, d_model]``."""
    w = mod.weight.detach()
    return w.T if isinstance(mod, torch.nn.Linear) else w  # GPT-2's Conv1D stores [in, out]


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def gpt2_case(bundled64):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=4, seed=1)
    return "gpt2", bundled64, pairs


@pytest.fixture(scope="module")
def llama_case(tmp_path_factory):
    from tiny_models import save_random_model

    path = save_random_model(tmp_path_factory.mktemp("ioi-llama") / "llama", "llama", seed=3)
    model = H.load_model(path, dtype="float64")
    cfg = hf_model(model).config
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    pairs = H.ioi_pairs(model.tokenizer, n=3, seed=5)
    return "llama", model, pairs


@pytest.fixture(params=["gpt2_case", "llama_case"])
def case(request):
    return request.getfixturevalue(request.param)


# --------------------------------------------------------------------------- the hooks reference

@torch.no_grad()
def _o_proj_inputs(hf, family, ids):
    """Every block's output-projection input ``[n, seq, n_heads * d_head]`` of a plain forward."""
    p, out, handles = PATHS[family], {}, []
    for layer, block in enumerate(_get(hf, p["blocks"])):
        handles.append(_get(block, p["o_proj"]).register_forward_pre_hook(
            lambda m, a, layer=layer: out.__setitem__(layer, a[0].detach().clone())))
    try:
        hf(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out


@torch.no_grad()
def _reference(hf, family, ids, pairs, replace=None):
    """A plain-hooks forward of ``ids`` (``replace``: ``{layer: (cols, values [seq, k])}`` written
    into the output projection's input) and the direct logit-difference terms of its last
    position: ``logit_diff`` (of the forward's logits), ``heads`` ``[n, layers, heads]``,
    ``embed``, ``mlp`` / ``o_bias`` ``[n, layers]``, ``norm_bias`` ``[n]``."""
    p = PATHS[family]
    blocks = _get(hf, p["blocks"])
    norm, unembed = _get(hf, p["norm"]), _get(hf, p["unembed"])
    cfg = hf.config
    n_heads = cfg.num_attention_heads
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    replace = replace or {}
    saved: dict = {"z": {}, "mlp": {}}
    handles = []

    def block0_in(m, args, kwargs):
        saved["embed"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    handles.append(blocks[0].register_forward_pre_hook(block0_in, with_kwargs=True))
    for layer, block in enumerate(blocks):
        def pre(m, a, layer=layer):
            z = a[0].clone()
            if layer in replace:
                cols, values = replace[layer]
                z[..., cols] = values.to(z.dtype)
            saved["z"][layer] = z.clone()
            return (z,) + tuple(a[1:])
        handles.append(_get(block, p["o_proj"]).register_forward_pre_hook(pre))
        handles.append(_get(block, p["mlp"]).register_forward_hook(
            lambda m, a, o, layer=layer: saved["mlp"].__setitem__(layer, o.detach().clone())))
    handles.append(norm.register_forward_pre_hook(
        lambda m, a: saved.__setitem__("x", a[0].detach().clone())))
    if family == "llama":
        # LlamaRMSNorm computes in float32 even in a float64 model: redo the final norm in
        # float64 so that the logits are exact to float64 precision (checked against the
        # unhooked forward at float32 precision in the test)
        def rms64(m, a, o):
            x = a[0]
            return m.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + m.variance_epsilon))
        handles.append(norm.register_forward_hook(rms64))
    try:
        logits = hf(input_ids=ids, use_cache=False).logits[:, -1]
    finally:
        for h in handles:
            h.remove()

    x = saved["x"][:, -1]
    if family == "gpt2":  # LayerNorm: centre, divide by the standard deviation
        centre = True
        scale = norm.weight.detach() / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps)
        beta = norm.bias.detach()
    else:  # RMSNorm: divide by the root mean square
        centre = False
        scale = norm.weight.detach() / torch.sqrt(x.pow(2).mean(-1, keepdim=True)
                                                  + norm.variance_epsilon)
        beta = torch.zeros_like(norm.weight)
    w_u = unembed.weight.detach()
    direction = w_u[pairs.answer_ids] - w_u[pairs.distractor_ids]          # [n, d_model]

    def through_norm(v):  # v [n, d_model] at the last position
        v = v - v.mean(-1, keepdim=True) if centre else v
        return (v * scale * direction).sum(-1)

    n, L = len(pairs), len(blocks)
    heads = torch.zeros(n, L, n_heads, dtype=x.dtype)
    mlp, o_bias = torch.zeros(n, L, dtype=x.dtype), torch.zeros(n, L, dtype=x.dtype)
    for layer, block in enumerate(blocks):
        o_proj = _get(block, p["o_proj"])
        w = _o_weight(o_proj)
        z = saved["z"][layer][:, -1]
        for h in range(n_heads):
            cols = slice(h * d_head, (h + 1) * d_head)
            heads[:, layer, h] = through_norm(z[:, cols] @ w[cols])
        if o_proj.bias is not None:
            o_bias[:, layer] = through_norm(o_proj.bias.detach().expand(n, -1))
        mlp[:, layer] = through_norm(saved["mlp"][layer][:, -1])
    return dict(logit_diff=_ld(logits, pairs), heads=heads, embed=through_norm(saved["embed"][:, -1]),
                mlp=mlp, o_bias=o_bias, norm_bias=(beta * direction).sum(-1), logits=logits)


def _mean_replacement(hf, family, pairs, heads, d_head):
    """``{layer: (cols, mean over the clean prompts [seq, k])}`` of ``heads``' o_proj-input
    slices, position by position (from an unablated clean forward)."""
    z = _o_proj_inputs(hf, family, pairs.clean_ids)
    out: dict = {}
    for name in heads:
        layer, head = (int(s) for s in name[1:].split("H"))
        cols = list(range(head * d_head, (head + 1) * d_head))
        prev = out.get(layer, [])
        out[layer] = prev + cols
    return {layer: (torch.tensor(cols), z[layer][:, :, cols].mean(0))
            for layer, cols in out.items()}


def _check_identity(dla, ref):
    """DLA summed over heads + the other direct terms = the run's logit difference, per prompt."""
    rest = ref["embed"] + ref["mlp"].sum(1) + ref["o_bias"].sum(1) + ref["norm_bias"]
    total = dla.sum((1, 2)) + rest
    assert (total - ref["logit_diff"]).abs().max() < TOL
    # the reference's own per-head terms add up too (a check of the reference itself)
    assert (ref["heads"].sum((1, 2)) + rest - ref["logit_diff"]).abs().max() < TOL
    assert (dla - ref["heads"]).abs().max() < TOL  # head by head as well
    assert dla.abs().max() > 1e-3 and dla.std() > 1e-3  # not zeros, not one constant


# --------------------------------------------------------------------------- direct logit attribution

@pytest.mark.parametrize("run", ["clean", "corrupted"])
def test_head_dla_plus_the_other_direct_terms_is_the_runs_logit_difference(case, run):
    family, model, pairs = case
    hf = hf_model(model)
    f = H.model_facts(model)
    dla = C.direct_logit_attribution(model, pairs, run=run)
    assert dla.shape == (len(pairs), f.n_layers, f.n_heads) and dla.dtype == torch.float64
    ids = pairs.clean_ids if run == "clean" else pairs.corrupted_ids
    ref = _reference(hf, family, ids, pairs)
    _check_identity(dla, ref)
    with torch.no_grad():  # the reference's logits are the model's own (no hooks)
        plain = hf(input_ids=ids, use_cache=False).logits[:, -1]
    assert (_ld(plain, pairs) - ref["logit_diff"]).abs().max() < (TOL if family == "gpt2" else 1e-5)
    if family == "gpt2":
        # the final norm's bias is a term of its own in GPT-2 (LayerNorm with a bias)
        assert ref["norm_bias"].abs().max() > 1e-3


@pytest.mark.parametrize("run", ["clean", "corrupted"])
def test_dla_with_mean_ablated_heads_adds_up_to_the_ablated_runs_logit_difference(case, run):
    family, model, pairs = case
    hf = hf_model(model)
    f = H.model_facts(model)
    ablated = ["L0H1", "L1H2"] if family == "llama" else ["L0H1", "L2H3", "L2H0"]
    dla = C.direct_logit_attribution(model, pairs, ablate=ablated, run=run)
    replace = _mean_replacement(hf, family, pairs, ablated, f.d_head)
    ids = pairs.clean_ids if run == "clean" else pairs.corrupted_ids
    ref = _reference(hf, family, ids, pairs, replace)
    _check_identity(dla, ref)
    unablated = _reference(hf, family, ids, pairs)
    assert (ref["logit_diff"] - unablated["logit_diff"]).abs().max() > 1e-4  # it did something
    for name in ablated:  # an ablated head's DLA is that of its mean output
        layer, head = (int(s) for s in name[1:].split("H"))
        assert (dla[:, layer, head] - ref["heads"][:, layer, head]).abs().max() < TOL
    if run == "clean":  # the same ablation as helpers.ablate's mean ablation, both methods
        for method in ("fast", "batched"):
            got = H.ablate(model, pairs, [ablated], "mean", method=method)
            assert got.method == method
            diff = (got.values["logit_diff"][:, 0] - ref["logit_diff"]).abs().max()
            assert diff < (TOL if family == "gpt2" else 1e-5), method


def test_dla_refuses_an_unknown_run(gpt2_case):
    _, model, pairs = gpt2_case
    with pytest.raises(ValueError, match="run='patched' is not a valid choice.*'clean'.*'corrupted'"):
        C.direct_logit_attribution(model, pairs, run="patched")


# --------------------------------------------------------------------------- attention to roles

def test_attention_to_roles_is_the_mean_pattern_at_the_roles_positions(case):
    _, model, pairs = case
    f = H.model_facts(model)
    got = C.attention_to_roles(model, pairs)
    assert set(got) == set(C.ROUTES)
    pos = dict(pairs.positions)
    pos["S1+1"] = pos["S1"] + 1
    patterns = [H.attention_patterns(model, pairs.clean_ids, layer).double()
                for layer in range(f.n_layers)]
    for route, (q, k) in C.ROUTES.items():
        assert got[route].shape == (f.n_layers, f.n_heads)
        want = torch.stack([p[:, :, pos[q], pos[k]].mean(0) for p in patterns])
        assert (got[route].double() - want).abs().max() < 1e-6, route
    # the routes read different cells (a wrong index would make them coincide)
    assert (got["END->IO"] - got["END->S2"]).abs().max() > 1e-3


def test_ablating_a_head_leaves_its_own_blocks_attention_and_moves_later_blocks(gpt2_case):
    """Mean ablation replaces the output projection's input: block 0's attention weights come
    before it (unchanged), later blocks read the changed residual stream."""
    _, model, pairs = gpt2_case
    plain = C.attention_to_roles(model, pairs)
    ablated = C.attention_to_roles(model, pairs, ablate=["L0H1", "L0H2"])
    for route in C.ROUTES:
        assert (plain[route][0] - ablated[route][0]).abs().max() < 1e-7
    assert max((plain[r][1:] - ablated[r][1:]).abs().max().item() for r in C.ROUTES) > 1e-4


# --------------------------------------------------------------------------- classify

def _tensor(values):
    return torch.tensor(values, dtype=torch.float64)


def _synthetic():
    """3 blocks x 2 heads.  ``direct`` is the direct path's share (name movers of both signs)."""
    low = torch.zeros(3, 2, dtype=torch.float64)
    attention = {r: low.clone() for r in C.ROUTES}
    attention["END->IO"] = _tensor([[0.30, 0.30], [0.30 - 1e-9, 0.9], [0.5, 0.5]])
    attention["END->S2"] = _tensor([[0.1, 0.6], [0.6, 0.6], [0.3, 0.2]])
    attention["backup:END->IO"] = _tensor([[0.9, 0.9], [0.9, 0.9], [0.9, 0.1]])
    direct = _tensor([[0.05, 0.05 - 1e-9], [0.40, -0.05], [0.20, -0.30]])
    shares = {"name mover": direct, "negative name mover": direct,
              "S-inhibition": _tensor([[0.9, 0.2], [0.01, 0.3], [0.04, 0.1]]),
              "induction": _tensor([[0.01, 0.02], [0.03, -0.5], [0.0, 0.04]]),
              "backup name mover": _tensor([[0.1, 0.2], [0.3, 0.0], [0.25, 0.6]])}
    return attention, shares


def _rows(table, name):
    sub = table[table["class"] == name]
    return list(zip(sub["head"], sub["member"]))


def test_a_head_is_a_member_only_when_both_criteria_hold_boundaries_included():
    attention, shares = _synthetic()
    table = C.classify(attention, shares, min_attention=0.3, min_share=0.05, runners_up=2)
    assert list(table.columns) == ["class", "head", "attention", "share", "member"]
    # name movers: L0H0 sits exactly on both thresholds (member); L0H1's share is 1e-9 short,
    # L1H0's attention is 1e-9 short (share 0.4), L2H0 meets both
    nm = _rows(table, "name mover")
    assert [h for h, m in nm if m] == ["L2H0", "L0H0"]  # ordered by share, largest first
    # runners-up: the 2 best non-members by share, L1H0 (0.4) then L0H1 (0.05 - 1e-9); every
    # other head is a member of some class, so no best-attending non-member is added
    assert [h for h, m in nm if not m] == ["L1H0", "L0H1"]
    row = table[(table["class"] == "name mover") & (table["head"] == "L1H0")].iloc[0]
    assert row["attention"] == pytest.approx(0.3 - 1e-9, abs=1e-15) and row["share"] == 0.4


def test_negative_name_movers_need_a_negative_share_at_least_min_share_in_size():
    attention, shares = _synthetic()
    table = C.classify(attention, shares, min_attention=0.3, min_share=0.05, runners_up=2)
    nnm = _rows(table, "negative name mover")
    # L2H1 (-0.30, attention 0.5) and L1H1 (-0.05 exactly, attention 0.9); positive shares never
    assert [h for h, m in nnm if m] == ["L2H1", "L1H1"]
    # runners-up by signed share (-share): L0H1 (-0.05 + 1e-9) then L0H0 (-0.05)
    assert [h for h, m in nnm if not m] == ["L0H1", "L0H0"]
    shares_col = table[table["class"] == "negative name mover"]["share"].tolist()
    assert shares_col[:2] == [-0.30, -0.05]  # the share is reported with its sign


def test_s_inhibition_membership_and_runner_up_count():
    attention, shares = _synthetic()
    for k in (0, 1, 3):
        table = C.classify(attention, shares, runners_up=k)
        si = _rows(table, "S-inhibition")
        # L0H0 has share 0.9 but attention 0.1; L2H0 attention exactly 0.3 but share 0.04
        assert [h for h, m in si if m] == ["L1H1", "L0H1"]
        assert [h for h, m in si if not m] == ["L0H0", "L2H1", "L2H0"][:k]


def test_an_empty_class_still_lists_its_runners_up_ordered_by_signed_share():
    attention, shares = _synthetic()
    attention["S2->S1+1"] = torch.full((3, 2), 0.9, dtype=torch.float64)
    table = C.classify(attention, shares, min_share=0.05, runners_up=3)
    ind = _rows(table, "induction")
    # every share is below 0.05: no member; best three by share, ties by block then head
    assert ind == [("L2H1", False), ("L1H0", False), ("L0H1", False)]
    table = C.classify(attention, shares, min_share=0.04, runners_up=3)
    assert [h for h, m in _rows(table, "induction") if m] == ["L2H1"]  # 0.04 >= 0.04
    # classes without shares are left out; classes with shares are all there
    assert set(table["class"]) == set(shares)


def test_the_best_attending_head_of_no_class_is_listed_beside_the_best_by_share():
    low = torch.zeros(2, 2, dtype=torch.float64)
    attention = {r: low.clone() for r in C.ROUTES}
    attention["END->IO"] = _tensor([[0.9, 0.1], [0.2, 0.1]])
    share = _tensor([[0.01, 0.2], [0.1, 0.0]])  # no name mover: L0H0 attends but does nothing
    table = C.classify(attention, {"name mover": share}, runners_up=1)
    assert _rows(table, "name mover") == [("L0H1", False), ("L0H0", False)]
    # once L0H0 is a member of another class, the next best-attending head is listed instead
    negative = share.clone()
    negative[0, 0] = -0.3
    table = C.classify(attention, {"name mover": share, "negative name mover": negative}, runners_up=1)
    assert _rows(table, "name mover") == [("L0H1", False), ("L1H0", False)]


def test_backup_name_movers_use_their_own_attention_and_exclude_name_movers_of_both_signs():
    attention, shares = _synthetic()
    table = C.classify(attention, shares, min_attention=0.3, min_share=0.05, runners_up=5)
    backup = _rows(table, "backup name mover")
    members = [h for h, m in backup if m]
    # backup criteria (backup attention, backup share) hold for L0H0, L0H1, L1H0, L2H0;
    # L2H1 has the largest backup share but backup attention 0.1 (its END->IO attention 0.5
    # does not count).  L0H0 and L2H0 meet both but are name movers: excluded.  (A negative
    # name mover meeting the backup criteria: next test.)
    assert members == ["L1H0", "L0H1"]
    assert "L0H0" not in members and "L2H0" not in members
    row = table[(table["class"] == "backup name mover") & (table["head"] == "L1H0")].iloc[0]
    assert row["attention"] == 0.9  # the backup attention is the one reported


def test_a_negative_name_mover_meeting_the_backup_criteria_is_not_a_backup():
    attention, shares = _synthetic()
    shares["backup name mover"] = shares["backup name mover"].clone()
    shares["backup name mover"][1, 1] = 0.5  # L1H1: a negative name mover (share -0.05, att 0.9)
    table = C.classify(attention, shares)
    backup = _rows(table, "backup name mover")
    assert ("L1H1", True) not in backup
    assert "L1H1" in [h for h, m in _rows(table, "negative name mover") if m]
    # without the negative class in ``shares`` nothing excludes it
    del shares["negative name mover"]
    table = C.classify(attention, shares)
    assert ("L1H1", True) in _rows(table, "backup name mover")


def test_backup_attention_falls_back_to_the_routes_attention_when_not_given():
    attention, shares = _synthetic()
    del attention["backup:END->IO"]
    table = C.classify(attention, shares, runners_up=0)
    # END->IO: L0H1 (0.30) passes, L1H0 (0.3 - 1e-9) does not; L2H1 (0.5, share 0.6) now passes
    # but is a negative name mover
    assert [h for h, m in _rows(table, "backup name mover") if m] == ["L0H1"]


# --------------------------------------------------------------------------- receivers

def test_receivers_name_query_heads_and_key_value_heads_once_each():
    gqa = SimpleNamespace(n_heads=9, n_kv_heads=3)
    heads = ["L5H4", "L5H3", "L5H0", "L6H8", "L6H7"]
    assert C.receivers(heads, "q", "END", gqa) == ["L5H4.q@END", "L5H3.q@END", "L5H0.q@END",
                                                   "L6H8.q@END", "L6H7.q@END"]
    # 3 query heads per key/value head: 0-2 -> KV0, 3-5 -> KV1, 6-8 -> KV2
    assert C.receivers(heads, "k", "S1+1", gqa) == ["L5KV1.k@S1+1", "L5KV0.k@S1+1", "L6KV2.k@S1+1"]
    assert C.receivers(["L5H4"], "v", 7, gqa) == ["L5KV1.v@7"]
    full = SimpleNamespace(n_heads=9, n_kv_heads=9)
    assert C.receivers(heads[:2], "v", "S2", full) == ["L5H4.v@S2", "L5H3.v@S2"]
    assert C.receivers(["L1H1", "L1H1"], "q", "END", full) == ["L1H1.q@END"]


def test_path_patch_accepts_the_receiver_names_on_a_grouped_query_model(llama_case):
    _, model, pairs = llama_case
    facts = H.model_facts(model)
    assert facts.n_kv_heads < facts.n_heads
    names = (C.receivers(["L1H0", "L1H1", "L1H3"], "v", "S2", facts)
             + C.receivers(["L1H2"], "k", pairs.positions["S1"] + 1, facts)
             + C.receivers(["L1H3"], "q", "END", facts))
    s1 = pairs.positions["S1"]
    assert names == ["L1KV0.v@S2", "L1KV1.v@S2", f"L1KV1.k@{s1 + 1}", "L1H3.q@END"]
    r = H.path_patch(model, pairs[:2], ["L0H1"], names, metrics=("logit_diff",))
    assert r.labels["receiver"] == names and r.values["logit_diff"].shape == (2, 1, 4)


# --------------------------------------------------------------------------- head grid

@pytest.mark.parametrize("normalise", [True, False])
def test_head_grid_sums_a_sender_by_receiver_result_over_receivers(gpt2_case, normalise):
    _, model, pairs = gpt2_case
    f = H.model_facts(model)
    senders = {"L0H1": (0, 1), "L1H2@S2": (1, 2), "L0H3": (0, 3), "L1H0": (1, 0)}
    r = H.path_patch(model, pairs, list(senders), ["L2H0.q@END", "L2H1.v@S2", "logits"])
    assert r.dims == ("sender", "receiver")
    grid = C.head_grid(r, normalise, n_layers=f.n_layers, n_heads=f.n_heads)
    assert grid.shape == (f.n_layers, f.n_heads)
    change = r.change(normalise)
    want = torch.zeros(f.n_layers, f.n_heads, dtype=change.dtype)
    for label, (layer, head) in senders.items():
        want[layer, head] = change[r.labels["sender"].index(label)].sum()
    assert (grid - want).abs().max() < 1e-12
    assert want.abs().max() > 1e-6
    with pytest.raises(ValueError, match="give n_layers and n_heads"):
        C.head_grid(r, normalise)


def test_head_grid_pads_a_layer_by_head_result_to_every_block(gpt2_case):
    _, model, pairs = gpt2_case
    f = H.model_facts(model)
    r = H.path_patch(model, pairs, "heads", "L2H0.q@END", metrics=("logit_diff",))
    assert r.dims == ("layer", "head") and r.change().shape == (2, f.n_heads)
    grid = C.head_grid(r, n_layers=f.n_layers)
    assert grid.shape == (f.n_layers, f.n_heads)
    assert torch.equal(grid[:2], r.change()) and torch.equal(grid[2:], torch.zeros(2, f.n_heads,
                                                                                    dtype=grid.dtype))
    assert torch.equal(C.head_grid(r, False, n_layers=f.n_layers)[:2], r.change(False))
    assert C.head_grid(r).shape == (2, f.n_heads)  # no n_layers: as it is


# --------------------------------------------------------------------------- behaviour

def test_behaviour_equals_an_independent_forward_and_its_intervals_hold_the_values(
        bundled64, bundled_plain64):
    from helpers.data.prompts import (
        NAMES,
        OBJECTS,
        PLACES,
        TEMPLATES,
        random_ioi_prompts,
        single_token_words,
    )
    from helpers.methods.observe import ioi_per_prompt

    n, seed, n_boot = 24, 3, 300
    tok = bundled64.tokenizer
    got = C.behaviour(bundled64, n=n, seed=seed, n_boot=n_boot)
    prompts = random_ioi_prompts(n, seed=seed, templates=TEMPLATES,
                                 names=single_token_words(tok, NAMES),
                                 places=single_token_words(tok, PLACES),
                                 objects=single_token_words(tok, OBJECTS))
    assert len({p.template for p in prompts}) > 1 and {p.order for p in prompts} == {"ABBA", "BABA"}

    def word_id(w):
        ids = tok(f"x {w}", add_special_tokens=False)["input_ids"]
        assert ids[:-1] == tok("x", add_special_tokens=False)["input_ids"]
        return ids[-1]

    top1, diff = np.zeros(n), np.zeros(n)
    with torch.no_grad():
        for i, p in enumerate(prompts):  # one prompt at a time: no padding, no batching
            ids = torch.tensor([tok(p.text, add_special_tokens=True)["input_ids"]])
            logits = bundled_plain64(input_ids=ids, use_cache=False).logits[0, -1]
            io, s = word_id(p.io), word_id(p.s)
            top1[i] = float(logits.argmax().item() == io)
            diff[i] = (logits[io] - logits[s]).item()
    assert got.n == n
    assert got.top1 == top1.mean() and got.io_over_s == (diff > 0).mean()
    assert abs(got.logit_diff - diff.mean()) < 1e-9
    # helpers' own per-prompt function agrees prompt by prompt
    per = ioi_per_prompt(bundled64, prompts)
    assert np.abs(per["logit_diff"].numpy() - diff).max() < 1e-9
    assert (per["top1"].numpy() == top1).all()
    # percentile bootstrap, recomputed resample by resample
    idx = np.random.default_rng([seed, 0]).integers(0, n, size=(n_boot, n))
    for value, ci, x, rate in [(got.top1, got.top1_ci, top1, True),
                               (got.io_over_s, got.io_over_s_ci, (diff > 0).astype(float), True),
                               (got.logit_diff, got.logit_diff_ci, diff, False)]:
        means = np.array([x[row].mean() for row in idx])
        lo, hi = np.quantile(means, [0.025, 0.975])
        assert ci[0] == pytest.approx(lo, abs=1e-9) and ci[1] == pytest.approx(hi, abs=1e-9)
        assert ci[0] <= value <= ci[1]
        if rate:
            assert 0.0 <= ci[0] <= ci[1] <= 1.0 and 0.0 <= value <= 1.0
    assert got.logit_diff_ci[1] - got.logit_diff_ci[0] > 0  # a real spread
    table = got.table()
    assert list(table["value"]) == [got.top1, got.io_over_s, got.logit_diff]


# --------------------------------------------------------------------------- GPT-2 comparison

# Wang et al. (2022), Figure 2: GPT-2 small's IOI circuit, typed in again (block.head)
PUBLISHED = {
    "name mover": "9.9 9.6 10.0",
    "negative name mover": "10.7 11.10",
    "S-inhibition": "7.3 7.9 8.6 8.10",
    "induction": "5.5 5.8 5.9 6.9",
    "duplicate token": "0.1 0.10 3.0",
    "previous token": "2.2 4.11",
    "backup name mover": "10.10 10.6 10.2 10.1 11.2 9.7 9.0 11.9",
}


def test_gpt2_small_lists_the_published_heads_of_every_class():
    assert set(C.GPT2_SMALL) == {c.name for c in C.CLASSES} == set(PUBLISHED)
    for name, heads in PUBLISHED.items():
        want = {tuple(int(s) for s in h.split(".")) for h in heads.split()}
        assert set(C.GPT2_SMALL[name]) == want, name


def test_gpt2_comparison_gives_depth_fractions_and_none_found_for_empty_classes():
    attention, shares = _synthetic()
    table = C.classify(attention, shares, min_attention=0.3, min_share=0.05)
    cmp = C.gpt2_comparison(table, n_layers=3)
    assert list(cmp.index) == [c.name for c in C.CLASSES]
    # name movers L2H0, L0H0: blocks 0..2 of 3 -> 1/3 .. 3/3
    assert cmp.loc["name mover", "this model"] == "L2H0, L0H0"
    assert cmp.loc["name mover", "depth"] == f"{1 / 3:.2f}-{3 / 3:.2f}" == "0.33-1.00"
    # S-inhibition L1H1, L0H1 -> 0.33-0.67; negative name movers L2H1, L1H1 -> 0.67-1.00
    assert cmp.loc["S-inhibition", "depth"] == "0.33-0.67"
    assert cmp.loc["negative name mover", "depth"] == "0.67-1.00"
    # backup name movers L1H0, L0H1: still 0.33-0.67
    assert cmp.loc["backup name mover", "depth"] == "0.33-0.67"
    # one block only: a single fraction
    one = C.gpt2_comparison(C.classify(attention, shares, min_share=0.35), n_layers=3)
    assert one.loc["name mover", "this model"] == "none found"  # L1H0 (0.4) misses attention
    assert one.loc["S-inhibition", "this model"] == "none found"
    assert one.loc["name mover", "depth"] == "-"
    # classes with no shares and classes with none: "none found"
    for name in ("induction", "duplicate token", "previous token"):
        assert cmp.loc[name, "this model"] == "none found" and cmp.loc[name, "depth"] == "-"
    for name, heads in C.GPT2_SMALL.items():
        listed = cmp.loc[name, "GPT-2 small"].split(", ")
        assert sorted(listed) == sorted(f"L{b}H{h}" for b, h in heads)
        blocks = [b for b, _ in heads]
        lo, hi = (min(blocks) + 1) / 12, (max(blocks) + 1) / 12
        want = f"{lo:.2f}" if lo == hi else f"{lo:.2f}-{hi:.2f}"
        assert cmp.loc[name, "GPT-2 depth"] == want
    assert cmp.loc["name mover", "GPT-2 depth"] == "0.83-0.92"
    assert cmp.loc["negative name mover", "GPT-2 depth"] == "0.92-1.00"


def test_gpt2_comparison_single_block_depth():
    attention, shares = _synthetic()
    shares = {"induction": shares["induction"]}
    attention["S2->S1+1"] = torch.full((3, 2), 0.9, dtype=torch.float64)
    table = C.classify(attention, shares, min_share=0.04)
    cmp = C.gpt2_comparison(table, n_layers=3)
    assert cmp.loc["induction", "this model"] == "L2H1"
    assert cmp.loc["induction", "depth"] == "1.00"
