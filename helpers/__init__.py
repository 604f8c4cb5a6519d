"""PatchLab helpers: the plumbing behind the activation-patching notebooks.

Modules, one concern each:

* ``helpers.models``   - ``load_model`` (bundled model, hub id, local folder), ``model_facts``
* ``helpers.prompts``  - IOI templates, roles, corruptions, validated prompt pairs
* ``helpers.metrics``  - logit difference, probability, KL, normalised score
* ``helpers.patching`` - the sweeps (denoising / noising) and their labelled results
"""
from helpers.metrics import (GapTooSmallError, answer_prob, kl_to_clean, logit_diff,
                             mean_and_sem, normalised)
from helpers.models import DEFAULT_MODEL, ModelLoadError, load_model, model_facts
from helpers.patching import (Patch, PatchResult, baselines, cache_activations, patch_attn_out,
                              patch_components, patch_heads, patch_mlp_out, patch_residual,
                              run_with_patches, sweep)
from helpers.prompts import (NAMES, TEMPLATES, PromptError, PromptPairs, check_in_vocabulary,
                             ioi_pairs, make_pairs, pairs_from_prompt, single_token_id)

__version__ = "0.1.0"
