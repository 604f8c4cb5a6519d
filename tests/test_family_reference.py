"""Checks of the family-generic hook reference (tests/reference_hooks.py, section "Every
family") on a tiny random model of every family (tests/tiny_models.py), in float64, so
"exact" means max abs difference < 1e-10.

The reference is the ground truth the nnsight engine is compared with; these tests check
the reference itself with identities that hold exactly:

(a) patching ``resid`` of the last block at all positions reproduces the source run;
(b) patching any site at positions before the prompts' first difference changes nothing;
(c) patching ``embed`` at every position where the prompts differ reproduces the source run;
(d) patching all heads of a layer at all positions equals patching its ``attn`` output;
(e) the ``head`` site is [batch, seq, n_heads * d_head] and ``attn`` = o_proj(``head``).

plus the facts about transformers 5.23 the reference relies on (module paths, decoder layers
returning tensors, hidden_states passed positionally, grouped-query attention shapes).
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_hooks as ref  # noqa: E402
from tiny_models import FAMILIES, SLIDING_WINDOW, save_random_gpt2, save_random_model  # noqa: E402

ATOL = 1e-10

# What transformers 5.23 builds for each family's tiny model.
EXPECTED = {
    "gpt2": dict(cls="GPT2LMHeadModel", model_type="gpt2"),
    "gpt_neox": dict(cls="GPTNeoXForCausalLM", model_type="gpt_neox"),
    "llama": dict(cls="LlamaForCausalLM", model_type="llama"),
    "qwen2": dict(cls="Qwen2ForCausalLM", model_type="qwen2"),
    "qwen3": dict(cls="Qwen3ForCausalLM", model_type="qwen3"),
    "mistral": dict(cls="MistralForCausalLM", model_type="mistral"),
    "gemma2": dict(cls="Gemma2ForCausalLM", model_type="gemma2"),
    "gemma3": dict(cls="Gemma3ForCausalLM", model_type="gemma3_text"),
}
# query heads, key/value heads, d_head (of the tiny models)
HEADS = {"gpt2": (4, 4, 8), "gpt_neox": (4, 4, 8), "llama": (4, 2, 8), "qwen2": (4, 2, 8),
         "qwen3": (4, 2, 16), "mistral": (4, 2, 8), "gemma2": (4, 2, 16), "gemma3": (4, 2, 16)}
GEMMA = ("gemma2", "gemma3")


def close(a, b):
    return a.shape == b.shape and bool((a - b).abs().max() < ATOL)


def load(path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, attn_implementation="eager",
                                                **kwargs).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from helpers.organism.train_ioi import build_tokenizer, vocabulary

    return build_tokenizer(vocabulary())


@pytest.fixture(scope="module")
def pairs(tokenizer):
    from helpers.data.prompts import ioi_pairs

    return ioi_pairs(tokenizer, n=3)


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request, tmp_path_factory, pairs):
    family = request.param
    path = save_random_model(tmp_path_factory.mktemp(family), family)
    model = load(path)
    base, source = pairs.clean_ids, pairs.corrupted_ids
    differ = (base != source).any(0).nonzero().flatten().tolist()
    base_logits, source_logits = ref.full_logits(model, base), ref.full_logits(model, source)
    return dict(family=family, path=path, model=model, base=base, source=source, differ=differ,
                first_diff=differ[0], seq=base.shape[1], base_logits=base_logits,
                source_logits=source_logits, source_cache=ref.cache(model, family, source),
                base_cache=ref.cache(model, family, base),
                n_layers=model.config.num_hidden_layers if family != "gpt2" else model.config.n_layer,
                n_heads=ref.n_heads_of(model))


def all_sites(s):
    """Every (site, layer, head) of the model."""
    sites = [("embed", None, None)]
    for L in range(s["n_layers"]):
        sites += [("resid", L, None), ("attn", L, None), ("mlp", L, None)]
        sites += [("head", L, h) for h in range(s["n_heads"])]
    return sites


def run(s, patches, cache_key="source_cache"):
    """All logits [batch, seq, vocab] of the base prompts with ``patches``."""
    return ref.run_with_source_cache(s["model"], s["family"], s["base"], patches, s[cache_key])


# --------------------------------------------------------------------------
# the model and the transformers internals the reference relies on
# --------------------------------------------------------------------------

def test_model_class_config_and_module_paths(setup):
    s = setup
    model, family = s["model"], s["family"]
    assert type(model).__name__ == EXPECTED[family]["cls"]
    assert model.config.model_type == EXPECTED[family]["model_type"]
    assert ref.family_of(model) == family
    assert model.config._attn_implementation == "eager"
    assert next(model.parameters()).dtype == torch.float64
    n_heads, n_kv, d_head = HEADS[family]
    assert ref.n_heads_of(model) == n_heads and ref.d_head_of(model, family) == d_head
    if family not in ("gpt2", "gpt_neox"):  # grouped-query attention
        assert model.config.num_key_value_heads == n_kv
        attn = ref.module_for(model, family, "attn", 0)
        assert attn.k_proj.out_features == n_kv * d_head and attn.q_proj.out_features == n_heads * d_head
        assert getattr(model.config, "head_dim", None) in (d_head, None)  # Qwen2's config has none
    # module paths (final_norm and unembedding are checked numerically in test_cache_is_consistent)
    blocks = ref.module_for(model, family, "blocks")
    assert len(blocks) == s["n_layers"] == ref.n_layers_of(model, family)
    for what in ("attn", "o_proj", "mlp"):
        assert isinstance(ref.module_for(model, family, what, 0), torch.nn.Module)
    assert ref.module_for(model, family, "unembed", None) is model.get_output_embeddings()
    if family == "gpt_neox":  # transformers 5 renamed Pythia's embed_out to lm_head
        assert not hasattr(model, "embed_out")


def test_decoder_layers_get_hidden_states_positionally_and_return_tensors(setup):
    s = setup
    model, family = s["model"], s["family"]
    seen, handles = [], []

    def pre(module, args, kwargs):
        seen.append(("in", len(args) >= 1 and torch.is_tensor(args[0]), "hidden_states" in kwargs))

    def post(module, args, output):
        seen.append(("out", type(output).__name__, tuple(output.shape) if torch.is_tensor(output) else None))

    for block in ref.module_for(model, family, "blocks"):
        handles += [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post)]
    try:
        ref.full_logits(model, s["base"])
    finally:
        for h in handles:
            h.remove()
    d_model = model.config.hidden_size
    shape = (*s["base"].shape, d_model)
    assert seen == [("in", True, False), ("out", "Tensor", shape)] * s["n_layers"]


def test_logits_are_finite_and_not_degenerate(setup):
    s = setup
    for logits in (s["base_logits"], s["source_logits"]):
        assert torch.isfinite(logits).all()
        assert logits[:, -1].std(-1).min() > 1e-2  # not all equal
    # the random model tells the prompts apart, or the identities below are vacuous
    assert (s["base_logits"][:, -1] - s["source_logits"][:, -1]).abs().max() > 1e-3


def test_saved_tokenizer(setup, tokenizer):
    """The word-level tokenizer is saved beside every model.  Load it with
    PreTrainedTokenizerFast.from_pretrained: AutoTokenizer works for every family but Qwen2,
    where transformers 5.23 ignores tokenizer_config.json's "TokenizersBackend" and builds a
    byte-level BPE ``Qwen2Tokenizer`` from the vocabulary (model_type "qwen2" is in its
    MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS), which mangles the words."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    s = setup
    text = "When Grace and Emma went to the store"
    expected = tokenizer(text)["input_ids"]
    assert PreTrainedTokenizerFast.from_pretrained(s["path"])(text)["input_ids"] == expected
    auto = AutoTokenizer.from_pretrained(s["path"])
    if s["family"] == "qwen2":
        assert type(auto).__name__ == "Qwen2Tokenizer" and auto(text)["input_ids"] != expected
    else:
        assert auto(text)["input_ids"] == expected
    config = s["model"].config
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert config.vocab_size == len(tokenizer)


def test_sliding_window(setup):
    """Mistral, Gemma 2 and Gemma 3 have a sliding window shorter than the prompts (Gemma:
    layer 0 only), and it changes the logits; Qwen2/Qwen3 have none (use_sliding_window False)."""
    s = setup
    config = s["model"].config
    if s["family"] in ("mistral", "gemma2", "gemma3"):
        assert config.sliding_window == SLIDING_WINDOW < s["seq"]
        if s["family"] in GEMMA:
            assert config.layer_types == ["sliding_attention", "full_attention"]
        wide = load(s["path"], sliding_window=s["seq"] + 1)
        assert not close(ref.full_logits(wide, s["base"]), s["base_logits"])
    elif s["family"] in ("qwen2", "qwen3"):
        assert config.sliding_window is None
        assert set(config.layer_types) == {"full_attention"}


# --------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------

def test_cache_keys_and_shapes(setup):
    s = setup
    cache, model = s["base_cache"], s["model"]
    batch, seq = s["base"].shape
    d_model = model.config.hidden_size
    n_heads, _, d_head = HEADS[s["family"]]
    expected = {("embed", None)}
    for L in range(s["n_layers"]):
        expected |= {("resid", L), ("attn", L), ("mlp", L), ("head", L)}
    assert set(cache) == expected
    for (site, layer), value in cache.items():
        width = n_heads * d_head if site == "head" else d_model
        assert value.shape == (batch, seq, width) and value.dtype == torch.float64, (site, layer)
    # 1-D ids: same values without the batch dimension
    one = ref.cache(model, s["family"], s["base"][1])
    assert set(one) == expected and all(close(one[k], cache[k][1]) for k in expected)


def _embedding(s):
    """What block 0 should get, computed from the embedding weights."""
    model, ids, family = s["model"], s["base"], s["family"]
    if family == "gpt2":
        return model.transformer.wte.weight[ids] + model.transformer.wpe.weight[torch.arange(s["seq"])]
    if family == "gpt_neox":
        return model.gpt_neox.embed_in.weight[ids]
    raw = model.model.embed_tokens.weight[ids]
    if family in GEMMA:  # scaled by sqrt(d_model)
        return raw * model.config.hidden_size ** 0.5
    return raw


def test_cache_is_consistent_with_the_model(setup):
    s = setup
    model, family, cache = s["model"], s["family"], s["base_cache"]
    # embed: input of block 0 = embeddings, with Gemma's sqrt(d_model) scaling (its
    # embed_scale buffer follows the model's dtype: exactly sqrt(d_model) in float64)
    assert close(cache[("embed", None)], _embedding(s))
    previous = cache[("embed", None)]
    for L in range(s["n_layers"]):
        block = ref.module_for(model, family, "block", L)
        attn, mlp = cache[("attn", L)], cache[("mlp", L)]
        with torch.no_grad():
            # (e) attention output = output projection of the heads' outputs
            assert close(attn, ref.module_for(model, family, "o_proj", L)(cache[("head", L)])), L
            if family in GEMMA:  # attn/mlp sites are before the post-norms
                attn, mlp = block.post_attention_layernorm(attn), block.post_feedforward_layernorm(mlp)
        # residual stream update: block output = block input + attn + mlp (also for
        # GPT-NeoX's parallel residual)
        assert close(cache[("resid", L)], previous + attn + mlp), L
        previous = cache[("resid", L)]
    # the last resid is before the final norm: final norm + unembedding (+ Gemma 2's
    # final-logit softcapping) give the model's logits
    with torch.no_grad():
        logits = ref.module_for(model, family, "unembed")(ref.module_for(model, family, "final_norm")(previous))
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    assert (family == "gemma2") == (cap is not None)
    assert close(logits, s["base_logits"])


# --------------------------------------------------------------------------
# (a) - (e)
# --------------------------------------------------------------------------

def test_a_last_resid_at_all_positions_reproduces_source(setup):
    s = setup
    patched = run(s, [("resid", s["n_layers"] - 1, None, None)])
    assert close(patched, s["source_logits"])
    # and through the source-ids entry point (last position only)
    last = ref.run_patched(s["model"], s["family"], s["base"], [("resid", s["n_layers"] - 1, None, None)],
                           s["source"])
    assert close(last, s["source_logits"][:, -1])


def test_b_patching_before_the_first_difference_changes_nothing(setup):
    s = setup
    before = range(s["first_diff"])
    for site, L, head in all_sites(s):
        # all earlier positions jointly, and the first and last of them alone
        patches = [(site, L, p, head) for p in before]
        for chosen in (patches, patches[:1], patches[-1:]):
            assert close(run(s, chosen), s["base_logits"]), (site, L, head, chosen[0][2])


def test_b_counterpart_patching_at_all_positions_changes_something(setup):
    # guards against hooks that silently do nothing
    s = setup
    for site, L, head in all_sites(s):
        assert not close(run(s, [(site, L, None, head)]), s["base_logits"]), (site, L, head)


def test_c_embed_at_differing_positions_reproduces_source(setup):
    s = setup
    same = [p for p in range(s["seq"]) if p not in s["differ"]]
    assert close(s["source_cache"][("embed", None)][:, same], s["base_cache"][("embed", None)][:, same])
    patched = run(s, [("embed", None, p, None) for p in s["differ"]])
    assert close(patched, s["source_logits"])
    assert close(run(s, [("embed", 0, None, None)]), s["source_logits"])  # layer 0 = None for embed


def test_d_all_heads_of_a_layer_equal_its_attn_output(setup):
    """Holds because the attention module's output is exactly o_proj(head input) (test_e):
    o_proj is an affine map (its bias is added once, whatever the heads hold) applied last,
    so replacing its whole input by the source's gives the source's output."""
    s = setup
    for L in range(s["n_layers"]):
        heads = [("head", L, None, h) for h in range(s["n_heads"])]
        via_heads = run(s, heads)
        assert close(via_heads, run(s, [("attn", L, None, None)])), L
        # a strict subset of the heads is not enough (heads are really separate slices)
        assert not close(run(s, heads[:-1]), via_heads), L


def test_e_head_site_shape_and_o_proj(setup):
    s = setup
    model, family = s["model"], s["family"]
    n_heads, _, d_head = HEADS[family]
    for L in range(s["n_layers"]):
        z = s["source_cache"][("head", L)]
        assert z.shape == (*s["base"].shape, n_heads * d_head)
        with torch.no_grad():
            assert close(ref.module_for(model, family, "o_proj", L)(z), s["source_cache"][("attn", L)])
    # inside a patched run: the patched slice is the source's, the other heads keep the base
    # values, and the attention module outputs o_proj of the patched input
    L, h, p = s["n_layers"] - 1, 1, s["first_diff"]
    cols = slice(h * d_head, (h + 1) * d_head)
    o_proj, attn = ref.module_for(model, family, "o_proj", L), ref.module_for(model, family, "attn", L)
    seen = {}
    with torch.no_grad(), ref.patched(model, family, s["source_cache"], [("head", L, p, h)]):
        handles = [o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0].clone())),
                   attn.register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o[0].clone()))]
        try:
            model(s["base"], use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        expected = s["base_cache"][("head", L)].clone()
        expected[:, p, cols] = s["source_cache"][("head", L)][:, p, cols]
        assert close(seen["z"], expected)
        assert not close(seen["z"], s["base_cache"][("head", L)])
        assert close(seen["attn"], o_proj(seen["z"]))


def test_source_equal_to_base_changes_nothing(setup):
    s = setup
    for site, L, head in all_sites(s):
        assert close(run(s, [(site, L, None, head)], cache_key="base_cache"), s["base_logits"]), (site, L, head)


# --------------------------------------------------------------------------
# sweeps, GPT-2 agreement with the GPT-2-only functions, hygiene
# --------------------------------------------------------------------------

def test_sweep_shapes_and_entries(setup):
    s = setup
    model, family, base, source = s["model"], s["family"], s["base"], s["source"]
    batch, seq = base.shape
    vocab = s["base_logits"].shape[-1]
    n_layers, n_heads = s["n_layers"], s["n_heads"]
    resid = ref.sweep(model, family, base, source, "resid")
    heads = ref.sweep(model, family, base, source, "head", per_position=False)
    assert resid.shape == (n_layers, seq, batch, vocab) and heads.shape == (n_layers, n_heads, batch, vocab)
    assert close(resid[:, : s["first_diff"]], s["base_logits"][:, -1].expand(n_layers, s["first_diff"], -1, -1))
    assert close(resid[n_layers - 1, seq - 1], s["source_logits"][:, -1])
    assert close(heads[0, 2], run(s, [("head", 0, None, 2)])[:, -1])
    embed = ref.sweep(model, family, base[0], source[0], "embed")  # 1-D ids: no batch dimension
    assert embed.shape == (seq, vocab)
    assert close(embed[s["first_diff"]], s["source_logits"][0, -1])


def test_gpt2_generic_and_gpt2_only_functions_agree(tmp_path, pairs):
    model = load(save_random_gpt2(tmp_path / "m", n_layer=2, n_head=4, n_embd=32, n_positions=64))
    base, source = pairs.clean_ids[0], pairs.corrupted_ids[0]
    old, new = ref.cache_activations(model, base), ref.cache(model, "gpt2", base)
    assert close(new[("embed", None)], old[("resid", 0)])
    for L in range(2):
        assert close(new[("resid", L)], old[("resid", L + 1)])
        assert close(new[("head", L)], old[("z", L)])
        for site in ("attn", "mlp"):
            assert close(new[(site, L)], old[(site, L)])
    assert close(ref.sweep(model, "gpt2", base, source, "resid"), ref.sweep_resid(model, base, source)[1:])
    assert close(ref.sweep(model, "gpt2", base, source, "head"), ref.sweep_head_positions(model, base, source))


def test_bad_patches_raise_and_hooks_are_removed(setup):
    s = setup
    model = s["model"]
    bad = [("head", 0, None, None), ("head", 0, None, s["n_heads"]), ("resid", s["n_layers"], None, None),
           ("embed", 1, None, None), ("mlp", 0, None, 0), ("logits", 0, None, None), ("resid", 0, None)]
    for patch in bad:
        with pytest.raises(ValueError):
            run(s, [("mlp", 0, None, None), patch])
    with pytest.raises(ValueError):  # different lengths
        ref.run_patched(model, s["family"], s["base"][:, :-1], [], s["source"])
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
    assert close(run(s, []), s["base_logits"])
