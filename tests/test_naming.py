"""One naming scheme (helpers.base.fmt): how numbers and components are written, how a result cell
is found by the name the labels show, and the figure and saving rules built on it."""
from __future__ import annotations

import dataclasses
import json
import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import helpers as H  # noqa: E402
from helpers.results.metrics import logit_diff  # noqa: E402

# ------------------------------------------------------------------ numbers and names

@pytest.mark.parametrize("x, text", [(-0.001, "0.00"), (-0.004999, "0.00"), (-0.005001, "-0.01"),
                                     (0.0, "0.00"), (1.234, "1.23"), (torch.tensor(-0.0), "0.00")])
def test_num_never_writes_minus_zero(x, text):
    assert H.fmt.num(x) == text


def test_num_shows_non_finite_values_instead_of_hiding_them():
    assert H.fmt.num(float("nan")) == "nan" and H.fmt.num(float("-inf")) == "-inf"


def test_signed_and_pct_write_changes_and_shares():
    assert (H.fmt.signed(0.314), H.fmt.signed(-0.12), H.fmt.signed(-0.001)) == ("+0.31", "-0.12", "0.00")
    assert H.fmt.pct(0.912) == "91%" and H.fmt.pct(0.9125, 1) == "91.2%"


def test_head_names_cannot_be_read_as_decimals_and_parse_back():
    assert H.fmt.head_name(0, 3) == "L0H3"
    assert all(H.fmt.parse_head(H.fmt.head_name(l, h)) == (l, h) for l in range(12) for h in range(12))
    with pytest.raises(ValueError, match="write a head as L<block>H<head>"):
        H.fmt.parse_head("0.3")


def test_component_names_follow_the_sites():
    names = [H.fmt.component_name("embed"), H.fmt.component_name("resid", 2),
             H.fmt.component_name("attn", 2), H.fmt.component_name("mlp", 2),
             H.fmt.component_name("head", 2, 5)]
    assert names == ["embed", "L2", "attn2", "mlp2", "L2H5"]
    with pytest.raises(ValueError, match="unknown site"):
        H.fmt.component_name("block", 2)


def test_md_table_writes_floats_with_two_decimals():
    table = H.fmt.md_table(["row", "S2"], [["L0", -0.0001], ["L1", 0.756]])
    assert table.splitlines()[2:] == ["| L0 | 0.00 |", "| L1 | 0.76 |"]


# ------------------------------------------------------------------ result cells by name

@pytest.fixture(scope="module")
def pairs(bundled):
    return H.ioi_pairs(bundled.tokenizer, n=4, seed=1)


@pytest.fixture(scope="module")
def resid(bundled, pairs):
    return H.patch_residual(bundled, pairs[:4])


def test_a_residual_cell_named_by_block_is_that_blocks_patch(bundled, pairs, resid):
    """``resid.value(layer=L, position=p)`` is block L's output patched at p, computed here
    independently with two hand-written nnsight traces (no ``L + 1`` anywhere)."""
    sub = pairs[:4]
    s2 = sub.positions["S2"]
    anatomy = H.model_facts(bundled)
    unembed = anatomy.unembed(bundled)
    for layer in (0, 1, -1):
        block = anatomy.block(bundled, layer)
        with bundled.trace(sub.clean_ids):
            clean = block.output.save()
        with bundled.trace(sub.corrupted_ids):
            block.output[:, s2] = clean[:, s2]
            logits = unembed.output[:, -1].save()
        ld = logit_diff(logits, sub.answer_ids, sub.distractor_ids).mean().item()
        clean, corrupted = resid.baseline("clean"), resid.baseline("corrupted")
        want = (ld - corrupted) / (clean - corrupted)
        assert resid.value(layer=layer, position="S2") == pytest.approx(want, abs=1e-5)
        assert resid.value(layer=f"L{layer % 4}", position=s2) == pytest.approx(want, abs=1e-5)


def test_the_last_block_at_end_restores_the_clean_run_exactly(resid):
    assert resid.value(layer=-1, position="END") == pytest.approx(1.0, abs=1e-5)
    assert resid.index("layer", "embed") == 0 and resid.index("layer", 0) == 1


def test_unknown_names_say_what_the_axis_holds(resid):
    with pytest.raises(ValueError, match="is not on the position axis"):
        resid.index("position", "S3")
    with pytest.raises(IndexError, match="out of range"):
        resid.index("layer", 4)
    with pytest.raises(ValueError, match="missing"):
        resid.value(layer=0)


def test_noising_importance_is_one_minus_score_and_denoising_importance_is_the_score(bundled, pairs):
    sub = pairs[:2]
    noise = H.patch_attn_out(bundled, sub, direction="noise")
    denoise = H.patch_attn_out(bundled, sub)
    assert torch.allclose(noise.importance(), 1 - noise.score())
    assert torch.equal(denoise.importance(), denoise.score())
    assert "destroyed" in noise.importance_label() and "restored" in denoise.importance_label()


# ------------------------------------------------------------------ figure rules

def _texts(fig):
    return [t for ax in fig.axes for t in ax.texts]


def test_heatmap_numbers_are_large_enough_and_never_minus_zero(resid):
    fig = H.plot_patching(resid)
    texts = _texts(fig)
    assert texts and all(t.get_fontsize() >= 8 for t in texts)
    assert not any(t.get_text() == "-0.00" for t in texts)
    plt.close(fig)


def test_values_beyond_the_colour_range_extend_the_colour_bar(resid):
    pushed = dataclasses.replace(resid, values={m: v.clone() for m, v in resid.values.items()})
    gap = resid.baseline("clean") - resid.baseline("corrupted")
    pushed.values["logit_diff"][:, 2, -1] += 2 * gap   # one cell well above 1
    assert pushed.grid().max() > 1.2
    fig = H.plot_patching(pushed)
    assert fig.axes[0].collections[0].colorbar.extend in ("max", "both")
    assert H.fmt.num(pushed.grid()[2, -1]) in [t.get_text() for t in _texts(fig)]
    plt.close(fig)


def test_bars_carry_their_values(bundled, pairs):
    sets = H.patch_components(bundled, pairs[:2], [[H.Patch("resid", 0, None)], [H.Patch("mlp", 1, None)]])
    fig = H.plot_sets(sets)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == [H.fmt.num(v) for v in sets.grid().reshape(-1)]
    plt.close(fig)


def test_diagram_edges_must_name_nodes_and_text_is_readable():
    nodes = [H.diagrams.Node("a", "clean run", 0, 0), H.diagrams.Node("b", "metric", 1, 0, "#dcfce7", "metric")]
    with pytest.raises(ValueError, match="names no node 'c'"):
        H.diagrams.draw_diagram(nodes, [H.diagrams.Edge("a", "c")])
    fig = H.diagrams.draw_diagram(nodes, [H.diagrams.Edge("a", "b", "logits", dashed=True)])
    sizes = [t.get_fontsize() for t in fig.axes[0].texts]
    assert len(sizes) == 3 and min(sizes) >= 8
    assert fig.axes[0].get_legend() is not None   # the coloured group is explained
    plt.close(fig)


# ------------------------------------------------------------------ saving

def test_save_results_writes_parameters_and_results_at_the_top_level(tmp_path, resid):
    params = H.notebook.parameters({"model_name": str(tmp_path), "seed": 3, "n_pairs": 4,
                                    "output_dir": "x", "unrelated": 1})
    assert params == {"model_name": tmp_path.name, "seed": 3, "n_pairs": 4}
    path = H.notebook.save_results(tmp_path, "03_position_patching", params, resid=resid,
                                   clean_logit_diff=resid.baseline("clean"))
    data = json.loads(path.read_text())
    assert (data["chapter"], data["model"], data["seed"]) == ("03_position_patching", tmp_path.name, 3)
    assert data["resid"]["labels"]["layer"][1] == "L0"
    assert str(tmp_path) not in path.read_text()


def test_save_results_refuses_nan_and_says_where(tmp_path):
    with pytest.raises(H.validate.NonFiniteError, match="broken"):
        H.notebook.save_results(tmp_path, "x", {}, broken=math.nan)
