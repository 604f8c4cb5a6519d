"""Edge attribution (``helpers.methods.edge_attribution``) against the independent plain-hooks
reference (``tests/reference_edges.py``: every edge's first-order term by autograd through an
epsilon per edge, and edges really ablated), and the identities that hold exactly.

Models, all float64: the bundled model (GPT-2 family, trained), a random 3-block GPT-2 and a
random 3-block Llama with grouped-query attention (4 query heads sharing 2 key/value heads), the
last scored both ways (``kv="query"``: MIB's ungrouped receivers, checked against an ungrouped
copy of the model; ``kv="kv"``: one receiver per key/value head).  "Equal" is within 1e-10 of the
largest score (GPT-2), 1e-7 for Llama (its eager attention takes the softmax in float32).
"""
from __future__ import annotations

import pytest
import reference_edges as rx
import torch

import helpers as H

STEPS = 2  # integrated-gradient steps in these tests: tells MIB's k = 0..m-1 and k = 1..m apart


CASES = [("bundled", "query"), ("gpt2", "query"), ("llama", "query"), ("llama", "kv")]


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{kv}" for m, kv in CASES])
def case(request, random_models):
    """(name, kv, nnsight model, the plain model the reference runs, pairs, tolerance factor)."""
    from transformers import AutoModelForCausalLM

    name, kv = request.param
    if name == "bundled":
        model, plain = request.getfixturevalue("bundled64"), request.getfixturevalue("bundled_plain64")
        pairs = H.ioi_pairs(model.tokenizer, n=3, seed=5)
    else:
        model = H.load_model(random_models[name], dtype="float64")
        plain = AutoModelForCausalLM.from_pretrained(random_models[name], dtype=torch.float64,
                                                     attn_implementation="eager").eval()
        pairs = H.ioi_pairs(model.tokenizer, n=2, seed=3)
    ref_model = rx.ungrouped(plain) if name == "llama" and kv == "query" else plain
    return name, kv, model, ref_model, pairs, 1e-7 if name == "llama" else 1e-10


def _names(ref_scores):
    return {f"{s}->{r}": v for (s, r), v in ref_scores.items()}


def _close(mine, ref, tol):
    """Every edge of ``ref`` within ``tol`` x the largest score."""
    assert set(mine) == set(ref), sorted(set(mine) ^ set(ref))[:5]
    scale = max(abs(v) for v in ref.values())
    worst = max(abs(mine[k] - v) for k, v in ref.items())
    assert worst <= tol * scale, f"max diff {worst:.3g} vs largest score {scale:.3g}"


def test_eap_equals_the_first_order_term_by_hooks_and_autograd(case):
    name, kv, model, plain, pairs, tol = case
    ablated = rx.record(plain, pairs.corrupted_ids, kv)
    ref = rx.first_order(plain, pairs.clean_ids, ablated, pairs.answer_ids, pairs.distractor_ids, kv)
    scores = H.edge_attribution(model, pairs, "eap", kv=kv)
    _close(scores.by_name(), _names(ref), tol)
    assert scores.method == "eap" and scores.n_prompts == len(pairs)


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_eap_with_mean_or_zero_ablation_equals_the_reference(bundled64, bundled_plain64, ablation):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=3, seed=5)
    clean = rx.record(bundled_plain64, pairs.clean_ids)
    ablated = {k: (v.mean(0, keepdim=True).expand_as(v) if ablation == "mean" else torch.zeros_like(v))
               for k, v in clean.items() if isinstance(k, str)}
    ref = rx.first_order(bundled_plain64, pairs.clean_ids, ablated, pairs.answer_ids, pairs.distractor_ids)
    _close(H.edge_attribution(bundled64, pairs, "eap", ablation=ablation).by_name(), _names(ref), 1e-10)


def test_eap_ig_inputs_averages_the_gradient_from_the_corrupted_embeddings(case):
    """MIB: embeddings e_corr + (k / m)(e_clean - e_corr), k = 0 .. m - 1."""
    name, kv, model, plain, pairs, tol = case
    clean, ablated = rx.record(plain, pairs.clean_ids, kv), rx.record(plain, pairs.corrupted_ids, kv)
    total: dict = {}
    for k in range(STEPS):
        emb = ablated["input"] + (k / STEPS) * (clean["input"] - ablated["input"])
        for e, v in rx.first_order(plain, pairs.clean_ids, ablated, pairs.answer_ids, pairs.distractor_ids,
                                   kv, embedding=emb).items():
            total[e] = total.get(e, 0.0) + v / STEPS
    scores = H.edge_attribution(model, pairs, "eap-ig-inputs", steps=STEPS, kv=kv)
    _close(scores.by_name(), _names(total), tol)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "gpt2"], indirect=True,
                         ids=[f"{m}-{kv}" for m, kv in CASES if m != "gpt2"])  # GPT-2: the bundled model
def test_eap_ig_activations_integrates_each_sender_groups_own_interpolation(case):
    """alpha = k / m, k = 1 .. m: a group's output alpha clean + (1 - alpha) ablated; each edge
    takes the runs that interpolate its sender's group."""
    name, kv, model, plain, pairs, tol = case
    clean, ablated = rx.record(plain, pairs.clean_ids, kv), rx.record(plain, pairs.corrupted_ids, kv)
    n_layers = len(rx.senders_of(plain)) // (H.model_facts(model).n_heads + 1)
    groups = [("input", None)] + [(kind, L) for L in range(n_layers) for kind in ("attn", "mlp")]
    total: dict = {}
    for kind, layer in groups:
        for k in range(1, STEPS + 1):
            a = k / STEPS
            key = "input" if kind == "input" else ("attn", layer) if kind == "attn" else f"m{layer}"
            mix = a * clean[key] + (1 - a) * ablated[key]
            ref = rx.first_order(plain, pairs.clean_ids, ablated, pairs.answer_ids, pairs.distractor_ids, kv,
                                 embedding=mix if kind == "input" else None,
                                 outputs=None if kind == "input" else {(kind, layer): mix})
            for (s, r), v in ref.items():
                mine = (kind == "input" and s == "input" or kind == "mlp" and s == f"m{layer}"
                        or kind == "attn" and s.startswith(f"a{layer}."))
                if mine:
                    total[(s, r)] = total.get((s, r), 0.0) + v / STEPS
    scores = H.edge_attribution(model, pairs, "eap-ig-activations", steps=STEPS, kv=kv)
    _close(scores.by_name(), _names(total), tol)


def test_exact_edge_patching_equals_the_edge_ablated_by_hooks(case):
    name, kv, model, plain, pairs, tol = case
    ablated = rx.record(plain, pairs.corrupted_ids, kv)
    everything = set(rx.edges_of(plain, kv))
    clean_ld = rx.ablate(plain, pairs.clean_ids, ablated, everything, pairs.answer_ids, pairs.distractor_ids, kv)
    scores = H.edge_attribution(model, pairs, "exact", kv=kv).by_name()
    picks = sorted(everything)[:: max(1, len(everything) // 12)]  # a dozen edges, every receiver kind
    for edge in picks:
        ld = rx.ablate(plain, pairs.clean_ids, ablated, everything - {edge}, pairs.answer_ids,
                       pairs.distractor_ids, kv)
        assert scores[f"{edge[0]}->{edge[1]}"] == pytest.approx(float((clean_ld - ld).mean()), abs=1e-9)


def test_exact_edge_patching_of_named_edges_is_edge_attributions_exact_score(bundled64):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=2, seed=5)
    names = ["a3.h0->logits", "input->a0.h3<q>", "m1->a2.h0<v>"]
    got = H.exact_edge_patching(bundled64, pairs, names)
    every = H.edge_attribution(bundled64, pairs, "exact")
    assert list(got) == names and all(got[e] == pytest.approx(every[e], abs=1e-12) for e in names)
    with pytest.raises(ValueError, match="unknown edge"):
        H.exact_edge_patching(bundled64, pairs, ["a0.h3->input"])


def test_a_nodes_eap_score_is_the_sum_of_its_edges_and_the_nnsight_attribution_patching_estimate(bundled64):
    """The node score comes from the gradient at the node's output, the edges from the
    receivers' inputs: equal sums is an identity of the residual stream.  For heads it is also
    ``H.attribution_patching``'s noising estimate (nnsight), sign flipped."""
    pairs = H.ioi_pairs(bundled64.tokenizer, n=3, seed=5)
    s = H.edge_attribution(bundled64, pairs, "eap")
    summed = torch.zeros_like(s.nodes).index_add_(0, s.graph.edge_sender, s.values)
    assert torch.allclose(s.nodes, summed, atol=1e-10 * s.nodes.abs().max())
    ap = H.attribution_patching(bundled64, pairs, "noise")["heads"]
    drop = (ap.clean["logit_diff"][:, None, None] - ap.values["logit_diff"]).mean(0)  # [L, H]
    f = H.model_facts(bundled64)
    heads = torch.tensor([s[f"a{L}.h{h}"] for L in range(f.n_layers) for h in range(f.n_heads)],
                         dtype=torch.float64)
    assert torch.allclose(heads, drop.flatten().double(), atol=1e-10 * float(drop.abs().max()))


def test_exact_node_scores_equal_nnsight_noising_of_each_head(bundled64):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=3, seed=5)
    s = H.edge_attribution(bundled64, pairs, "exact")
    r = H.patch_heads(bundled64, pairs, direction="noise", metrics=("logit_diff",))
    drop = (r.clean["logit_diff"][:, None, None] - r.values["logit_diff"]).mean(0)
    f = H.model_facts(bundled64)
    heads = torch.tensor([s[f"a{L}.h{h}"] for L in range(f.n_layers) for h in range(f.n_heads)],
                         dtype=torch.float64)
    assert torch.allclose(heads, drop.flatten().double(), atol=1e-10)


@pytest.mark.parametrize("which", ["bundled", "llama"])
def test_with_the_final_norm_frozen_eap_into_the_logits_equals_path_patching(which, bundled64, random_models):
    """Frozen final norm: a sender -> logits path is linear, so its first-order score is exact:
    ``helpers.path_patch`` (noising, final_norm="frozen") and exact edge patching agree with EAP."""
    model = bundled64 if which == "bundled" else H.load_model(random_models["llama"], dtype="float64")
    pairs = H.ioi_pairs(model.tokenizer, n=3, seed=5)
    eap = H.edge_attribution(model, pairs, "eap", final_norm="frozen")
    exact = H.edge_attribution(model, pairs, "exact", final_norm="frozen")
    path = H.path_patch(model, pairs, "all", "logits", direction="noise", final_norm="frozen",
                        metrics=("logit_diff",))
    drop = (path.clean["logit_diff"][:, None] - path.values["logit_diff"][:, :, 0]).mean(0)
    rename = {"embed": "input"}
    for label, value in zip(path.labels["sender"], drop.tolist()):
        node = rename.get(label) or (f"m{label[3:]}" if label.startswith("mlp") else
                                     "a{}.h{}".format(*label[1:].split("H")))
        edge = f"{node}->logits"
        assert eap[edge] == pytest.approx(value, abs=1e-9), edge
        assert exact[edge] == pytest.approx(value, abs=1e-9), edge
    live = H.edge_attribution(model, pairs, "eap")
    assert max(abs(live[e] - eap[e]) for e in live.by_name() if e.endswith("->logits")) > 1e-6


def _path_name(node, receiver=False):
    """MIB's name -> ``helpers.path_patch``'s: ``input`` -> ``embed``, ``a1.h2`` -> ``L1H2``,
    ``m1`` -> ``mlp1`` (receiver ``mlp1.in``), ``a1.h2<q>`` -> ``L1H2.q``, ``a1.kv0<k>`` -> ``L1KV0.k``."""
    if node in ("input", "logits"):
        return {"input": "embed", "logits": "logits"}[node]
    if node.startswith("m"):
        return f"mlp{node[1:]}" + (".in" if receiver else "")
    layer, rest = node[1:].split(".", 1)
    head, kind = (rest.split("<") + [""])[:2]
    head = head.replace("kv", "KV") if head.startswith("kv") else "H" + head[1:]
    return f"L{layer}{head}" + (f".{kind.rstrip('>')}" if kind else "")


@pytest.mark.parametrize("which", ["bundled", "llama"])
def test_exact_edge_patching_is_path_patching_of_that_one_path(which, bundled64, random_models):
    """Ablating edge u -> v alone changes only v's input, by u's change: path patching u -> v
    (noising, every other component frozen, norms live) does the same.  On the Llama with
    grouped-query attention the key/value receivers are path_patch's ``L1KV0.k`` (``kv="kv"``)."""
    model = bundled64 if which == "bundled" else H.load_model(random_models["llama"], dtype="float64")
    kv = "query" if which == "bundled" else "kv"
    pairs = H.ioi_pairs(model.tokenizer, n=2, seed=5)
    edges = ["input->a0.h1<q>", "a0.h2->a1.h0<q>", "m0->m1", "a1.h3->m1", "m1->logits"]
    edges += (["input->a1.h2<k>", "a0.h2->a1.h0<v>"] if kv == "query"
              else ["input->a1.kv0<k>", "a0.h1->a2.kv1<v>"])
    exact = H.exact_edge_patching(model, pairs, edges, kv=kv)
    for edge in edges:
        sender, receiver = edge.split("->")
        r = H.path_patch(model, pairs, _path_name(sender), _path_name(receiver, True), direction="noise",
                         metrics=("logit_diff",))
        drop = float((r.clean["logit_diff"] - r.values["logit_diff"][:, 0, 0]).mean())
        assert exact[edge] == pytest.approx(drop, abs=1e-9), edge


def test_a_key_value_heads_edge_is_the_sum_over_its_query_heads(random_models):
    model = H.load_model(random_models["llama"], dtype="float64")
    pairs = H.ioi_pairs(model.tokenizer, n=2, seed=3)
    per_query = H.edge_attribution(model, pairs, "eap", kv="query").by_name()
    per_kv = H.edge_attribution(model, pairs, "eap", kv="kv").by_name()
    f = H.model_facts(model)
    rep = f.n_heads // f.n_kv_heads
    tol = 1e-7 * max(abs(v) for v in per_query.values())  # float32 softmax of the eager attention
    checked = 0
    for edge, value in per_kv.items():
        sender, receiver = edge.split("->")
        if ".kv" in receiver:
            layer, rest = receiver.split(".kv")
            g, kind = int(rest.split("<")[0]), rest.split("<")[1]
            total = sum(per_query[f"{sender}->{layer}.h{h}<{kind}"] for h in range(g * rep, (g + 1) * rep))
            assert value == pytest.approx(total, abs=tol)
            checked += 1
        else:
            assert value == pytest.approx(per_query[edge], abs=tol)
    assert checked == 2 * f.n_kv_heads * sum(1 + L * (f.n_heads + 1) for L in range(f.n_layers))


def test_scores_rank_read_and_save(bundled64, tmp_path):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=2, seed=5)
    s = H.edge_attribution(bundled64, pairs)
    top = s.top(3)
    assert [abs(v) for _, v in top] == sorted((abs(v) for v in s.values.tolist()), reverse=True)[:3]
    assert s[top[0][0]] == top[0][1] and len(s) == len(H.edge_graph(bundled64).edges)
    assert s.matrix()[s.graph.edge_sender, s.graph.edge_receiver].equal(s.values)
    saved = tmp_path / "scores.json"
    s.save_json(saved)
    import json

    assert json.loads(saved.read_text())["edges"][top[0][0]] == pytest.approx(top[0][1])


def test_bad_arguments_say_what_to_do(bundled64):
    pairs = H.ioi_pairs(bundled64.tokenizer, n=2, seed=5)
    with pytest.raises(ValueError, match="unknown method"):
        H.edge_attribution(bundled64, pairs, "acdc")
    with pytest.raises(ValueError, match="ablation is 'counterfactual'"):
        H.edge_attribution(bundled64, pairs, "eap-ig-inputs", ablation="mean")
    with pytest.raises(ValueError, match="steps= is for"):
        H.edge_attribution(bundled64, pairs, "eap", steps=3)
    with pytest.raises(ValueError, match="kv must be"):
        H.edge_attribution(bundled64, pairs, kv="grouped")
    with pytest.raises(ValueError, match="unknown ablation"):
        H.edge_attribution(bundled64, pairs, ablation="resample")
    with pytest.raises(ValueError, match="unknown edge"):
        H.edge_attribution(bundled64, pairs)["a9.h0->logits"]
