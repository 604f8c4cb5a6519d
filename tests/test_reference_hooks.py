"""Checks of the hook-based reference implementation itself (tests/reference_hooks.py).

Small random GPT-2 models in float64, so "exact" means atol 1e-10.
The two prompts differ only at positions 3 and 5.
"""

import os
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_hooks as ref  # noqa: E402

ATOL = 1e-10
SEQ = 8
DIFF_POSITIONS = (3, 5)
FIRST_DIFF = DIFF_POSITIONS[0]

CONFIGS = {
    "3L4H": dict(n_layer=3, n_head=4, n_embd=32),
    "2L2H": dict(n_layer=2, n_head=2, n_embd=16),
}


def make_model(n_layer, n_head, n_embd, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=50,
                        n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).double().eval()


def make_prompts(seed=1):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 50, (SEQ,), generator=g)
    source = base.clone()
    for p in DIFF_POSITIONS:
        source[p] = (base[p] + 1 + torch.randint(0, 49, (1,), generator=g)) % 50  # guaranteed different
    return base, source


@pytest.fixture(scope="module", params=list(CONFIGS))
def setup(request):
    model = make_model(**CONFIGS[request.param])
    base, source = make_prompts()
    assert (base != source).nonzero().flatten().tolist() == list(DIFF_POSITIONS)
    with torch.no_grad():
        base_logits = model(base[None]).logits[0]
        source_logits = model(source[None]).logits[0]
    # the random model must actually tell the prompts apart, or the tests are vacuous
    assert (base_logits[-1] - source_logits[-1]).abs().max() > 1e-3
    return dict(
        model=model, base=base, source=source,
        base_logits=base_logits, source_logits=source_logits,
        base_cache=ref.cache_activations(model, base),
        source_cache=ref.cache_activations(model, source),
        n_layer=model.config.n_layer, n_head=model.config.n_head,
    )


def all_sites(s):
    """Every (kind, layer, head) site of the model."""
    sites = [("resid", L, None) for L in range(s["n_layer"] + 1)]
    for L in range(s["n_layer"]):
        sites += [("attn", L, None), ("mlp", L, None)]
        sites += [("head", L, h) for h in range(s["n_head"])]
    return sites


def close(a, b):
    return torch.allclose(a, b, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------
# the cache itself
# --------------------------------------------------------------------------

def test_cache_keys_and_shapes(setup):
    s = setup
    cache, n_layer, d = s["base_cache"], s["n_layer"], s["model"].config.n_embd
    expected = {("resid", L) for L in range(n_layer + 1)}
    for L in range(n_layer):
        expected |= {("attn", L), ("mlp", L), ("z", L)}
    assert set(cache) == expected
    for value in cache.values():
        assert value.shape == (SEQ, d) and value.dtype == torch.float64


def test_cache_is_consistent_with_the_model(setup):
    s = setup
    model, cache = s["model"], s["base_cache"]
    # resid 0 = token + position embeddings
    embeddings = model.transformer.wte(s["base"]) + model.transformer.wpe(torch.arange(SEQ))
    assert close(cache[("resid", 0)], embeddings)
    for L in range(s["n_layer"]):
        # residual stream update: next row = row + attn + mlp
        assert close(cache[("resid", L + 1)], cache[("resid", L)] + cache[("attn", L)] + cache[("mlp", L)])
        # attention output = c_proj(z)
        assert close(cache[("attn", L)], model.transformer.h[L].attn.c_proj(cache[("z", L)]))
    # last row is before ln_f: ln_f + unembedding gives the model's logits
    with torch.no_grad():
        logits = model.lm_head(model.transformer.ln_f(cache[("resid", s["n_layer"])]))
    assert close(logits, s["base_logits"])


# --------------------------------------------------------------------------
# properties (a) - (g)
# --------------------------------------------------------------------------

def test_a_last_resid_row_reproduces_source(setup):
    s = setup
    patched = ref.run_with_patches(s["model"], s["base"], s["source_cache"],
                                   [("resid", s["n_layer"], None, None)])
    assert close(patched, s["source_logits"])


def test_b_patching_before_first_difference_changes_nothing(setup):
    s = setup
    for kind, L, head in all_sites(s):
        for p in range(FIRST_DIFF):
            patched = ref.run_with_patches(s["model"], s["base"], s["source_cache"], [(kind, L, p, head)])
            assert close(patched, s["base_logits"]), (kind, L, p, head)


def test_b_counterpart_patching_a_differing_position_changes_something(setup):
    # guards against hooks that silently do nothing
    s = setup
    for kind, L, head in all_sites(s):
        patched = ref.run_with_patches(s["model"], s["base"], s["source_cache"], [(kind, L, None, head)])
        assert not close(patched, s["base_logits"]), (kind, L, head)


def test_c_all_heads_equal_attention_output(setup):
    s = setup
    for L in range(s["n_layer"]):
        heads = [("head", L, None, h) for h in range(s["n_head"])]
        via_heads = ref.run_with_patches(s["model"], s["base"], s["source_cache"], heads)
        via_attn = ref.run_with_patches(s["model"], s["base"], s["source_cache"], [("attn", L, None, None)])
        assert close(via_heads, via_attn), L
        # a strict subset of heads is not enough (heads are really separate slices)
        some = ref.run_with_patches(s["model"], s["base"], s["source_cache"], heads[:-1])
        assert not close(some, via_attn), L


def test_d_source_equal_to_base_changes_nothing(setup):
    s = setup
    for kind, L, head in all_sites(s):
        for p in [None, 0, FIRST_DIFF, SEQ - 1]:
            patched = ref.run_with_patches(s["model"], s["base"], s["base_cache"], [(kind, L, p, head)])
            assert close(patched, s["base_logits"]), (kind, L, p, head)
    # also the sweeps
    assert close(ref.sweep_heads(s["model"], s["base"], s["base"]),
                 s["base_logits"][-1].expand(s["n_layer"], s["n_head"], -1))


def _read_inside(s, patch, read_module, read_input):
    """Run base with ``patch`` and read ``read_module``'s input (first arg) or output
    with a hook registered after the patch hooks. Returns [seq, ...]."""
    seen = {}

    def read_pre(module, args, kwargs):
        seen["value"] = (args[0] if args else kwargs["hidden_states"])[0].clone()

    def read_post(module, args, output):
        seen["value"] = (output[0] if isinstance(output, tuple) else output)[0].clone()

    with torch.no_grad(), ref.patching(s["model"], s["source_cache"], [patch]):
        if read_input:
            handle = read_module.register_forward_pre_hook(read_pre, with_kwargs=True)
        else:
            handle = read_module.register_forward_hook(read_post)
        try:
            s["model"](s["base"][None], use_cache=False)
        finally:
            handle.remove()
    return seen["value"]


@pytest.mark.parametrize("position", [FIRST_DIFF, DIFF_POSITIONS[1], None])
def test_e_patched_value_is_really_used(setup, position):
    s = setup
    model, src, base = s["model"], s["source_cache"], s["base_cache"]
    blocks, n_layer = model.transformer.h, s["n_layer"]
    pos = slice(None) if position is None else position
    d_head = model.config.n_embd // s["n_head"]

    for L in range(n_layer + 1):
        # value differed before patching
        assert not close(src[("resid", L)][pos], base[("resid", L)][pos])
        # resid row L is consumed by block L (ln_1 and the residual) or by ln_f
        consumer = model.transformer.ln_f if L == n_layer else blocks[L]
        seen = _read_inside(s, ("resid", L, position, None), consumer, read_input=True)
        assert close(seen[pos], src[("resid", L)][pos])
        if position is not None:  # other positions of row 0 untouched
            others = [p for p in range(SEQ) if p != position]
            if L == 0:
                assert close(seen[others], base[("resid", 0)][others])

    for L in range(n_layer):
        block = blocks[L]
        for kind in ("attn", "mlp"):
            assert not close(src[(kind, L)][pos], base[(kind, L)][pos])
            # the hook's own output as seen by a later hook on the same module
            seen = _read_inside(s, (kind, L, position, None), getattr(block, kind), read_input=False)
            assert close(seen[pos], src[(kind, L)][pos])
        # downstream: ln_2's input is resid_mid = block input + attn output
        block_in = _read_inside(s, ("attn", L, position, None), block, read_input=True)
        resid_mid = _read_inside(s, ("attn", L, position, None), block.ln_2, read_input=True)
        assert close((resid_mid - block_in)[pos], src[("attn", L)][pos])
        # downstream: block output = resid_mid + mlp output
        resid_mid = _read_inside(s, ("mlp", L, position, None), block.ln_2, read_input=True)
        block_out = _read_inside(s, ("mlp", L, position, None), block, read_input=False)
        assert close((block_out - resid_mid)[pos], src[("mlp", L)][pos])

        for h in range(s["n_head"]):
            cols = slice(h * d_head, (h + 1) * d_head)
            assert not close(src[("z", L)][pos, cols], base[("z", L)][pos, cols])
            z = _read_inside(s, ("head", L, position, h), block.attn.c_proj, read_input=True)
            assert close(z[pos, cols], src[("z", L)][pos, cols])
            # other heads keep their (base-run) values at this layer (patch is at this layer,
            # so everything feeding it is from the base run)
            other = [c for c in range(model.config.n_embd) if not cols.start <= c < cols.stop]
            assert close(z[:, other], base[("z", L)][:, other])
            # and c_proj really consumed it
            attn_out = _read_inside(s, ("head", L, position, h), block.attn, read_input=False)
            with torch.no_grad():
                assert close(attn_out, block.attn.c_proj(z))


def test_f_embedding_patch_at_both_differing_positions_restores_source(setup):
    s = setup
    patches = [("resid", 0, p, None) for p in DIFF_POSITIONS]
    patched = ref.run_with_patches(s["model"], s["base"], s["source_cache"], patches)
    assert close(patched, s["source_logits"])
    # one of the two alone does not
    alone = ref.run_with_patches(s["model"], s["base"], s["source_cache"], patches[:1])
    assert not close(alone, s["source_logits"])


def test_g_all_attn_and_mlp_outputs_restore_source(setup):
    s = setup
    model = s["model"]
    patches = []
    for L in range(s["n_layer"]):
        patches += [("attn", L, None, None), ("mlp", L, None, None)]
    patched = ref.run_with_patches(model, s["base"], s["source_cache"], patches)
    # The final residual is embeddings + all attn outputs + all mlp outputs. Every attn/mlp output
    # now comes from the source run, but the base embeddings still flow directly to the unembedding.
    # They differ only at positions 3 and 5, so the logits at every other position (in particular
    # the last one, where metrics are read) are exactly the source run's.
    same = [p for p in range(SEQ) if p not in DIFF_POSITIONS]
    assert close(patched[same], s["source_logits"][same])
    assert close(patched[-1], s["source_logits"][-1])
    # At positions 3 and 5 the final residual is the source's minus the embedding difference.
    emb_diff = s["source_cache"][("resid", 0)] - s["base_cache"][("resid", 0)]
    final = s["source_cache"][("resid", s["n_layer"])] - emb_diff
    with torch.no_grad():
        expected = model.lm_head(model.transformer.ln_f(final))
    assert close(patched, expected)
    assert not close(patched[list(DIFF_POSITIONS)], s["source_logits"][list(DIFF_POSITIONS)])
    # Adding the embedding patch gives the source run everywhere.
    full = ref.run_with_patches(model, s["base"], s["source_cache"], patches + [("resid", 0, None, None)])
    assert close(full, s["source_logits"])


# --------------------------------------------------------------------------
# sweeps, logit_diff, hygiene
# --------------------------------------------------------------------------

def test_sweeps_shapes_and_entries(setup):
    s = setup
    model, base, source = s["model"], s["base"], s["source"]
    n_layer, n_head, vocab = s["n_layer"], s["n_head"], model.config.vocab_size
    sweeps = {
        "resid": (ref.sweep_resid(model, base, source), (n_layer + 1, SEQ, vocab)),
        "attn": (ref.sweep_attn(model, base, source), (n_layer, SEQ, vocab)),
        "mlp": (ref.sweep_mlp(model, base, source), (n_layer, SEQ, vocab)),
        "heads": (ref.sweep_heads(model, base, source), (n_layer, n_head, vocab)),
        "head_pos": (ref.sweep_head_positions(model, base, source), (n_layer, n_head, SEQ, vocab)),
    }
    for name, (result, shape) in sweeps.items():
        assert result.shape == shape and result.dtype == torch.float64, name
    sweeps = {name: result for name, (result, shape) in sweeps.items()}

    run = lambda patch: ref.run_with_patches(model, base, s["source_cache"], [patch])[-1]  # noqa: E731
    assert close(sweeps["resid"][0][2], run(("resid", 0, 2, None)))
    assert close(sweeps["resid"][0][3], run(("resid", 0, 3, None)))
    assert close(sweeps["resid"][n_layer][SEQ - 1], s["source_logits"][-1])  # last row, last position
    assert close(sweeps["attn"][n_layer - 1][5], run(("attn", n_layer - 1, 5, None)))
    assert close(sweeps["mlp"][0][3], run(("mlp", 0, 3, None)))
    assert close(sweeps["heads"][n_layer - 1][1], run(("head", n_layer - 1, None, 1)))
    assert close(sweeps["head_pos"][0][n_head - 1][5], run(("head", 0, 5, n_head - 1)))
    # causality, seen through the sweeps
    for name in ("resid", "attn", "mlp"):
        before = sweeps[name][:, :FIRST_DIFF]
        assert close(before, s["base_logits"][-1].expand_as(before)), name
    before = sweeps["head_pos"][..., :FIRST_DIFF, :]
    assert close(before, s["base_logits"][-1].expand_as(before))


def test_logit_diff(setup):
    s = setup
    logits = s["base_logits"]
    assert ref.logit_diff(logits, 7, 11) == pytest.approx(float(logits[-1, 7] - logits[-1, 11]))
    assert isinstance(ref.logit_diff(logits, 7, 11), float)


def test_hooks_are_removed_even_on_error(setup):
    s = setup
    model = s["model"]
    with pytest.raises(ValueError):
        ref.run_with_patches(model, s["base"], s["source_cache"],
                             [("mlp", 0, None, None), ("head", 0, None, None)])  # head missing
    with pytest.raises(ValueError):
        ref.run_with_patches(model, s["base"], s["source_cache"], [("resid", s["n_layer"] + 1, None, None)])
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
    # and the model still gives the base logits
    assert close(ref.run_with_patches(model, s["base"], s["source_cache"], []), s["base_logits"])


def test_rejects_training_mode_and_length_mismatch(setup):
    s = setup
    model = s["model"]
    with pytest.raises(ValueError):
        ref.run_with_patches(model, s["base"][:-1], s["source_cache"], [])
    model.train()
    try:
        with pytest.raises(ValueError):
            ref.cache_activations(model, s["base"])
    finally:
        model.eval()
