"""Notebook plumbing: deterministic setup, the output folder, JSON results and a
reproducibility stamp.  Nothing here is needed to use the sweeps in your own code."""
from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["in_colab", "setup", "output_dir", "save_json", "stamp", "repo_root", "check_versions"]


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules


def setup(seed: int = 0, threads: int | None = 1) -> float:
    """Seed python and torch, use deterministic kernels and (by default) one CPU
    thread, so that a rerun prints the same numbers.  Returns the start time
    for ``stamp``."""
    random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
    """``folder/chapter``, created.  A relative ``folder`` is taken relative to the
    repository root (so papermill, nbval and JupyterLab agree), or to the
    working directory outside a checkout (e.g. Colab)."""
    path = Path(folder)
    if not path.is_absolute():
        path = (repo_root() or Path.cwd()) / path
    path = path / chapter if chapter else path
    path.mkdir(parents=True, exist_ok=True)
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
    path.write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")
    print(f"wrote {_shown(path)}")
    return path


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
    shown = Path(model_name).name if Path(str(model_name)).is_dir() else model_name
    info = {"python": platform.python_version(), **versions, "model": shown, "seed": seed,
            "runtime_s": round(time.time() - start, 1)}
    for k, v in info.items():
        print(f"{k:>13}: {v}")
    return info


MINIMUM = {"torch": "2.2", "nnsight": "0.8", "transformers": "5.0"}


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
    from helpers import __version__

    print(f"PatchLab {__version__} ready: " + ", ".join(f"{k} {v}" for k, v in found.items()))


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)
