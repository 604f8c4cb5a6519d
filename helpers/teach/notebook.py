"""Notebook plumbing: deterministic setup, the output folder, JSON results and a
reproducibility stamp.  Nothing here is needed to use the sweeps in your own code."""
from __future__ import annotations

import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from helpers.base.validate import json_text, norm_index
from helpers.base.version import __version__
from helpers.data.behaviours import REFUSAL
from helpers.data.prompts import CORRUPTIONS, TEMPLATES
from helpers.models.loaded import model_facts
from helpers.results.metrics import METRICS

__all__ = ["in_colab", "setup", "output_dir", "save_json", "save_results", "parameters",
           "model_label", "stamp", "repo_root", "check_versions", "ParameterError",
           "check_parameters", "choose_layer", "small"]


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules


def setup(seed: int = 0, threads: int | None = 1) -> float:
    """Seed python and torch, use deterministic kernels and (by default) one CPU
    thread, so that a rerun prints the same numbers; pandas tables show 4 decimals.
    Returns the start time for ``stamp``."""
    random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:  # tables print 4 decimals: the 6th decimal differs between CPU models
        import pandas as pd

        pd.set_option("display.precision", 4)
    except ImportError:
        pass
    return time.time()


def repo_root(start: str | os.PathLike | None = None) -> Path | None:
    """The repository folder (holding ``pyproject.toml`` and ``notebooks/``) above
    ``start`` (default: the working directory), or None outside a checkout."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "notebooks").is_dir():
            return folder
    return None


def output_dir(folder: str | os.PathLike = "outputs", chapter: str = "") -> Path:
    """``folder/chapter``, checked but not yet created: ``save_json`` creates it when the first
    result is written, so a run that fails first leaves no empty folder behind.  A folder that
    could not be created (a file in the way, no write permission) is a ``ParameterError`` now,
    before any work.  A relative ``folder`` is taken relative to the repository root (so
    papermill, nbval and JupyterLab agree), or to the working directory outside a checkout
    (e.g. Colab)."""
    path = Path(folder)
    if not path.is_absolute():
        path = (repo_root() or Path.cwd()) / path
    path = path / chapter if chapter else path
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is a file" if existing.exists() and not existing.is_dir() else "cannot be written"
        raise ParameterError(f"output_dir={str(folder)!r}: the results folder {path} cannot be "
                             f"created ({existing} {what}); give a folder you can write, e.g. "
                             "papermill -r output_dir outputs")
    return path


def _shown(path: Path) -> str:
    root = repo_root()
    try:
        return str(path.resolve().relative_to(root)) if root else path.name
    except ValueError:
        return path.name


def save_json(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON and print where (relative to the repository)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json_text(data, default=_jsonable))
    print(f"wrote {_shown(path)}")
    return path


def model_label(name: Any) -> str:
    """How a model is named in prints and saved files: a local folder by its last part (never
    a full path, which would leak the machine's layout), anything else as given."""
    return Path(str(name)).name if Path(str(name)).is_dir() else str(name)


def parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """The notebook parameters found in ``namespace`` (pass ``globals()``), for saving:
    every name ``check_parameters`` knows except ``output_dir``; ``model_name`` as its
    ``model_label``."""
    found = {k: namespace[k] for k in _rules() if k in namespace and k != "output_dir"}
    if "model_name" in found:
        found["model_name"] = model_label(found["model_name"])
    return found


def save_results(out: str | os.PathLike, chapter: str, params: dict[str, Any],
                 **results: Any) -> Path:
    """Write ``out/results.json`` in one call: ``chapter``, ``model`` (the model's label), the
    other parameters (see ``parameters``) and every keyword, all at the top level.  A
    ``PatchResult`` is saved as its ``to_dict()`` (model named by its label), tensors as
    lists, anything else as it is.  Chapters pass ``clean_logit_diff`` and
    ``corrupted_logit_diff`` (the two baselines) so every results file has them.  NaN is
    refused (``json_text``)."""
    params = dict(params)
    data: dict[str, Any] = {"chapter": chapter, "model": model_label(params.pop("model_name", ""))}
    data.update(params)
    for key, value in results.items():
        if hasattr(value, "to_dict"):
            value = value.to_dict()
            if isinstance(value, dict) and "model" in value:
                value["model"] = model_label(value["model"])
        data[key] = value
    return save_json(data, Path(out) / "results.json")


def _jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return x.name
    if hasattr(x, "to_dict"):
        return x.to_dict()
    return str(x)


def stamp(model_name: str, seed: int, start: float) -> dict:
    """Print and return package versions, model, seed and runtime."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("patchlab", "torch", "nnsight", "transformers", "ipywidgets", "seaborn"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    info = {"python": platform.python_version(), **versions, "model": model_label(model_name),
            "seed": seed,
            "runtime_s": round(time.time() - start, 1)}
    for k, v in info.items():
        print(f"{k:>13}: {v}")
    return info


MINIMUM = {"torch": "2.2", "nnsight": "0.8", "transformers": "5.15.0"}


def check_versions() -> None:
    """Print one line with the versions in use; raise if a dependency is older than
    PatchLab supports (older nnsight/transformers change module outputs silently)."""
    import importlib.metadata as md

    found = {}
    for pkg, low in MINIMUM.items():
        have = md.version(pkg)
        if _version_tuple(have) < _version_tuple(low):
            raise RuntimeError(f"{pkg} {have} is too old: PatchLab needs {pkg}>={low} "
                               f"(pip install -U '{pkg}>={low}')")
        found[pkg] = have

    print(f"PatchLab {__version__} ready: " + ", ".join(f"{k} {v}" for k, v in found.items()))


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


class ParameterError(ValueError):
    """A notebook parameter (papermill ``-p``) of the wrong type or out of range."""


def _rules() -> dict[str, tuple[str, Any, str]]:
    """name -> (what it must be, a test returning an error text or None, a valid example)."""

    def integer(low: int | None = None, high: int | None = None, none_ok: bool = False):
        def test(v: Any) -> str | None:
            if v is None and none_ok:
                return None
            if isinstance(v, bool) or not isinstance(v, int):
                return "not an integer"
            if (low is not None and v < low) or (high is not None and v > high):
                return "out of range"
            return None
        return test

    def one_of(options: tuple) -> Any:
        return lambda v: None if v in options else "not one of the choices"

    def kind(t: type) -> Any:
        return lambda v: None if isinstance(v, t) else f"not a {t.__name__}"

    def number(v: Any) -> str | None:
        return None if isinstance(v, (int, float)) and not isinstance(v, bool) else "not a number"

    n_templates = max(len(TEMPLATES), len(REFUSAL.templates) + len(REFUSAL.heldout_templates))
    return {
        "model_name": ("a model name: 'ioi-tiny', a hub id or a folder", kind(str), "-r model_name ioi-tiny"),
        "n_pairs": ("a whole number >= 1", integer(1), "-p n_pairs 16"),
        "n_eval": ("a whole number >= 1", integer(1), "-p n_eval 200"),
        "template": (f"a template index 0 .. {n_templates - 1} (this chapter's list)",
                     integer(-n_templates, n_templates - 1), "-p template 0"),
        "corruption": (f"one of {', '.join(CORRUPTIONS)}", one_of(CORRUPTIONS), "-r corruption s2_swap"),
        "seed": ("a whole number >= 0", integer(0), "-p seed 0"),
        "metric": (f"one of {', '.join(METRICS)}", one_of(METRICS), "-r metric logit_diff"),
        "normalise": ("True or False", kind(bool), "-p normalise False"),
        "layer": ("None or a block index (negative counts from the end)", integer(none_ok=True),
                  "-p layer 2"),
        "output_dir": ("a folder name or path", kind(str), "-r output_dir outputs"),
        "show_widgets": ("True or False", kind(bool), "-p show_widgets False"),
        "remote": ("False (run here), True (run on NDIF) or 'local' (here, through nnsight's "
                   "dry run of the remote protocol)", one_of((False, True, "local")),
                   "-p remote False"),
        "n_prompts": ("a whole number >= 2", integer(2), "-p n_prompts 150"),
        "n_templates": (f"a number of templates 1 .. {len(TEMPLATES)}", integer(1, len(TEMPLATES)),
                        "-p n_templates 4"),
        "min_attention": ("a number between 0 and 1", lambda v: number(v) or (None if 0 < v <= 1 else "out of range"),
                          "-p min_attention 0.3"),
        "min_share": ("a number between 0 and 1", lambda v: number(v) or (None if 0 < v <= 1 else "out of range"),
                      "-p min_share 0.05"),
        "threshold": ("a number between 0 and 1", lambda v: number(v) or (None if 0 < v <= 1 else "out of range"),
                      "-p threshold 0.8"),
    }


#: What a chapter needs beyond the common rules: the fewest pairs (resampling and statistics
#: over prompts need 2) and the lowest block ``layer`` may name (checked once the model is loaded).
CHAPTER_NEEDS: dict[str, dict[str, int]] = {
    "04_head_patching": {"layer_low": 1},
    "09_path_patching": {"n_pairs": 2, "layer_low": 1},
    "10_real_model_circuit": {"n_pairs": 2},
}


def check_parameters(params: dict[str, Any], chapter: str | None = None, model: Any = None) -> None:
    """Check a notebook's parameters (pass ``globals()``; only the names listed in the rules
    are read), with what ``chapter`` needs (``CHAPTER_NEEDS``, e.g. at least 2 pairs) and, once
    ``model`` is loaded, ``layer`` against its blocks.  Raises ``ParameterError`` naming the
    parameter, what it must be and a valid papermill argument; prints nothing when all is well.
    A chapter calls it before anything heavy, and again right after loading the model."""
    problems = []
    needs = CHAPTER_NEEDS.get(chapter or "", {})
    for name, (what, test, example) in _rules().items():
        if name not in params:
            continue
        why = test(params[name])
        low = needs.get(name)
        if not why and low is not None and params[name] < low:
            why, what = "too small for this chapter", f"at least {low} here"
            example = f"-p {name} {max(low, 16)}"
        if why:
            problems.append(f"{name}={params[name]!r} ({type(params[name]).__name__}) is {why}: "
                            f"it must be {what}, e.g. papermill {example}")
    if not problems and model is not None and params.get("layer") is not None:
        choose_layer(params["layer"], model_facts(model).n_layers, needs.get("layer_low", 0))
    if problems:
        raise ParameterError("bad notebook parameter" + ("s" if len(problems) > 1 else "") + ":\n  "
                             + "\n  ".join(problems))


def choose_layer(layer: Any, n_layers: int, low: int = 0) -> int:
    """The block a chapter zooms in on: ``layer`` (negative counts from the end), or the
    middle block ``n_layers // 2`` when ``layer`` is None.  It must be in ``low .. n_layers-1``."""

    if layer is None:
        return max(low, n_layers // 2)
    try:
        chosen = norm_index(layer, n_layers, "layer", "blocks in this model")
    except (TypeError, ValueError) as err:
        raise ParameterError(f"{err}: e.g. papermill -p layer {max(low, n_layers // 2)}") from None
    if chosen < low:
        raise ParameterError(f"layer={layer} is block {chosen}: this chapter needs a block from {low} "
                             f"to {n_layers - 1}, e.g. papermill -p layer {max(low, n_layers // 2)}")
    return chosen


def small(x: float, floor: float = 1e-6) -> str:
    """A difference for printing: ``"below 1e-6"`` under ``floor`` (float rounding, which
    differs between CPUs: never print it as a number), else two significant digits."""
    limit = f"{floor:g}".replace("e-0", "e-")
    return f"below {limit}" if abs(float(x)) < floor else f"{float(x):.2g}"


from helpers.base.guard import guard_module  # noqa: E402  (input rules at every public edge)

guard_module(globals())
