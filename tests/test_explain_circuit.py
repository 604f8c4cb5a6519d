"""Chapter 10's generated prose and figures (``helpers.teach.explain.circuit``, ``helpers.teach.figures.circuit``):
every number the prose states equals the one its inputs give, written as the chapter prints it
(``helpers.base.fmt``), never "-0.00" or "nan"; every figure is a Figure with readable text (>= 8 pt),
no "-0.00", and shows exactly the heads its inputs select."""
from __future__ import annotations

import re
from dataclasses import replace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402

import helpers as H  # noqa: E402
from helpers.circuits import ioi_classes as C  # noqa: E402
from helpers.base.fmt import head_name, join, num, parse_head, pct, signed  # noqa: E402

E, F = H.explain.circuit, H.figures.circuit


# --------------------------------------------------------------------------- shared checks

def clean(text: str) -> str:
    """The prose rules: no negative zero, no nan; returns the text."""
    assert not re.search(r"-0\.0+(?![0-9])", text), text
    assert not re.search(r"\bnan\b", text, re.I), text
    return text


def texts_of(fig) -> list[Text]:
    fig.canvas.draw()   # tick labels are only filled in by a draw
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def check_figure(fig) -> list[Text]:
    assert isinstance(fig, Figure)
    texts = texts_of(fig)
    assert texts
    small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < 8]
    assert not small, small
    assert not any(re.fullmatch(r"\s*[-\u2212]0(\.0+)?\s*%?\s*", t.get_text()) for t in texts)
    return texts


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------- real results

@pytest.fixture(scope="module")
def real(bundled):
    pairs = H.ioi_pairs(bundled.tokenizer, n=4, seed=0)
    facts = H.model_facts(bundled)
    resid = H.patch_residual(bundled, pairs)
    attn, mlp = H.patch_attn_out(bundled, pairs), H.patch_mlp_out(bundled, pairs)
    heads = H.patch_heads(bundled, pairs)
    head_pos = C.heads_by_position(bundled, pairs, C.top_heads(heads, 4))
    attention = C.attention_to_roles(bundled, pairs)
    direct = H.path_patch(bundled, pairs, "heads", "logits")
    shares = {"name mover": direct.change(), "negative name mover": direct.change()}
    table = C.classify(attention, shares)
    g = direct.change()
    strongest = head_name(*divmod(int(g.flatten().argmax()), g.shape[1]))
    backup = C.backup_test(bundled, pairs, [strongest])   # the strongest direct head as a "mover"
    return dict(bundled=bundled, pairs=pairs, facts=facts, resid=resid, attn=attn, mlp=mlp, heads=heads,
                head_pos=head_pos, attention=attention, direct=direct, shares=shares, table=table,
                strongest=strongest, backup=backup,
                behaviour=C.behaviour(bundled, n=20, seed=0, n_boot=200))


def synthetic_behaviour(**kw) -> C.Behaviour:
    base = dict(n=150, top1=0.9133, top1_ci=(0.86, 0.9533), io_over_s=0.98, io_over_s_ci=(0.9533, 1.0),
                logit_diff=2.345, logit_diff_ci=(2.101, 2.6049))
    return C.Behaviour(**{**base, **kw})


def synthetic_table() -> pd.DataFrame:
    rows = [("name mover", "L3H0", 0.62, 0.41, True), ("name mover", "L3H1", 0.551, 0.12, True),
            ("name mover", "L2H3", 0.104, 0.08, False),
            ("negative name mover", "L3H2", 0.2, -0.031, False),
            ("negative name mover", "L1H1", 0.45, -0.001, False),
            ("S-inhibition", "L2H1", 0.7, 0.2, True), ("S-inhibition", "L2H2", 0.35, 0.09, True),
            ("induction", "L1H0", 0.05, 0.003, False)]
    return pd.DataFrame(rows, columns=["class", "head", "attention", "share", "member"])


# --------------------------------------------------------------------------- prose

def test_behaviour_states_rates_intervals_and_the_gap():
    b = synthetic_behaviour()
    text = clean(E.behaviour(b, 3.456, -1.234).data)
    p1 = lambda x: pct(x, 1)  # noqa: E731
    assert f"On 150 random prompts the model puts **IO first in {p1(0.9133)}** " \
           f"(95 % interval {p1(0.86)} to {p1(0.9533)})" in text
    assert "**IO first in 91.3%** (95 % interval 86.0% to 95.3%)" in text
    assert f"**IO above S in {p1(0.98)}** (95 % interval 95.3% to 100.0%)" in text
    assert "**2.35** (95 % interval 2.10 to 2.60)" in text
    assert "clean run's logit difference is 3.46 and the corrupted run's -1.23: a gap of 4.69" in text
    assert "It does the task" in text
    chance = synthetic_behaviour(top1=0.3, top1_ci=(0.2, 0.4), io_over_s=0.5, io_over_s_ci=(0.42, 0.58),
                                 logit_diff=-0.001, logit_diff_ci=(-0.2, 0.19))
    text = clean(E.behaviour(chance, 0.0004, 0.001).data)
    assert "do not exclude chance" in text and "It does the task" not in text
    assert "mean logit difference IO - S is **0.00** (95 % interval -0.20 to 0.19)" in text
    assert "a gap of 0.00" in text   # -0.0006: never "-0.00"


def test_behaviour_reports_the_range_over_templates_and_says_when_one_lags():
    per = {"template": [0, 0, 1, 1, 2], "order": ["ABBA", "BABA", "ABBA", "BABA", "ABBA"],
           "top1": [1.0, 1.0, 1.0, 0.0, 1.0], "io_over_s": [1.0, 1.0, 1.0, 0.0, 1.0],
           "logit_diff": [2.0, 4.0, 3.0, -1.0, 5.0]}
    b = replace(synthetic_behaviour(), per_prompt=per)
    assert list(b.by("template")["IO_above_S"]) == [1.0, 0.5, 1.0]
    text = clean(E.behaviour(b, 3.0, -1.0).data)
    assert "IO beats S in 50.0% to 100.0% of the prompts (lowest: template 1)" in text
    assert "mean logit difference runs from 1.00 to 5.00" in text
    assert "not equally well on every template" in text


def test_behaviour_on_the_bundled_model(real):
    b, resid = real["behaviour"], real["resid"]
    clean_ld, corrupted_ld = resid.baseline("clean"), resid.baseline("corrupted")
    text = clean(E.behaviour(b, clean_ld, corrupted_ld).data)
    assert f"On {b.n} random prompts" in text
    assert f"**IO first in {pct(b.top1, 1)}** (95 % interval {pct(b.top1_ci[0], 1)} to " \
           f"{pct(b.top1_ci[1], 1)})" in text
    assert f"**{num(b.logit_diff)}** (95 % interval {num(b.logit_diff_ci[0])} to {num(b.logit_diff_ci[1])})" in text
    assert f"is {num(clean_ld)} and the corrupted run's {num(corrupted_ld)}: a gap of " \
           f"{num(clean_ld - corrupted_ld)}" in text


def _resid_with(resid, s2, end, clean_ld=1.0, corrupted_ld=0.0):
    """``resid`` with one prompt whose S2 and END columns are ``s2`` and ``end`` (raw logit
    differences) and baselines ``clean_ld`` / ``corrupted_ld`` (by default 1 and 0, so that the
    normalised grid equals the raw one)."""
    n_rows, seq = resid.shape
    v = torch.zeros(1, n_rows, seq)
    v[0, :, resid.index("position", "S2")] = torch.tensor(s2)
    v[0, :, resid.index("position", "END")] = torch.tensor(end)
    m = resid.metric
    return replace(resid, values={m: v}, clean={m: torch.tensor([clean_ld])},
                   corrupted={m: torch.tensor([corrupted_ld])})


def test_handover_names_the_blocks_of_a_synthetic_residual_result(real):
    resid = real["resid"]
    assert resid.labels["layer"] == ["embed", "L0", "L1", "L2", "L3"]
    r = _resid_with(resid, [0.9, 0.8, 0.6, 0.3, 0.1], [0.0, 0.1, 0.4, 0.55, 0.95])
    text = clean(E.handover(r).data)
    assert "at least half of the gap up to **L1** (0.60 there); END first restores half after " \
           "**L2** (0.55) and 0.95 after the last block" in text
    # S2 dips below half and comes back: the last block where it holds half counts
    r = _resid_with(resid, [0.9, 0.2, 0.7, 0.1, -0.001], [0.0, 0.6, 0.4, 0.8, 1.0])
    text = clean(E.handover(r).data)
    assert "up to **L1** (0.70 there)" in text and "half after **L0** (0.60)" in text
    # END never reaches half: no hand-over and no numbers
    r = _resid_with(resid, [0.9, 0.8, 0.6, 0.3, 0.1], [0.0, 0.1, 0.2, 0.3, 0.45])
    text = clean(E.handover(r).data)
    assert text.startswith("Neither S2 nor END") and not re.search(r"\d\.\d", text)


def test_handover_in_raw_units_uses_half_of_the_gap(real):
    # clean 10, corrupted 2: half of the gap is a logit difference of 6, first reached at END
    # after L3 (and held at S2 up to L2); the prose says "restores at least half of the gap"
    r = _resid_with(real["resid"], [10.0, 10.0, 8.0, 7.0, 2.0], [2.0, 2.0, 3.0, 4.0, 10.0], 10.0, 2.0)
    assert "half after **L3**" in E.handover(r).data                  # normalised: right
    text = E.handover(r, normalise=False).data
    assert "up to **L2** (7.00 there)" in text and "half after **L3** (10.00)" in text


def test_handover_on_the_bundled_model(real):
    resid = real["resid"]
    g = resid.grid()
    s2 = g[:, resid.index("position", "S2")].tolist()
    end = g[:, resid.index("position", "END")].tolist()
    last = max(i for i, v in enumerate(s2) if v >= 0.5)
    first = min(i for i, v in enumerate(end) if v >= 0.5)
    labels = resid.labels["layer"]
    text = clean(E.handover(resid).data)
    assert f"up to **{labels[last]}** ({num(s2[last])} there); END first restores half after " \
           f"**{labels[first]}** ({num(end[first])}) and {num(end[-1])} after the last block" in text


def test_components_names_the_strongest_cells_of_each_result(real):
    text = clean(E.components(real["attn"], real["mlp"]).data)
    for r, label in ((real["attn"], "Strongest attention outputs"), (real["mlp"], "Strongest MLP outputs")):
        g = r.grid()
        flat = g.flatten()
        order = sorted(range(flat.numel()), key=lambda i: -abs(float(flat[i])))[:3]
        names = [f"{r.site}{r.labels['layer'][i // g.shape[1]][1:]} at "
                 f"{r.labels['position'][i % g.shape[1]]} ({num(flat[i])})" for i in order]
        assert f"{label}: {join(names)}." in text
    assert "attn0 at" in text and "mlp0 at" in text


def test_heads_and_head_positions_state_the_strongest_heads(real):
    heads, head_pos = real["heads"], real["head_pos"]
    g = heads.grid()
    text = clean(E.heads(heads, k=3).data)
    order = sorted(((L, h) for L in range(g.shape[0]) for h in range(g.shape[1])),
                   key=lambda lh: -abs(float(g[lh])))[:3]
    assert f"The 3 strongest heads: {join(f'{head_name(*lh)} ({num(g[lh])})' for lh in order)}." in text
    gp = head_pos.grid()  # [heads, positions]
    text = clean(E.head_positions(head_pos, k=2).data)
    i = max(range(gp.shape[0]), key=lambda i: float(gp[i].abs().max()))
    p = int(gp[i].abs().argmax())
    assert f"Where the strongest heads act: {head_pos.labels['head'][i]} at {head_pos.labels['position'][p]} " \
           f"({num(gp[i, p])})" in text
    # the heads patched by position are the map's strongest, and each row equals patching that
    # head at that one position (helpers.patch_heads(by_position=True) on the same pairs)
    full = H.patch_heads(real["bundled"], real["pairs"], by_position=True).grid()
    for i, name in enumerate(head_pos.labels["head"]):
        L, h = parse_head(name)
        assert torch.allclose(gp[i], full[L, h], atol=1e-6)
    assert head_pos.labels["head"][0] == E.heads(heads, k=1).data.split(": ")[1].split(" (")[0]


def test_attention_counts_the_heads_at_or_above_the_threshold(real):
    att = real["attention"]
    text = clean(E.attention(att, 0.3).data)
    assert text.count("\n- ") + text.startswith("- ") == len(att)
    for route, a in att.items():
        n = int((a >= 0.3).sum())
        top = int(a.flatten().argmax())
        assert f"**{route}**: {n} head(s) at 0.3 or more (mean over the prompts); strongest " \
               f"{head_name(*divmod(top, a.shape[1]))} ({num(a.flatten()[top])})" in text
    with_backup = {**att, "backup:END->IO": att["END->IO"]}
    assert "backup:" not in E.attention(with_backup).data


def test_classes_lists_members_misses_none_found_and_not_tested():
    text = clean(E.classes(synthetic_table(), ["name mover", "negative name mover", "S-inhibition",
                                               "previous token"]).data)
    lines = text.split("\n")
    assert len(lines) == 4 and all(line.startswith("- ") for line in lines)
    assert lines[0] == ("- **name mover**: L3H0 (attention 0.62, share +0.41) and L3H1 (attention 0.55, "
                        "share +0.12). Closest misses: L2H3 (attention 0.10, share +0.08).")
    assert lines[1] == ("- **negative name mover: none found.** The closest heads fail a criterion: "
                        "L3H2 (attention 0.20, share -0.03) and L1H1 (attention 0.45, share 0.00).")
    assert lines[2] == ("- **S-inhibition**: L2H1 (attention 0.70, share +0.20) and L2H2 (attention 0.35, "
                        "share +0.09). Closest misses: none.")
    assert lines[3].startswith("- **previous token: not tested**")


def test_classes_on_the_bundled_models_table(real):
    table = real["table"]
    text = clean(E.classes(table, ["name mover", "negative name mover", "S-inhibition"]).data)
    for _, r in table.iterrows():
        assert f"{r['head']} (attention {num(r['attention'])}, share {signed(r['share'])})" in text
    for name in ("name mover", "negative name mover"):
        if not C.members(table, name):
            assert f"**{name}: none found.**" in text
    assert "**S-inhibition: not tested**" in text


BEFORE = torch.tensor([[0.2, -0.1, 0.3], [1.5, 0.4, 0.0]])
AFTER = torch.tensor([[0.25, -0.1, 0.55], [3.5, 1.0, -0.2]])   # L1H0 (ablated) +2.0 is not a rise


@pytest.mark.parametrize("ablated_ld, phrase", [
    (3.4, "The logit difference *rises* by 0.40, although the name movers wrote 1.50 directly"),
    (2.0, "The logit difference falls by 1.00, less than the 1.50 the name movers wrote directly: "
          "other heads make up 0.50."),
    (1.5, "The logit difference falls by 1.50, at least the 1.50 the name movers wrote directly: "
          "nothing makes up for them."),
    (1.0, "The logit difference falls by 2.00, at least the 1.50 the name movers wrote directly: "
          "nothing makes up for them."),
])
def test_backup_handles_rise_partial_and_no_compensation(ablated_ld, phrase):
    text = clean(E.backup(BEFORE, AFTER, ["L1H0"], 3.0, ablated_ld, 0.2).data)
    assert f"Mean-ablating L1H0 moves the logit difference from 3.00 to {num(ablated_ld)}. {phrase}" in text
    assert "Heads whose direct contribution rises by at least the threshold: L1H1 (+0.60) and " \
           "L0H2 (+0.25)." in text
    assert "L1H0 (" not in text and "L0H0 (" not in text   # the ablated head; a rise below 0.2


def test_backup_sums_the_movers_and_says_when_nothing_rises():
    text = clean(E.backup(BEFORE, AFTER, ["L1H0", "L0H2"], 3.0, 1.4, 5.0).data)
    assert "Mean-ablating L1H0 and L0H2 moves" in text
    assert "falls by 1.60, less than the 1.80 the name movers wrote directly: other heads make up 0.20." in text
    assert "No head's direct contribution rises by the threshold." in text
    none = clean(E.backup(BEFORE, AFTER, [], 3.0, 3.0, 0.2).data)
    assert none.startswith("No name mover was found") and not re.search(r"\d", none)


def test_backup_on_the_bundled_model(real):
    b, gap = real["backup"], real["resid"].baseline("clean") - real["resid"].baseline("corrupted")
    text = clean(E.backup(b.before, b.after, b.ablated, b.full_ld, b.ablated_ld, 0.05 * gap).data)
    own = float(b.before[parse_head(real["strongest"])])
    lost = b.full_ld - b.ablated_ld
    assert f"Mean-ablating {real['strongest']} moves the logit difference from {num(b.full_ld)} to " \
           f"{num(b.ablated_ld)}." in text
    assert (f"*rises* by {num(-lost)}" if lost < 0 else f"falls by {num(lost)}") in text
    assert f"{num(own)}" in text
    for h in (head_name(*divmod(int(i), b.rise().shape[1])) for i in torch.nonzero(
            b.rise().flatten() >= 0.05 * gap).flatten()):
        assert f"{h} ({signed(b.rise()[parse_head(h)])})" in text


def test_unclassified_states_each_heads_share_and_end_attention():
    assert clean(E.unclassified([], {}, torch.zeros(2, 2)).data).startswith(
        "Every head with a direct path of at least the threshold belongs to a class.")
    att = {"END->IO": torch.tensor([[0.1, 0.709], [0.3, 0.0]]),
           "END->S2": torch.tensor([[0.2, 0.05], [0.051, 0.4]]),
           "END->S1": torch.tensor([[0.0, -0.001], [0.123, 0.0]])}
    direct = torch.tensor([[0.0, -0.12], [0.3, 0.01]])
    text = clean(E.unclassified(["L1H0", "L0H1"], att, direct).data)
    lines = [line for line in text.split("\n") if line.startswith("- ")]
    assert lines == ["- **L1H0**: direct share +0.30; attention END->IO 0.30, END->S2 0.05, END->S1 0.12",
                     "- **L0H1**: direct share -0.12; attention END->IO 0.71, END->S2 0.05, END->S1 0.00"]


def test_unclassified_on_the_bundled_model(real):
    direct = real["shares"]["name mover"]
    others = C.unclassified(real["table"], direct)
    assert others   # the bundled model has strong direct heads in no class
    text = clean(E.unclassified(others, real["attention"], direct).data)
    for h in others:
        lh = parse_head(h)
        assert f"**{h}**: direct share {signed(direct[lh])}; attention END->IO " \
               f"{num(real['attention']['END->IO'][lh])}, END->S2 {num(real['attention']['END->S2'][lh])}" in text


def compare_frame() -> pd.DataFrame:
    """Shaped as ``helpers.circuits.ioi_classes.compare_circuits`` returns it."""
    def one(mean, resample):
        return pd.DataFrame([{"ablation": "mean", "faithfulness": mean, "completeness_gap": 1.0153,
                              "verdict": "faithful, incomplete, not minimal"},
                             {"ablation": "resample", "faithfulness": resample, "completeness_gap": -0.001,
                              "verdict": "not faithful, complete, minimal"}]).set_index("ablation")
    return pd.concat({"classes + unclassified": one(0.928, 0.5007), "classes": one(0.1, 0.2)},
                     names=["heads kept", "ablation"])


def test_faithfulness_has_one_line_per_row_and_the_spread_per_circuit():
    frame = compare_frame()
    assert frame.index.names == ["heads kept", "ablation"]
    text = clean(E.faithfulness(frame).data)
    lines = [line for line in text.split("\n") if line.startswith("- ")]
    assert lines == [
        "- **classes + unclassified, mean ablation**: faithfulness 0.93, completeness gap 1.02: "
        "faithful, incomplete, not minimal.",
        "- **classes + unclassified, resample ablation**: faithfulness 0.50, completeness gap 0.00: "
        "not faithful, complete, minimal.",
        "- **classes, mean ablation**: faithfulness 0.10, completeness gap 1.02: faithful, incomplete, "
        "not minimal.",
        "- **classes, resample ablation**: faithfulness 0.20, completeness gap 0.00: not faithful, "
        "complete, minimal."]
    assert "faithfulness differs by 0.43 (classes + unclassified) and 0.10 (classes)" in text


def test_comparison_lists_found_and_absent_classes():
    comp = C.gpt2_comparison(synthetic_table(), n_layers=4)
    text = clean(E.comparison(comp).data)
    assert text.startswith("Found here: name mover and S-inhibition; not found: negative name mover, "
                           "induction, duplicate token, previous token and backup name mover.")
    empty = C.gpt2_comparison(synthetic_table().assign(member=False), n_layers=4)
    assert clean(E.comparison(empty).data).startswith(
        "Found here: no class; not found: " + join(c.name for c in C.CLASSES) + ".")


def test_knockout_states_the_three_logit_differences(bundled, real):
    from helpers.methods.ablations import ablate

    b = real["backup"]
    assert E.knockout(None, ["L3H0"], b).data.startswith("No name mover was found")
    assert E.knockout(real["direct"], [], b).data.startswith("No name mover was found")
    knocked = ablate(bundled, real["pairs"], [real["strongest"]], "mean")
    text = clean(E.knockout(knocked, [real["strongest"]], b).data)
    assert f"knocked out the logit difference is {num(knocked.mean('logit_diff')[0])} " \
           f"(all heads intact: {num(b.full_ld)}; the name movers mean-ablated: {num(b.ablated_ld)})" in text


# --------------------------------------------------------------------------- figures

def test_behaviour_figure_states_the_rates_and_the_logit_difference(real):
    for b in (real["behaviour"], synthetic_behaviour(),
              synthetic_behaviour(logit_diff=-0.001, logit_diff_ci=(-0.3, 0.2))):
        fig = F.behaviour(b)
        texts = [t.get_text() for t in check_figure(fig)]
        assert f"{num(100 * b.top1, 1)} %" in texts and f"{num(100 * b.io_over_s, 1)} %" in texts
        assert num(b.logit_diff) in texts
        plt.close(fig)


@pytest.mark.parametrize("normalise", [True, False])
def test_components_figure(real, normalise):
    fig = F.components(real["attn"], real["mlp"], normalise)
    check_figure(fig)
    if not normalise:   # one colour scale, centred on 0
        clims = {ax.collections[0].get_clim() for ax in fig.axes[:2]}
        assert len(clims) == 1 and -clims.pop()[0] > 0


def _panels(fig, n):
    return fig.axes[:n]


def _boxes(ax) -> set[tuple[int, int]]:
    """(block, head) of every box drawn on a map (a Rectangle 1 x 1 centred on a cell)."""
    return {(round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in ax.patches if isinstance(p, Rectangle)}


@pytest.mark.parametrize("min_attention", [0.3, 0.6])
def test_attention_maps_box_exactly_the_heads_at_or_above_the_threshold_on_a_fixed_scale(real, min_attention):
    att = {**real["attention"], "backup:END->IO": real["attention"]["END->IO"]}
    routes = [r for r in att if not r.startswith("backup:")]
    fig = F.attention_maps(att, min_attention=min_attention)
    check_figure(fig)
    for ax, route in zip(_panels(fig, len(routes)), routes):
        a = att[route].double()
        expected = {tuple(x) for x in torch.nonzero(a >= min_attention).tolist()}
        assert _boxes(ax) == expected, route
        assert ax.images[0].get_clim() == (0.0, 1.0)
        assert ax.get_title().startswith(route) and f"({len(expected)} boxed" in ax.get_title()
        # a small map numbers every cell (no head names inside boxes: they would overlap)
        assert sorted(t.get_text() for t in ax.texts) == sorted(num(v, 1) for v in a.flatten().tolist())
        assert [t.get_text() for t in ax.get_yticklabels()] == [f"L{i}" for i in range(a.shape[0])]
    assert len([ax for ax in fig.axes if ax.images]) == len(routes)   # the backup route is left out


def test_attention_maps_include_a_head_exactly_at_the_threshold_and_take_decided_heads():
    att = {"END->IO": torch.tensor([[0.3, 0.2999], [0.9, 0.0]], dtype=torch.float64)}
    fig = F.attention_maps(att, min_attention=0.3)
    check_figure(fig)
    assert _boxes(fig.axes[0]) == {(0, 0), (1, 0)}
    decided = F.attention_maps(att, min_attention=0.3, meets={"END->IO": ["L1H0"]})
    assert _boxes(decided.axes[0]) == {(1, 0)}
    assert "meeting the criterion" in decided.axes[0].get_title().replace("\n", " ")


@pytest.mark.parametrize("normalise, limit", [(True, 1.0), (False, 0.5)])
def test_evidence_maps_use_one_fixed_symmetric_scale_and_box_the_members(normalise, limit):
    shares = {"direct path to the logits": torch.tensor([[0.2, -0.001], [0.1, 0.05]]),
              "paths into the name movers' queries at END": torch.tensor([[-0.5, 0.0], [0.3, 0.02]])}
    members = {"direct path to the logits": ["L0H0"],
               "paths into the name movers' queries at END": ["L0H0", "L1H0"]}
    fig = F.evidence_maps(shares, members, normalise)
    check_figure(fig)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    for ax, title in zip(panels, shares):
        lo, hi = ax.images[0].get_clim()
        assert lo == pytest.approx(-limit) and hi == pytest.approx(limit)
        assert _boxes(ax) == {H.fmt.parse_head(h) for h in members[title]}
        assert sorted(t.get_text() for t in ax.texts) == sorted(num(v) for v in shares[title].flatten().tolist())


def test_evidence_maps_arrow_only_when_a_cell_leaves_the_scale():
    inside = F.evidence_maps({"a": torch.tensor([[0.9, -0.2]])}, {})
    over = F.evidence_maps({"a": torch.tensor([[1.3, -0.2]])}, {})
    bars = [[ax for ax in f.axes if not ax.images][0] for f in (inside, over)]
    assert [fig.axes[0].images[0].colorbar.extend for fig in (inside, over)] == ["neither", "max"]
    assert bars


def test_evidence_maps_of_a_large_map_number_only_its_strongest_cells(real):
    grid = torch.arange(30 * 9, dtype=torch.float64).reshape(30, 9) / 1000
    fig = F.evidence_maps({"big": grid}, {})
    check_figure(fig)
    ax = fig.axes[0]
    assert len(ax.texts) == 8 and {t.get_text() for t in ax.texts} == {num(v) for v in grid.flatten()[-8:]}
    assert len(ax.get_yticklabels()) == 30      # every block labelled


def test_backup_figure_shows_the_heads_that_change_most(real):
    fig = F.backup(BEFORE, AFTER, ["L1H0"], top=3)
    check_figure(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["L1H1", "L0H2", "L1H2"]
    heads = [H.fmt.parse_head(t.get_text()) for t in ax.get_xticklabels()]
    want = [num(float(x[lh])) for lh in heads for x in (BEFORE, AFTER)]  # before, after per head
    assert [t.get_text() for t in ax.texts] == want
    assert "L1H0 mean-ablated" in [t.get_text() for t in ax.get_legend().get_texts()]
    b = real["backup"]
    check_figure(F.backup(b.before, b.after, b.ablated))
    check_figure(F.backup(b.before, b.before, []))   # no movers: nothing changes, still a figure


def _box_texts(fig) -> list[str]:
    ax = fig.axes[0]
    return [t.get_text() for t in ax.texts]


@pytest.mark.parametrize("others", [(), ("L1H3", "L0H2")])
def test_circuit_diagram_draws_absent_classes_absent_and_names_members_and_others(others):
    fig = F.circuit_diagram(synthetic_table(), "ioi-tiny", others)
    check_figure(fig)
    texts = _box_texts(fig)
    assert "name mover\nL3H0, L3H1" in texts and "S-inhibition\nL2H1, L2H2" in texts
    absent = ("negative name mover", "induction", "duplicate token", "previous token", "backup name mover")
    for name in absent:
        assert f"{name}\nnone" in texts, name
    boxes = [p for p in fig.axes[0].patches if isinstance(p, FancyBboxPatch)]
    assert len(boxes) == 8 + bool(others)
    assert sum(b.get_linestyle() not in ("-", "solid") for b in boxes) == len(absent)   # dashed outlines
    arrows = [p for p in fig.axes[0].patches if not isinstance(p, FancyBboxPatch)]
    assert len(arrows) == 2 + bool(others)   # S-inhibition -> name mover -> logits (+ others -> logits)
    other_box = [t for t in texts if t.startswith("no class, direct path")]
    assert other_box == (["no class, direct path\nL1H3, L0H2"] if others else [])
    assert fig.axes[0].get_title() == "Head classes in ioi-tiny"


def test_circuit_diagram_draws_a_class_present_as_a_group_with_dashed_arrows():
    fig = F.circuit_diagram(synthetic_table(), "m", (), {"duplicate token": ["L0H1", "L0H2"]}, title="T")
    texts = _box_texts(fig)
    assert "duplicate token (as a group)\nL0H1, L0H2" in texts and fig.axes[0].get_title() == "T"
    arrows = [p for p in fig.axes[0].patches if not isinstance(p, FancyBboxPatch)]
    assert len(arrows) == 3 and sum(a.get_linestyle() not in ("-", "solid") for a in arrows) == 1


def test_circuit_diagram_of_the_bundled_models_table(real):
    others = C.unclassified(real["table"], real["shares"]["name mover"])
    fig = F.circuit_diagram(real["table"], "ioi-tiny", others)
    check_figure(fig)
    texts = _box_texts(fig)
    for c in C.CLASSES:
        heads = C.members(real["table"], c.name)
        assert any(t.startswith(c.name + "\n") and (all(h in t for h in heads) if heads else
                                                   t.endswith("none")) for t in texts), c.name
    assert any(t.startswith("no class, direct path") and all(h in t for h in others) for t in texts)


def test_depth_comparison_plots_both_models_at_block_plus_one_over_depth():
    comp = C.gpt2_comparison(synthetic_table(), n_layers=4)
    fig = F.depth_comparison(comp, 4)
    check_figure(fig)
    ax = fig.axes[0]
    assert len(ax.collections) == 2 * len(comp)
    for i, name in enumerate(comp.index):
        here = np.asarray(ax.collections[2 * i].get_offsets()).reshape(-1, 2)
        theirs = np.asarray(ax.collections[2 * i + 1].get_offsets()).reshape(-1, 2)
        heads = C.members(synthetic_table(), name)
        assert sorted(here[:, 0].tolist()) == pytest.approx(
            sorted((parse_head(h)[0] + 1) / 4 for h in heads)), name
        assert np.allclose(here[:, 1], i - 0.12)
        assert sorted(theirs[:, 0].tolist()) == pytest.approx(
            sorted((L + 1) / 12 for L, _ in C.GPT2_SMALL[name])), name
        assert np.allclose(theirs[:, 1], i + 0.12)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(comp.index)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"this model", "GPT-2 small (Wang et al.)"}


def test_depth_comparison_of_the_bundled_model(real):
    comp = C.gpt2_comparison(real["table"], real["facts"].n_layers)
    fig = F.depth_comparison(comp, real["facts"].n_layers)
    check_figure(fig)
    assert len(fig.axes[0].collections) == 2 * len(C.CLASSES)


# --------------------------------------------------------------------------- the staged search in words

def _decision_table():
    rows = [{"class": "name mover", "head": "L3H0", "attention": 0.62, "share": 0.151, "member": True,
             "attention_low": 0.55, "share_low": 0.13, "share_high": 0.17, "p_holm": 0.01, "templates": "3/4",
             "fails": "", "tested": 16},
            {"class": "name mover", "head": "L2H3", "attention": 0.04, "share": 0.4, "member": False,
             "attention_low": 0.03, "share_low": 0.38, "share_high": 0.42, "p_holm": 0.01, "templates": "0/4",
             "fails": "attention", "tested": 16}]
    return pd.DataFrame(rows)


def test_decision_states_members_intervals_stability_and_the_failed_criterion():
    text = clean(E.decision([_decision_table()]).data)
    assert ("**name mover** (16 heads tested): L3H0 (attention 0.62, share +0.15 [+0.13, +0.17], "
            "selected on 3 of 4 templates alone).") in text
    assert "L2H3 fails the attention criterion (attention 0.04, share +0.40 [+0.38, +0.42])" in text
    none = _decision_table().assign(member=False, fails="effect")
    assert "(16 heads tested): **none**." in E.decision([none]).data


def test_criteria_is_a_complete_markdown_table_with_the_rule():
    text = E.criteria(C.CLASSES, 0.3, 0.05).data
    assert text.count("\n|") >= len(C.CLASSES) + 1 and "| negative name mover | END | IO |" in text
    assert "≤ −0.05" in text and "Holm-corrected across the heads the stage tests" in text


def test_group_test_reads_the_group_against_random_groups():
    table = pd.DataFrame({"estimate": [0.1, 0.01, -0.005], "low": [0.08, 0.0, -0.01],
                          "high": [0.12, 0.02, 0.0]}, index=["A+B", "C+D", "E+F"])
    text = clean(E.group_test(table, ["L1H0", "L2H0"], "S2 -> S1").data)
    assert "as one joint sender: **+0.10** of the gap [+0.08, +0.12]" in text
    assert "2 random sets of as many heads from the same blocks: -0.01 to +0.01" in text
    assert "**present as a group**" in text
    weak = table.assign(low=[0.01, 0.0, -0.01])
    assert "not shown to act as a group" in E.group_test(weak, ["L1H0", "L2H0"], "S2 -> S1").data
    assert "no candidate group to test" in E.group_test(None, [], "S2 -> S1").data


def test_head_roles_say_which_logit_a_head_moves_and_where_it_looks():
    row = {"DLA IO - S": 2.5, "DLA IO - S low": 2.3, "DLA IO - S high": 2.7, "DLA IO": -0.05, "DLA S": -2.55,
           "attention END->IO": 0.04, "attention END->S1": 0.05, "attention END->S2": 0.66}
    table = pd.DataFrame([row], index=pd.Index(["L23H3"], name="head"))
    text = clean(E.head_roles(table, ["L23H3"]).data)
    assert "**L23H3** writes +2.50 logits to IO − S [+2.30, +2.70]: -0.05 to IO's logit, -2.55 to S's" in text
    assert "it mostly lowers S's logit. From END it attends S2 most (0.66;" in text
    assert "no head is left open" in E.head_roles(table, []).data


def test_backup_templates_table_and_the_signs_of_the_change():
    table = pd.DataFrame({"logit diff": [4.6, 5.2, 5.05], "movers ablated": [4.55, 5.55, 5.17],
                          "change": [-0.05, 0.35, 0.12], "movers' direct contribution": [1.4, 1.4, 1.3],
                          "made up by the rest": [1.35, 1.75, 1.42]}, index=[0, 1, "pooled"])
    text = clean(E.backup_templates(table, ["L3H0"]).data)
    assert "| 0 | 4.60 | 4.55 | -0.05 | 1.40 | +1.35 |" in text
    assert "changes the logit difference by **+0.12** although they write 1.30 directly" in text
    assert "positive on 1 template and negative on 1 template of 2" in text
    assert "nothing to ablate" in E.backup_templates(table, []).data


def test_share_definitions_and_faithful_search_and_headline_state_their_numbers():
    frame = pd.DataFrame({"summed, later layers recomputed": [0.36], "joint, later layers recomputed": [0.348],
                          "summed, later layers frozen": [0.393], "joint, later layers frozen": [0.395]},
                         index=pd.Index(["L20H0"], name="sender"))
    text = E.share_definitions(frame, ["L23H0", "L23H1"]).data
    assert "| L20H0 | 0.360 | 0.348 | 0.393 | 0.395 |" in text and "from 0.348 to 0.395 (0.047 apart)" in text
    from helpers.circuits.search import FaithfulSearch
    found = FaithfulSearch(["L3H0", "L2H3"], {"mean": 0.85, "resample": 0.81}, True, 0.8, 12,
                           [{"size": 1, "added": "L3H0", "mean": 0.4, "resample": 0.3},
                            {"size": 2, "added": "L2H3", "mean": 0.85, "resample": 0.81}], 5)
    text = E.faithful_search(found, ("mean", "resample")).data
    assert "| 2 | L2H3 | 0.85 | 0.81 |" in text and "**2 heads reach faithfulness 0.80 under both ablations**" in text
    missed = FaithfulSearch(["L3H0"], {"mean": 0.5, "resample": 0.4}, False, 0.8, 12, [], 3)
    assert "No set of up to 3 heads from the pool of 3 reaches 0.80" in E.faithful_search(missed, ("mean",)).data
    faith = pd.DataFrame({"heads": [7, 11, 2], "mean": [0.434, 1.23, 1.182], "resample": [0.368, 1.016, 0.873]},
                         index=["classes", "classes + open heads", "greedy"])
    head = E.headline(faith, found, "SmolLM2").data
    assert "heads of Wang et al.'s classes keep 0.43 (mean) and 0.37 (resample) of the behaviour" in head
    assert "the class circuit keeps 1.23 (mean) and 1.02 (resample)" in head
    assert ("has 2 heads: L3H0 and L2H3 (0.85 (mean) and 0.81 (resample) there; 1.18 (mean) and 0.87 "
            "(resample) on every pooled pair)") in head
    missed_head = E.headline(faith, missed, "SmolLM2").data
    assert "No head set of up to 3 heads from the pool of 3 keeps 0.80" in missed_head


def test_evidence_is_one_untruncated_table_of_every_class():
    text = E.evidence([_decision_table()]).data
    assert "| name mover | L2H3 | 0.04 | 0.03 | +0.40 | [+0.38, +0.42] | no (attention) | 0/4 |" in text


def test_backup_templates_figure_has_a_bar_pair_per_template():
    table = pd.DataFrame({"logit diff": [4.6, 5.2, 5.05], "movers ablated": [4.55, 5.55, 5.17],
                          "change": [-0.05, 0.35, 0.12], "movers' direct contribution": [1.4, 1.4, 1.3],
                          "made up by the rest": [1.35, 1.75, 1.42]}, index=[0, 1, "pooled"])
    fig = F.backup_templates(table, ["L3H0"])
    check_figure(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["template 0", "template 1", "pooled"]
    assert [t.get_text() for t in ax.texts] == ["4.60", "4.55", "5.20", "5.55", "5.05", "5.17"]


def test_head_set_diagram_names_each_heads_class_or_none_and_feeds_the_logits():
    fig = F.head_set_diagram(["L3H1", "L2H1"], synthetic_table(), "The set", {"L2H1": "a note"})
    check_figure(fig)
    texts = _box_texts(fig)
    assert "L2H1\nS-inhibition\na note" in texts and "L3H1\nname mover" in texts
    assert len([p for p in fig.axes[0].patches if not isinstance(p, FancyBboxPatch)]) == 2
    assert "no class" in _box_texts(F.head_set_diagram(["L0H0"], synthetic_table(), "x"))[0]


def test_a_class_present_only_as_a_group_is_compared_and_named_as_such():
    comp = C.gpt2_comparison(synthetic_table(), 4, {"duplicate token": ["L0H1", "L1H2"]})
    assert comp.loc["duplicate token", "this model"] == "L0H1, L1H2 (as a group)"
    assert comp.loc["duplicate token", "depth"] == "0.25-0.50"
    text = E.comparison(comp).data
    assert "present only as a group: duplicate token" in text and "not found: negative name mover" in text
    check_figure(F.depth_comparison(comp, 4))


def test_decision_calls_a_head_whose_mean_attention_clears_the_threshold_a_possible_member():
    t = _decision_table()
    t.loc[1, "attention"] = 0.35
    text = E.decision([t], 0.3).data
    assert "L2H3 fails the attention criterion (attention 0.35" in text and "a possible member" in text
    assert "a possible member" not in E.decision([_decision_table()], 0.3).data


def test_sweep_map_labels_every_row_and_column_and_numbers_the_strongest_cells(real):
    fig = F.sweep_map(real["heads"], True, "every head", top=5)
    check_figure(fig)
    ax = fig.axes[0]
    g = real["heads"].grid()
    assert ax.images[0].get_clim() == (-1.0, 1.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == real["heads"].labels["layer"]
    if g.numel() > 64:
        assert len(ax.texts) <= 5
    else:   # a small map: every cell numbered
        assert sorted(t.get_text() for t in ax.texts) == sorted(num(v) for v in g.flatten().tolist())
