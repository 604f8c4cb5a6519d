"""The results layer: what a run's numbers mean and how they are kept.

Holds ``metrics`` (logit difference, answer probability, KL, the normalised score),
``stats`` (per-cell bootstrap intervals, sign-flip p-values, Holm/BH), ``patch_result``
(``PatchResult``: labelled values, baselines, tables and JSON) and ``edge_scores``
(``EdgeScores``: a score per edge and node of MIB's graph).  Computes on numbers it is
given; runs no model.  May import ``helpers.engine``, ``helpers.models``, ``helpers.data`` and
``helpers.base``.  Re-exports the public names of the former ``helpers.results`` module.
"""
from helpers.results.patch_result import PatchResult

__all__ = ["PatchResult"]
