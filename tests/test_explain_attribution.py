"""Chapter 8's prose, tables, figures and explorer (helpers.teach.explain / figures / widgets
.attribution): every number the prose states is recomputed here independently, and the
figures follow the figure rules (shared limits and colour range, labels inside the axes,
no "-0.00", text at least 8 pt)."""
from __future__ import annotations

import re

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import helpers as H  # noqa: E402
from helpers.teach.explain import attribution as E  # noqa: E402
from helpers.teach.figures import attribution as F  # noqa: E402

NUMBER = re.compile(r"-?\d+\.\d+")


@pytest.fixture(scope="module")
def sweeps(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=4, corruption="s2_swap", seed=0, template=0)
    exact = {"resid": H.patch_residual(bundled, pairs, progress=False),
             "attn": H.patch_attn_out(bundled, pairs, progress=False),
             "mlp": H.patch_mlp_out(bundled, pairs, progress=False),
             "heads": H.patch_heads(bundled, pairs, progress=False)}
    return pairs, exact, H.attribution_patching(bundled, pairs)


def _cells(result, first):
    """Independent: the raw effects (patched - corrupted) of every cell from ``first`` on."""
    eff = (result.values["logit_diff"].mean(0) - result.corrupted["logit_diff"].mean()).numpy()
    return (eff[..., first:] if "position" in result.dims else eff).ravel().astype(float)


def _texts(fig):
    for t in fig.findobj(matplotlib.text.Text):
        if t.get_text().strip():
            yield t


def test_agreement_equals_correlation_and_slope_computed_independently(sweeps):
    pairs, exact, attr = sweeps
    table = E.agreement(exact, attr, normalise=False)
    for site in exact:
        x, y = _cells(exact[site], pairs.first_difference), _cells(attr[site], pairs.first_difference)
        assert table.loc[site, "components"] == len(x)
        assert table.loc[site, "pearson_r"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-6)
        assert table.loc[site, "slope"] == pytest.approx(x @ y / (x @ x), rel=1e-6)
        assert table.loc[site, "largest_error"] == pytest.approx(np.abs(y - x).max(), rel=1e-5)
    # normalising rescales both axes by the same gap: r and slope do not change
    normed = E.agreement(exact, attr, normalise=True)
    assert np.allclose(normed["pearson_r"], table["pearson_r"], atol=1e-6)
    assert np.allclose(normed["slope"], table["slope"], rtol=1e-5)


def test_agreement_text_states_the_tables_numbers(sweeps):
    _, exact, attr = sweeps
    table = E.agreement(exact, attr)
    text = E.agreement_text(table).data
    for _, row in table.iterrows():
        line = next(l for l in text.splitlines() if row["site"] in l)
        assert f"r = {H.fmt.num(row['pearson_r'])}" in line and f"slope {H.fmt.num(row['slope'])}" in line
        if 0 < row["slope"] < 0.8:
            assert f"about {H.fmt.num(1 / row['slope'], 1)}× too small" in line


def test_worst_names_components_in_the_naming_scheme_and_sorts_by_error(sweeps):
    _, exact, attr = sweeps
    table = E.worst(exact, attr, top=40)
    assert (table["error"] == table["estimate"] - table["exact"]).all()
    assert list(table["error"].abs()) == sorted(table["error"].abs(), reverse=True)
    for name, site in zip(table["component"], table["site"]):
        if site == "heads":
            assert re.fullmatch(r"L\d+H\d+", name), name
        else:
            assert re.fullmatch(r"(embed|L\d+|attn\d+|mlp\d+) @ .+", name), name
    # the worst cell anywhere, recomputed independently
    worst_any = max((E.components(attr[s])[0] - E.components(exact[s])[0]).abs().max().item() for s in exact)
    assert abs(table["error"].iloc[0]) == pytest.approx(float(worst_any))


def test_worst_text_counts_match_the_table(sweeps):
    _, exact, attr = sweeps
    table = E.worst(exact, attr, top=8)
    text = E.worst_text(table, "share restored").data
    early = table["layer"].isin(["embed", "L0"]).sum()
    under = (table["error"] * table["exact"] < 0).sum()
    assert f"{early} of these 8 are the embeddings" in text
    assert f"In {under} of the 8" in text
    assert f"**{table['component'][0]}**: exact {H.fmt.num(table['exact'][0])}" in text


def test_residual_text_reads_the_cells_it_names(sweeps):
    _, exact, attr = sweeps
    text = E.residual(exact["resid"], attr["resid"]).data
    for row in ("embed", "L0", "L1"):
        assert f"{row} {H.fmt.num(exact['resid'].value(layer=row, position='S2'))}" in text
    last = exact["resid"].labels["layer"][-1]
    assert (f"exact {H.fmt.num(exact['resid'].value(layer=last, position='END'))}, estimate "
            f"{H.fmt.num(attr['resid'].value(layer=last, position='END'))}") in text
    assert "-0.00" not in text


def test_tangent_text_computes_real_and_tangent_changes():
    walks = {"a": [-2.0, -1.9, 8.0], "b": [-2.0, 1.0, 4.0], "c": [-2.0, -2.0, -1.0]}
    text = E.tangents(walks, {"a": -2.1, "b": 1.0, "c": -3.0}).data
    assert "**a**: the real change is +10.00, the tangent's -0.10: the tangent predicts almost none" in text
    assert "**b**: the real change is +6.00, the tangent's +3.00: the real change is 2.0× the estimate" in text
    assert "**c**: the real change is +1.00, the tangent's -1.00: opposite signs" in text


def test_saturation_and_mlp_hold_texts_follow_their_numbers():
    alphas = [0.0, 0.5, 1.0]
    text = E.saturation("L0H3", "Mary (S2)", {"corrupted": ("John (S1)", 0.98), "clean": ("Mary (IO)", 0.97)},
                        alphas, [0.0, 0.5, 1.0], [-5.0, -4.9, 5.0], "Mary (IO)").data
    assert "98.0% of its attention on John (S1)" in text and "97.0% on Mary (IO)" in text
    assert "**saturated** in both runs" in text and "**flips**" in text
    assert "between α = 0.5 and 1.0 (-4.9 → 5.0)" in text and "nearly flat" in text
    held = E.mlp_hold("L0H3", free=0.8, held=0.2, estimate=0.3, unit="share restored").data
    assert held.startswith("Only 25% of L0H3's effect") and "(0.30)" in held and "(0.80)" in held
    assert "does not depend on MLP0" in E.mlp_hold("L0H3", 0.8, 0.6, 0.7, "share restored").data


def test_speed_states_ratios_of_the_given_times():
    text = E.speed({"attribution": 0.5, "exact": 2.0}, "attribution").data
    assert "| exact | 2.00 | 4.0× |" in text and "exact took 4.0× as long" in text


def test_compared_maps_share_their_colour_range_and_write_no_negative_zero(sweeps):
    _, exact, attr = sweeps
    for site, normalise in (("resid", True), ("resid", False), ("heads", False)):
        fig = F.compare(exact[site], attr[site], normalise)
        meshes = [ax.collections[0] for ax in fig.axes if ax.get_title()]
        assert len(meshes) == 2 and meshes[0].get_clim() == meshes[1].get_clim()
        texts = list(_texts(fig))
        assert all(t.get_text() != "-0.00" for t in texts)
        assert min(t.get_fontsize() for t in texts) >= 8
        plt.close(fig)


def test_scatter_panels_share_limits_and_keep_labels_inside(sweeps):
    _, exact, attr = sweeps
    fig = F.scatter(exact, attr)
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 4
    assert len({(ax.get_xlim(), ax.get_ylim()) for ax in panels}) == 1
    renderer = fig.canvas.get_renderer()
    for ax in panels:
        box = ax.get_window_extent(renderer)
        (label,) = [t for t in ax.texts]
        inside = label.get_window_extent(renderer)
        assert box.x0 <= inside.x0 and inside.x1 <= box.x1 and box.y0 <= inside.y0 and inside.y1 <= box.y1
    assert min(t.get_fontsize() for t in _texts(fig)) >= 8
    plt.close(fig)


def test_tangent_panels_share_the_y_axis():
    fig = F.tangents([0.0, 0.5, 1.0], {"a": [-10.0, -9.0, 10.0], "b": [-10.0, -5.0, 0.0]},
                     {"a": -9.5, "b": -1.0}, clean=10.0, corrupted=-10.0)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert axes[0].get_ylim() == axes[1].get_ylim()
    assert "exact 1.00 · estimate 0.03" in axes[0].get_title()
    assert min(t.get_fontsize() for t in _texts(fig)) >= 8
    plt.close(fig)


def test_explorer_redraws_for_every_site(sweeps):
    _, exact, attr = sweeps
    box = H.widgets.attribution.attribution_explorer(exact, attr, site="heads")
    pick, _ = box.children
    assert [v for _, v in pick.options] == list(exact)
    before = len(plt.get_fignums())
    pick.value = "mlp"   # redraws: the map pair and the scatter plot
    assert len(plt.get_fignums()) == before + 2
    plt.close("all")
