"""The methods layer: the experiments, each one call that returns a result.

Holds ``sweeps`` (activation patching of every site, denoising and noising), ``path_patching``
(sender -> receiver paths, Wang et al.), ``attribution`` (attribution patching),
``edge_attribution`` / ``edge_values`` (EAP, EAP-IG and exact scores of every edge of MIB's
graph, and what an ablated edge carries), ``ablations``
(zero / mean / resample ablation, attention knockout) and ``observe`` (predictions, task
accuracy, attention patterns).  May import ``helpers.results`` and every layer below it
(``engine``, ``models``, ``data``, ``base``).
"""
from helpers.base.guard import guard_module  # noqa: E402
from helpers.methods import path_patching  # noqa: E402

# The input rules at path_patch's edge (helpers.base.guard), applied here: the module itself is
# at the 400-line limit.  Every other module guards itself on its last line.
guard_module(vars(path_patching))
