"""``ioi-planted``: the bundled model with a planted IOI circuit (helpers/organism/planted/).

Every effect is measured twice: with the package's own tools (``H.patch_heads``, ``H.path_patch``,
``H.ablate``) and with the independent plain-hooks references (``tests/reference_hooks.py``,
``tests/reference_paths.py``), in float64; the two must agree within 1e-8, and the thresholds
(``helpers.circuits.planted_check.THRESHOLDS``, fixed with the recipe) are then asserted on the
reference values.  The full retrain is stamp-gated and marked slow.
"""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys

import pytest
import torch

import helpers as H
import reference_hooks as ref
import reference_paths as rp
from helpers.circuits.planted_check import THRESHOLDS, check_planted, planted_spec
from helpers.data.prompts import HELDOUT_TEMPLATES, NAMES
from helpers.models.loaded import hf_model
from helpers.organism import BUNDLED_MODELS
from helpers.organism.planted_data import CAST, TRAINING_TEMPLATES, extra_pairs, sample_step, vocabulary
from helpers.organism.planted_losses import end_logits, forward, group_mean, query_attention_without
from helpers.organism.planted_truth import all_edges, all_nodes, ground_truth
from helpers.organism.train_ioi import name_pair_split
from helpers.organism.train_planted import train
from stamps import Stamp

FOLDER = BUNDLED_MODELS["ioi-planted"]
TOL = 1e-8
T = THRESHOLDS


def shipped_extra_names() -> bool:
    """Whether the shipped model was trained with the training-only names in its vocabulary."""
    return bool(json.loads((FOLDER / "training.json").read_text())["extra_names"])


def one(role):
    (head,) = CAST[role]
    return head


DT, SI, NM = one("duplicate_token"), one("s_inhibition"), one("name_mover")
NEG, BK, DEC = one("negative_name_mover"), one("backup_name_mover"), one("decoy")
DESIGNATED = {h for heads in CAST.values() for h in heads}


def name(head):
    return f"L{head[0]}H{head[1]}"


@pytest.fixture(scope="module")
def planted64():
    return H.load_model("ioi-planted", dtype="float64")


@pytest.fixture(scope="module")
def plain64():
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(FOLDER, dtype=torch.float64,
                                           attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def pair_sets(planted64):
    """A training template in ABBA order and a held-out template in BABA order."""
    tok = planted64.tokenizer
    return [H.ioi_pairs(tok, n=8, seed=3, template=0, order="ABBA"),
            H.ioi_pairs(tok, n=8, seed=4, template=13, order="BABA")]


def ld(logits, pairs):
    rows = torch.arange(len(pairs))
    return logits[rows, pairs.answer_ids] - logits[rows, pairs.distractor_ids]


def baselines(plain, pairs):
    """Reference (clean, corrupted) logit differences per prompt."""
    clean = ld(ref.full_logits(plain, pairs.clean_ids)[:, -1], pairs)
    bad = ld(ref.full_logits(plain, pairs.corrupted_ids)[:, -1], pairs)
    return clean, bad


def normalised(values, clean, bad):
    """Score of the prompt mean: 0 = corrupted run, 1 = clean run."""
    return (values.mean(-1) - bad.mean()) / (clean.mean() - bad.mean())


# --------------------------------------------------------------------------- the files

def test_loads_by_name_as_a_small_gpt2(planted64):
    hf = hf_model(planted64)
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert (FOLDER / "model.safetensors").stat().st_size < 5 * 2**20
    cfg = hf.config
    assert (cfg.n_layer, cfg.n_head) == (4, 4)
    assert planted64.tokenizer.get_vocab() == {w: i for i, w in enumerate(vocabulary(shipped_extra_names()))}


def test_shipped_weights_match_their_checksum():
    recorded = (FOLDER / "checksum.txt").read_text().split()[0]
    assert hashlib.sha256((FOLDER / "model.safetensors").read_bytes()).hexdigest() == recorded
    assert json.loads((FOLDER / "training.json").read_text())["sha256"] == recorded


def test_heldout_sets_are_recorded_and_never_trained_on():
    record = json.loads((FOLDER / "training.json").read_text())
    train_pairs, held = name_pair_split(record["seed"])
    assert [list(p) for p in held] == record["heldout_name_pairs"]
    assert not {frozenset(p) for p in held} & {frozenset(p) for p in train_pairs}
    assert record["heldout_templates"] == list(HELDOUT_TEMPLATES)
    assert record["training_templates"] == list(TRAINING_TEMPLATES)
    assert not set(HELDOUT_TEMPLATES) & set(TRAINING_TEMPLATES)
    # training-only names are not names the checker or the chapters draw, and pair no held-out pair
    assert not set(record["extra_names"]) & set(NAMES)
    assert not {frozenset(p) for p in extra_pairs()} & {frozenset(p) for p in held}


def test_the_checker_reads_the_cast_and_heldout_sets_from_the_model_folder():
    spec = planted_spec("ioi-planted")
    assert spec.cast == {role: heads[0] for role, heads in CAST.items()}
    train_pairs, held = name_pair_split(0)
    assert {frozenset(p) for p in spec.train_name_pairs} == {frozenset(p) for p in train_pairs}
    assert len(spec.train_name_pairs) + len(spec.heldout_name_pairs) == len(NAMES) * (len(NAMES) - 1) // 2
    with pytest.raises(FileNotFoundError, match="train_planted wrote"):
        planted_spec(FOLDER.parent / "ioi")  # a model folder without a planted circuit


def test_shipped_check_passed_every_criterion_at_the_fixed_thresholds():
    """training.json holds check_planted's verdict on the shipped weights; every rule is the
    one ``THRESHOLDS`` fixes (none loosened for the shipped model)."""
    check = json.loads((FOLDER / "training.json").read_text())["check"]
    assert check["passed"] and all(c["pass"] for c in check["criteria"].values())
    thresholds = {str(v) for v in T.values()} | {str(-v) for v in T.values()}
    for key, c in check["criteria"].items():
        op, value = c["rule"].split()
        assert op in (">=", "<=") and value in thresholds, (key, c)
        assert (c["value"] >= float(value)) if op == ">=" else (c["value"] <= float(value)), (key, c)


def test_ground_truth_file_is_the_planted_graph():
    shipped = json.loads((FOLDER / "ground_truth.json").read_text())
    assert shipped == json.loads(json.dumps(ground_truth()))
    assert set(shipped["nodes"]) == set(all_nodes()) and set(shipped["edges"]) == set(all_edges())
    nodes, edges = shipped["nodes"], shipped["edges"]
    head = lambda h: f"a{h[0]}.h{h[1]}"  # noqa: E731
    for h in (DT, SI, NM, NEG):
        assert nodes[head(h)]["in_graph"]
    assert not nodes[head(DEC)]["in_graph"] and nodes[head(DEC)]["role"] == "decoy"
    assert nodes[head(BK)]["backup"] and not nodes[head(BK)]["in_graph"]
    for e in (f"{head(DT)}->{head(SI)}<v>", f"{head(SI)}->{head(NM)}<q>", f"{head(NM)}->logits",
              f"input->{head(DT)}<q>", f"{head(NEG)}->logits"):
        assert edges[e]["in_graph"], e
    assert edges[f"{head(NEG)}->logits"]["sign"] == -1
    assert not any(e["in_graph"] for k, e in edges.items() if head(DEC) in k)
    cast = {head(h) for h in DESIGNATED}
    for k, e in edges.items():  # no head outside the cast is in the graph
        if e["in_graph"]:
            src, dst = k.split("->")
            assert src in cast | {"input"} and dst.split("<")[0] in cast | {"logits"}, k


# --------------------------------------------------------------------------- the recipe's pieces

def test_the_training_forward_is_gpt2s_forward(plain64):
    """``planted_losses.forward`` (GPT-2 written out, used by every loss) gives the logits of
    ``GPT2LMHeadModel`` at END, for a training step's prompts and their twins."""
    ids = {w: i for i, w in enumerate(vocabulary(shipped_extra_names()))}
    b = sample_step(random.Random(0), ids, name_pair_split(0)[0], 2, 4)
    with torch.no_grad():
        got = end_logits(plain64, forward(plain64, b["x"])["resid"], b["end"])
        want = plain64(b["x"]).logits[torch.arange(len(b["x"])), b["end"]]
    assert (got - want).abs().max() < 1e-9


def test_the_path_term_is_the_receivers_attention_and_changes_only_with_the_senders_output(plain64):
    """``query_attention_without`` with every row its own donor is the run's attention of the
    receiver (an identity); with another row's sender output only the query moves: the keys are
    the run's, so a sender that writes nothing changes nothing."""
    ids = {w: i for i, w in enumerate(vocabulary(shipped_extra_names()))}
    b = sample_step(random.Random(1), ids, name_pair_split(0)[0], 2, 4)
    rows = torch.arange(len(b["x"]))
    with torch.no_grad():
        out = forward(plain64, b["x"])
        same = query_attention_without(plain64, out, *NEG, NM, rows, b["end"])
        assert (same - out["attn"][NEG[0]][rows, NEG[1], b["end"]]).abs().max() < 1e-12
        out["z"][NM[0]][:, :, NM[1]] = 0.0  # a silent sender: the donor's output is the row's own
        silent = query_attention_without(plain64, out, *NEG, NM, b["source"], b["end"])
        assert (silent - query_attention_without(plain64, out, *NEG, NM, rows, b["end"])).abs().max() < 1e-12


def test_group_mean_is_the_mean_over_the_other_names_of_the_group():
    z = torch.randn(8, 3, dtype=torch.float64)
    group, twin = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1]), torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])
    got = group_mean(z, group, twin, 2)
    for i in range(8):
        others = [j for j in range(8) if group[j] == group[i] and j not in (i, int(twin[i]))]
        assert torch.allclose(got[i], z[others].mean(0))


def test_a_short_training_run_is_bit_identical(tmp_path):
    """Same machine, one thread, same seed: two short runs write the same bytes."""
    def run(out):
        return train(out, steps=6, groups=1, group_size=4, log_every=3, strict_delay=0.0,
                     strict_ramp=0.5)["sha256"]

    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    assert a == b
    assert a == hashlib.sha256((tmp_path / "a" / "model.safetensors").read_bytes()).hexdigest()
    assert a != (FOLDER / "checksum.txt").read_text().split()[0]
    with pytest.raises(TypeError, match="unknown training option"):
        train(tmp_path / "c", stepz=3)


# --------------------------------------------------------------------------- the circuit

def _repeat(pairs, k):
    """An object with answer/distractor ids repeated ``k`` times (rows: prompt-major)."""
    class P:
        answer_ids = pairs.answer_ids.repeat_interleave(k)
        distractor_ids = pairs.distractor_ids.repeat_interleave(k)

        def __len__(self):
            return len(pairs) * k
    return P()


def test_single_head_patching_equals_the_reference_and_only_the_cast_carries_the_effect(
        planted64, plain64, pair_sets):
    scores = []
    for pairs in pair_sets:
        got = H.patch_heads(planted64, pairs)  # denoising: corrupted run, clean head
        want = ref.sweep(plain64, "gpt2", pairs.corrupted_ids, pairs.clean_ids, "head",
                         per_position=False)  # [layers, heads, n, vocab]
        want = ld(want.flatten(0, 1).transpose(0, 1).reshape(len(pairs) * 16, -1),
                  _repeat(pairs, 16)).view(len(pairs), 4, 4)
        assert (got.values["logit_diff"] - want).abs().max() < TOL
        clean, bad = baselines(plain64, pairs)
        assert (got.clean["logit_diff"] - clean).abs().max() < TOL
        scores.append(normalised(want.permute(1, 2, 0), clean, bad))
    s = torch.stack(scores).mean(0)
    for h in (DT, SI, NM):
        assert s[h] >= T["designated_effect"], (h, s)
    assert s[NEG] <= T["negative_effect"], s
    assert abs(s[BK]) <= T["backup_clean"], s
    assert abs(s[DEC]) <= T["null_effect"], s
    for L in range(4):
        for h in range(4):
            if (L, h) not in DESIGNATED:
                assert abs(s[L, h]) <= T["null_effect"], ((L, h), s)


def _ref_node(label):
    """A ``H.path_patch`` label as ``reference_paths``' tuple."""
    if label == "embed":
        return ("embed", None, None, None)
    if label == "logits":
        return ("logits", 4, None, None)
    body, _, kind = label.partition(".")
    layer, head = body[1:].split("H")
    return (kind or "head", int(layer), int(head), None)


PATHS = [  # (senders, receivers)
    (["embed"], [f"{name(DT)}.q"]),
    ([f"L0H{h}" for h in range(4)], [f"{name(SI)}.v"]),
    ([f"L{L}H{h}" for L in range(2) for h in range(4)], [f"{name(NM)}.q"]),
    ([f"L{L}H{h}" for L in range(3) for h in range(4)], [f"{name(NEG)}.q", f"{name(BK)}.q"]),  # NM too
    ([f"L{L}H{h}" for L in range(4) for h in range(4)], ["logits"]),
]
CORE = {("embed", f"{name(DT)}.q"), (name(DT), f"{name(SI)}.v"), (name(SI), f"{name(NM)}.q"),
        (name(NM), "logits")}
NEGATIVE = {(name(SI), f"{name(NEG)}.q"), (name(NEG), "logits")}
BACKUP = {(name(BK), "logits")}  # silent on a clean run: judged against backup_clean
#: the backup's planted query route (class "backup" in ground_truth.json): not judged here
NOT_JUDGED = {(name(SI), f"{name(BK)}.q")}


def test_path_patching_equals_the_reference_and_only_the_planted_edges_carry_the_effect(
        planted64, plain64, pair_sets):
    cells: dict[tuple[str, str], list] = {}
    for pairs in pair_sets:
        clean, bad = baselines(plain64, pairs)
        for senders, receivers in PATHS:
            got = H.path_patch(planted64, pairs, senders, receivers)
            values = got.values["logit_diff"].reshape(len(pairs), len(senders), len(receivers))
            for i, s in enumerate(senders):
                for j, r in enumerate(receivers):
                    want = ld(rp.path_patch(plain64, "gpt2", pairs.corrupted_ids, pairs.clean_ids,
                                            _ref_node(s), _ref_node(r)), pairs)
                    assert (values[:, i, j] - want).abs().max() < TOL, (s, r)
                    cells.setdefault((s, r), []).append(normalised(want, clean, bad))
    score = {k: torch.stack(v).mean().item() for k, v in cells.items()}
    for k in CORE:
        assert score[k] >= T["path_effect"], (k, score[k])
    for k in NEGATIVE:
        assert score[k] <= T["negative_effect"], (k, score[k])
    for k in BACKUP:
        assert abs(score[k]) <= T["backup_clean"], (k, score[k])
    rest = {k: v for k, v in score.items() if k not in CORE | NEGATIVE | BACKUP | NOT_JUDGED}
    worst = max(rest, key=lambda k: abs(rest[k]))
    assert abs(rest[worst]) <= T["null_effect"], (worst, rest[worst])


def _mean_ablated_ld(plain, pairs, heads):
    """Reference: the clean prompts with ``heads`` set to their mean over the clean prompts."""
    cache = ref.cache(plain, "gpt2", pairs.clean_ids)
    mean = {k: v.mean(0, keepdim=True).expand_as(v).contiguous() for k, v in cache.items()}
    patches = [("head", L, None, h) for L, h in heads]
    return ld(ref.run_with_source_cache(plain, "gpt2", pairs.clean_ids, patches, mean)[:, -1], pairs)


def test_mean_ablation_shows_backup_takeover_negative_mover_and_a_null_decoy(
        planted64, plain64, pair_sets):
    sets = [[NM], [NM, BK], [NEG], [DEC]]
    shares = []
    for pairs in pair_sets:
        got = H.ablate(planted64, pairs, [[name(h) for h in s] for s in sets], "mean")
        clean, _ = baselines(plain64, pairs)
        row = []
        for col, s in enumerate(sets):
            want = _mean_ablated_ld(plain64, pairs, s)
            assert (got.values["logit_diff"][:, col] - want).abs().max() < TOL
            row.append(want.mean() / clean.mean())
        shares.append(torch.stack(row))
    nm, nm_bk, neg, dec = torch.stack(shares).mean(0).tolist()
    assert nm >= T["takeover"], nm                              # the backup takes over ...
    assert nm_bk <= T["takeover_without_backup"], nm_bk         # ... and it is the backup that does
    assert neg - 1 >= -T["negative_effect"], neg                # removing the negative mover helps
    assert abs(dec - 1) <= T["null_effect"], dec                # the decoy changes nothing


def test_attention_follows_each_roles_route(plain64, pair_sets):
    a = {"dt": [], "si": [], "io": []}
    for pairs in pair_sets:
        with torch.no_grad():
            att = plain64(pairs.clean_ids, output_attentions=True).attentions  # per layer [n, h, q, k]
        p = pairs.positions
        a["dt"].append(att[DT[0]][:, DT[1], p["S2"], p["S1"]].mean())
        a["si"].append(att[SI[0]][:, SI[1], p["END"], p["S2"]].mean())
        a["io"].append(torch.stack([att[L][:, h, p["END"], p["IO"]].mean() for L, h in (NM, NEG, DEC)]))
    assert torch.stack(a["dt"]).mean() >= T["attention"]
    assert torch.stack(a["si"]).mean() >= T["attention"]
    assert (torch.stack(a["io"]).mean(0) >= T["attention"]).all()


# --------------------------------------------------------------------------- the full retrain

#: The full retrain is stamp-gated (tests/stamps.py): it runs when the recipe, the code it runs,
#: the code that judges it or the pins changed since it last passed.
RETRAIN = Stamp("ioi-planted-retrain",
                modules=["helpers.organism.train_planted", "helpers.circuits.planted_check",
                         "helpers.models.loading"],
                files=["tests/test_planted.py", "helpers/organism/planted/model.safetensors"])


@pytest.mark.slow
def test_full_retrain_passes_every_criterion_of_check_planted(tmp_path):
    """The whole recipe from scratch (the CPU time of the shipped run is in training.json),
    judged by behaviour: on another CPU the bytes differ, the roles and thresholds must not."""
    start = RETRAIN.gate()
    out = tmp_path / "retrained"
    subprocess.run([sys.executable, "-m", "helpers.organism.train_planted", "--out", str(out)],
                   check=True, capture_output=True, text=True)
    report = check_planted(H.load_model(out), out)
    failed = {k: v for k, v in report["criteria"].items() if not v["pass"]}
    assert report["passed"], failed
    RETRAIN.record(start, f"every one of {len(report['criteria'])} criteria passed")
