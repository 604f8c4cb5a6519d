"""Statistics on every patching result (helpers.results.stats, PatchResult.stats, to_dict, plot_patching's
marks), checked against a direct computation written here independently: Python loops over
prompts and resamples, itertools.product over sign patterns, a hand-written Holm and
Benjamini-Hochberg, and a bootstrap loop that draws the same documented indices."""
from __future__ import annotations

import itertools
import json
import math
import time
from fractions import Fraction

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import helpers as H  # noqa: E402
from helpers.results import stats as S  # noqa: E402
from helpers.base.validate import json_text  # noqa: E402
from helpers.data.pairs import PromptPairs  # noqa: E402
from helpers.results.patch_result import PatchResult  # noqa: E402

N_BOOT = 1000


# ------------------------------------------------------------------ the direct computation

def ref_quantile(samples: list[float], q: float) -> float:
    """Linear-interpolation quantile, by hand."""
    s = sorted(samples)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ref_sign_flip_exact(e: list[float]) -> float:
    n = len(e)
    observed = abs(sum(e) / n)
    tol = 1e-9 * sum(abs(x) for x in e) / n
    hits = sum(abs(sum(s * x for s, x in zip(signs, e)) / n) >= observed - tol
               for signs in itertools.product((1, -1), repeat=n))
    return hits / 2 ** n


def ref_sign_flip_sampled(e: list[float], patterns: list[list[int]]) -> float:
    n = len(e)
    observed = abs(sum(e) / n)
    tol = 1e-9 * sum(abs(x) for x in e) / n
    hits = sum(abs(sum(s * x for s, x in zip(signs, e)) / n) >= observed - tol
               for signs in patterns)
    return (1 + hits) / (1 + len(patterns))


def ref_holm(p: list[float]) -> list[float]:
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        out[i] = min(1.0, running)
    return out


def ref_bh(p: list[float]) -> list[float]:
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, math.inf
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, m * p[i] / (rank + 1))
        out[i] = min(1.0, running)
    return out


def ref_cell(values, clean, corrupted, direction, cell, seed=0, alpha=0.05):
    """Every statistic of one cell, by loops over prompts and resamples."""
    n = len(clean)
    base = corrupted if direction == "denoise" else clean
    patched = [float(values[(i, *cell)]) for i in range(n)]
    e = [patched[i] - float(base[i]) for i in range(n)]
    mean = sum(e) / n
    sem = math.sqrt(sum((x - mean) ** 2 for x in e) / (n - 1)) / math.sqrt(n)
    idx = np.random.default_rng([seed, 0]).integers(0, n, size=(N_BOOT, n))
    boot, scores = [], []
    for row in idx:
        boot.append(sum(e[j] for j in row) / n)
        mp = sum(patched[j] for j in row) / n
        mc = sum(float(clean[j]) for j in row) / n
        mk = sum(float(corrupted[j]) for j in row) / n
        scores.append((mp - mk) / (mc - mk))
    mc, mk = sum(map(float, clean)) / n, sum(map(float, corrupted)) / n
    score = (sum(patched) / n - mk) / (mc - mk)
    imp = scores if direction == "denoise" else [1 - s for s in scores]
    q = (alpha / 2, 1 - alpha / 2)
    return {"effect": mean, "sem": sem, "ci_low": ref_quantile(boot, q[0]),
            "ci_high": ref_quantile(boot, q[1]), "score": score,
            "score_ci_low": ref_quantile(scores, q[0]), "score_ci_high": ref_quantile(scores, q[1]),
            "importance": score if direction == "denoise" else 1 - score,
            "importance_ci_low": ref_quantile(imp, q[0]),
            "importance_ci_high": ref_quantile(imp, q[1]),
            "p": ref_sign_flip_exact(e) if n <= 16 else None}


# ------------------------------------------------------------------ synthetic results

def synthetic(n: int = 5, shape=(3, 4), direction: str = "denoise", seed: int = 0,
              gap: float = 6.0) -> PatchResult:
    """A hand-made result: cell (0, 0) equals the run patched into (no effect), cell (0, 1)
    has an all-positive effect, the rest are random."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(n, generator=g, dtype=torch.float64) + gap / 2
    corrupted = torch.randn(n, generator=g, dtype=torch.float64) - gap / 2
    base = corrupted if direction == "denoise" else clean
    values = torch.randn(n, *shape, generator=g, dtype=torch.float64) * 2
    values[:, 0, 0] = base
    values[:, 0, 1] = base + torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    pairs = PromptPairs(clean=["c"] * n, corrupted=["k"] * n, answers=["a"] * n,
                        distractors=["d"] * n, clean_ids=torch.zeros(n, 2, dtype=torch.long),
                        corrupted_ids=torch.ones(n, 2, dtype=torch.long),
                        answer_ids=torch.zeros(n, dtype=torch.long),
                        distractor_ids=torch.ones(n, dtype=torch.long), positions={},
                        tokens=["x", "y"], corrupted_tokens=["x", "z"])
    labels = {"layer": [f"L{i}" for i in range(shape[0])],
              "position": [f"t{j}" for j in range(shape[1])]}
    return PatchResult(site="resid", direction=direction, dims=("layer", "position"), labels=labels,
                       values={"logit_diff": values}, clean={"logit_diff": clean},
                       corrupted={"logit_diff": corrupted}, prompts=pairs, model_name="synthetic")


@pytest.fixture(scope="module")
def real(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=6, seed=2)
    return {d: H.patch_residual(bundled, pairs, d) for d in ("denoise", "noise")}


# ------------------------------------------------------------------ against the direct computation

@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_every_cell_statistic_matches_a_loop_computation_on_five_prompts(direction):
    r = synthetic(n=5, direction=direction)
    frame = r.stats()
    assert len(frame) == 12 and set(frame["exact"]) == {True} and set(frame["n_perm"]) == {32}
    v, c, k = r.values["logit_diff"], r.clean["logit_diff"], r.corrupted["logit_diff"]
    ps = []
    for _, row in frame.iterrows():
        cell = (row["layer_index"], row["position_index"])
        assert (row["layer"], row["position"]) == (f"L{cell[0]}", f"t{cell[1]}")
        want = ref_cell(v, c, k, direction, cell)
        for key, value in want.items():
            if key == "p":
                assert row["p"] == value, (cell, row["p"], value)
            else:
                assert abs(row[key] - value) <= 1e-12 * max(1.0, abs(value)), (key, cell)
        ps.append(want["p"])
    assert frame["p_adjusted"].tolist() == pytest.approx(ref_holm(ps), abs=1e-15)
    assert r.stats(correction="bh")["p_adjusted"].tolist() == pytest.approx(ref_bh(ps), abs=1e-15)
    assert r.stats(correction=None)["p_adjusted"].tolist() == ps


def test_the_table_of_a_real_sweep_agrees_with_the_result_and_the_loop(real):
    for direction, r in real.items():
        frame = r.stats()
        n_layers, n_pos = r.shape
        assert len(frame) == n_layers * n_pos
        grid = lambda col: torch.tensor(frame[col].to_numpy(float)).reshape(r.shape)  # noqa: E731
        assert torch.allclose(grid("effect"), r.effect().double(), atol=1e-4)
        assert torch.allclose(grid("score"), r.score().double(), atol=1e-5)
        assert torch.allclose(grid("importance"), r.importance().double(), atol=1e-5)
        keys = ["layer", "layer_index", "position", "position_index"]
        tidy = r.to_frame()[keys].drop_duplicates().reset_index(drop=True)
        assert tidy.equals(frame[keys])  # the same cells, in to_frame's order
        assert frame["direction"].eq(direction).all() and frame["site"].eq("resid").all()
        v, c, k = r.values["logit_diff"], r.clean["logit_diff"], r.corrupted["logit_diff"]
        for cell in [(n_layers - 1, n_pos - 1), (1, n_pos - 1), (2, n_pos - 5)]:
            row = frame[(frame.layer_index == cell[0]) & (frame.position_index == cell[1])].iloc[0]
            want = ref_cell(v.double(), c.double(), k.double(), direction, cell)
            assert row["p"] == want["p"]
            for key in ("effect", "sem", "ci_low", "ci_high", "score_ci_low", "importance_ci_high"):
                assert abs(row[key] - want[key]) <= 1e-12 * max(1.0, abs(want[key])), key


def test_noising_importance_interval_is_one_minus_the_score_interval_reversed():
    frame = synthetic(n=7, direction="noise").stats()
    assert np.allclose(frame["importance_ci_low"], 1 - frame["score_ci_high"], atol=1e-12)
    assert np.allclose(frame["importance_ci_high"], 1 - frame["score_ci_low"], atol=1e-12)


# ------------------------------------------------------------------ known values

@pytest.mark.parametrize("n", range(1, 13))
def test_all_positive_effects_have_sign_flip_p_two_over_two_to_the_n(n):
    effects = np.linspace(0.5, 3.0, n)[:, None] * np.array([1.0, 10.0])
    p, exact = S.sign_flip_p(effects)
    assert exact and p.tolist() == [2 / 2 ** n] * 2


def test_sign_flip_counts_patterns_tied_with_the_observed_mean_despite_float_rounding():
    e = ["0.1", "0.2", "0.3", "-0.3", "0.7"]
    exact = [Fraction(x) for x in e]
    observed = abs(sum(exact))
    want = sum(abs(sum(s * x for s, x in zip(signs, exact))) >= observed
               for signs in itertools.product((1, -1), repeat=len(e))) / 2 ** len(e)
    p, _ = S.sign_flip_p(np.array([float(x) for x in e]))
    assert p == want and want > 2 / 2 ** len(e)  # ties that float sums miss by 1e-17


def test_holm_and_bh_give_the_textbook_adjusted_p_values():
    p = [0.01, 0.04, 0.03, 0.005]
    assert S.adjust_p(p, "holm").tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert S.adjust_p(p, "bh").tolist() == pytest.approx([0.02, 0.04, 0.04, 0.02], abs=1e-15)
    # Benjamini & Hochberg (1995), section 4: 15 p-values; at 0.05 BH rejects 4, Holm 3.
    bh95 = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240,
            0.4262, 0.5719, 0.6528, 0.7590, 1.0000]
    assert (S.adjust_p(bh95, "bh") <= 0.05).sum() == 4
    assert (S.adjust_p(bh95, "holm") <= 0.05).sum() == 3
    assert S.adjust_p(bh95, "holm")[:4].tolist() == pytest.approx([0.0015, 0.0056, 0.0247, 0.114])


def test_corrections_match_the_hand_written_procedures_with_ties_and_stay_monotone_and_capped():
    rng = np.random.default_rng(5)
    p = np.round(rng.uniform(0, 0.2, size=(6, 7)), 3)  # rounding makes ties
    p[0, :3] = 1.0
    for name, ref in (("holm", ref_holm), ("bh", ref_bh)):
        adj = S.adjust_p(p, name)
        assert adj.shape == p.shape
        assert adj.ravel().tolist() == pytest.approx(ref(p.ravel().tolist()), abs=1e-15)
        order = np.argsort(p.ravel(), kind="stable")
        assert (np.diff(adj.ravel()[order]) >= 0).all() and adj.max() <= 1 and (adj >= p).all()
    with pytest.raises(ValueError, match="correction='bonferroni' is not a valid choice.*'holm', 'bh'"):
        S.adjust_p(p, "bonferroni")


# ------------------------------------------------------------------ the sampled sign-flip path

def test_sampled_sign_flip_is_seeded_reproducible_and_matches_a_loop_over_the_same_patterns():
    effects = np.random.default_rng(1).normal(0.3, 1.0, size=(20, 3))
    p, exact = S.sign_flip_p(effects, n_perm=2000, seed=4)
    assert not exact
    again, _ = S.sign_flip_p(effects, n_perm=2000, seed=4)
    other, _ = S.sign_flip_p(effects, n_perm=2000, seed=5)
    assert p.tolist() == again.tolist() and p.tolist() != other.tolist()
    bits = np.random.default_rng([4, 1]).integers(0, 2, size=(2000, 20))
    patterns = (1 - 2 * bits).tolist()
    for j in range(3):
        assert p[j] == ref_sign_flip_sampled(effects[:, j].tolist(), patterns)


def test_sampled_sign_flip_is_close_to_the_exact_p_value(monkeypatch):
    effects = np.random.default_rng(2).normal(0.25, 1.0, size=(18, 4))
    sampled, _ = S.sign_flip_p(effects)  # 10,000 patterns
    monkeypatch.setattr(S, "EXACT_MAX_PROMPTS", 18)
    exact, is_exact = S.sign_flip_p(effects)  # all 2^18
    assert is_exact
    assert ref_sign_flip_exact(effects[:, 0].tolist()) == exact[0]
    assert np.all(np.abs(sampled - exact) <= 4 * np.sqrt(exact * (1 - exact) / 10_000) + 1e-3)


# ------------------------------------------------------------------ edge cases, JSON, speed

@pytest.mark.parametrize("n", [5, 20])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_cells_without_effect_get_p_one_and_the_interval_zero_zero(direction, n):
    frame = synthetic(n=n, direction=direction).stats()
    zero = frame[(frame.layer_index == 0) & (frame.position_index == 0)].iloc[0]
    assert [zero[k] for k in ("effect", "sem", "ci_low", "ci_high", "p")] == [0, 0, 0, 0, 1]
    assert [zero[k] for k in ("importance", "importance_ci_low", "importance_ci_high")] == [0, 0, 0]
    assert [zero[k] for k in ("score", "score_ci_low", "score_ci_high")] == \
        [0 if direction == "denoise" else 1] * 3
    assert not frame.drop(columns=["correction"]).isna().any().any()


def test_a_gap_too_small_leaves_the_score_out_with_a_note_and_no_nan_in_json():
    r = synthetic(n=5, gap=0.0)
    r.clean["logit_diff"] = r.corrupted["logit_diff"] + 0.01
    frame = r.stats()
    assert frame["score"].isna().all() and frame["importance_ci_low"].isna().all()
    assert "no normalised score" in frame.attrs["score_note"]
    assert frame[["effect", "ci_low", "ci_high", "p", "p_adjusted"]].notna().all().all()
    data = json.loads(json_text(r.to_dict()))
    assert data["stats"]["cells"][5]["score"] is None
    assert "differ by only" in data["stats"]["score_note"]
    # the prompt means are far enough apart, but some resamples are not: a score, no interval
    r.clean["logit_diff"] = r.corrupted["logit_diff"] + torch.tensor([1, -1, 1, -1, 0.6]).double()
    frame = r.stats()
    assert frame["score"].notna().all() and frame["score_ci_low"].isna().all()
    assert "bootstrap resample" in frame.attrs["score_note"]
    json_text(r.to_dict())


def test_to_dict_holds_the_statistics_table_and_json_text_accepts_it(real, tmp_path):
    r = real["denoise"]
    data = r.to_dict()
    stats = data["stats"]
    frame = r.stats()
    settings = ("metric", "correction", "n_boot", "seed", "n_prompts", "exact", "n_perm")
    assert {k: stats[k] for k in settings} == {"metric": "logit_diff", "correction": "holm",
                                                 "n_boot": 1000, "seed": 0, "n_prompts": 6,
                                                 "exact": True, "n_perm": 64}
    assert len(stats["cells"]) == len(frame) and stats["score_note"] is None
    for cell, (_, row) in zip(stats["cells"], frame.iterrows()):
        assert (cell["layer"], cell["position"]) == (row["layer"], row["position"])
        for key in S.STAT_COLUMNS:
            assert cell[key] == float(f"{row[key]:.6g}")
    loaded = json.loads(r.save_json(tmp_path / "r.json").read_text())
    assert loaded["stats"] == json.loads(json_text(stats))
    assert "stats" not in r.to_dict(stats=False)


def test_same_seed_gives_the_same_table_and_another_seed_other_intervals():
    r = synthetic(n=9)
    assert r.stats(seed=3).equals(r.stats(seed=3))
    a, b = r.stats(seed=3), r.stats(seed=4)
    assert a["ci_low"].tolist() != b["ci_low"].tolist() and a["p"].tolist() == b["p"].tolist()


def test_statistics_refuse_settings_they_cannot_honour():
    r = synthetic()
    with pytest.raises(ValueError, match="correction='bonferroni' is not a valid choice.*'holm', 'bh'"):
        r.stats(correction="bonferroni")
    with pytest.raises(ValueError, match="alpha=5 is out of range.*percentage; write alpha=0.05"):
        r.stats(alpha=5)
    with pytest.raises(ValueError, match="no metric 'answer_prob'"):
        r.stats("answer_prob")


def test_exact_statistics_of_a_chapter_sized_map_take_well_under_a_second():
    r = synthetic(n=16, shape=(13, 16))
    start = time.perf_counter()
    r.to_dict()
    assert time.perf_counter() - start < 2.0  # about 0.15 s on one core


# ------------------------------------------------------------------ figures

def _marked(fig) -> set[tuple[int, int]]:
    dots = [c for ax in fig.axes for c in ax.collections if c.get_gid() == H.plotting.MARK_GID]
    if not dots:
        return set()
    (dots,) = dots
    return {(int(round(y - 0.2)), int(round(x - 0.84))) for x, y in dots.get_offsets()}


def test_plot_patching_marks_exactly_the_cells_whose_interval_contains_zero(real):
    for r in real.values():
        frame = r.stats(seed=1, alpha=0.2)
        want = {(int(row.layer_index), int(row.position_index)) for row in frame.itertuples()
                if row.ci_low <= 0 <= row.ci_high}
        assert want and len(want) < len(frame)
        fig = H.plot_patching(r, mark=frame)
        assert _marked(fig) == want and "80% bootstrap interval" in fig.axes[0].get_xlabel()
        plt.close(fig)
        default = r.stats()
        fig = H.plot_patching(r, mark=True, normalise=False)
        assert _marked(fig) == {(int(x.layer_index), int(x.position_index))
                                for x in default.itertuples() if x.ci_low <= 0 <= x.ci_high}
        plt.close(fig)
    fig = H.plot_patching(r)
    assert _marked(fig) == set() and fig.axes[0].get_xlabel() == "position"  # off by default
    plt.close(fig)
    with pytest.raises(ValueError, match="figure shows 'answer_prob'"):
        H.plot_patching(r, metric="answer_prob", mark=frame)


def test_the_json_holds_the_per_prompt_table_the_statistics_are_computed_from(bundled):
    import json

    from helpers.base.validate import json_text
    from helpers.results.stats import cell_stats

    pairs = H.ioi_pairs(bundled.tokenizer, n=5, seed=3)
    result = H.patch_heads(bundled, pairs)
    saved = json.loads(json_text(result.to_dict()))["per_prompt"]
    values = torch.tensor(saved["values"]["logit_diff"], dtype=torch.float64)
    clean = torch.tensor(saved["clean"]["logit_diff"], dtype=torch.float64)
    corrupted = torch.tensor(saved["corrupted"]["logit_diff"], dtype=torch.float64)
    assert values.shape == (len(pairs), *result.shape)
    torch.testing.assert_close(values, result.values["logit_diff"].double(), atol=1e-6, rtol=1e-5)  # 6 digits
    again = cell_stats(values, clean, corrupted, result.direction)
    direct = cell_stats(result.values["logit_diff"].double(), result.clean["logit_diff"].double(),
                        result.corrupted["logit_diff"].double(), result.direction)
    torch.testing.assert_close(torch.as_tensor(again.effect), torch.as_tensor(direct.effect), atol=1e-4, rtol=0)
    assert (again.p == direct.p).all()
