"""Module paths from before the layered layout, kept importing for one release.

Until 0.1.0 every module sat directly under ``helpers/`` (``helpers.patching``,
``helpers.prompts``, ``helpers.explain.circuit``, ...).  Those paths still import, silently (a
printed warning would change the chapters' stored outputs): each old path *is* the module that
now holds its code, the same object, so ``helpers.patching.sweep is helpers.methods.sweeps.sweep``.
Where a public name left its old module for another layer (``template_check`` ran the model from
the data layer; it now lives in ``helpers.methods.observe``), the old path is a read-only view
over both.  ``helpers.models``, ``helpers.results`` and ``helpers.circuits`` are now layer
packages that re-export what the old modules of those names held.  README "What moved" lists
every path; these aliases go in the next release.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from typing import Any

__all__ = ["OLD_PATHS", "install"]

#: old module (under ``helpers.``) -> the module(s) now holding its public names, first wins
OLD_PATHS: dict[str, tuple[str, ...]] = {
    "validate": ("helpers.base.validate",),
    "fmt": ("helpers.base.fmt",),
    "anatomy": ("helpers.models.anatomy",),
    "gguf_models": ("helpers.models.gguf",),
    "remote": ("helpers.models.remote",),
    "pairs": ("helpers.data.pairs",),
    "prompts": ("helpers.data.prompts",),
    "behaviours": ("helpers.data.behaviours", "helpers.methods.observe"),
    "runs": ("helpers.engine.runs",),
    "fastpatch": ("helpers.engine.fastpatch",),
    "fastpaths": ("helpers.engine.fastpaths",),
    "memory": ("helpers.engine.memory",),
    "metrics": ("helpers.results.metrics",),
    "stats": ("helpers.results.stats",),
    "patching": ("helpers.methods.sweeps",),
    "paths": ("helpers.methods.path_patching",),
    "attribution": ("helpers.methods.attribution",),
    "ablations": ("helpers.methods.ablations",),
    "observe": ("helpers.methods.observe",),
    "faithfulness": ("helpers.circuits.evaluation",),
    "ioi_circuit": ("helpers.circuits.ioi_classes",),
    "readouts": ("helpers.circuits.readouts",),
    "plotting": ("helpers.teach.plotting",),
    "diagrams": ("helpers.teach.diagrams",),
    "checks": ("helpers.teach.checks",),
    "notebook": ("helpers.teach.notebook",),
    "explain": ("helpers.teach.explain",),
    "figures": ("helpers.teach.figures",),
    "widgets": ("helpers.teach.widgets",),
}

_MOVED_NAMES = {"behaviours": ("template_check",)}  # names a view takes from its later modules


class _View(types.ModuleType):
    """An old module path whose public names now live in several modules."""

    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__(name, f"old path of {', '.join(targets)} (see helpers.old_paths)")
        self._targets = targets

    def __getattr__(self, attr: str) -> Any:
        old = self.__name__.rsplit(".", 1)[-1]
        first, *later = self._targets
        extra = _MOVED_NAMES.get(old, ())
        for target in [first] + [t for t in later if attr in extra]:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"{self.__name__} has no attribute {attr!r}")

    def __dir__(self) -> list[str]:
        first = importlib.import_module(self._targets[0])
        return sorted(set(dir(first)) | set(_MOVED_NAMES.get(self.__name__.rsplit(".", 1)[-1], ())))


def new_name(fullname: str) -> tuple[str, ...] | None:
    """``"helpers.patching"`` -> ``("helpers.methods.sweeps",)``; ``"helpers.explain.circuit"``
    -> ``("helpers.teach.explain.circuit",)``; None for a path that did not move."""
    parts = fullname.split(".")
    if len(parts) < 2 or parts[0] != "helpers" or parts[1] not in OLD_PATHS:
        return None
    targets = OLD_PATHS[parts[1]]
    if len(parts) == 2:
        return targets
    return (".".join([targets[0], *parts[2:]]),)


class _OldPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves an old path as the module now holding its code (never a second copy of it)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> types.ModuleType:
        targets = new_name(spec.name)
        if len(targets) > 1:
            return _View(spec.name, targets)
        module = importlib.import_module(targets[0])
        spec.loader_state = module.__spec__  # the import system overwrites it: restored below
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        real = getattr(module.__spec__, "loader_state", None)
        if real is not None:
            module.__spec__ = real


def install() -> None:
    """Put the old-path finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _OldPathFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _OldPathFinder())
