#!/usr/bin/env python3
"""Speed and memory of the patching sweeps against a plain PyTorch hooks loop, side by side.

    .venv/bin/python benchmarks/sweeps.py                    # GPT-2 small stand-in, ~8 minutes
    .venv/bin/python benchmarks/sweeps.py --model smollm2    # SmolLM2-135M's shapes (Llama), ~15 minutes
    .venv/bin/python benchmarks/sweeps.py --quick            # the bundled model, seconds
    .venv/bin/python benchmarks/sweeps.py --profile          # + where the fast path's time goes, by op
    .venv/bin/python benchmarks/sweeps.py --tl-python /path/to/python   # + a TransformerLens row
    .venv/bin/python benchmarks/sweeps.py --edges            # edge attribution on SmolLM2-135M, ~10 minutes
    .venv/bin/python benchmarks/sweeps.py --edges --quick    # the same rows on the bundled model, seconds

Model: GPT-2 small's shapes and real tokenizer with random weights (``tests/standin.py``;
speed does not depend on the weights), or a random Llama with SmolLM2-135M's shapes (30
blocks, 9 query / 3 key-value heads, d_model 576) and GPT-2's tokenizer; one CPU thread;
the canonical S2-swap pair "After John and Mary went to the store, Mary/John gave a bottle
of milk to" (16 tokens, first difference at position 9), denoising.

**The unit** is the textbook loop written with plain PyTorch forward hooks, no nnsight
(``tests/reference_hooks.py``, the independent reference the tests check every sweep
against): one forward pass per patch, all prompts in one batch, the activation replaced by
``register_forward_hook`` / ``register_forward_pre_hook`` on the Hugging Face module, every
position's logits computed as a plain forward does.  Every row's "x loop" is that loop's
time divided by the row's time, both measured in ONE process, interleaved, the median of
``--repeats`` (3) runs: ratios measured this way survive a loaded machine, absolute seconds
do not.  The loop is measured for the residual-stream and all-heads sweeps; for head x
position, attention-output and MLP-output sweeps its time is the measured time per forward
(every forward of the loop costs the same) times their number of patches, unless
``--full-loops`` measures them too.  The nnsight loop (``method="loop"``: one traced forward
per patch) and the batched nnsight path are shown too.

**The floor** is the least work an exact method must do: one forward of the base and of the
source prompts (the states to start from and the activations to patch in), then for each
patch entering the model at block L and position p (the residual stream before block L, or a
head / attention output of block L, whose block still needs its MLP; an MLP output of block
L enters at block L + 1): nothing at positions before the first one where the prompts differ
(their activations are identical in both runs), nothing before block L (the cached base run
holds it), blocks L .. n-2 at positions p .. seq-1 only (the earlier positions' keys and
values are cached), the last block at the final position only, and the final position's two
logits (answer, distractor).  It is priced in token-blocks (one block at one position) at the
throughput of one plain batched forward of 16 copies of the prompt (256 tokens per matmul),
measured in the same process; "x floor" is a row's time over that price (1.0 = at the floor;
below 1 is possible: the floor's price is a batch-256 throughput, a heavier batch runs faster).

**Path patching** (``helpers.path_patch``, Wang et al.): two rows, every head of the model -> the
logits, and every head of blocks 0 .. n-2 -> the query of head 0 of the last block at END, each
batched, fast (default) and fast with the logit difference only.  Their unit is the plain-hooks
path-patching loop, one path at a time (``tests/reference_paths.py``'s definition, the base and
source runs cached once): per path a sender run (the sender head from the source run, every other
head and every MLP frozen at the base run: whole attention outputs outside the sender's block),
which for the logits is the answer, then for the query a receiver run with the recorded query
patched in.  It is timed on the first ``--path-loop-paths`` (12) paths and scaled by their
number (``--full-loops``: all), as the output says.  Their floor: the two cached runs, plus for
the query one token-block per path (the last block at END).

**Circuit evaluation** (``helpers.evaluate_circuit``, Wang et al.'s faithfulness, per-member
minimality, the greedy completeness search with ``max_steps=1`` and the size curve, as chapter
10 runs it): mean ablation over the prompts themselves, every head the universe, a circuit of
``EVAL_CIRCUITS`` (GPT-2: Wang et al.'s 15 IOI heads; SmolLM2: the 13 heads chapter 10 finds on the
real SmolLM2-135M), ``--eval-pairs`` (16) IOI prompt pairs of template 0 as in chapter 10; batched
and fast (default).  Its unit is a plain-hooks loop of the same ablated forward passes: the
clean prompts' mean of every head's slice of the output projection's input recorded once
by a forward pre-hook, then for each distinct kept set the evaluation ran, one forward of all
the prompts with one pre-hook per block writing the mean into the ablated heads' columns at
every position (every position's logits, as a plain forward).  "max diff" compares the metric
values both report: M(U), M({}), M(C), M(C - v) and the completeness path's.  Its floor is what
one packed forward of all the rows would cost: the clean run and the mean's reference run, then
for each ablated set and prompt the blocks from the first ablated head's (its output projection
and MLP only there) at every position, the last block at the final position only, priced as
above.  The fast path can go below it: rows share the blocks their sets agree on
(``helpers.engine.fastablate``).  These rows print "wall / CPU": besides the wall time, each run's
CPU time (``time.process_time``, one thread), which leaves out the time the process waits for a
core on a loaded machine; the ratios are given for both (the floor's price is measured both ways).

Peak memory: every fast/batched/attribution row is re-run once in its own child process,
whose maximum resident set (the model loaded included) is reported.

``--tl-python PATH`` runs TransformerLens's ``patching`` module (``get_act_patch_resid_pre``,
``get_act_patch_attn_head_out_all_pos``, logit difference at the last position) in that Python
on the same weights, next to the same hooks loop run in that process (all without autograd), and
reports its ratio to the loop per patch.  No hub is contacted: TransformerLens 4.x (run with 4.3.0,
torch 2.13 CPU, transformers 5.25) has no ``HookedTransformer``, so the row boots a
``TransformerBridge`` from the saved model directory (``boot_transformers(model_dir)``, its own
copy of the HF model, eager attention) and calls ``enable_compatibility_mode(no_processing=True)``
for the legacy hook names and shapes WITHOUT weight processing (no layer-norm folding or
centering: the bridge computes what the HF model computes); 2.x / 3.x get a ``HookedTransformer``
built by hand (``HookedTransformerConfig``, ``convert_gpt2_weights``, nothing folded), a path not
run here.  Checked in the run: TL's logits vs the HF model's, and both sweeps vs the hooks loop's
logit differences, as max abs differences (float32; ~1e-6 with 4.3.0).  TL's ``resid_pre`` L is
the input of block L, so its n_layers rows are the reference's ``embed`` sweep (row 0, untimed)
then its ``resid`` rows 0 .. n_layers-2 (block outputs); the timed hooks ``resid`` sweep also has
n_layers x seq patches.  TransformerLens is not a dependency of this project; the row exits with a
clear error if the given Python cannot import ``transformer_lens``.  GPT-2 shapes only.

**Edge attribution** (``--edges``; issue 27): the real SmolLM2-135M (``H.load_model("smollm2-135m")``,
float32, 123,211 edges of MIB's graph with key/value receivers per query head), 16 IOI prompt
pairs (``H.ioi_pairs(tok, n=16, seed=0)``).  **The unit** is one clean forward + backward pass of
those 16 prompts with the plain transformers model: the summed logit difference differentiated with
respect to the input embeddings (every activation's gradient, no weight gradients; the least a
gradient method needs).  Rows, each timed in the same process, interleaved with the unit, median of
``--repeats``: ``H.edge_attribution`` EAP (target: <= 4x the unit), EAP-IG "inputs" with m = 5 steps
(target: <= (m + 2)x = 7x), and exact edge patching of the same edges (``H.exact_edge_patching``, one
run per edge and prompt from the receiver's block on), timed on a seeded random sample of
``--exact-edges`` (64) edges and scaled by the number of edges, as the output says.

Results: printed as a markdown table and written to outputs/benchmarks/sweeps-<model>.json
(``--edges``: edges-<model>.json).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "After John and Mary went to the store, Mary gave a bottle of milk to"
QUICK_PROMPT = "After John and Mary went to the store, Mary gave a drink to"  # in ioi-tiny's vocabulary
HOOKS = "hooks loop (plain PyTorch hooks, one forward per patch)"
METHODS = [  # (label, method, metrics); the first is the unit
    (HOOKS, "hooks", None),
    ("nnsight loop (one traced forward per patch)", "loop", None),
    ("batched nnsight (many patches per forward)", "batched", None),
    ("fast exact, default (all metrics)", "fast", None),
    ("fast exact, logit difference only", "fast", ("logit_diff",)),
    ("attribution patching (estimate, all maps)", "attribution", None),
]
PATH_SWEEPS = ("path_logits", "path_q")
SWEEPS = ("resid", "heads", "head_pos", "attn", "mlp") + PATH_SWEEPS + ("evaluate",)
EVAL_CIRCUITS = {  # the circuit the evaluate_circuit rows keep (every other head mean-ablated)
    "gpt2": ["L9H9", "L9H6", "L10H0", "L10H7", "L11H10", "L7H3", "L7H9", "L8H6", "L8H10", "L5H5",
             "L6H9", "L0H1", "L3H0", "L2H2", "L4H11"],
    "smollm2": ["L23H0", "L23H1", "L23H7", "L24H4", "L20H0", "L19H2", "L17H4", "L16H0", "L23H3",
                "L29H1", "L29H0", "L23H2", "L24H5"],
    "quick": ["L1H0", "L2H1", "L3H2", "L3H3"],
}
EVAL_HOOKS = "hooks loop (plain PyTorch hooks, one forward of all prompts per ablated set)"
NAMES = {"resid": "residual layer x position", "heads": "all heads (layer x head)",
         "head_pos": "head x position", "attn": "attention output layer x position",
         "mlp": "MLP output layer x position", "path_logits": "path patching: every head -> logits",
         "path_q": "path patching: every earlier head -> last block's H0 query at END",
         "evaluate": "evaluate_circuit, mean ablation"}
SLOW = {"loop": ("resid", "heads"), "hooks": ("resid", "heads", "evaluate")}  # loops measured by default
MEMORY_METHODS = ("batched", "fast", "attribution")
METRICS_ALL = ("logit_diff", "answer_prob", "kl_to_clean")
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATCHLAB_PROGRESS": "0",
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_hooks():
    """``tests/reference_hooks.py`` imported by path (it needs only torch)."""
    spec = importlib.util.spec_from_file_location("reference_hooks", ROOT / "tests" / "reference_hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- the runs

def _which(model_dir: str) -> str:
    """The shapes a model directory has: "quick" (the bundled model), "smollm2" or "gpt2"."""
    if model_dir == "ioi-tiny":
        return "quick"
    return "smollm2" if "smollm2" in Path(model_dir).name else "gpt2"


def _setup(model_dir: str, dtype: str = "float32"):
    import torch

    torch.set_num_threads(1)
    import helpers as H

    model = H.load_model(model_dir, dtype=dtype)
    pairs = H.pairs_from_prompt(model.tokenizer, QUICK_PROMPT if model_dir == "ioi-tiny" else PROMPT)
    return H, model, pairs


def hooks_loop(ref, hf, pairs, sweep: str):
    """The plain-hooks loop for ``sweep``: logit differences of prompt 0, in the project's order."""
    import torch

    fam = ref.family_of(hf)
    base, src = pairs.corrupted_ids, pairs.clean_ids
    if sweep == "resid":
        logits = torch.cat([ref.sweep(hf, fam, base, src, "embed")[None],
                            ref.sweep(hf, fam, base, src, "resid")])
    elif sweep in ("attn", "mlp"):
        logits = ref.sweep(hf, fam, base, src, sweep)
    else:
        logits = ref.sweep(hf, fam, base, src, "head", per_position=sweep == "head_pos")
    a, d = int(pairs.answer_ids[0]), int(pairs.distractor_ids[0])
    return (logits[..., 0, a] - logits[..., 0, d]).flatten()


def hooks_path_loop(ref, hf, pairs, sweep: str, limit: int | None):
    """The plain-hooks path-patching loop (see the module docstring) over the first ``limit``
    paths (all: None): logit differences of prompt 0, in the project's order."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import reference_paths as rp  # the reference's receiver hook (it imports reference_hooks)

    fam = ref.family_of(hf)
    base_ids, src_ids = pairs.corrupted_ids, pairs.clean_ids
    base, src = ref.cache(hf, fam, base_ids), ref.cache(hf, fam, src_ids)
    n, h, seq = ref.n_layers_of(hf, fam), ref.n_heads_of(hf), base_ids.shape[1]
    receiver = ("q", n - 1, 0, [pairs.positions["END"]])
    paths = [(L, k) for L in range(n if sweep == "path_logits" else n - 1) for k in range(h)][:limit]
    a, d = int(pairs.answer_ids[0]), int(pairs.distractor_ids[0])
    out = []
    for L, k in paths:
        freeze = ([("attn", M, None, None) for M in range(n) if M != L] + [("mlp", M, None, None) for M in range(n)]
                  + [("head", L, None, j) for j in range(h) if j != k])
        store: list = []
        hook = None if sweep == "path_logits" else rp._receiver_hook(hf, fam, receiver, seq, store=store)
        try:
            with ref.patched(hf, fam, base, freeze), ref.patched(hf, fam, src, [("head", L, None, k)]):
                logits = hf(input_ids=base_ids, use_cache=False).logits[:, -1]
        finally:
            if hook is not None:
                hook.remove()
        if hook is not None:  # the receiver run
            hook = rp._receiver_hook(hf, fam, receiver, seq, value=store[0])
            try:
                logits = hf(input_ids=base_ids, use_cache=False).logits[:, -1]
            finally:
                hook.remove()
        out.append(logits[0, a] - logits[0, d])
    return torch.stack(out)


def project_sweep(H, model, pairs, sweep: str, method: str, metrics):
    """A project sweep's logit differences of prompt 0."""
    if sweep in PATH_SWEEPS:
        last = H.model_facts(model).n_layers - 1
        receiver = "logits" if sweep == "path_logits" else f"L{last}H0.q@END"
        r = H.path_patch(model, pairs, "heads", receiver, method=method, metrics=tuple(metrics or METRICS_ALL))
        return r.values["logit_diff"][0].flatten()
    if method == "attribution":
        key = {"resid": "resid", "heads": "heads", "head_pos": "head_pos", "attn": "attn", "mlp": "mlp"}
        return H.attribution_patching(model, pairs)[key[sweep]].values["logit_diff"][0].flatten()
    kw = {"progress": False, "method": method}
    if metrics:
        kw["metrics"] = tuple(metrics)
    if sweep == "resid":
        r = H.patch_residual(model, pairs, **kw)
    elif sweep == "attn":
        r = H.patch_attn_out(model, pairs, **kw)
    elif sweep == "mlp":
        r = H.patch_mlp_out(model, pairs, **kw)
    else:
        r = H.patch_heads(model, pairs, by_position=sweep == "head_pos", **kw)
    return r.values["logit_diff"][0].flatten()


def floor_units(f, cfg, sweep: str, first: int, seq: int) -> float:
    """Token-blocks of the floor (see the module docstring) for one prompt pair."""
    n, d = f.n_layers, f.d_model
    d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    attn_macs = d * (f.n_heads + 2 * f.n_kv_heads) * f.d_head + f.n_heads * f.d_head * d
    mlp_macs = (2 if f.family == "gpt2" else 3) * d * d_mlp
    mlp_share = mlp_macs / (attn_macs + mlp_macs)

    def enter(block: int, p: int, mlp_only: bool = False) -> float:
        """A patch entering block ``block`` at position ``p`` (with only its MLP left)."""
        if block >= n:
            return 0.0
        part = mlp_share if mlp_only else 1.0
        if block == n - 1:
            return part  # the last block: the final position only
        return (part + n - 2 - block) * (seq - p) + 1

    positions = range(first, seq)
    if sweep == "path_logits":  # the sender's change reaches the logits with no block run
        return 0.0
    if sweep == "path_q":  # per path: the last block at the final position
        return f.n_heads * (n - 1) * enter(n - 1, seq - 1)
    if sweep == "resid":  # the stream before block L, L = 0 .. n (n: after the last block)
        return sum(enter(L, p) for L in range(n + 1) for p in positions)
    if sweep in ("attn", "head_pos"):
        per = f.n_heads if sweep == "head_pos" else 1
        return per * sum(enter(L, p, True) for L in range(n) for p in positions)
    if sweep == "heads":  # every position from the first difference on
        return f.n_heads * sum(enter(L, first, True) for L in range(n))
    return sum(enter(L + 1, p) for L in range(n) for p in positions)  # mlp


def eval_setup(H, model, model_dir: str, n_pairs: int):
    """(pairs, circuit, universe) of the evaluate_circuit rows."""
    pairs = H.ioi_pairs(model.tokenizer, n=n_pairs, corruption="s2_swap", seed=0, template=0)
    f = H.model_facts(model)
    universe = [H.fmt.head_name(L, h) for L in range(f.n_layers) for h in range(f.n_heads)]
    return pairs, EVAL_CIRCUITS[_which(model_dir)], universe


def project_evaluate(H, model, setup, method: str):
    """The evaluation's metric values (M(U), M({}), M(C), M(C - v) for each member v, the
    completeness path's two per step) and the distinct kept sets it evaluated."""
    import torch

    pairs, circuit, universe = setup
    e = H.evaluate_circuit(model, pairs, circuit, "mean", universe=universe, max_steps=1, method=method,
                         min_gap=0.0)  # random weights: a tiny gap, compared raw
    assert e.method == method, (e.method, method)
    values = [e.full, e.empty, e.circuit_metric] + [e.circuit_metric - e.minimality_drop[v] for v in circuit]
    for step in e.completeness["path"]:
        values += [step["circuit_without_K"], step["model_without_K"]]
    return torch.tensor(values, dtype=torch.float64), e


def kept_sets(e) -> list[frozenset]:
    """Every distinct kept set ``evaluate_circuit`` evaluated, rebuilt from its result (the
    order of ``helpers.circuits.evaluation``: U, {}, C, C - v, the greedy completeness trials,
    the curve's prefixes)."""
    U, C = frozenset(e.universe), frozenset(e.circuit)
    sets = [U, frozenset(), C] + [C - {v} for v in e.circuit]
    K: frozenset = frozenset()
    for step in e.completeness["path"][1:]:
        for v in (v for v in e.circuit if v not in K):
            sets += [C - (K | {v}), U - (K | {v})]
        K = frozenset(step["K"])
    sets += [frozenset(p["components"]) for p in e.curve]
    return list(dict.fromkeys(sets))


def hooks_evaluate(ref, hf, setup, sets: list[frozenset]):
    """The plain-hooks loop (module docstring): the prompt-mean logit difference of each kept
    set, every head of the universe outside it mean-ablated; returns ``{set: value}``."""
    import torch

    pairs, _, universe = setup
    fam = ref.family_of(hf)
    n_layers, d_head = ref.n_layers_of(hf, fam), ref.d_head_of(hf, fam)
    o_projs = [ref.module_for(hf, fam, "o_proj", L) for L in range(n_layers)]
    means, handles = {}, []
    try:  # the mean of every head's slice, over the clean prompts, position by position
        for L, mod in enumerate(o_projs):
            handles.append(mod.register_forward_pre_hook(
                lambda m, args, L=L: means.__setitem__(L, args[0].mean(0, keepdim=True).clone())))
        hf(input_ids=pairs.clean_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    rows = torch.arange(len(pairs))
    out = {}
    for kept in sets:
        cols: dict = {}
        for name in universe:
            if name not in kept:
                L, h = (int(x) for x in name[1:].split("H"))
                cols.setdefault(L, []).extend(range(h * d_head, (h + 1) * d_head))
        handles = []

        def write(m, args, L):
            x = args[0].clone()
            x[..., cols[L]] = means[L][..., cols[L]].expand(x.shape[0], -1, -1).to(x.dtype)
            return (x,) + tuple(args[1:])
        try:
            for L in cols:
                handles.append(o_projs[L].register_forward_pre_hook(lambda m, a, L=L: write(m, a, L)))
            logits = hf(input_ids=pairs.clean_ids, use_cache=False).logits[:, -1]
        finally:
            for h in handles:
                h.remove()
        out[kept] = float((logits[rows, pairs.answer_ids] - logits[rows, pairs.distractor_ids]).mean())
    return out


def hooks_eval_values(by_set: dict, e):
    """The hooks loop's values in ``project_evaluate``'s order, for the sets of the
    evaluation ``e``."""
    import torch

    U, C = frozenset(e.universe), frozenset(e.circuit)
    values = [by_set[U], by_set[frozenset()], by_set[C]] + [by_set[C - {v}] for v in e.circuit]
    for step in e.completeness["path"]:
        K = frozenset(step["K"])
        values += [by_set[C - K], by_set[U - K]]
    return torch.tensor(values, dtype=torch.float64)


def _mlp_share(f, cfg) -> float:
    """The MLP's share of a block's multiply-adds."""
    d = f.d_model
    d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    attn_macs = d * (f.n_heads + 2 * f.n_kv_heads) * f.d_head + f.n_heads * f.d_head * d
    mlp_macs = (2 if f.family == "gpt2" else 3) * d * d_mlp
    return mlp_macs / (attn_macs + mlp_macs)


def eval_floor_units(f, cfg, setup, sets: list[frozenset], seq: int) -> float:
    """Token-blocks of the evaluate rows' floor (module docstring), all prompts."""
    pairs, _, universe = setup
    n, share = f.n_layers, _mlp_share(f, cfg)
    units = 2 * len(pairs) * seq * n  # the clean run and the mean's reference run
    for kept in sets:
        ablated = [int(c[1:].split("H")[0]) for c in universe if c not in kept]
        if ablated:  # from the first ablated head's block: its MLP, then whole blocks
            L0 = min(ablated)
            units += len(pairs) * (share if L0 == n - 1 else (share + n - 2 - L0) * seq + 1)
    return units


def timing_child(model_dir: str, repeats: int, sweeps: str, full_loops: bool, path_paths: int,
                 eval_pairs: int = 16) -> dict:
    import torch

    H, model, pairs = _setup(model_dir)
    ref = reference_hooks()
    hf = H.models.hf_model(model)
    f = H.model_facts(model)
    first, seq, n_pairs = pairs.first_difference, pairs.seq_len, len(pairs)
    batch = pairs.corrupted_ids.repeat(16, 1)
    out = {"sweeps": {}, "seq": seq, "first_difference": first, "pairs": n_pairs}
    floor_block, floor_cpu = [], []  # seconds per token-block of a plain batched forward
    for _ in range(repeats):
        with torch.no_grad():
            hf(batch, use_cache=False, logits_to_keep=1)
            t, c = time.perf_counter(), time.process_time()
            hf(batch, use_cache=False, logits_to_keep=1)
            floor_block.append((time.perf_counter() - t) / (batch.numel() * f.n_layers))
            floor_cpu.append((time.process_time() - c) / (batch.numel() * f.n_layers))
    per_block = statistics.median(floor_block)
    out["seconds_per_token_block"] = per_block
    out["cpu_seconds_per_token_block"] = statistics.median(floor_cpu)
    if "evaluate" in sweeps.split(","):  # warm-up, and the kept sets the hooks loop runs
        ev_setup = eval_setup(H, model, model_dir, eval_pairs)
        ev_result = project_evaluate(H, model, ev_setup, "fast")[1]
        ev_sets = kept_sets(ev_result)
        assert len(ev_sets) == ev_result.evaluated_sets, (len(ev_sets), ev_result.evaluated_sets)
        out["evaluate"] = {"circuit": ev_setup[1], "pairs": eval_pairs, "seq": ev_setup[0].seq_len,
                           "sets": len(ev_sets), "universe": len(ev_setup[2])}
    times: dict = {}
    cpu_times: dict = {}
    values: dict = {}
    timed_paths: dict = {}  # path sweep -> (paths the hooks loop ran, all paths)
    for rep in range(repeats):
        for sweep in sweeps.split(","):
            for label, method, metrics in METHODS:
                if sweep == "evaluate":
                    if method not in ("hooks", "batched", "fast") or metrics:
                        continue
                elif sweep in PATH_SWEEPS:
                    if method in ("loop", "attribution"):
                        continue
                elif method in SLOW and sweep not in SLOW[method] and not full_loops:
                    continue
                if method == "loop" and sweep not in SLOW["loop"]:
                    continue  # the nnsight loop only where the issue tracks it
                if method == "batched" and sweep not in ("resid", "heads", "evaluate") + PATH_SWEEPS:
                    continue
                start, cpu_start = time.perf_counter(), time.process_time()
                with torch.no_grad() if method == "hooks" else _nullcontext():
                    if sweep == "evaluate":
                        got = (hooks_eval_values(hooks_evaluate(ref, hf, ev_setup, ev_sets), ev_result)
                               if method == "hooks" else project_evaluate(H, model, ev_setup, method)[0])
                    elif method == "hooks" and sweep in PATH_SWEEPS:
                        got = hooks_path_loop(ref, hf, pairs, sweep, None if full_loops else path_paths)
                    else:
                        got = (hooks_loop(ref, hf, pairs, sweep) if method == "hooks"
                               else project_sweep(H, model, pairs, sweep, method, metrics))
                seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                if method == "hooks" and sweep in PATH_SWEEPS:  # timed on a subset: scaled
                    total = f.n_heads * (f.n_layers if sweep == "path_logits" else f.n_layers - 1)
                    seconds *= total / len(got)
                    cpu *= total / len(got)
                    timed_paths.setdefault(sweep, (len(got), total))
                times.setdefault(sweep, {}).setdefault(label, []).append(seconds)
                cpu_times.setdefault(sweep, {}).setdefault(label, []).append(cpu)
                values.setdefault(sweep, {})[label] = got.float()
            print(f"repeat {rep + 1}/{repeats}: {sweep} done", file=sys.stderr, flush=True)
    for sweep in times:
        patches = max(int(v.numel()) for v in values[sweep].values())
        floor = (2 * n_pairs * seq * f.n_layers + n_pairs * floor_units(f, hf.config, sweep, first, seq)) * per_block
        if sweep == "evaluate":
            patches = len(ev_sets)
            floor = eval_floor_units(f, hf.config, ev_setup, ev_sets, ev_setup[0].seq_len) * per_block
        floor_cpu_s = floor / per_block * out["cpu_seconds_per_token_block"]
        rows = {}
        unit = values[sweep].get(HOOKS)
        for label, ts in times[sweep].items():  # (a path loop's unit: its first paths only)
            diff = None if unit is None else float((values[sweep][label][:len(unit)] - unit).abs().max())
            cpu = cpu_times[sweep][label]
            rows[label] = {"seconds": statistics.median(ts), "runs": ts, "max_diff_vs_hooks": diff,
                           "cpu_seconds": statistics.median(cpu), "cpu_runs": cpu}
            if label == HOOKS and sweep in timed_paths:
                rows[label]["timed_paths"] = timed_paths[sweep][0]
        out["sweeps"][sweep] = {"patches": patches, "floor_seconds": floor, "floor_cpu_seconds": floor_cpu_s,
                                "methods": rows}
    # the hooks loop's time per forward, for the sweeps whose loop is not measured
    per_forward = [out["sweeps"][s]["methods"][HOOKS]["seconds"] / out["sweeps"][s]["patches"]
                   for s in out["sweeps"] if HOOKS in out["sweeps"][s]["methods"]
                   and s not in PATH_SWEEPS + ("evaluate",)]
    out["hooks_seconds_per_patch"] = statistics.median(per_forward) if per_forward else None
    return out


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def memory_child(model_dir: str, sweep: str, method: str, metrics: str, eval_pairs: str = "16") -> dict:
    H, model, pairs = _setup(model_dir)
    setup = eval_setup(H, model, model_dir, int(eval_pairs)) if sweep == "evaluate" else None
    loaded = _rss_mb()
    start = time.perf_counter()
    if setup:
        project_evaluate(H, model, setup, method)
    else:
        project_sweep(H, model, pairs, sweep, method, metrics.split(",") if metrics else None)
    return {"seconds": time.perf_counter() - start, "peak_mb": _rss_mb(), "loaded_mb": loaded}


def profile_child(model_dir: str) -> str:
    """Where the fast path's time goes: torch.profiler, grouped by operation."""
    from torch.profiler import ProfilerActivity, profile

    H, model, pairs = _setup(model_dir)
    parts = []
    for sweep in ("resid", "heads"):
        for metrics in (None, ("logit_diff",)):
            project_sweep(H, model, pairs, sweep, "fast", metrics)  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                project_sweep(H, model, pairs, sweep, "fast", metrics)
            total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
            parts.append(f"\n### fast path, {NAMES[sweep]}, metrics={metrics or 'all'} "
                         f"(profiled total {total:.2f} s of self CPU time)\n")
            parts.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14,
                                                   max_name_column_width=40))
    return "\n".join(parts)


# --------------------------------------------------------------------------- TransformerLens

TL_SCRIPT = r'''
import json, sys, time, statistics, importlib.metadata, importlib.util
model_dir, ref_path, prompt, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
try:
    from transformer_lens import patching
except ImportError as err:
    sys.exit(f"this Python ({sys.executable}) cannot import transformer_lens: {err}. "
             "Give --tl-python a Python with TransformerLens installed.")
import torch
from transformers import AutoTokenizer, GPT2LMHeadModel
torch.set_num_threads(1)
hf = GPT2LMHeadModel.from_pretrained(model_dir).eval()
tok = AutoTokenizer.from_pretrained(model_dir)
c = hf.config
if c.model_type != "gpt2":
    sys.exit("the TransformerLens row supports GPT-2 shapes only")
try:  # TransformerLens 2.x / 3.x: a HookedTransformer built by hand, weights not folded
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:  # 4.x removed it: the bridge, booted from the local directory
    from transformer_lens.model_bridge import TransformerBridge
    model = TransformerBridge.boot_transformers(model_dir, device="cpu", dtype=torch.float32,
                                                tokenizer=tok)
    # legacy hook names and shapes (hook_z [batch, pos, head, d_head]), weights left as they are
    model.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    built = "TransformerBridge, compatibility mode without weight processing"
else:
    cfg = HookedTransformerConfig(n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head,
                                  d_head=c.n_embd // c.n_head, d_mlp=4 * c.n_embd, n_ctx=c.n_positions,
                                  d_vocab=c.vocab_size, act_fn="gelu_new", normalization_type="LN",
                                  positional_embedding_type="standard", eps=c.layer_norm_epsilon,
                                  original_architecture="GPT2LMHeadModel", default_prepend_bos=False,
                                  device="cpu", dtype=torch.float32)
    try:
        from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    except ImportError:
        from transformer_lens.loading_from_pretrained import convert_gpt2_weights
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False,
                                      center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False, refactor_factored_attn_matrices=False)
    built = "HookedTransformer, weights not folded"
model.eval()
spec = importlib.util.spec_from_file_location("reference_hooks", ref_path)
ref = importlib.util.module_from_spec(spec); spec.loader.exec_module(ref)
corrupted = tok(prompt, return_tensors="pt").input_ids
clean = tok(prompt.replace(" Mary gave", " John gave"), return_tensors="pt").input_ids
answer, distractor = tok(" John").input_ids[0], tok(" Mary").input_ids[0]
metric = lambda logits: logits[0, -1, answer] - logits[0, -1, distractor]
ld = lambda ref_logits: (ref_logits[..., answer] - ref_logits[..., distractor]).squeeze(-1)  # drop batch 1
times = {"tl_resid": [], "tl_heads": [], "hooks_resid": [], "hooks_heads": []}


def timed(key, fn):
    t = time.perf_counter(); out = fn(); times[key].append(time.perf_counter() - t)
    return out


with torch.no_grad():  # all runs without autograd, as the hooks loop
    same_weights = float((model(corrupted)[0, -1] - hf(corrupted).logits[0, -1]).abs().max())
    _, clean_cache = model.run_with_cache(clean)
    tl_args = (model, corrupted, clean_cache, metric)
    for _ in range(repeats):
        tl_resid = timed("tl_resid", lambda: patching.get_act_patch_resid_pre(*tl_args))
        tl_heads = timed("tl_heads", lambda: patching.get_act_patch_attn_head_out_all_pos(*tl_args))
        hooks_resid = ld(timed("hooks_resid", lambda: ref.sweep(hf, "gpt2", corrupted, clean, "resid")))
        hooks_heads = ld(timed("hooks_heads", lambda: ref.sweep(hf, "gpt2", corrupted, clean, "head",
                                                                per_position=False)))
    # TL's resid_pre L is the input of block L: the embeddings for L = 0, else reference resid L - 1
    hooks_pre = torch.cat([ld(ref.sweep(hf, "gpt2", corrupted, clean, "embed"))[None], hooks_resid[:-1]])
assert tl_resid.shape == hooks_pre.shape and tl_heads.shape == hooks_heads.shape
seq, n, h = corrupted.shape[1], c.n_layer, c.n_head
print(json.dumps({"version": importlib.metadata.version("transformer_lens"), "model": built,
                  "same_weights_max_diff": same_weights,
                  "resid_max_diff_vs_hooks": float((tl_resid - hooks_pre).abs().max()),
                  "heads_max_diff_vs_hooks": float((tl_heads - hooks_heads).abs().max()),
                  "seconds": {k: statistics.median(v) for k, v in times.items()},
                  "patches": {"tl_resid": n * seq, "tl_heads": n * h, "hooks_resid": n * seq, "hooks_heads": n * h}}))
'''


def tl_child(python: str, model_dir: str, repeats: int) -> dict:
    done = subprocess.run([python, "-c", TL_SCRIPT, model_dir, str(ROOT / "tests" / "reference_hooks.py"),
                           PROMPT, str(repeats)], capture_output=True, text=True,
                          env={**os.environ, **ENV}, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"--tl-python {python}: the TransformerLens run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- edge attribution

EDGE_STEPS = 5  # EAP-IG steps (MIB's default)


def edges_child(model_name: str, repeats: int, n_pairs: int, exact_edges: int) -> dict:
    """The edge-attribution rows (module docstring): seconds per row and per unit, interleaved."""
    import torch

    torch.set_num_threads(1)
    import helpers as H

    model = H.load_model(model_name)
    pairs = H.ioi_pairs(model.tokenizer, n=n_pairs, seed=0)
    hf = H.models.hf_model(model)
    graph = H.edge_graph(model)
    rows = torch.arange(len(pairs))

    def unit():
        emb = hf.get_input_embeddings()(pairs.clean_ids).detach().requires_grad_(True)
        last = hf(inputs_embeds=emb, use_cache=False, logits_to_keep=1).logits[:, -1]
        (last[rows, pairs.answer_ids] - last[rows, pairs.distractor_ids]).sum().backward()

    g = torch.Generator().manual_seed(0)
    sample = [graph.edges[i] for i in torch.randperm(len(graph.edges), generator=g)[:exact_edges].tolist()]
    runs = {"eap": lambda: H.edge_attribution(model, pairs, "eap"),
            "eap-ig-inputs": lambda: H.edge_attribution(model, pairs, "eap-ig-inputs", steps=EDGE_STEPS),
            "exact (sample)": lambda: H.exact_edge_patching(model, pairs, sample)}
    unit()  # warm-up
    runs["eap"]()
    times: dict = {"unit": [], **{k: [] for k in runs}}
    cpu: dict = {"unit": [], **{k: [] for k in runs}}
    for rep in range(repeats):
        for name, fn in runs.items():
            for key, call in (("unit", unit), (name, fn)):
                start, start_cpu = time.perf_counter(), time.process_time()
                call()
                times[key].append(time.perf_counter() - start)
                cpu[key].append(time.process_time() - start_cpu)
        print(f"repeat {rep + 1}/{repeats} done", file=sys.stderr, flush=True)
    eap = H.edge_attribution(model, pairs, "eap")
    exact = H.exact_edge_patching(model, pairs, sample)
    agree = float(torch.corrcoef(torch.tensor([[eap[e] for e in sample], [exact[e] for e in sample]]))[0, 1])
    f = H.model_facts(model)
    return {"model": model_name, "n_layers": f.n_layers, "n_heads": f.n_heads, "n_kv_heads": f.n_kv_heads,
            "pairs": len(pairs), "seq": pairs.seq_len, "first_difference": pairs.first_difference,
            "edges": len(graph.edges), "exact_sample": len(sample), "steps": EDGE_STEPS,
            "eap_vs_exact_correlation_on_sample": agree, "runs": times, "cpu_runs": cpu,
            "seconds": {k: statistics.median(v) for k, v in times.items()},
            "cpu_seconds": {k: statistics.median(v) for k, v in cpu.items()}}


def print_edges(report: dict) -> None:
    s, c, m = report["seconds"], report["cpu_seconds"], report["steps"]
    scale = report["edges"] / report["exact_sample"]
    print(f"\nMachine: {report['machine']}\nModel: {report['model']} ({report['n_layers']} blocks, "
          f"{report['n_heads']} query / {report['n_kv_heads']} key-value heads), {report['edges']} edges; "
          f"{report['pairs']} IOI prompt pairs of {report['seq']} tokens (first difference at "
          f"{report['first_difference']}); median of {report['repeats']}, one thread. Wall time and this "
          "process's CPU time (the CPU time does not count other processes sharing the cores).\n")
    print("| row | wall (s) | x unit | CPU (s) | x unit | target |")
    print("|---|---|---|---|---|---|")
    print(f"| unit: one clean forward + backward of the {report['pairs']} prompts (plain transformers) | "
          f"{s['unit']:.2f} | 1.0x | {c['unit']:.2f} | 1.0x | - |")
    for name, label, target in (("eap", "EAP, every edge", 4.0),
                                ("eap-ig-inputs", f"EAP-IG inputs, m = {m}, every edge", m + 2.0)):
        rw, rc = s[name] / s["unit"], c[name] / c["unit"]
        verdict = "met" if max(rw, rc) <= target else "MISSED"
        print(f"| {label} | {s[name]:.2f} | {rw:.2f}x | {c[name]:.2f} | {rc:.2f}x | <= {target:.0f}x: {verdict} |")
    est, est_c = s["exact (sample)"] * scale, c["exact (sample)"] * scale
    print(f"| exact edge patching, timed on {report['exact_sample']} random edges, scaled x{scale:.0f} to every "
          f"edge (estimated) | {est:.0f} | {est / s['unit']:.0f}x | {est_c:.0f} | {est_c / c['unit']:.0f}x | - |")
    print(f"\nEAP vs exact on the sampled edges: correlation {report['eap_vs_exact_correlation_on_sample']:.2f}")


# --------------------------------------------------------------------------- driver

def run_child(*args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV}, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


EVAL_LABELS = {HOOKS: EVAL_HOOKS,
               "batched nnsight (many patches per forward)": "batched nnsight (many ablated sets per forward)",
               "fast exact, default (all metrics)": "fast (rows share the blocks their sets agree on), default"}


def _print_evaluate(report: dict, res: dict, loop: float) -> None:
    """The evaluate_circuit rows of the table: wall / CPU time and ratios."""
    ev = report["evaluate"]
    what = f"{NAMES['evaluate']} ({res['patches']} ablated sets x {ev['pairs']} prompts), wall / CPU"
    loop_cpu = res["methods"][HOOKS]["cpu_seconds"]
    floor, floor_cpu = res["floor_seconds"], res["floor_cpu_seconds"]
    for label, r in res["methods"].items():
        diff = "-" if r["max_diff_vs_hooks"] is None else f"{r['max_diff_vs_hooks']:.1e}"
        peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "-"
        wall, cpu = r["seconds"], r["cpu_seconds"]
        print(f"| {what} | {EVAL_LABELS.get(label, label)} | {wall:.2f} / {cpu:.2f} | "
              f"{loop / wall:.1f}x / {loop_cpu / cpu:.1f}x | {wall / floor:.2f} / {cpu / floor_cpu:.2f} | "
              f"{peak} | {diff} |")
    print(f"| {what} | the floor: one packed forward of all rows (see docstring) | {floor:.2f} / "
          f"{floor_cpu:.2f} | {loop / floor:.1f}x / {loop_cpu / floor_cpu:.1f}x | 1.00 | - | - |")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} cores (1 thread used), {platform.system()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def write_report(report: dict, name: str) -> int:
    """Write ``report`` as outputs/benchmarks/<name> and say where; the exit code 0."""
    out = ROOT / "outputs" / "benchmarks" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the bundled model instead of GPT-2 small")
    ap.add_argument("--model", choices=("gpt2", "smollm2"), default="gpt2",
                    help="the shapes to measure: GPT-2 small (default) or SmolLM2-135M (Llama)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per row; the median is reported")
    ap.add_argument("--sweeps", default=",".join(SWEEPS), help=f"comma-separated subset of {SWEEPS}")
    ap.add_argument("--full-loops", action="store_true",
                    help="measure the hooks loop for every sweep (else per-forward time x patches)")
    ap.add_argument("--path-loop-paths", type=int, default=12,
                    help="paths the path-patching hooks loop is timed on (then scaled by their number)")
    ap.add_argument("--eval-pairs", type=int, default=16,
                    help="IOI prompt pairs of the evaluate_circuit rows (chapter 10 uses 16)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child runs")
    ap.add_argument("--profile", action="store_true", help="print where the fast path's time goes, by op")
    ap.add_argument("--tl-python", metavar="PATH", help="a Python with transformer_lens: adds its row")
    ap.add_argument("--edges", action="store_true",
                    help="edge attribution rows on SmolLM2-135M (with --quick: the bundled model)")
    ap.add_argument("--edge-pairs", type=int, default=16, help="prompt pairs of the edge rows")
    ap.add_argument("--exact-edges", type=int, default=64, help="edges exact edge patching is timed on")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "timing":
            print(json.dumps(timing_child(rest[0], int(rest[1]), rest[2], rest[3] == "1", int(rest[4]),
                                          int(rest[5]))))
        elif kind == "edges":
            print(json.dumps(edges_child(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))))
        elif kind == "memory":
            print(json.dumps(memory_child(*rest)))
        else:
            print(json.dumps({"text": profile_child(rest[0])}))
        return 0
    if args.edges:
        name = "ioi-tiny" if args.quick else "smollm2-135m"
        report = run_child("edges", name, str(args.repeats), str(args.edge_pairs), str(args.exact_edges))
        report.update(machine=machine(), repeats=args.repeats)
        print_edges(report)
        return write_report(report, f"edges-{name}.json")
    sys.path.insert(0, str(ROOT / "tests"))
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            model_dir, model_label = "ioi-tiny", "ioi-tiny (bundled)"
        elif args.model == "smollm2":
            from standin import build_smollm2_standin

            model_dir = str(build_smollm2_standin(Path(tmp) / "smollm2-standin"))
            model_label = "SmolLM2-135M's shapes (Llama, random weights, GPT-2's tokenizer)"
        else:
            from standin import build_gpt2_standin

            model_dir = str(build_gpt2_standin(Path(tmp) / "gpt2-standin"))
            model_label = "GPT-2 small stand-in (real tokenizer, random weights)"
        report = {"machine": machine(), "model": model_label, "repeats": args.repeats,
                  "prompt": QUICK_PROMPT if args.quick else PROMPT}
        timing = run_child("timing", model_dir, str(args.repeats), args.sweeps, "1" if args.full_loops else "0",
                           str(args.path_loop_paths), str(args.eval_pairs))
        report.update(timing)
        if not args.no_memory:
            for sweep, res in timing["sweeps"].items():
                for label, method, metrics in METHODS:
                    if method in MEMORY_METHODS and label in res["methods"]:
                        mem = run_child("memory", model_dir, sweep, method, ",".join(metrics or ()),
                                        str(args.eval_pairs))
                        res["methods"][label].update(peak_mb=mem["peak_mb"], loaded_mb=mem["loaded_mb"])
        if args.tl_python:
            report["transformer_lens"] = tl_child(args.tl_python, model_dir, args.repeats)
        profile_text = run_child("profile", model_dir)["text"] if args.profile else None
    print(f"\nMachine: {report['machine']}\nModel: {model_label}; {report['pairs']} prompt pair(s), "
          f"{report['seq']} tokens, first difference at {report['first_difference']}; median of "
          f"{args.repeats}. Timings on a shared machine are noisy: read the ratios.\n")
    print("| sweep | method | time (s) | x hooks loop | x floor | peak RSS (MB) | max diff vs hooks |")
    print("|---|---|---|---|---|---|---|")
    per_patch = report["hooks_seconds_per_patch"]
    for sweep, res in report["sweeps"].items():
        methods = res["methods"]
        loop = methods.get(HOOKS, {}).get("seconds")
        if sweep == "evaluate":
            _print_evaluate(report, res, loop)
            continue
        if loop is None:
            loop = per_patch * res["patches"]
            print(f"| {NAMES[sweep]} ({res['patches']} patches) | {HOOKS}, estimated: "
                  f"{per_patch:.3f} s/forward x {res['patches']} | {loop:.2f} | 1x | "
                  f"{loop / res['floor_seconds']:.1f} | - | - |")
        for label, r in methods.items():
            diff = "-" if r["max_diff_vs_hooks"] is None else f"{r['max_diff_vs_hooks']:.1e}"
            peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "-"
            if "timed_paths" in r:  # the path-patching hooks loop: timed on its first paths, scaled
                label = (f"path-patching hooks loop (sender run + receiver run per path), timed on "
                         f"{r['timed_paths']} of {res['patches']} paths and scaled")
                diff += f" (on those {r['timed_paths']})" if diff != "-" else ""
            print(f"| {NAMES[sweep]} ({res['patches']} patches) | {label} | {r['seconds']:.2f} | "
                  f"{loop / r['seconds']:.1f}x | {r['seconds'] / res['floor_seconds']:.2f} | {peak} | {diff} |")
        print(f"| {NAMES[sweep]} ({res['patches']} patches) | the floor (see docstring) | "
              f"{res['floor_seconds']:.2f} | {loop / res['floor_seconds']:.1f}x | 1.00 | - | - |")
    if "evaluate" in report["sweeps"]:
        ev = report["evaluate"]
        print(f"\nevaluate_circuit rows: {ev['pairs']} IOI pairs of {ev['seq']} tokens (template 0), "
              f"circuit {', '.join(ev['circuit'])} kept, the other {ev['universe'] - len(ev['circuit'])} "
              f"heads mean-ablated; {ev['sets']} distinct ablated sets.")
    tl = report.get("transformer_lens")
    if tl:
        s, n = tl["seconds"], tl["patches"]
        for which in ("resid", "heads"):
            ratio = (s[f"hooks_{which}"] / n[f"hooks_{which}"]) / (s[f"tl_{which}"] / n[f"tl_{which}"])
            print(f"| {NAMES[which]} ({n[f'tl_{which}']} patches) | TransformerLens {tl['version']} "
                  f"patching ({tl['model']}; its own process, per patch) | {s[f'tl_{which}']:.2f} | "
                  f"{ratio:.2f}x | - | - | {tl[f'{which}_max_diff_vs_hooks']:.1e} (logit diff; TL vs HF logits "
                  f"{tl['same_weights_max_diff']:.1e}) |")
    if profile_text:
        print(profile_text)
    return write_report(report, f"sweeps-{'quick' if args.quick else args.model}.json")


if __name__ == "__main__":
    sys.exit(main())
