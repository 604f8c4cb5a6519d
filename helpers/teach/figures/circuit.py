"""Chapter 10's own figures: the behaviour with its intervals, attention and MLP outputs side by
side, every head's attention along the IOI routes, the path-patching evidence of each head class,
the backup test, the circuit as a diagram and its depth beside GPT-2 small's."""
from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from helpers.base.fmt import head_name, num, parse_head
from helpers.circuits.ioi_classes import GPT2_SMALL, members
from helpers.results.patch_result import PatchResult
from helpers.teach.diagrams import Edge, Node, draw_diagram
from helpers.teach.figures.positions import wrap_colourbar_label
from helpers.teach.figures.headmaps import colour_bar, head_map
from helpers.teach.plotting import ANNOT_PT, plot_patching

__all__ = ["behaviour", "components", "attention_maps", "evidence_maps", "backup", "circuit_diagram",
           "backup_templates", "head_set_diagram", "sweep_map", "depth_comparison"]

COLOURS = {"name mover": "#f4cccc", "negative name mover": "#d9d2e9", "backup name mover": "#fce5cd",
           "S-inhibition": "#d9ead3", "induction": "#cfe2f3", "duplicate token": "#fff2cc",
           "previous token": "#ead1dc"}


def _paired_bars(ax: Any, before: Sequence[float], after: Sequence[float], before_label: str,
                 after_label: str) -> None:
    """Two bars per x position (before, after), each labelled with its value, and the zero line."""
    x = np.arange(len(before))
    ax.bar(x - 0.2, before, 0.4, label=before_label, color="#9fc5e8")
    ax.bar(x + 0.2, after, 0.4, label=after_label, color="#f6b26b")
    for xi, (u, v) in enumerate(zip(before, after)):
        for dx, y in ((-0.2, u), (0.2, v)):
            ax.text(xi + dx, y, num(y), ha="center", va="bottom" if y >= 0 else "top", fontsize=ANNOT_PT)
    ax.axhline(0, color="grey", lw=0.8)


def behaviour(b: Any) -> Any:
    """``helpers.circuits.ioi_classes.Behaviour`` as two panels: the two rates (0..1) and the mean logit
    difference, each with its 95 % bootstrap interval.  Returns the Figure."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 2.4), gridspec_kw={"width_ratios": [2, 1]})
    names = ["IO is the top-1 token", "IO's logit above S's"]
    vals = [b.top1, b.io_over_s]
    cis = [b.top1_ci, b.io_over_s_ci]
    err = np.array([[v - lo for v, (lo, _) in zip(vals, cis)], [hi - v for v, (_, hi) in zip(vals, cis)]])
    ax1.barh(names, vals, xerr=err, color="#9fc5e8", capsize=4)
    for i, v in enumerate(vals):
        ax1.text(0.02, i, f"{num(100 * v, 1)} %", va="center", fontsize=9)
    ax1.set_xlim(0, 1)
    ax1.invert_yaxis()
    ax1.set_xlabel(f"share of {b.n} prompts (95 % interval)")
    lo, hi = b.logit_diff_ci
    ax2.barh(["mean logit diff IO - S"], [b.logit_diff], xerr=[[b.logit_diff - lo], [hi - b.logit_diff]],
             color="#b6d7a8", capsize=4)
    ax2.text(0.05 * max(hi, 1e-9), 0, num(b.logit_diff), va="center", fontsize=9)
    ax2.set_xlim(min(0.0, lo * 1.1), max(hi * 1.15, 1e-9))
    ax2.set_xlabel("logit difference")
    fig.suptitle("IOI behaviour on random prompts (every template, both name orders)", fontsize=11)
    fig.tight_layout()
    return fig


def components(attn: PatchResult, mlp: PatchResult, normalise: bool = True) -> Any:
    """Attention outputs and MLP outputs patched block by block at each position, side by side
    on one colour scale.  Returns the Figure."""
    n_layers, seq = attn.shape
    fig, axes = plt.subplots(1, 2, figsize=(2 * (2.6 + 0.55 * seq), 2.0 + 0.26 * n_layers))
    for ax, r, what in zip(axes, (attn, mlp), ("attention output", "MLP output")):
        plot_patching(r, normalise=normalise, ax=ax, title=f"{what} of each block (denoising)",
                      annotate=False)
        wrap_colourbar_label(ax, 24)
    if not normalise:
        limit = max(float(np.abs(r.grid(False).numpy()).max()) for r in (attn, mlp)) or 1.0
        for ax in axes:
            ax.collections[0].set_clim(-limit, limit)
    fig.tight_layout()
    return fig


def attention_maps(attention: Mapping[str, Any], routes: Sequence[str] | None = None,
                   min_attention: float = 0.3, meets: Mapping[str, Sequence[str]] | None = None) -> Any:
    """One block x head map per route (``attention_to_roles`` tensors or pooled
    ``helpers.circuits.pooled.Pooled``: their estimates), on the fixed scale 0 .. 1, every block
    labelled, the strongest cells numbered; boxed: the heads meeting the attention criterion
    (``meets[route]``, e.g. decided on intervals) or, without ``meets``, those at or above
    ``min_attention``.  Returns the Figure."""
    routes = list(routes or [r for r in attention if not r.startswith("backup:")])
    grids = {r: _grid(attention[r]) for r in routes}
    n_layers = next(iter(grids.values())).shape[0]
    n_heads = next(iter(grids.values())).shape[1]
    fig, axes = plt.subplots(1, len(routes), figsize=(1.0 + (0.5 + 0.3 * n_heads) * len(routes),
                                                      2.0 + 0.24 * n_layers),
                             squeeze=False, layout="constrained")
    for ax, route in zip(axes[0], routes):
        data = grids[route]
        boxed = list(meets[route]) if meets is not None else [
            head_name(L, h) for L, h in zip(*np.nonzero(data >= min_attention))]
        rule = "meeting the criterion" if meets is not None else f"at >= {min_attention}"
        im = head_map(ax, data, f"{route} ({len(boxed)} boxed: {rule})", limits=(0.0, 1.0),
                      cmap="Greys", boxes=boxed, top=6, digits=1)
    bar = fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    bar.set_label("mean attention weight", fontsize=9)
    fig.suptitle("Where every head looks (clean prompts): query -> key", fontsize=11)
    return fig


def _grid(x: Any) -> np.ndarray:
    """A ``[n_layers, n_heads]`` array from a tensor or a pooled measurement's estimate."""
    if hasattr(x, "estimate"):
        return np.asarray(x.estimate(), dtype=float)
    return x.double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


def evidence_maps(shares: Mapping[str, Any], members: Mapping[str, Sequence[str]],
                  normalise: bool = True) -> Any:
    """One block x head map per measured effect (``shares``: title -> ``[n_layers, n_heads]``
    share of the gap, tensor or ``Pooled``), on the fixed scale -1 .. 1 of every map (raw values:
    symmetric at the largest size), every block labelled, the strongest cells numbered, each
    panel's ``members`` boxed.  Returns the Figure."""
    data = {k: _grid(v) for k, v in shares.items()}
    limit = 1.0 if normalise else (max(float(np.abs(d).max()) for d in data.values()) or 1.0)
    n_layers = next(iter(data.values())).shape[0]
    fig, axes = plt.subplots(1, len(data), figsize=(1.6 + 3.2 * len(data), 2.0 + 0.24 * n_layers),
                             squeeze=False, layout="constrained")
    for ax, (title, d) in zip(axes[0], data.items()):
        im = head_map(ax, d, title, limits=(-limit, limit), boxes=members.get(title, ()), top=8,
                      ylabel="sender block")
    what = "share of the clean - corrupted gap" if normalise else "change in the logit difference"
    colour_bar(fig, im, list(axes[0]), what, list(data.values()), (-limit, limit))
    return fig


def sweep_map(result: PatchResult, normalise: bool = True, title: str | None = None, top: int = 10) -> Any:
    """A two-axis sweep (block x position, block x head, head x position) as one map on the fixed
    scale of every map (share of the gap, -1 .. 1; raw values: symmetric at the largest size),
    every row and column labelled, the ``top`` strongest cells numbered, an arrow on the colour
    bar only when a cell lies beyond the scale.  Returns the Figure."""
    if len(result.dims) != 2:
        raise ValueError(f"sweep_map draws two-axis results; this one has dims {result.dims}")
    data = result.grid(normalise).double().numpy()
    limit = 1.0 if normalise else (float(np.abs(data).max()) or 1.0)
    rows, cols = (result.labels[d] for d in result.dims)
    fig, ax = plt.subplots(figsize=(2.4 + 0.55 * len(cols), 1.6 + 0.26 * len(rows)), layout="constrained")
    im = head_map(ax, data, title or result.title(normalise=normalise).split("\n")[0], limits=(-limit, limit),
                  top=top, xlabel=result.dims[1], ylabel=result.dims[0],
                  xticks=None if result.dims[1] == "head" else cols, yticks=rows)
    colour_bar(fig, im, ax, result.importance_label() if normalise else f"mean {result.metric}", [data],
               (-limit, limit))
    return fig


def backup(before: torch.Tensor, after: torch.Tensor, ablated: Sequence[str], top: int = 8) -> Any:
    """Direct logit attribution of the heads that change most when ``ablated`` are mean-ablated:
    before and after, paired bars (``before``/``after``: ``[n_layers, n_heads]``, prompt means).
    Returns the Figure."""
    change = (after - before).double()
    for name in ablated:
        change[parse_head(name)] = 0.0
    flat = change.abs().flatten()
    order = [int(i) for i in torch.argsort(-flat, stable=True)[:top]]
    n_heads = before.shape[1]
    names = [head_name(i // n_heads, i % n_heads) for i in order]
    b = [float(before.flatten()[i]) for i in order]
    a = [float(after.flatten()[i]) for i in order]
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(names), 3.2))
    x = np.arange(len(names))
    _paired_bars(ax, b, a, "all heads present", f"{', '.join(ablated) or 'none'} mean-ablated")
    ax.set_xticks(x, names)
    ax.set_ylabel("direct logit attribution\n(IO - S, clean prompts)")
    ax.set_title("Which heads take over when the name movers are gone?", fontsize=11)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


_STAGES = [("previous token", 0, 0.9), ("duplicate token", 1, 1.3), ("induction", 1, 0.0),
           ("S-inhibition", 2, 0.65), ("name mover", 3, 0.0), ("backup name mover", 3, 1.3),
           ("negative name mover", 3, 2.6)]
_EDGES = [("previous token", "induction", "keys at S1+1"), ("induction", "S-inhibition", "values at S2"),
          ("duplicate token", "S-inhibition", "values at S2"), ("S-inhibition", "name mover", "queries at END"),
          ("name mover", "logits", "+ IO"), ("backup name mover", "logits", "+ IO if needed"),
          ("negative name mover", "logits", "- IO")]


def circuit_diagram(table: Any, model_label: str = "", others: Sequence[str] = (),
                    groups: Mapping[str, Sequence[str]] | None = None, title: str | None = None) -> Any:
    """The head classes found (a ``classify`` / ``decide`` table with ``class``, ``head``,
    ``member``) as a diagram: one box per class with its members, arrows along the routes the
    classes were tested on, between classes that are present.  A class with no member is drawn
    **absent** (dashed grey box, "none", no arrows); a class present only as a group that matters
    jointly (``groups``: class -> heads) is drawn with its heads and dashed arrows; ``others``:
    heads with a direct path that fit no class.  ``title`` defaults to "Head classes in
    <model>".  Returns the Figure."""
    groups = dict(groups or {})
    nodes, present = [], {}
    for name, col, row in _STAGES:
        heads = members(table, name)
        grouped = not heads and bool(groups.get(name))
        present[name] = bool(heads) or grouped
        shown = heads or list(groups.get(name, []))
        text = (f"{name}" + (" (as a group)" if grouped else "") + "\n"
                + (textwrap.fill(", ".join(shown), 26) if shown else "none"))
        nodes.append(Node(name, text, col, row, COLOURS[name] if present[name] else "white",
                          dashed=not present[name]))
    present["logits"] = True
    nodes.append(Node("logits", "logits at END\n(IO - S)", 4.4, 1.3))
    edges = [Edge(a, b, label, dashed=any(not members(table, x) for x in (a, b) if x != "logits"))
             for a, b, label in _EDGES if present[a] and present[b]]
    if others:
        nodes.append(Node("others", "no class, direct path\n" + textwrap.fill(", ".join(others), 26),
                          4.4, 2.9, "#eeeeee"))
        edges.append(Edge("others", "logits", "direct"))
    note = textwrap.fill("Coloured boxes: classes whose heads met both criteria; dashed grey: looked "
                         "for and not found (no arrows); '(as a group)': no single head met the effect "
                         "criterion, the heads matter when removed together (dashed arrows); grey: "
                         "heads with a direct path that fit no class. Arrows: the routes each class "
                         "was tested on.", 130)
    return draw_diagram(nodes, edges, title=title or f"Head classes in {model_label}".strip(), note=note)


def head_set_diagram(heads: Sequence[str], table: Any, title: str, notes: Mapping[str, str] | None = None
                     ) -> Any:
    """A set of heads (e.g. the greedy faithful circuit) as boxes, one per head in forward order,
    each named with its class in ``table`` (a ``decide``/``classify`` table) or "no class" (and
    ``notes[head]`` if given), all feeding the logits.  Returns the Figure."""
    from helpers.circuits.ioi_classes import CLASSES

    nodes, edges = [], []
    ordered = sorted(heads, key=parse_head)
    for i, h in enumerate(ordered):
        cls = next((c.name for c in CLASSES if h in members(table, c.name)), None)
        text = f"{h}\n{cls or 'no class'}" + (f"\n{textwrap.fill(notes[h], 28)}" if notes and h in notes else "")
        nodes.append(Node(h, text, 0, 1.3 * i, COLOURS.get(cls, "#eeeeee") if cls else "#eeeeee"))
        edges.append(Edge(h, "logits"))
    nodes.append(Node("logits", "logits at END\n(IO - S)", 1.4, 0.65 * max(len(ordered) - 1, 0)))
    return draw_diagram(nodes, edges, title=title,
                        note="Every other head ablated (mean or resample), every MLP kept.")


def backup_templates(table: Any, movers: Sequence[str]) -> Any:
    """``helpers.circuits.roles.BackupTest.table()`` as paired bars per template (and pooled): the
    logit difference with every head and with the movers mean-ablated, and the movers' own
    direct contribution as a marker.  Returns the Figure."""
    labels = [f"template {t}" if t != "pooled" else "pooled" for t in table.index]
    x = np.arange(len(labels))
    full, abl = table["logit diff"].to_numpy(), table["movers ablated"].to_numpy()
    fig, ax = plt.subplots(figsize=(1.8 + 1.3 * len(labels), 3.2))
    _paired_bars(ax, full, abl, "all heads", f"{', '.join(movers)} mean-ablated")
    ax.set_xticks(x, labels, fontsize=9)
    ax.set_ylabel("mean logit difference IO - S")
    ax.set_title("Name movers removed, template by template", fontsize=11)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def depth_comparison(comparison: Any, n_layers: int, gpt2_layers: int = 12) -> Any:
    """Each class's member blocks as a fraction of depth ((block + 1) / n_layers), this model
    beside GPT-2 small (``helpers.circuits.ioi_classes.gpt2_comparison``).  Returns the Figure."""

    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(comparison)))
    for i, (name, row) in enumerate(comparison.iterrows()):
        here = [] if row["this model"] == "none found" else [
            (parse_head(h.strip())[0] + 1) / n_layers
            for h in row["this model"].replace(" (as a group)", "").split(",")]
        theirs = [(layer + 1) / gpt2_layers for layer, _ in GPT2_SMALL.get(name, [])]
        ax.scatter(here, [i - 0.12] * len(here), color="#cc0000", s=30, label="this model")
        ax.scatter(theirs, [i + 0.12] * len(theirs), color="#3d85c6", s=30, marker="s",
                   label="GPT-2 small (Wang et al.)")
    ax.set_yticks(range(len(comparison)), comparison.index)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("depth: (block + 1) / number of blocks")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="lower left")
    ax.set_title("Where each class sits, as a fraction of depth", fontsize=11)
    fig.tight_layout()
    return fig


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
