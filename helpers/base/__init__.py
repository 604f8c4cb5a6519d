"""The base layer: rules every other layer applies, and nothing of its own to run.

Holds ``validate`` (the input rules: indices, counts, ids, finiteness, JSON without NaN),
``fmt`` (the one naming scheme — ``L2``, ``attn2``, ``L2H5`` — and how numbers and tables are
written), ``edge_graph`` (MIB's names and indices of a model's senders, receivers and edges)
and ``version``.  Imports nothing from ``helpers``: every layer may import it.
"""
