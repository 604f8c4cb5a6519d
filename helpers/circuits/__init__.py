"""The circuits layer: from results about components to claims about a circuit.

Holds ``evaluation`` (a circuit's faithfulness, completeness and minimality under an
ablation), ``search`` (a minimal circuit by greedy joint patching; the greedy faithful head set
under ablation), ``ioi_classes`` (Wang et al.'s IOI head classes with numeric criteria, and the
whole staged search re-exported in one place), ``readouts`` (attention along the IOI routes,
direct logit attribution, the backup test), ``pooled`` (prompt pairs pooled over templates and
orders, decisions on bootstrap intervals), ``stages`` (the staged search's receivers,
candidates, decisions, group tests), ``roles`` (what the heads outside the classes do, backups per
template, path-share definitions) and ``behaviour`` (the behaviour per template); for circuits of edges
(MIB's graph): ``edge_circuits`` (circuits, MIB's top-n and pruning), ``edge_evaluation``
(edge-level ablation, MIB's faithfulness curve, CPR, CMD), ``truth`` (precision / recall and ROC
AUC against a known circuit), ``mib_format`` (MIB's circuit JSON), ``planted_check`` (every
planted role of ``ioi-planted``, or of a retrain of it, measured against fixed thresholds),
``scorecard`` (every discovery method scored against a planted circuit) and ``discovery`` (an
automatic circuit beside a hand-found one).  May import
``helpers.methods`` and every layer below it.  Re-exports the public names of the former
``helpers.circuits`` module.
"""
from helpers.circuits.search import CircuitSearch, attention_from, decisive_heads, minimal_circuit
from helpers.engine.runs import all_components, component_patch, component_place

__all__ = ["CircuitSearch", "minimal_circuit", "component_patch", "all_components",
           "component_place", "decisive_heads", "attention_from"]
