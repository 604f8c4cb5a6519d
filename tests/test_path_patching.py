"""Path patching (``helpers.methods.path_patching``) against the independent plain-hooks reference
(``tests/reference_paths.py``), the identities that hold exactly (each with its conditions), and
the errors bad input raises.

Models, all float64 (so "equal" means within 1e-10): the bundled model (GPT-2 family, trained),
a random 3-block GPT-2 and a random 3-block Llama with grouped-query attention (4 query heads
sharing 2 key/value heads), both with GPT-2's tokenizer (``tests/tiny_models.py``); and a tiny
2-block model of every family (bundled tokenizer) on each receiver kind.  Result labels are names
with ``@positions``, parsed back into the reference's tuples by ``_node``.
"""
from __future__ import annotations

import json

import pytest
import reference_hooks as ref
import reference_paths as rp
import torch
from tiny_models import FAMILIES, save_random_model

import helpers as H
from helpers.base.validate import json_text
from helpers.engine.fastpatch import supports_fast_path
from helpers.methods.path_patching import path_patch
from helpers.results.metrics import METRICS

TOL = 1e-10
METHODS = ("batched", "fast")


@pytest.fixture(scope="module", params=["bundled", "gpt2", "llama"])
def setup(request, random_models):
    """(family, nnsight model, plain transformers model, prompt pairs)."""
    from transformers import AutoModelForCausalLM

    if request.param == "bundled":
        model = request.getfixturevalue("bundled64")
        plain = request.getfixturevalue("bundled_plain64")
        return "gpt2", model, plain, H.ioi_pairs(model.tokenizer, n=2, seed=5, template=1)
    path = random_models[request.param]
    model = H.load_model(path, dtype="float64")
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64,
                                                 attn_implementation="eager").eval()
    return request.param, model, plain, H.ioi_pairs(model.tokenizer, n=2, seed=3)


def _runs(pairs, direction):
    """(base ids, source ids) of a direction."""
    if direction == "denoise":
        return pairs.corrupted_ids, pairs.clean_ids
    return pairs.clean_ids, pairs.corrupted_ids


def _ld(logits, pairs):
    rows = torch.arange(len(pairs))
    return logits[rows, pairs.answer_ids] - logits[rows, pairs.distractor_ids]


def _base(result):
    return (result.corrupted if result.direction == "denoise" else result.clean)["logit_diff"]


def _kv(family, layer, head, kind):
    """A key/value receiver's name: ``L2KV1.k`` with grouped-query attention, else ``L2H1.k``."""
    return f"L{layer}{'KV' if family == 'llama' else 'H'}{head}.{kind}"


def _node(name, pairs, n_layers):
    """A helpers sender/receiver name (with ``@role``) as the reference's tuple."""
    name, _, where = name.partition("@")
    pos = None if not where else [pairs.positions.get(w, None) if w in pairs.positions else int(w)
                                  for w in where.split(",")]
    if name == "embed":
        return ("embed", None, None, pos)
    if name == "logits":
        return ("logits", n_layers, None, None)
    if name.endswith(".in"):
        return ("mlp_in", int(name[3:-3]), None, pos)
    if name.startswith(("mlp", "attn")):
        kind = name[:3] if name.startswith("mlp") else "attn"
        return (kind, int(name[len(kind):]), None, pos)
    body, _, kind = name.partition(".")
    layer, head = body[1:].replace("KV", "H").split("H")
    return ((kind or "head"), int(layer), int(head), pos)


def _worst(result, senders, receivers, want):
    """The largest |result - want(sender, receiver)| of the logit difference over the grid."""
    return max((result.values["logit_diff"][:, a, b] - want(s, r)).abs().max().item()
               for a, s in enumerate(senders) for b, r in enumerate(receivers))


def _compare(family, model, plain, pairs, result, freeze=False):
    """Every cell of a ("sender", "receiver") result against the reference; the largest error."""
    base, src = _runs(pairs, result.direction)
    n_layers = H.model_facts(model).n_layers
    return _worst(result, result.labels["sender"], result.labels["receiver"],
                  lambda s, r: _ld(rp.path_patch(plain, family, base, src, _node(s, pairs, n_layers),
                                                 _node(r, pairs, n_layers), freeze), pairs))


# --------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_every_receiver_kind_equals_the_plain_hooks_reference(setup, direction, method):
    family, model, plain, pairs = setup
    senders = ["embed", "L0H1", "mlp0", "attn1", "L1H2@S2"]
    receivers = ["L2H0.q", _kv(family, 2, 1, "k"), _kv(family, 2, 0, "v"), "mlp2.in", "logits",
                 "L2H3.q@END"]
    got = path_patch(model, pairs, senders, receivers, direction, method=method)
    assert got.method == method
    assert got.dims == ("sender", "receiver") and got.values["logit_diff"].shape == (2, 5, 6)
    assert got.labels["sender"][-1] == "L1H2@S2" and got.labels["receiver"][-1] == "L2H3.q@END"
    assert _compare(family, model, plain, pairs, got) < TOL
    # the paths are not all empty: most cells move away from the base run
    assert (got.values["logit_diff"] - _base(got)[:, None, None]).abs().max() > 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_a_head_reaches_its_own_blocks_mlp_and_the_logits_as_the_reference_says(setup, method):
    family, model, plain, pairs = setup
    got = path_patch(model, pairs, ["L2H1", "attn2", "L1H0@S2"],
                     ["mlp2.in@END", "logits"], "noise", method=method)
    assert _compare(family, model, plain, pairs, got) < TOL


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_the_frozen_final_norm_equals_the_reference(setup, direction, method):
    family, model, plain, pairs = setup
    got = path_patch(model, pairs, ["embed", "L1H3", "mlp1"], ["L2H2.q", "logits"], direction,
                     final_norm="frozen", method=method)
    assert got.final_norm == "frozen" and got.method == method
    assert _compare(family, model, plain, pairs, got, freeze=True) < TOL


# --------------------------------------------------------------------------- identities

@pytest.mark.parametrize("final_norm", ["live", "frozen"])
def test_a_sender_identical_in_both_runs_gives_the_base_metric(setup, final_norm):
    """Condition: the sender's positions all lie before the prompts' first difference, so its
    output is the same in the base and the source run."""
    family, model, plain, pairs = setup
    early = list(range(pairs.first_difference))
    got = path_patch(model, pairs, ["embed", "L0H0", "attn1", "mlp1"],
                     ["L2H1.q", _kv(family, 2, 1, "v"), "mlp2.in", "logits"],
                     sender_positions=early, final_norm=final_norm)
    assert (got.values["logit_diff"] - _base(got)[:, None, None]).abs().max() < TOL
    base, src = _runs(pairs, "denoise")  # the reference agrees
    want = rp.path_patch(plain, family, base, src, ("head", 0, 0, early), ("q", 2, 1, None))
    assert (_ld(want, pairs) - _base(got)).abs().max() < TOL


def _direct_logit_contribution(family, plain, pairs, direction, sender):
    """(W_U[answer] - W_U[distractor]) . J(delta) at the last position, computed from the
    weights: delta = what the sender's change adds to the residual stream, J the final norm's
    linear part with its scale frozen at the base run."""
    base_ids, src_ids = _runs(pairs, direction)
    base, src = ref.cache(plain, family, base_ids), ref.cache(plain, family, src_ids)
    kind, layer = sender[0], sender[1]
    if kind == "embed":
        delta = src[("embed", None)] - base[("embed", None)]
    elif kind == "mlp":
        delta = src[("mlp", layer)] - base[("mlp", layer)]
    else:  # the output projection's linear part applied to the head's (or heads') change
        dz = src[("head", layer)] - base[("head", layer)]
        if kind == "head":
            d = ref.d_head_of(plain, family)
            keep = torch.zeros_like(dz)
            keep[..., sender[2] * d:(sender[2] + 1) * d] = 1
            dz = dz * keep
        o_proj = ref.module_for(plain, family, "o_proj", layer)
        with torch.no_grad():
            delta = o_proj(dz) - o_proj(torch.zeros_like(dz))
    x_base, _ = rp.final_norm_io(plain, family, base_ids)
    centre, scale = rp.frozen_norm_part(plain, family, x_base)
    d = delta[:, -1]
    d = (d - d.mean(-1, keepdim=True) if centre else d) * scale[:, -1]
    w_u = ref.module_for(plain, family, "unembed").weight.detach()
    return ((w_u[pairs.answer_ids] - w_u[pairs.distractor_ids]) * d).sum(-1)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_with_the_final_norm_frozen_the_path_to_the_logits_is_the_direct_logit_contribution(
        setup, direction):
    """Condition: the final norm's scale frozen at the base run (and attention / MLP outputs
    added to the residual stream as they are, true of GPT-2 and Llama)."""
    family, model, plain, pairs = setup
    senders = [("embed", None), ("head", 0, 2), ("attn", 1), ("mlp", 1), ("head", 2, 3), ("mlp", 2)]
    got = path_patch(model, pairs, ["embed", "L0H2", "attn1", "mlp1", "L2H3", "mlp2"], "logits",
                     direction, final_norm="frozen")
    change = got.values["logit_diff"][:, :, 0] - _base(got)[:, None]
    want = torch.stack([_direct_logit_contribution(family, plain, pairs, direction, s)
                        for s in senders], 1)
    assert (change - want).abs().max() < TOL
    assert want.abs().max() > 1e-6  # not an identity of zeros


def test_with_the_final_norm_frozen_a_blocks_heads_add_up_to_its_attention(setup):
    """Condition: frozen final norm.  With the live norm the sum is not the whole (checked)."""
    family, model, plain, pairs = setup
    n_heads = H.model_facts(model).n_heads
    for layer in (0, 1):
        names = [f"L{layer}H{h}" for h in range(n_heads)] + [f"attn{layer}"]
        sums = {}
        for norm in ("frozen", "live"):
            r = path_patch(model, pairs, names, "logits", final_norm=norm)
            change = r.values["logit_diff"][:, :, 0] - _base(r)[:, None]
            sums[norm] = (change[:, :-1].sum(1) - change[:, -1]).abs().max().item()
        assert sums["frozen"] < TOL
        assert sums["live"] > 1e-9, "the live final norm makes the heads' effects non-additive"


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_the_last_mlp_to_the_logits_is_ordinary_patching_of_it(setup, direction):
    """Condition: nothing but the final norm comes after the last MLP (recomputed in both).  A
    head of the last block is *not* its ordinary patching: its block's MLP is frozen."""
    _, model, _, pairs = setup
    last = H.model_facts(model).n_layers - 1
    end = pairs.positions["END"]
    paths = path_patch(model, pairs, [f"mlp{last}", f"mlp{last}@END", f"L{last}H0"],
                       "logits", direction)
    plain_patch = H.patch_components(model, pairs, [[H.Patch("mlp", last)], [H.Patch("mlp", last, end)],
                                                    [H.Patch("head", last, None, 0)]], direction,
                                     method="batched")
    got, want = paths.values["logit_diff"][:, :, 0], plain_patch.values["logit_diff"]
    assert (got[:, :2] - want[:, :2]).abs().max() < TOL
    assert (got[:, 2] - want[:, 2]).abs().max() > 1e-9


# --------------------------------------------------------------------------- the result

def test_every_head_to_the_logits_is_a_layer_by_head_result_that_plots_and_saves(bundled64):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=3, seed=1)
    r = path_patch(bundled64, pairs, "heads", "logits")
    f = H.model_facts(bundled64)
    assert r.site == "path" and r.method == "fast" and r.dims == ("layer", "head")
    assert r.values["logit_diff"].shape == (3, f.n_layers, f.n_heads)
    assert r.labels["layer"][0] == "L0" and r.labels["head"][-1] == f"H{f.n_heads - 1}"
    assert set(r.values) == {"logit_diff", "answer_prob", "kl_to_clean"}
    assert r.score().shape == r.importance().shape == (f.n_layers, f.n_heads)
    assert r.value(layer=-1, head=0) == r.importance()[-1, 0].item()
    assert len(r.to_frame()) == 3 * f.n_layers * f.n_heads
    assert json.loads(json_text(r.to_dict()))["dims"] == ["layer", "head"]
    import matplotlib.pyplot as plt

    plt.close(H.plot_patching(r))
    # a receiver in block 2 takes every head of blocks 0 and 1
    q = path_patch(bundled64, pairs, "heads", "L2H0.q@END", metrics=("logit_diff",))
    assert q.values["logit_diff"].shape == (3, 2, f.n_heads) and set(q.values) == {"logit_diff"}
    everything = path_patch(bundled64, pairs, "all", "mlp1.in", metrics=("logit_diff",))
    assert everything.labels["sender"] == ["embed"] + [f"L0H{h}" for h in range(f.n_heads)] + \
        ["mlp0"] + [f"L1H{h}" for h in range(f.n_heads)]


def test_many_receivers_share_forward_passes_and_chunks_change_nothing(bundled64):
    from helpers.models import hf_model

    pairs = H.ioi_pairs(bundled64.tokenizer, n=2, seed=5, template=1)
    calls = []
    handle = H.model_facts(bundled64).block(hf_model(bundled64), 0).register_forward_pre_hook(
        lambda *a: calls.append(1))
    try:
        args = (bundled64, pairs, ["L0H0", "mlp0", "attn1"], ["L2H0.q", "L2H1.k", "mlp3.in", "logits"])
        runs = {}
        for method in METHODS:
            for size in (None, 1):
                calls.clear()
                runs[method, size] = path_patch(*args, method=method, batch_size=size), len(calls)
    finally:
        handle.remove()
    # batched: base + source caches, one sender run (6 rows), one receiver run (18 rows)
    assert runs["batched", None][1] == 4 and runs["batched", 1][1] == 2 + 6 + 18
    # fast: one forward of the base and source prompts together (its cache serves the receiver
    # runs); no sender run, and the receiver runs skip block 0
    assert runs["fast", None][1] == runs["fast", 1][1] == 1
    one = runs["batched", None][0]
    for (method, size), (many, _) in runs.items():
        for m in one.values:
            assert (one.values[m] - many.values[m]).abs().max() < TOL


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, error", [
    (dict(senders=["head3"]), r"unknown sender 'head3': write 'embed', a head 'L0H3'"),
    (dict(senders=["L0H0@S9"]), r"sender 'L0H0': unknown role 'S9'; these prompts have the roles"),
    (dict(senders=[3]), r"senders\[0\] must be a string, got 3"),
    (dict(senders=["L9H0"]), r"layer=9 is out of range: there are 4 blocks"),
    (dict(senders=["L0H7"]), r"head=7 is out of range: there are 4 heads per layer"),
    (dict(receivers=["L2H0.x"]), r"unknown receiver 'L2H0.x': write a head's input 'L3H0.q'"),
    (dict(senders=["mlp2"], receivers=["L2H0.q"]), r"sender mlp2 does not come before receiver "
                                                   r"L2H0.q"),
    (dict(senders=["L2H0"], receivers=["L2H1.q"]), r"an MLP receiver also its own block's heads"),
    (dict(senders=["mlp2"], receivers=["mlp2.in"]), r"does not come before"),
    (dict(receivers=["logits@END"]), r"'logits' takes no positions"),
    (dict(sender_positions="XYZ"), r"unknown role 'XYZ'; these prompts have the roles"),
    (dict(receiver_positions=99), r"position=99 is out of range"),
    (dict(senders=["L0H0", "L0H0"]), r"\['L0H0'\] given twice"),
    (dict(receivers=[]), r"no receivers"),
    (dict(direction="sideways"), r"direction='sideways' is not a valid choice.*'denoise'.*'noise'"),
    (dict(method="loop"), r"method='loop' is not a valid choice.*'fast', 'batched'"),
    (dict(final_norm="off"), r"final_norm='off' is not a valid choice.*'live', 'frozen'"),
    (dict(metrics=("logit_diff",), metric="answer_prob"), r"holding metric=.answer_prob."),
])
def test_bad_input_says_what_was_wrong(bundled64, kwargs, error):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=1, seed=5)
    args = dict(senders=["L0H0"], receivers=["L2H0.q"]) | kwargs
    with pytest.raises(ValueError, match=error):
        path_patch(bundled64, pairs, **args)


def test_grouped_query_keys_are_named_by_their_key_value_head_or_the_query_head_reading_them(
        random_models):
    model = H.load_model(random_models["llama"], dtype="float64")
    pairs = H.ioi_pairs(model.tokenizer, n=1, seed=3)
    with pytest.raises(ValueError, match=r"head=2 is out of range: there are 2 key/value heads"):
        path_patch(model, pairs, ["L0H0"], ["L2KV2.v"])
    with pytest.raises(ValueError, match=r"head=4 is out of range: there are 4 heads per layer"):
        path_patch(model, pairs, ["L0H0"], ["L2H4.k"])
    with pytest.raises(ValueError, match=r"queries belong to query heads"):
        path_patch(model, pairs, ["L0H0"], ["L2KV0.q"])
    r = path_patch(model, pairs, ["L0H0"], ["L2KV1.k", "L2H3.q", "L2H3.k"], metrics=("logit_diff",))
    assert r.labels["receiver"] == ["L2KV1.k", "L2H3.q", "L2H3.k"]
    assert r.method == "batched"  # a key read by one query head runs batched


def test_a_key_or_value_read_by_one_query_head_equals_the_reference_and_differs_from_the_shared_one(
        random_models):
    """MIB's ungrouped edge: only the named query head sees the patched keys/values (the
    reference sets the group's other heads back to the base run in the receiver run)."""
    from transformers import AutoModelForCausalLM

    model = H.load_model(random_models["llama"], dtype="float64")
    plain = AutoModelForCausalLM.from_pretrained(random_models["llama"], dtype=torch.float64,
                                                 attn_implementation="eager").eval()
    pairs = H.ioi_pairs(model.tokenizer, n=2, seed=3)
    senders = ["L0H0", "L1H3@S2", "mlp0", "embed"]
    receivers = {"L2H3.k": ("k", 2, 1, None, 3), "L2H0.v@END": ("v", 2, 0, [pairs.positions["END"]], 0),
                 "L2H2.k@S2,END": ("k", 2, 1, [pairs.positions["S2"], pairs.positions["END"]], 2)}
    got = path_patch(model, pairs, senders, list(receivers), method="fast")
    shared = path_patch(model, pairs, senders, ["L2KV1.k", "L2KV0.v@END", "L2KV1.k@S2,END"])
    base, src = _runs(pairs, "denoise")
    assert _worst(got, senders, receivers.values(),
                  lambda s, r: _ld(rp.path_patch(plain, "llama", base, src, _node(s, pairs, 3), r), pairs)) < TOL
    # the other query head of the group no longer sees the patch: a different number
    assert (got.values["logit_diff"] - shared.values["logit_diff"]).abs().max() > 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_grouped_query_key_value_heads_equal_the_reference(random_models, method):
    from transformers import AutoModelForCausalLM

    model = H.load_model(random_models["llama"], dtype="float64")
    plain = AutoModelForCausalLM.from_pretrained(random_models["llama"], dtype=torch.float64,
                                                 attn_implementation="eager").eval()
    pairs = H.ioi_pairs(model.tokenizer, n=2, seed=3)
    got = path_patch(model, pairs, ["L0H0", "L1H3@S2", "mlp0", "embed"],
                     ["L2KV0.k", "L2KV1.k@S2,END", "L2KV0.v@END", "L2KV1.v"], method=method)
    assert got.method == method
    assert _compare("llama", model, plain, pairs, got) < TOL


# --------------------------------------------------------------------------- every family

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_equals_the_reference_on_each_receiver_kind(tmp_path, family, method):
    """Tiny 2-block models of every family (bundled tokenizer), both final norms.  GPT-NeoX's
    parallel residual has no path from a block's heads to its own MLP: refused."""
    from transformers import AutoModelForCausalLM

    path = save_random_model(tmp_path / family, family)
    model = H.load_model(path, dtype="float64")
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64,
                                                 attn_implementation="eager").eval()
    pairs = H.ioi_pairs(model.tokenizer, n=2, seed=5)
    kv = "KV" if family not in ("gpt2", "gpt_neox") else "H"
    for norm in ("live", "frozen"):
        got = path_patch(model, pairs, ["embed", "L0H1@S2", "mlp0"],
                         ["L1H0.q@END", f"L1{kv}1.k", f"L1{kv}0.v", "mlp1.in", "logits"], "noise",
                         final_norm=norm, method=method)
        # families (and sliding windows shorter than the prompt) without the fast path run batched
        assert got.method == (method if supports_fast_path(model, pairs.seq_len) else "batched")
        assert family not in ("gpt_neox", "gemma2", "gemma3") or got.method == "batched"
        assert _compare(family, model, plain, pairs, got, freeze=norm == "frozen") < TOL
    if family == "gpt_neox":
        with pytest.raises(ValueError, match=r"not with this model's parallel residual"):
            path_patch(model, pairs, ["L1H1"], ["mlp1.in"], method=method)
    else:
        got = path_patch(model, pairs, ["L1H1"], ["mlp1.in"], method=method)
        assert _compare(family, model, plain, pairs, got) < TOL


# --------------------------------------------------------------------------- fast = batched

@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_fast_equals_batched_for_every_head_and_every_component(random_models, which):
    """Every head / every component into q, k/v, MLP inputs and the logits, at restricted
    positions, both final norms: the fast method (no sender forward pass) equals the batched one."""
    model = H.load_model(random_models[which], dtype="float64")
    pairs = H.ioi_pairs(model.tokenizer, n=2, seed=3)
    assert supports_fast_path(model, pairs.seq_len)
    receivers = ["L2H1.q@END", _kv(which, 2, 1, "k") + "@S2", _kv(which, 2, 0, "v"), "mlp2.in@S2,END",
                 "L2H3.q", "logits"]
    for senders, norm, metrics in (("heads", "live", ("logit_diff",)), ("all", "frozen", METRICS),
                                   ("all", "live", ("logit_diff",))):
        got = {m: path_patch(model, pairs, senders, receivers, "noise", final_norm=norm, method=m,
                             metrics=metrics) for m in METHODS}
        assert got["fast"].method == "fast" and got["batched"].method == "batched"
        assert got["fast"].labels == got["batched"].labels
        for m in metrics:
            assert (got["fast"].values[m] - got["batched"].values[m]).abs().max() < TOL
        assert (got["fast"].values["logit_diff"] - _base(got["fast"])[:, None, None]).abs().max() > 1e-6
    one = {m: path_patch(model, pairs, "heads", "L2H0.q@END", batch_size=3, method=m) for m in METHODS}
    assert one["fast"].dims == ("layer", "head")
    for m in one["fast"].values:
        assert (one["fast"].values[m] - one["batched"].values[m]).abs().max() < TOL


@pytest.mark.parametrize("method", METHODS)
def test_a_joint_receiver_patches_its_parts_in_one_run_as_the_reference_does(random_models, method):
    """``"A+B"``: one receiver run with both inputs replaced.  The reference: record each part's
    input in the sender run, then one run replacing all of them (hooks on each part)."""
    from transformers import AutoModelForCausalLM

    model = H.load_model(random_models["llama"], dtype="float64")
    plain = AutoModelForCausalLM.from_pretrained(random_models["llama"], dtype=torch.float64,
                                                 attn_implementation="eager").eval()
    pairs = H.ioi_pairs(model.tokenizer, n=2, seed=3)
    joint = ["L2H0.q@END+L2H3.q@END", "L1KV0.v@S2+L2KV1.v@S2", "L2KV1.k+mlp1.in@END"]
    got = path_patch(model, pairs, ["L0H0", "L0H2@S2", "mlp0"], joint, method=method)
    assert got.labels["receiver"] == joint and got.method == method
    base, src = _runs(pairs, "denoise")
    assert _worst(got, got.labels["sender"], joint, lambda s, r: _ld(rp.path_patch_joint(
        plain, "llama", base, src, _node(s, pairs, 3), [_node(x, pairs, 3) for x in r.split("+")]), pairs)) < TOL


def test_with_later_layers_frozen_only_the_receiving_heads_change_reaches_the_logits(random_models):
    """``later="frozen"``: sender -> receiver -> logits, every other component after the receiver
    at its base value; a joint receiver adds its parts' changes.  Against the reference."""
    from transformers import AutoModelForCausalLM

    model = H.load_model(random_models["llama"], dtype="float64")
    plain = AutoModelForCausalLM.from_pretrained(random_models["llama"], dtype=torch.float64,
                                                 attn_implementation="eager").eval()
    pairs = H.ioi_pairs(model.tokenizer, n=2, seed=3)
    end, s2 = pairs.positions["END"], pairs.positions["S2"]
    receivers = {"L1H0.q@END": [("q", 1, 0, [end])], "L2KV1.v@S2": [("v", 2, 1, [s2])],
                 "L2H3.k": [("k", 2, 1, None, 3)],
                 "L1H2.q@END+L2KV0.k@S2": [("q", 1, 2, [end]), ("k", 2, 0, [s2])]}
    senders = ["L0H0", "L0H3@S2", "mlp0"]
    got = path_patch(model, pairs, senders, list(receivers), later="frozen")
    assert got.method == "batched" and got.later == "frozen"
    base, src = _runs(pairs, "denoise")
    assert _worst(got, senders, receivers.values(), lambda s, parts: _ld(rp.path_patch_later_frozen(
        plain, "llama", base, src, _node(s, pairs, 3), parts), pairs)) < TOL
    # a receiver in the last block has no later layer but its own MLP: frozen differs from recompute
    live = path_patch(model, pairs, senders, list(receivers))
    assert (live.values["logit_diff"] - got.values["logit_diff"]).abs().max() > 1e-9
    with pytest.raises(ValueError, match="q/k/v receivers"):
        path_patch(model, pairs, senders, ["mlp1.in"], later="frozen")


@pytest.mark.parametrize("method", METHODS)
def test_a_joint_sender_moves_its_parts_together_as_the_reference_does(setup, method):
    """``"A+B"`` as a sender: both parts take their source values in one sender run, every other
    component frozen.  With the final norm frozen a joint sender -> logits is the sum of its
    parts' direct contributions (checked on the layer x head grid)."""
    family, model, plain, pairs = setup
    groups = ["L0H1+L1H2", "L0H3@S2+mlp0", "attn0+L1H0"]
    got = path_patch(model, pairs, groups, ["logits", "L2H0.q@END", _kv(family, 2, 1, "v")], method=method)
    assert got.labels["sender"] == groups
    base, src = _runs(pairs, "denoise")
    n_layers = H.model_facts(model).n_layers
    assert _worst(got, groups, got.labels["receiver"], lambda s, r: _ld(rp.path_patch(
        plain, family, base, src, [_node(x, pairs, n_layers) for x in s.split("+")],
        _node(r, pairs, n_layers)), pairs)) < TOL
    frozen = path_patch(model, pairs, ["L0H1+L1H2", "L0H1", "L1H2"], "logits", final_norm="frozen", method=method)
    eff = frozen.values["logit_diff"][..., 0] - _base(frozen)[:, None]
    assert (eff[:, 0] - eff[:, 1] - eff[:, 2]).abs().max() < TOL


def test_the_tiny_gqa_llama_is_built_from_its_seed_alone_and_refuses_ndif():
    state = torch.random.get_rng_state()
    a, b = H.models.tiny_llama(3), H.models.tiny_llama(3)
    assert torch.equal(torch.random.get_rng_state(), state)   # the global generator is untouched
    f = H.model_facts(a)
    assert (f.family, f.n_layers, f.n_heads, f.n_kv_heads, f.d_model) == ("llama", 2, 4, 2, 64)
    wa, wb = (H.models.hf_model(m).model.layers[1].self_attn.k_proj.weight for m in (a, b))
    assert torch.equal(wa, wb) and wa.dtype == torch.float64
    other = H.models.hf_model(H.models.tiny_llama(4)).model.layers[1].self_attn.k_proj.weight
    assert not torch.equal(wa, other)
    pairs = H.ioi_pairs(a.tokenizer, n=2)
    assert path_patch(a, pairs, "L0H1", "L1H3.v").labels["receiver"] == ["L1H3.v"]
    with pytest.raises(H.ModelLoadError, match="NDIF cannot run it"):
        H.models.tiny_llama(remote=True)
    with pytest.raises(ValueError, match="must be a multiple of n_kv_heads"):
        H.models.tiny_llama(n_heads=3, n_kv_heads=2)
