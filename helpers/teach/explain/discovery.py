"""Chapter 11 (circuit discovery, scored) in words: one edge's EAP score by hand against the
helper's, what the scorecard says about each method against a planted circuit (the decoy, the
backup), and how an automatically found circuit compares with a hand-found one.

Every number is read from the results given and written with ``helpers.base.fmt.num``."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from IPython.display import Markdown

from helpers.base.fmt import bullets, join, num, pct
from helpers.teach.explain._markdown import markdown

__all__ = ["by_hand", "scorecard", "lessons", "overlap", "curves"]


def by_hand(edge: str, hand: float, helper: float, scale: float) -> Markdown:
    """The by-hand EAP score of ``edge`` beside ``helper``'s; ``scale`` the largest |edge score|
    (the agreement is judged relative to it)."""
    diff = abs(hand - helper)
    same = diff <= 1e-4 * max(scale, 1e-12)
    verdict = ("the same number: the helper's score of this edge is exactly this product, computed for "
               "every edge at once" if same else
               f"they differ by {num(diff, 4)} ({pct(diff / max(scale, 1e-12), 1)} of the largest edge score): "
               "look for a sign flip or a position left out")
    return markdown(f"**{edge}**: by hand {num(hand, 2)}, `H.edge_attribution` {num(helper, 2)} — {verdict}.")


def scorecard(card: Any) -> Markdown:
    """The AUROC / CPR / CMD table (no timings) and which method ranks the planted graph best."""
    best = max(card.rows, key=lambda r: r.auroc["edge/negative"])
    best_node = max(card.rows, key=lambda r: r.auroc["node/negative"])
    rand = next((r for r in card.rows if r.method == "random"), None)
    n_pos = rand.roc["edge/negative"].n_positive if rand else 0
    chance = (f" A random ranking's AUROC is 0.5 on average; with only {n_pos} planted edges one seed can land "
              f"far from it (this seed: {num(rand.auroc['edge/negative'])} over edges, "
              f"{num(rand.auroc['node/negative'])} over nodes)." if rand else "")
    return markdown(card.table(timing=False),
                    f"Best edge AUROC (backups counted as negatives): **{best.method}**, "
                    f"{num(best.auroc['edge/negative'])}; best node AUROC: **{best_node.method}**, "
                    f"{num(best_node.auroc['node/negative'])}.{chance}")


def lessons(card: Any) -> Markdown:
    """The decoy and the backup, method by method (``Scorecard.findings``), and what they teach."""
    watched = card.watched()
    decoy = [n for n in watched if card.truth.info.get("nodes", {}).get(n, {}).get("class") == "decoy"]
    backup = [n for n in watched if n not in decoy]
    failed_decoy = [r.method for r in card.rows if decoy and
                    (r.in_set.get(decoy[0]) if r.in_set else r.node_rank[decoy[0]] <= len(card.positives()))]
    missed = [r.method for r in card.rows if backup and
              not (r.in_set.get(backup[0]) if r.in_set else r.node_rank[backup[0]] <= len(card.positives()))]
    lines = [f"The decoy ({join(decoy)}) is ranked among the top {len(card.positives())} nodes by "
             f"{join(failed_decoy) if failed_decoy else 'no method'}."]
    if backup:
        lines.append(f"The backup name mover ({join(backup)}) is missed (below the top {len(card.positives())}) "
                     f"by {join(missed) if missed else 'no method'}.")
    return markdown(" ".join(lines), bullets(card.findings()))


def overlap(ov: Mapping[str, Any], source: str, size: int, share: float, f: float, ablation: str) -> Markdown:
    """The heads of the automatically found circuit against the hand-found heads."""
    return markdown(
        f"The automatic circuit: the top {size} edges ({pct(share, 1)} of the graph), faithfulness "
        f"{num(f)} under {ablation} ablation; its nodes hold **{ov['n_found']} heads**. The hand-found "
        f"circuit has **{ov['n_hand']}** heads — {source}.",
        f"In both: {join(ov['both']) if ov['both'] else 'none'} — {len(ov['both'])} of the hand-found "
        f"{ov['n_hand']}; Jaccard index {num(ov['jaccard'])}. Only hand-found: "
        f"{join(ov['only_hand']) if ov['only_hand'] else 'none'}. Found only automatically: "
        f"{len(ov['only_found'])} heads.")


def curves(curves: Mapping[str, Any], hand: Mapping[str, tuple[float, float]], hand_edges: int,
           target: float = 0.8) -> Markdown:
    """Per ablation: the smallest size whose faithfulness reaches ``target``, the CMD, and the
    hand-found circuit's faithfulness at its own size."""
    lines = []
    for ablation, c in curves.items():
        f = c.faithfulness["absolute"]
        reach = [p for p, v, e in zip(c.percentages, f, c.edges["absolute"]) if v >= target and e > 0]
        first = f"reaches {num(target)} at {pct(reach[0], 1)} of the edges" if reach else \
            f"never reaches {num(target)} below the whole graph"
        x, fh = hand[ablation]
        lines.append(f"{ablation} ablation: the curve {first} (CMD {num(c.cmd)}); the hand-found heads "
                     f"({hand_edges} edges, {pct(x, 1)} of the graph) keep {num(fh)}.")
    return markdown(bullets(lines))



from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
