"""The base layer: rules every other layer applies, and nothing of its own to run.

Holds ``validate`` (the input rules: indices, counts, ids, finiteness, JSON without NaN,
choices, types, fractions, memory bounds, unused arguments, vocabulary fingerprints),
``guard`` (the one mechanism that applies them at every public function's edge, from its
annotations and parameter names),
``fmt`` (the one naming scheme — ``L2``, ``attn2``, ``L2H5`` — and how numbers and tables are
written), ``edge_graph`` (MIB's names and indices of a model's senders, receivers and edges)
and ``version``.  Imports nothing from ``helpers``: every layer may import it.
"""
