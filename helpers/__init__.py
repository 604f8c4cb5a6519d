"""PatchLab helpers: the plumbing behind the activation-patching notebooks.

``import helpers as H`` gives the public names (``H.load_model``, ``H.ioi_pairs``,
``H.patch_residual``, ``H.path_patch``, ``H.edge_attribution``, ``H.evaluate_edges``, ...) and the modules the chapters use by name
(``H.fmt``, ``H.prompts``, ``H.metrics``, ``H.observe``, ``H.explain``, ``H.figures``, ...).

The code sits in layers; a layer imports only the layers below it (``tests/test_layering.py``
checks it), and each layer's ``__init__`` says what it holds:

* ``helpers.teach``    - explain, figures, widgets, plotting, diagrams, exercise checks, notebook plumbing
* ``helpers.circuits`` - circuit evaluation, the greedy search, the IOI head classes, readouts
* ``helpers.methods``  - sweeps, path patching, attribution patching, ablations, observing
* ``helpers.results``  - ``PatchResult``, metrics, statistics
* ``helpers.engine``   - ``Patch``, traced runs, the fast exact path, memory budget
* ``helpers.models`` / ``helpers.data`` - model anatomy and loading / prompts and pairs
* ``helpers.base``     - input rules and the naming scheme

``helpers.organism`` holds the bundled models (weights, tokenizers, model cards) and the
scripts that train them.  Module paths from before the layers (``helpers.patching``,
``helpers.prompts``, ...) still import: ``helpers.old_paths``.
"""
from helpers import old_paths

old_paths.install()

from helpers import circuits  # noqa: E402
from helpers.base import fmt, validate  # noqa: E402
from helpers.base.version import __version__  # noqa: E402
from helpers.circuits import ioi_classes, readouts  # noqa: E402
from helpers.circuits.edge_circuits import (Circuit, circuit_from_edges, top_edges,  # noqa: E402
                                            top_nodes)
from helpers.circuits.edge_evaluation import (PERCENTAGES, EdgeEvaluation, FaithfulnessCurve,  # noqa: E402
                                              evaluate_edges, faithfulness_curve)
from helpers.circuits.evaluation import CircuitEvaluation, compare_ablations, evaluate_circuit  # noqa: E402
from helpers.circuits.mib_format import load_mib_circuit, save_mib_circuit  # noqa: E402
from helpers.circuits.search import CircuitSearch, minimal_circuit  # noqa: E402
from helpers.circuits.truth import TruthScore, compare_circuits, score_against_truth  # noqa: E402
from helpers.data import pairs, prompts  # noqa: E402
from helpers.data.behaviours import REFUSAL, BinaryTask, binary_pairs  # noqa: E402
from helpers.data.prompts import (  # noqa: E402
    NAMES,
    TEMPLATES,
    PromptError,
    PromptPairs,
    check_in_vocabulary,
    ioi_pairs,
    make_pairs,
    pairs_from_prompt,
    random_ioi_prompts,
    single_token_id,
)
from helpers.methods import observe  # noqa: E402
from helpers.methods.ablations import (  # noqa: E402
    ablate,
    ablation_source,
    knockout,
    knockout_patterns,
    resample_rows,
)
from helpers.base.edge_graph import EdgeGraph  # noqa: E402
from helpers.methods.attribution import attribution_patching  # noqa: E402
from helpers.methods.edge_attribution import edge_attribution  # noqa: E402
from helpers.methods.edge_exact import exact_edge_patching  # noqa: E402
from helpers.methods.edge_values import edge_graph  # noqa: E402
from helpers.methods.observe import (  # noqa: E402
    attention_patterns,
    encode,
    ioi_accuracy,
    template_check,
    top_predictions,
)
from helpers.methods.path_patching import path_patch  # noqa: E402
from helpers.methods.sweeps import (  # noqa: E402
    Patch,
    PatchResult,
    baselines,
    cache_activations,
    patch_attn_out,
    patch_components,
    patch_heads,
    patch_mlp_out,
    patch_residual,
    run_with_patches,
    sweep,
)
from helpers.models import (  # noqa: E402
    DEFAULT_MODEL,
    ModelLoadError,
    load_model,
    model_facts,
    remote,  # noqa: E402
)
from helpers.results import metrics, stats  # noqa: E402
from helpers.results.edge_scores import EdgeScores  # noqa: E402
from helpers.results.metrics import (  # noqa: E402
    GapTooSmallError,
    answer_prob,
    kl_to_clean,
    logit_diff,
    mean_and_sem,
    normalised,
)
from helpers.teach import checks, diagrams, explain, figures, notebook, plotting, widgets  # noqa: E402
from helpers.teach.plotting import plot_attention, plot_head_positions, plot_patching, plot_sets  # noqa: E402
from helpers.teach.widgets import head_explorer, position_explorer  # noqa: E402


def __getattr__(name: str):
    """``helpers.<old module>`` (``helpers.patching``, ``helpers.ioi_circuit``, ...): the module
    that now holds its code (``helpers.old_paths``)."""
    if name in old_paths.OLD_PATHS:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'helpers' has no attribute {name!r}")
