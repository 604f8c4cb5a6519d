"""Ablations and attention knockout (helpers.methods.ablations) against independent plain-hooks code.

The references below use only ``register_forward_hook`` / ``register_forward_pre_hook`` on the
transformers modules (heads: their columns of the output projection's input) and, for the
knockout, a replacement of the eager attention function that sets the knocked-out scores to
-inf before the softmax (helpers instead zeroes the probabilities and renormalises: the same
thing, so the two must agree).  float64, tolerance 1e-10.  Every comparison runs for both
methods: ``"fast"`` (``helpers.engine.fastablate``) and ``"batched"`` (traced forwards).
"""
from __future__ import annotations

import pytest
import torch

import helpers as H
from helpers.methods import ablations as A

TOL = 1e-10
PATHS = {"gpt2": ("transformer.h", "attn.c_proj", "mlp"),
         "llama": ("model.layers", "self_attn.o_proj", "mlp"),
         "qwen3": ("model.layers", "self_attn.o_proj", "mlp")}
METHODS = ("fast", "batched")


def _get(root, path):
    for name in path.split("."):
        root = getattr(root, name)
    return root


def _module(plain, family, layer, what):
    blocks, o_proj, mlp = PATHS[family]
    block = _get(plain, blocks)[layer]
    return _get(block, o_proj if what == "head" else mlp)


def _parse(name):
    if name.startswith("mlp"):
        return int(name[3:]), None
    layer, head = name[1:].split("H")
    return int(layer), int(head)


def _d_head(plain):
    c = plain.config
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


@torch.no_grad()
def hook_cache(plain, family, ids, names):
    """{name: [n, seq, width]}: a head's own d_head columns of o_proj's input, an MLP's output."""
    out, handles, d = {}, [], _d_head(plain)
    for name in names:
        layer, head = _parse(name)
        mod = _module(plain, family, layer, "head" if head is not None else "mlp")
        if head is None:
            handles.append(mod.register_forward_hook(
                lambda m, a, o, name=name: out.__setitem__(name, o.detach().clone())))
        else:
            cols = slice(head * d, (head + 1) * d)
            handles.append(mod.register_forward_pre_hook(
                lambda m, a, name=name, cols=cols: out.__setitem__(name, a[0][..., cols].clone())))
    try:
        plain(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out


@torch.no_grad()
def hook_run(plain, family, ids, values):
    """Last-position logits of ``ids`` with each component replaced by ``values[name]``."""
    handles, d, calls = [], _d_head(plain), []
    for name, v in values.items():
        layer, head = _parse(name)
        mod = _module(plain, family, layer, "head" if head is not None else "mlp")
        if head is None:
            def hook(m, a, o, v=v):
                calls.append(1)
                return v.to(o.dtype).expand_as(o).clone()
            handles.append(mod.register_forward_hook(hook))
        else:
            cols = slice(head * d, (head + 1) * d)

            def pre(m, a, v=v, cols=cols):
                calls.append(1)
                x = a[0].clone()
                x[..., cols] = v.to(x.dtype)
                return (x,) + tuple(a[1:])
            handles.append(mod.register_forward_pre_hook(pre))
    try:
        logits = plain(input_ids=ids, use_cache=False).logits[:, -1]
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == len(values)  # every hook ran once
    return logits


def ld(logits, pairs):
    r = torch.arange(len(pairs))
    return logits[r, pairs.answer_ids] - logits[r, pairs.distractor_ids]


@pytest.fixture(scope="module")
def gpt2_case(bundled64):
    from transformers import GPT2LMHeadModel

    from helpers.organism import BUNDLED_MODELS

    plain = GPT2LMHeadModel.from_pretrained(BUNDLED_MODELS["ioi-tiny"], dtype=torch.float64,
                                            attn_implementation="eager").eval()
    pairs = H.ioi_pairs(bundled64.tokenizer, n=4, seed=1)
    abc = H.ioi_pairs(bundled64.tokenizer, n=5, seed=9, corruption="abc")
    return "gpt2", bundled64, plain, pairs, abc, ["L0H1", "L1H3", "mlp0", "mlp1"]


@pytest.fixture(scope="module")
def llama_case(tmp_path_factory):
    from tiny_models import save_random_model
    from transformers import AutoModelForCausalLM

    path = save_random_model(tmp_path_factory.mktemp("llama") / "llama", "llama", seed=3)
    model = H.load_model(path, dtype="float64")
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64,
                                                 attn_implementation="eager").eval()
    assert plain.config.num_key_value_heads < plain.config.num_attention_heads  # grouped-query
    pairs = H.ioi_pairs(model.tokenizer, n=3, seed=5)
    abc = H.ioi_pairs(model.tokenizer, n=4, seed=2, corruption="abc")
    return "llama", model, plain, pairs, abc, ["L0H1", "L1H2", "L1H3", "mlp1"]


@pytest.fixture(scope="module")
def qwen3_case(tmp_path_factory):
    """Qwen3: per-head q/k norms, n_heads * d_head (64) wider than d_model (32), grouped-query."""
    from tiny_models import save_random_model
    from transformers import AutoModelForCausalLM

    path = save_random_model(tmp_path_factory.mktemp("qwen3") / "qwen3", "qwen3", seed=4)
    model = H.load_model(path, dtype="float64")
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64,
                                                 attn_implementation="eager").eval()
    pairs = H.ioi_pairs(model.tokenizer, n=3, seed=6)
    abc = H.ioi_pairs(model.tokenizer, n=4, seed=3, corruption="abc")
    return "qwen3", model, plain, pairs, abc, ["L0H2", "L1H0", "L1H3", "mlp0"]


@pytest.fixture(params=["gpt2_case", "llama_case", "qwen3_case"])
def case(request):
    return request.getfixturevalue(request.param)


def _reference_values(kind, family, plain, pairs, abc, comps, seed):
    if kind == "zero":
        cache = hook_cache(plain, family, pairs.clean_ids, comps)
        return {c: torch.zeros_like(v) for c, v in cache.items()}
    if kind == "mean":
        cache = hook_cache(plain, family, abc.corrupted_ids, comps)
        return {c: v.mean(0, keepdim=True) for c, v in cache.items()}
    perm = A.resample_rows(len(pairs), seed)
    cache = hook_cache(plain, family, pairs.clean_ids, comps)
    return {c: v[perm] for c, v in cache.items()}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", A.KINDS)
def test_ablation_equals_the_hooks_reference(case, kind, method):
    family, model, plain, pairs, abc, comps = case
    reference = abc.corrupted_ids if kind == "mean" else None
    drawn = {"seed": 7} if kind == "resample" else {}  # a seed elsewhere is refused (unused)
    got = A.ablate(model, pairs, [comps, comps[:1], comps[-1:]], kind, reference=reference, **drawn,
                   method=method)
    assert got.method == method
    assert got.site == "ablation" and got.direction == "noise" and got.values["logit_diff"].shape == (len(pairs), 3)
    values = _reference_values(kind, family, plain, pairs, abc, comps, 7)
    for col, subset in enumerate([comps, comps[:1], comps[-1:]]):
        want = ld(hook_run(plain, family, pairs.clean_ids, {c: values[c] for c in subset}), pairs)
        assert (got.values["logit_diff"][:, col] - want).abs().max() < TOL
    # the ablation really changed something (a no-op would pass the comparison otherwise)
    assert (got.values["logit_diff"][:, 0] - got.clean["logit_diff"]).abs().max() > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_complement_ablation_equals_the_hooks_reference(case, method):
    """Everything but a few heads mean-ablated (a circuit's complement, with and without an MLP):
    the fast path computes attention for the kept heads only, key/value heads shared."""
    family, model, plain, pairs, abc, _ = case
    f = H.model_facts(model)
    heads = [f"L{L}H{h}" for L in range(f.n_layers) for h in range(f.n_heads)]
    keeps = [["L0H1", "L1H0", f"L1H{f.n_heads - 1}"], ["L1H1"], []]
    sets = [[c for c in heads if c not in keep] for keep in keeps] + [heads[1:] + ["mlp0"]]
    got = A.ablate(model, pairs, sets, "mean", reference=abc.corrupted_ids, method=method)
    assert got.method == method
    means = {c: v.mean(0, keepdim=True)
             for c, v in hook_cache(plain, family, abc.corrupted_ids, heads + ["mlp0"]).items()}
    for col, subset in enumerate(sets):
        want = ld(hook_run(plain, family, pairs.clean_ids, {c: means[c] for c in subset}), pairs)
        assert (got.values["logit_diff"][:, col] - want).abs().max() < TOL, col


@pytest.mark.parametrize("method", METHODS)
def test_the_baselines_make_score_work(gpt2_case, method):
    _, model, _, pairs, _, comps = gpt2_case
    r = A.ablate(model, pairs, [comps, []], "zero", method=method)
    base = H.baselines(model, pairs)
    assert (r.clean["logit_diff"] - base["clean"]["logit_diff"]).abs().max() < TOL
    assert (r.corrupted["logit_diff"] - base["corrupted"]["logit_diff"]).abs().max() < TOL
    assert abs(r.score()[1].item() - 1) < 1e-12  # ablating nothing keeps the clean run
    assert r.importance()[0].item() > 0.01


def test_a_remote_model_ablates_batched_with_the_same_values(gpt2_case):
    """``remote="local"`` (nnsight's dry run of the NDIF protocol) runs the batched method;
    the local model runs the fast one; the values agree."""
    _, model, _, pairs, abc, comps = gpt2_case
    dry = H.load_model("ioi-tiny", dtype="float64", remote="local")
    sets = [comps, comps[1:3]]
    local = A.ablate(model, pairs, sets, "mean", reference=abc.corrupted_ids)
    remote = A.ablate(dry, pairs, sets, "mean", reference=abc.corrupted_ids)
    assert local.method == "fast" and remote.method == "batched"
    assert (local.values["logit_diff"] - remote.values["logit_diff"]).abs().max() < TOL
    with pytest.raises(ValueError, match="method='loop' is not a valid choice.*'fast', 'batched'"):
        A.ablate(model, pairs, sets, "mean", method="loop")


def test_resample_rows_is_a_seeded_derangement():
    for n in (2, 3, 7, 20):
        for seed in range(5):
            perm = A.resample_rows(n, seed)
            assert sorted(perm.tolist()) == list(range(n))
            assert (perm != torch.arange(n)).all()
            assert torch.equal(perm, A.resample_rows(n, seed))
    assert not torch.equal(A.resample_rows(20, 0), A.resample_rows(20, 1))


def test_resample_from_a_reference_set_never_picks_the_prompt_itself(gpt2_case):
    _, model, _, pairs, _, comps = gpt2_case
    ref = torch.cat([pairs.clean_ids, pairs.clean_ids[:1]])  # holds every prompt itself
    src = A.ablation_source(model, pairs, comps[:1], "resample", reference=ref, seed=0)
    own = A.ablation_source(model, pairs, comps[:1], "resample", reference=pairs.clean_ids,
                                 seed=3)
    mine, _ = H.cache_activations(model, pairs.clean_ids, [("head", 0)])
    for s in (src, own):
        diff = (s[("head", 0)] - mine[("head", 0)]).flatten(1).abs().max(1).values
        assert (diff > 1e-6).all()


@pytest.mark.parametrize("method", METHODS)
def test_mean_over_the_prompt_itself_changes_nothing(gpt2_case, method):
    _, model, _, pairs, _, comps = gpt2_case
    one = pairs[:1]
    r = A.ablate(model, one, comps, "mean", reference=one, method=method)
    assert (r.values["logit_diff"][:, 0] - r.clean["logit_diff"]).abs().max() < TOL
    assert r.values["kl_to_clean"].abs().max() < TOL


def test_bad_ablation_inputs_say_how_to_fix_them(gpt2_case):
    _, model, _, pairs, _, _ = gpt2_case
    with pytest.raises(ValueError, match="unknown component 'L0X1'.*'L0H3'"):
        A.ablate(model, pairs, ["L0X1"])
    with pytest.raises(ValueError, match="layer"):
        A.ablate(model, pairs, ["L9H0"])
    with pytest.raises(ValueError, match="kind='gaussian' is not a valid choice.*'zero', 'mean', 'resample'"):
        A.ablate(model, pairs, ["L0H1"], "gaussian")
    with pytest.raises(ValueError, match="at least 2 prompts.*never resampled from itself"):
        A.ablate(model, pairs[:1], ["L0H1"], "resample")
    with pytest.raises(ValueError, match="same template"):
        A.ablate(model, pairs, ["L0H1"], "mean", reference=pairs.clean_ids[:, :-1])
    with pytest.raises(ValueError, match="given twice"):
        A.ablate(model, pairs, ["L0H1", "L0H1"])


# --------------------------------------------------------------------------- knockout

@pytest.fixture
def gpt2_knockout_reference(monkeypatch):
    """``state["install"]()`` replaces GPT-2's eager attention by one that sets knocked-out
    scores to -inf (installed only after helpers ran: nnsight's ``.source`` would otherwise
    trace the replacement too)."""
    from transformers.models.gpt2 import modeling_gpt2

    state = {"edges": {}, "calls": 0}

    def eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        state["calls"] += 1
        scaling = query.size(-1) ** -0.5 if scaling is None else scaling
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        for head, q, k in state["edges"].get(module.layer_idx, []):
            scores[:, head, q, k] = float("-inf")
        weights = torch.softmax(scores, dim=-1).type(value.dtype)
        return torch.matmul(weights, value).transpose(1, 2), weights

    state["install"] = lambda: monkeypatch.setattr(modeling_gpt2, "eager_attention_forward", eager)
    return state


def _edges_by_layer(edges, pairs):
    out = {}
    for name, q, k in edges:
        layer, head = _parse(name)
        pos = lambda p: pairs.positions[p] if isinstance(p, str) else p  # noqa: E731
        out.setdefault(layer, []).append((head, pos(q), pos(k)))
    return out


@pytest.mark.parametrize("method", METHODS)
def test_knockout_equals_the_hooks_reference(gpt2_case, gpt2_knockout_reference, method):
    _, model, plain, pairs, _, _ = gpt2_case
    sets = [[("L1H2", "END", "S2"), ("L1H2", "END", "IO"), ("L0H1", "S2", "IO")],
            [("L1H0", "END", 3)], [("L0H3", -1, "S1"), ("L1H1", "END", "S2")], []]
    got = A.knockout(model, pairs, sets, method=method)
    assert got.method == method
    assert got.site == "knockout" and got.values["logit_diff"].shape == (len(pairs), 4)
    gpt2_knockout_reference["install"]()
    for col, edges in enumerate(sets):
        gpt2_knockout_reference["edges"] = _edges_by_layer(edges, pairs)
        with torch.no_grad():
            want = ld(plain(input_ids=pairs.clean_ids, use_cache=False).logits[:, -1], pairs)
        assert (got.values["logit_diff"][:, col] - want).abs().max() < TOL
    assert gpt2_knockout_reference["calls"] > 0  # the reference really ran the eager function
    assert (got.values["logit_diff"][:, 0] - got.clean["logit_diff"]).abs().max() > 1e-3


def test_an_edge_to_a_later_key_is_refused_as_impossible_under_causal_attention(gpt2_case):
    _, model, _, pairs, _, _ = gpt2_case
    s1, end = pairs.positions["S1"], pairs.positions["END"]
    assert s1 < end  # a future key: causal attention gives it weight 0
    plain = H.attention_patterns(model, pairs.clean_ids, 1)
    assert plain[:, 2, s1, end].abs().max() == 0  # why knocking it out would change nothing
    for call in (lambda: A.knockout(model, pairs, [("L1H2", "S1", "END")]),
                 lambda: A.knockout(model, pairs, [("L0H0", 0, 1)]),
                 lambda: A.knockout_patterns(model, pairs, [("L1H2", "S1", "END")], 1)):
        with pytest.raises(ValueError, match=r"cannot attend to the later key position \d+ \(causal attention\)"):
            call()


@pytest.mark.parametrize("method", METHODS)
def test_knocking_out_all_keys_but_one_puts_all_weight_on_it(gpt2_case, method):
    _, model, _, pairs, _, _ = gpt2_case
    end, io = pairs.positions["END"], pairs.positions["IO"]
    edges = [("L1H2", "END", k) for k in range(end + 1) if k != io]
    edited = A.knockout_patterns(model, pairs, edges, 1, method=method)
    row = edited[:, 2, end]
    assert (row[:, io] - 1).abs().max() < 1e-12 and row.sum(-1).sub(1).abs().max() < 1e-12
    plain = H.attention_patterns(model, pairs.clean_ids, 1)
    assert plain[:, 2, end, io].max() < 0.5  # it was not already all on IO
    keep = torch.ones_like(plain, dtype=torch.bool)
    keep[:, 2, end] = False
    assert (plain - edited)[keep].abs().max() < 1e-12  # nothing else changed
    # renormalisation: the surviving weights keep their ratios
    edges2 = [("L1H2", "END", "S2")]
    e2 = A.knockout_patterns(model, pairs, edges2, 1, method=method)[:, 2, end]
    p = plain[:, 2, end]
    want = p.clone()
    want[:, pairs.positions["S2"]] = 0
    assert (e2 - want / want.sum(-1, keepdim=True)).abs().max() < 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_knockout_patterns_carry_earlier_layers_knockouts_equal_the_reference(
        gpt2_case, gpt2_knockout_reference, method):
    """Block 1's weights with edges knocked out in blocks 0 and 1 (block 0's change its input)."""
    _, model, plain, pairs, _, _ = gpt2_case
    edges = [("L0H1", "END", "S2"), ("L0H3", "S2", "IO"), ("L1H2", "END", "IO")]
    got = A.knockout_patterns(model, pairs, edges, 1, method=method)
    gpt2_knockout_reference["install"]()
    gpt2_knockout_reference["edges"] = _edges_by_layer(edges, pairs)
    with torch.no_grad():
        want = plain(input_ids=pairs.clean_ids, use_cache=False, output_attentions=True).attentions[1]
    assert gpt2_knockout_reference["calls"] > 0 and got.shape == want.shape
    assert (got - want).abs().max() < TOL
    assert want[:, 2, pairs.positions["END"], pairs.positions["IO"]].abs().max() == 0
    unknocked = H.attention_patterns(model, pairs.clean_ids, 1)
    assert (unknocked[:, 0] - got[:, 0]).abs().max() > 1e-6  # block 0's knockouts reach block 1


def test_bad_knockouts_say_how_to_fix_them(gpt2_case):
    _, model, _, pairs, _, _ = gpt2_case
    end = pairs.positions["END"]
    with pytest.raises(ValueError, match="every key position.*keep at least one key"):
        A.knockout(model, pairs, [("L1H2", "END", k) for k in range(end + 1)])
    with pytest.raises(ValueError, match="not of an MLP"):
        A.knockout(model, pairs, [("mlp1", "END", "S2")])
    with pytest.raises(ValueError, match="unknown role 'S3'"):
        A.knockout(model, pairs, [("L1H2", "END", "S3")])
    with pytest.raises(ValueError, match=r"\(head, query, key\)"):
        A.knockout(model, pairs, [("L1H2", "END")])


@pytest.mark.parametrize("method", METHODS)
def test_knockout_on_grouped_query_attention_equals_the_reference(llama_case, monkeypatch, method):
    """Llama (2 query heads per key/value head).  Its eager attention takes the softmax in
    float32 even in a float64 model, so renormalising the rounded probabilities (helpers) and
    a -inf score (the reference) agree to float32 precision only: tolerance 1e-5 here."""
    from transformers.models.llama import modeling_llama

    _, model, plain, pairs, _, _ = llama_case
    edges = [("L0H1", "END", "S2"), ("L1H2", "END", "IO"), ("L1H3", "S2", 0)]
    got = A.knockout(model, pairs, edges, method=method)
    assert got.method == method
    calls = []

    def eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        calls.append(1)
        groups = query.shape[1] // key.shape[1]
        k, v = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        scores = torch.matmul(query, k.transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        for head, q, kk in _edges_by_layer(edges, pairs).get(module.layer_idx, []):
            scores[:, head, q, kk] = float("-inf")
        weights = torch.softmax(scores, -1, dtype=torch.float32).to(query.dtype)
        return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", eager)
    with torch.no_grad():
        want = ld(plain(input_ids=pairs.clean_ids, use_cache=False).logits[:, -1], pairs)
    assert calls
    assert (got.values["logit_diff"][:, 0] - want).abs().max() < 1e-5
    assert (got.values["logit_diff"][:, 0] - got.clean["logit_diff"]).abs().max() > 1e-3
    monkeypatch.undo()
    with pytest.raises(ValueError, match="cannot attend to the later key"):  # weight 0 anyway
        A.knockout(model, pairs, [("L1H0", "S1", "END")])
