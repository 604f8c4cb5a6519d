"""Chapter 5 (noising): the generated prose states the numbers of the results it is given, and
the figures follow the figure rules (no "-0.00", fonts >= 8 pt, labels inside and apart)."""
from __future__ import annotations

import re

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import helpers as H  # noqa: E402
from helpers.base.fmt import num  # noqa: E402
from helpers.teach.explain import noising as X  # noqa: E402
from helpers.teach.figures import noising as F  # noqa: E402

DIRS = ("denoise", "noise")


@pytest.fixture(scope="module")
def run(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=4, corruption="s2_swap", seed=0, template=0)
    resid = {d: H.patch_residual(bundled, pairs, d) for d in DIRS}
    heads = {d: H.patch_heads(bundled, pairs, d) for d in DIRS}
    n_l, n_h = heads["denoise"].shape
    S2 = pairs.positions["S2"]
    duo = [H.Patch("head", 0, S2, 3), H.Patch("mlp", 0, S2)]
    sets = [[H.Patch("head", l, None, h) for h in range(n_h)] for l in range(n_l)]
    sets += [[duo[0]], [duo[1]], duo]
    joint = {d: H.patch_components(bundled, pairs, sets, d) for d in DIRS}
    return dict(pairs=pairs, resid=resid, heads=heads, joint=joint)


def test_per_prompt_change_averages_to_the_plotted_importance(run):
    for d in DIRS:
        r = run["heads"][d]
        per = X.matters(r, per_prompt=True)
        assert per.shape == r.values["logit_diff"].shape
        assert torch.allclose(per.mean(0), r.importance(), atol=1e-5)


def test_residual_prose_states_both_map_values_of_each_cell(run):
    text = X.residual_both_ways(run["resid"]).data
    r = run["resid"]
    cells = re.findall(r"- (.+?): denoising (-?[\d.]+), noising (-?[\d.]+)", text)
    assert len(cells) == 6
    names = {X.cell_name(r["denoise"], i, j): (i, j) for i in range(r["denoise"].shape[0])
             for j in range(r["denoise"].shape[1])}
    for name, den, noi in cells:
        i, j = names[name]
        assert den == num(r["denoise"].importance()[i, j])
        assert noi == num(r["noise"].importance()[i, j])


def test_heads_are_named_like_L0H3_never_as_decimals(run):
    text = X.heads_both_ways(run["heads"]).data
    assert re.search(r"\*\*L\dH\d\*\*", text)
    assert not re.search(r"\b\d\.\d\b(?!\d)", text.split("Block by block")[0].replace("0.", "x."))


def test_joint_vs_sum_matches_the_sweeps(run):
    js = X.joint_vs_sum(run["heads"], run["joint"], "pair")
    n_l = run["heads"]["denoise"].shape[0]
    for d in DIRS:
        imp_heads, imp_joint = run["heads"][d].importance(), run["joint"][d].importance()
        for l in range(n_l):
            assert js.sums[d][l] == pytest.approx(float(imp_heads[l].sum()), abs=1e-5)
            assert js.joints[d][l] == pytest.approx(float(imp_joint[l]), abs=1e-5)
        assert js.sums[d][-1] == pytest.approx(float(imp_joint[-3] + imp_joint[-2]), abs=1e-5)
        assert all(s >= 0 for s in js.sem[d])


def test_a_difference_under_two_standard_errors_is_called_within_noise():
    js = X.JointSum(["L0 heads", "pair"], {"denoise": [0.5, 1.0], "noise": [0.5, 1.0]},
                    {"denoise": [0.6, 0.5], "noise": [0.6, 0.5]},
                    {"denoise": [0.1, -0.5], "noise": [0.1, -0.5]},
                    {"denoise": [0.08, 0.01], "noise": [0.08, 0.01]}, 0.05, "of the gap", 16)
    assert js.pattern(0) == "additive within noise"
    assert js.pattern(1) == "overlapping / in series"
    text = X.joint_verdicts(js, 0).data
    assert "+0.10 ± 0.08 (within noise)" in text
    assert "-0.50 ± 0.01" in text and "-0.50 ± 0.01 (within noise)" not in text


def _texts(fig):
    return [t for ax in fig.axes for t in ax.texts] + list(fig.texts)


def test_figures_have_readable_numbers_and_no_negative_zero(run):
    js = X.joint_vs_sum(run["heads"], run["joint"], "pair")
    figs = [F.plot_joint_vs_sum(js), F.plot_pair(run["resid"]),
            F.plot_mirror({"residual": run["resid"], "head": run["heads"]}, "t")]
    for fig in figs:
        for t in _texts(fig):
            assert "-0.00" not in t.get_text()
            if t.get_text().strip():
                assert t.get_fontsize() >= 8
    bars = [t.get_text() for t in _texts(figs[0])]
    assert num(js.joints["denoise"][0]) in bars


def test_mirror_numbers_stay_inside_the_axes_and_do_not_overlap(run):
    fig = F.plot_mirror({"residual": run["resid"], "head": run["heads"]}, "t", n_labels=6)
    fig.canvas.draw()
    ax = fig.axes[0]
    boxes = [a.get_window_extent() for a in ax.texts if a.get_text().isdigit()]
    assert boxes
    inside = ax.get_window_extent()
    for b in boxes:
        assert inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)


def test_values_beyond_one_stay_visible_on_the_scatter(run):
    fig = F.plot_mirror({"residual": run["resid"]}, "t")
    pts = X.mirror_points({"residual": run["resid"]})
    top = max(max(p["suff"], p["nec"]) for p in pts)
    assert fig.axes[0].get_xlim()[1] > top and fig.axes[0].get_ylim()[1] > top
