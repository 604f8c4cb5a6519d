"""What a loaded model carries (its transformers module, anatomy, device, remote mode) is read
through one accessor, ``helpers.models.loaded.handle``, once per public call: the public function
reads it at its edge and passes the handle down, so nothing below re-derives it step by step.
The facts stay on the transformers module, where an NDIF request finds them."""
from __future__ import annotations

import pytest
import torch

import helpers as H
import helpers.models.loaded as handle_module


@pytest.fixture()
def reads(monkeypatch):
    """The number of times what a model carries is read from the model (not from a handle)."""
    count = []
    real = handle_module._read
    monkeypatch.setattr(handle_module, "_read", lambda model: count.append(1) or real(model))
    return count


@pytest.fixture(scope="module")
def pairs(bundled):
    return H.ioi_pairs(bundled.tokenizer, n=3, seed=0)


def _fixed_scores():
    """Edge scores of the bundled model's graph (4 blocks, 4 heads) made without the model."""
    g = H.EdgeGraph(4, 4, 4)
    return H.EdgeScores(graph=g, values=torch.linspace(-1, 1, len(g.edges), dtype=torch.float64),
                        nodes=torch.linspace(0, 1, len(g.senders), dtype=torch.float64), method="fixed",
                        ablation="counterfactual", model_name="ioi-tiny", n_prompts=3, clean=1.0, corrupted=0.0)


CALLS = {
    "patch_residual": lambda m, p: H.patch_residual(m, p),
    "patch_heads": lambda m, p: H.patch_heads(m, p),
    "patch_heads by_position batched": lambda m, p: H.patch_heads(m, p, by_position=True,
                                                                  method="batched"),
    "patch_components loop": lambda m, p: H.patch_components(m, p, [H.Patch("mlp", 1)],
                                                              method="loop"),
    "path_patch fast": lambda m, p: H.path_patch(m, p, senders="heads", receivers="logits"),
    "path_patch batched": lambda m, p: H.path_patch(m, p, senders="heads", receivers=["L3H0.q"],
                                                    method="batched"),
    "attribution_patching": lambda m, p: H.attribution_patching(m, p),
    "ablate mean": lambda m, p: H.ablate(m, p, ["L0H1", "mlp2"], kind="mean"),
    "knockout": lambda m, p: H.knockout(m, p, [("L3H0", "END", "S2")]),
    "evaluate_circuit": lambda m, p: H.evaluate_circuit(m, p, ["L2H1", "L3H0"], max_steps=1),
    "minimal_circuit": lambda m, p: H.minimal_circuit(m, p, candidates=["L2H1", "L3H0", "mlp3"],
                                                      max_steps=2),
    "baselines": lambda m, p: H.baselines(m, p),
    "attention_patterns": lambda m, p: H.attention_patterns(m, p.clean_ids, 1),
    "ioi_accuracy": lambda m, p: H.ioi_accuracy(m, H.random_ioi_prompts(4, seed=0)),
    "top_predictions": lambda m, p: H.top_predictions(m, p.clean[0]),
    "edge_attribution eap": lambda m, p: H.edge_attribution(m, p),
    "edge_attribution exact": lambda m, p: H.edge_attribution(m, p[:1], "exact"),
    "evaluate_edges": lambda m, p: H.evaluate_edges(m, p, ["a3.h0->logits"]),
    "faithfulness_curve": lambda m, p: H.faithfulness_curve(m, p, _fixed_scores(), percentages=(0.1, 1.0)),
    "edge_graph": lambda m, p: H.edge_graph(m),
    "exact_edge_patching": lambda m, p: H.exact_edge_patching(m, p, ["a3.h0->logits"]),
    "scorecard": lambda m, p: _scorecard().scorecard(m, p[:2], H.circuit_from_edges(
        H.EdgeGraph(4, 4, 4), ["input->a3.h0<v>", "a3.h0->logits"]), methods=("eap", "greedy", "random"),
        ablations=("counterfactual",)),
}


def _scorecard():
    from helpers.circuits import scorecard

    return scorecard


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_public_call_reads_what_the_model_carries_once(bundled, pairs, reads, name):
    CALLS[name](bundled, pairs)
    assert len(reads) == 1, f"{name} read the model's facts {len(reads)} times"


def test_a_handle_is_read_once_and_then_passed_along(bundled, reads):
    mh = H.models.handle(bundled)
    assert H.models.handle(mh) is mh and len(reads) == 1
    assert mh.anatomy is H.model_facts(bundled) and mh.hf is bundled._module
    assert mh.device == torch.device("cpu") and mh.remote is False and mh.trace_kwargs == {}


def test_the_facts_live_on_the_transformers_module_not_on_the_wrapper(bundled):
    """An NDIF request pickles the nnsight wrapper but names the modules; the server has no
    helpers package, so the anatomy must sit on the transformers module."""
    hf = bundled._module
    assert hf.__dict__["_patchlab_anatomy"] is H.model_facts(bundled)
    assert hf.__dict__["_patchlab_remote"] is False and hf.__dict__["_patchlab_name"] == "ioi-tiny"
    assert "_patchlab_anatomy" not in vars(bundled)
