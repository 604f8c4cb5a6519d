"""Chapter 3's generated prose and figure: every number the prose states is the number the
results give, written as the notebook prints it; the figure's cells are readable."""
from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import helpers as H  # noqa: E402
from helpers.base.fmt import num  # noqa: E402


@pytest.fixture(scope="module")
def results(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=4, seed=0)
    return (pairs, H.patch_residual(bundled, pairs), H.patch_attn_out(bundled, pairs),
            H.patch_mlp_out(bundled, pairs))


def _table(text: str) -> dict[str, list[str]]:
    return {m[0]: list(m[1:]) for m in re.findall(r"^\| `(\w+)` \| (\S+) \| (\S+) \| (.+) \|$", text, re.M)}


def test_residual_map_table_equals_the_grid_cell_by_cell(results):
    pairs, resid, _, _ = results
    text = H.explain.positions.residual_map(resid, pairs).data
    table = _table(text)
    assert list(table) == resid.labels["layer"]
    for row, (s2, end, at) in table.items():
        assert s2 == num(resid.value(layer=row, position="S2"))
        assert end == num(resid.value(layer=row, position="END"))
        g = resid.grid()[resid.index("layer", row)]
        assert at == resid.labels["position"][int(g.argmax())]
    assert f"**The `embed` row is {num(resid.value(layer='embed', position='S2'))} at S2**" in text
    assert f"is {num(resid.value(layer=-1, position='END'))} at END" in text
    assert "-0.00" not in text


def test_residual_map_names_the_first_row_where_end_beats_s2(results):
    pairs, resid, _, _ = results
    text = H.explain.positions.residual_map(resid, pairs).data
    g, s2, end = resid.grid(), pairs.positions["S2"], pairs.positions["END"]
    first = next(resid.labels["layer"][i] for i in range(g.shape[0]) if g[i, end] > g[i, s2])
    assert f"END first beats S2 in row `{first}`" in text


def test_residual_map_in_raw_units_states_the_clean_value(results):
    pairs, resid, _, _ = results
    text = H.explain.positions.residual_map(resid, pairs, normalise=False).data
    assert f"the clean value {num(resid.baseline('clean'))}" in text
    assert f"`embed` row is {num(resid.mean()[0, pairs.positions['S2']])} at S2" in text


def test_sublayers_states_every_attention_value_at_end_by_its_name(results):
    pairs, resid, attn, mlp = results
    text = H.explain.positions.sublayers(attn, mlp, resid, pairs).data
    end = pairs.positions["END"]
    listed = re.search(r"Attention at END:\*\* (.+?)\. The", text).group(1)
    assert listed == ", ".join(f"attn{i} {num(attn.grid()[i, end])}" for i in range(attn.shape[0]))
    cm = mlp.grid().abs()
    m_l, m_p = divmod(int(cm.argmax()), cm.shape[1])
    assert f"mlp{m_l} at {mlp.labels['position'][m_p]} ({num(mlp.grid()[m_l, m_p])})" in text
    assert "L0 " not in text and "MLP0" not in text   # sublayers are attnL / mlpL


def test_sublayers_figure_has_aligned_named_panels_and_readable_numbers(results):
    _, _, attn, mlp = results
    fig = H.figures.positions.sublayers(attn, mlp)
    top, bottom = fig.axes[0], fig.axes[1]   # the colour bars come after the panels
    assert [t.get_text() for t in top.get_yticklabels()][0] == "attn0"
    assert [t.get_text() for t in bottom.get_yticklabels()][0] == "mlp0"
    assert top.get_xlim() == bottom.get_xlim()
    texts = [t for ax in (top, bottom) for t in ax.texts]
    assert texts and all(t.get_fontsize() >= 8 for t in texts)
    assert not any(t.get_text() == "-0.00" for t in texts)
    plt.close(fig)


def test_sublayers_figure_in_raw_units_shares_one_colour_range(results):
    _, _, attn, mlp = results
    fig = H.figures.positions.sublayers(attn, mlp, normalise=False)
    limits = {fig.axes[i].collections[0].get_clim() for i in (0, 1)}
    assert len(limits) == 1
    plt.close(fig)
