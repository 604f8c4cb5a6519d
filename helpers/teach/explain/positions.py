"""Chapter 3 (position patching) in words: what the layer x position maps say.

Every function reads only the results it is given and writes each number with
``helpers.base.fmt`` exactly as the notebook prints it, so prose numbers equal printed numbers.
Names follow ``helpers.base.fmt``: residual rows ``embed``, ``L2`` (the stream after block 2),
sublayers ``attn2`` / ``mlp2``, positions by role (``S2``, ``END``) or token label.
"""
from __future__ import annotations

from IPython.display import Markdown

from helpers.base.fmt import bullets, component_name, join, md_table, num, plural
from helpers.data.pairs import PromptPairs
from helpers.results.patch_result import PatchResult
from helpers.teach.explain._markdown import markdown
from helpers.teach.notebook import small

__all__ = ["residual_map", "sublayers", "differing_positions"]


def differing_positions(pairs: PromptPairs) -> list[int]:
    """The token positions where any clean prompt differs from its corrupted partner."""
    return (pairs.clean_ids != pairs.corrupted_ids).any(0).nonzero().flatten().tolist()


def _check(result: PatchResult) -> None:
    if result.dims != ("layer", "position"):
        raise ValueError(f"expects a layer x position result, got dims {result.dims}")


def _what(result: PatchResult, normalise: bool) -> str:
    return "score" if normalise else result.metric


def residual_map(resid: PatchResult, pairs: PromptPairs, normalise: bool = True) -> Markdown:
    """What the residual-stream map (dims ``("layer", "position")``, rows ``embed``,
    ``L0`` … ``L{n-1}``; denoising) shows: the zero columns before the first differing
    token, the ``embed`` row at S2, the last row at END, the S2 → END hand-over, and a table
    of the S2 and END columns (values of ``resid.grid(normalise)``)."""
    _check(resid)
    g, eff = resid.grid(normalise), resid.change(normalise)
    rows, cols = resid.labels["layer"], resid.labels["position"]
    s2, end = pairs.positions["S2"], pairs.positions["END"]
    first, differ = pairs.first_difference, differing_positions(pairs)
    whole = "1" if normalise else f"the clean value {num(resid.baseline('clean'))}"
    notes = []
    if first > 0:
        base = resid.corrupted if resid.direction == "denoise" else resid.clean
        per_prompt = resid.values[resid.metric] - base[resid.metric][:, None, None]
        left = per_prompt[:, :, :first].abs().max().item()
        notes.append(
            f"**Every column left of {cols[first]} is exactly {'0' if normalise else 'the corrupted value'}** "
            f"(largest change in any prompt: {small(left)}). {cols[first]}, position {first}, is the "
            "first token where the clean and corrupted prompts differ. Attention is causal — a token "
            f"sees only itself and earlier tokens — so every activation before position {first} is "
            "identical in the two runs, and swapping identical vectors changes nothing. The sweep "
            "knows this and does not even run those patches.")
    if differ == [s2]:
        notes.append(
            f"**The `embed` row is {num(g[0, s2])} at S2** ({whole} means fully restored): with an S2 "
            "swap, S2 is the *only* token where the prompts differ, so giving the corrupted run the "
            "clean S2 embedding turns the corrupted prompt into the clean one: the patched run *is* "
            "the clean run. Every other embedding is the same in both runs.")
    else:
        notes.append(
            f"**No single embedding restores the clean run:** with the `{pairs.corruption}` "
            f"corruption the prompts differ at {plural(len(differ), 'token')} "
            f"({join(cols[p] for p in differ)}), and patching one leaves the others corrupted "
            f"(largest `embed` value {num(g[0].max())}).")
    rest = eff[-1, :end].abs().max().item() if end > 0 else 0.0
    notes.append(
        f"**The last row (`{rows[-1]}`) is {num(g[-1, end])} at END** and unchanged elsewhere "
        f"(largest change {small(rest)}, float rounding at most): the prediction is computed from "
        "END's final vector alone (final layer norm, then the unembedding), so patching it copies "
        "the clean logits exactly, and no later layer reads the others.")
    moved = next((rows[i] for i in range(len(rows)) if g[i, end] > g[i, s2]), None)
    notes.append(
        f"**The information moves from S2 to END.** Down the S2 column the {_what(resid, normalise)} "
        f"goes {num(g[0, s2])} → {num(g[-1, s2])}, down the END column {num(g[0, end])} → "
        f"{num(g[-1, end])}; "
        + (f"END first beats S2 in row `{moved}`." if moved else "END never beats S2 here."))
    table = md_table(["row", "S2", "END", "largest at"],
                     [(f"`{r}`", num(g[i, s2]), num(g[i, end]), cols[int(g[i].argmax())])
                      for i, r in enumerate(rows)])
    return markdown(bullets(notes), table)


def sublayers(attn: PatchResult, mlp: PatchResult, resid: PatchResult, pairs: PromptPairs,
              normalise: bool = True) -> Markdown:
    """What the attention-output and MLP-output maps (each ``[n_layers, seq]``, rows
    ``L0`` … = block) show: which blocks' attention carries the information into END (each
    at least half the largest), the largest attention effect at S2, and the largest MLP
    effect against all other MLP cells.  ``resid`` gives the last residual row at END."""
    for r in (attn, mlp, resid):
        _check(r)
    ga, gm = attn.grid(normalise), mlp.grid(normalise)
    ca, cm = attn.change(normalise), mlp.change(normalise)
    s2, end = pairs.positions["S2"], pairs.positions["END"]
    n = ga.shape[0]
    at_end = ca[:, end]
    top_end = int(at_end.argmax())
    movers = [layer for layer in range(n) if at_end[layer] >= 0.5 * at_end.max()] or [top_end]
    a_s2 = int(ca[:, s2].argmax())
    m_l, m_p = divmod(int(cm.abs().argmax()), cm.shape[1])
    others = cm.clone()
    others[m_l, m_p] = 0
    last_end = resid.grid(normalise)[-1, end]
    what = _what(attn, normalise)
    blocks = "blocks " + join(movers) if len(movers) > 1 else f"block {movers[0]}"
    end_note = (f"- **Attention at END:** " + ", ".join(
        f"{component_name('attn', layer)} {num(ga[layer, end])}" for layer in range(n))
        + f". The attention of {blocks} carries the information into END (largest: "
        f"{component_name('attn', top_end)}, {num(ga[top_end, end])})"
        + (f"; each alone restores only part of what the last residual row at END holds "
           f"({num(last_end)}), so the move is shared." if len(movers) > 1 else "."))
    over = ga[a_s2, s2] > 1 and normalise
    s2_note = (f"- **Attention at S2:** largest in {component_name('attn', a_s2)} "
               f"({num(ga[a_s2, s2])}"
               + ("; above 1: with it the corrupted run prefers the answer even a little more than "
                  "the clean run does" if over else "")
               + f"). At S2, block {a_s2}'s attention writes something that decides the answer — "
               "chapter 4 shows which heads, and what they read.")
    mlp_note = (f"- **MLPs:** the largest MLP effect is {component_name('mlp', m_l)} at "
                f"{mlp.labels['position'][m_p]} ({num(gm[m_l, m_p])}); every other MLP cell changes "
                f"the {what} by at most {small(others.abs().max().item())}. MLPs do their work where "
                "the information already is — they cannot move it between tokens.")
    return markdown("\n".join([end_note, s2_note, mlp_note]))



from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
