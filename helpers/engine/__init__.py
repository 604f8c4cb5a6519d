"""The engine layer: forward passes with activations read and replaced.

Holds ``runs`` (``Patch``, components, cached and patched traced runs in nnsight, the rules
every traced body follows so it also runs on NDIF), ``fastpatch`` (the exact fast path: blocks
recomputed from cached activations, many patched rows packed in one batch), ``fastablate``
(whole heads / MLP outputs replaced and attention edges knocked out on the fast path, rows
sharing the blocks their sets agree on: ablations and circuit evaluation), ``fastpaths``
(path patching's fast kernel), ``edge_model`` / ``edge_runs`` (the forward pass as the
edge graph sees it: receivers with their own inputs, edge ablation, receiver gradients) and
``memory`` (how many rows a chunk may hold).  May import
``helpers.models``, ``helpers.data`` and ``helpers.base``.
"""
from helpers.base.guard import guard_module  # noqa: E402
from helpers.engine import fastpatch  # noqa: E402

# The input rules at fastpatch's edge (helpers.base.guard), applied here: the module itself is
# at the 400-line limit.  Every other module guards itself on its last line.
guard_module(vars(fastpatch))
