"""helpers/ is layered: imports go only downward, there are no cycles, and no module imports
another module's private names.  Read from the source (every import statement, including the
ones inside functions), so the rule holds for code paths no test happens to run.

Layers, bottom to top (``helpers/__init__.py`` lists them too):

base -> models | data -> engine -> results -> methods -> circuits -> teach -> (organism training
scripts, the top-level package).  ``models`` and ``data`` sit side by side and import neither
each other nor anything above the base (``models`` may read ``helpers.organism``'s folders).
"""
from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parent.parent / "helpers"

#: layer name -> rank; a module may import its own layer and layers of lower rank
RANKS = {"base": 0, "bundled": 0, "models": 1, "data": 1, "engine": 2, "results": 3, "methods": 4,
         "circuits": 5, "teach": 6, "training": 7, "top": 8}
#: two layers of one rank that must not import each other
SIDE_BY_SIDE = {frozenset({"models", "data"}), frozenset({"base", "bundled"})}


def module_name(path: Path) -> str:
    parts = path.relative_to(HELPERS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(HELPERS.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    if module in ("helpers", "helpers.old_paths"):
        return "top"
    if parts[1] == "organism":
        return "bundled" if module == "helpers.organism" else "training"
    return parts[1]


def imports(module: str) -> list[tuple[str, str, int]]:
    """Every (imported module, imported name or "", line) of ``module``, any depth."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("helpers")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("helpers"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((sub, "", node.lineno) if sub in MODULES else (base, a.name, node.lineno))
    return found


EDGES = {m: imports(m) for m in MODULES}


def test_every_module_belongs_to_a_known_layer():
    unknown = sorted(m for m in MODULES if layer(m) not in RANKS)
    assert not unknown, f"modules outside every layer: {unknown}"


def test_imports_only_go_downward_or_within_a_layer():
    bad = []
    for src, targets in EDGES.items():
        for dst, _, line in targets:
            a, b = layer(src), layer(dst)
            if a == b:
                continue
            if RANKS[b] > RANKS[a] or (RANKS[a] == RANKS[b] and frozenset({a, b}) in SIDE_BY_SIDE) \
                    or b == "top":
                bad.append(f"{src} ({a}) imports {dst} ({b}) at line {line}")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_the_module_import_graph_has_no_cycle():
    graph = {m: sorted({d for d, _, _ in EDGES[m] if d in MODULES and d != m}) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in graph[m]:
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in graph:
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_no_module_imports_another_modules_private_names():
    bad = []
    for src, targets in EDGES.items():
        for dst, name, line in targets:
            if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                bad.append(f"{src}:{line} imports {name} from {dst}")
            private_module = any(p.startswith("_") and not p.startswith("__") for p in dst.split("."))
            if private_module and dst.rpartition(".")[0] != src.rpartition(".")[0] and src != dst.rpartition(".")[0]:
                bad.append(f"{src}:{line} imports the private module {dst} of another package")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", sorted(m for m in MODULES if m.count(".") == 1
                                           and MODULES[m].name == "__init__.py"
                                           and layer(m) in ("base", "models", "data", "engine",
                                                            "results", "methods", "circuits", "teach")))
def test_each_layer_says_what_it_holds_and_what_it_may_import(package):
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text())) or ""
    assert doc.startswith("The ") and "Holds" in doc, f"{package}: no one-paragraph docstring"
    assert "import" in doc, f"{package}'s docstring does not say what it may import"


def test_the_top_level_package_only_re_exports():
    """``helpers/__init__.py`` defines no function but the old-path lookup."""
    tree = ast.parse(MODULES["helpers"].read_text())
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert defined == ["__getattr__"]


# ------------------------------------------------------------------ old module paths

def old_paths() -> dict:
    from helpers.old_paths import OLD_PATHS

    return OLD_PATHS


@pytest.mark.parametrize("old", sorted(old_paths()))
def test_an_old_module_path_imports_silently_as_the_module_now_holding_its_code(old):
    import helpers

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = importlib.import_module(f"helpers.{old}")
    new = importlib.import_module(old_paths()[old][0])
    if len(old_paths()[old]) == 1:
        assert module is new and getattr(helpers, old) is new
        assert new.__spec__.name == new.__name__  # the alias did not take over the real module
    for name in getattr(new, "__all__", []):
        assert getattr(module, name) is getattr(new, name)


def test_old_submodule_paths_are_the_same_modules_not_second_copies():
    import helpers.explain.circuit as old
    import helpers.teach.explain.circuit as new

    assert old is new


def test_a_name_that_moved_layer_is_still_found_at_its_old_path():
    from helpers.behaviours import REFUSAL, template_check
    from helpers.data.behaviours import REFUSAL as new_refusal
    from helpers.methods.observe import template_check as new_check

    assert template_check is new_check and REFUSAL is new_refusal


@pytest.mark.parametrize("old, names", [("models", ["load_model", "model_facts", "hf_model",
                                                    "remote_mode", "ModelLoadError", "DEFAULT_MODEL"]),
                                        ("results", ["PatchResult"]),
                                        ("circuits", ["minimal_circuit", "CircuitSearch",
                                                      "component_patch", "all_components"])])
def test_old_modules_that_became_layer_packages_keep_their_names(old, names):
    module = importlib.import_module(f"helpers.{old}")
    assert all(hasattr(module, n) for n in names)
