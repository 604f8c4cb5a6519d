"""The engine layer: forward passes with activations read and replaced.

Holds ``runs`` (``Patch``, components, cached and patched traced runs in nnsight, the rules
every traced body follows so it also runs on NDIF), ``fastpatch`` (the exact fast path: blocks
recomputed from cached activations, many patched rows packed in one batch), ``fastpaths``
(path patching's fast kernel), ``edge_model`` / ``edge_runs`` (the forward pass as the
edge graph sees it: receivers with their own inputs, edge ablation, receiver gradients) and
``memory`` (how many rows a chunk may hold).  May import
``helpers.models``, ``helpers.data`` and ``helpers.base``.
"""
