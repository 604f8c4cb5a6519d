"""The engine layer: forward passes with activations read and replaced.

Holds ``runs`` (``Patch``, components, cached and patched traced runs in nnsight, the rules
every traced body follows so it also runs on NDIF), ``fastpatch`` (the exact fast path: blocks
recomputed from cached activations, many patched rows packed in one batch), ``fastablate``
(whole heads / MLP outputs replaced and attention edges knocked out on the fast path, rows
sharing the blocks their sets agree on: ablations and circuit evaluation), ``fastpaths``
(path patching's fast kernel) and ``memory`` (how many rows a chunk may hold).  May import
``helpers.models``, ``helpers.data`` and ``helpers.base``.
"""
