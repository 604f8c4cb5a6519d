#!/usr/bin/env python3
"""Execute the tutorial notebooks headlessly with papermill.

Runs every ``notebooks/[0-9]*.ipynb`` in sorted order, each in a fresh kernel whose working
directory is ``notebooks/`` (as under nbval, so relative paths behave the same), and writes the
executed copies to ``outputs/executed/<name>.ipynb``. Prints each notebook's wall time and a
final table; exits 1 if any notebook failed.

Parameters (papermill style) go to every notebook, but only to notebooks whose cell tagged
``parameters`` assigns that name; the others skip it (papermill would otherwise add it to
a notebook that ignores it). Examples::

    python scripts/run_notebooks.py
    python scripts/run_notebooks.py --only 03
    python scripts/run_notebooks.py -p n_prompts 8 -r model openai-community/gpt2
    python scripts/run_notebooks.py --list

``-p NAME VALUE`` converts VALUE like papermill does (True/False/None, int, float, else a
string), except that a notebook whose default for NAME is a string gets VALUE as a string and
one whose default is a float gets a float. A VALUE that cannot have the type of a notebook's
default (bool, int or float, e.g. ``-p n_pairs abc`` where the default is 16) is an error
reported before any notebook runs. ``-r NAME VALUE`` always passes a string, unchecked.

Every notebook is checked before it runs: one that is not valid JSON, not a valid Jupyter
notebook, or has no code to run (no cells, or no non-empty code cell) is reported by name as
FAILED with the reason, the others still run, and the exit status is 1.

Run it with the project's interpreter (``.venv/bin/python``, as ``scripts/run_all.sh`` does):
the kernel is the ``python3`` kernel of that environment.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
DEFAULT_OUTPUT_DIR = ROOT / "outputs" / "executed"
_UNKNOWN = object()  # a parameter whose default is not a literal


class NotebookProblem(ValueError):
    """A notebook that cannot be run: the message says why, in one line."""


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def load_notebook(nb_path: Path) -> dict[str, Any]:
    """The notebook as a dict, after checking that it can be run.

    Raises NotebookProblem (one-line reason) if the file cannot be read, is not valid JSON,
    is not a valid Jupyter notebook (``nbformat.validate``), or has no code to run (no cells,
    or no code cell with any source).
    """
    import nbformat

    try:
        text = nb_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NotebookProblem(f"cannot read it: {_one_line(exc)}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotebookProblem(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "nbformat" not in data:
        raise NotebookProblem("not a Jupyter notebook: the JSON is not an object with an "
                              "'nbformat' field")
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # nbformat's ValidationError, NBFormatError, ...
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        raise NotebookProblem(f"not a valid notebook: {_one_line(message)}") from exc
    if not nb.cells:
        raise NotebookProblem("empty notebook: it has no cells")
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code:
        raise NotebookProblem("nothing to run: it has no code cells")
    if not any(c.source.strip() for c in code):
        raise NotebookProblem("nothing to run: every code cell is empty")
    return nb


# --------------------------------------------------------------------------- parameters
def resolve_value(text: str) -> Any:
    """Convert a command-line value the way papermill's ``-p`` does."""
    if text == "True":
        return True
    if text == "False":
        return False
    if text == "None":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parameters_cell_defaults(nb: Path | dict[str, Any]) -> dict[str, Any] | None:
    """Names assigned at top level of the cell tagged ``parameters``, with their literal defaults.

    ``nb`` is a notebook file (checked with ``load_notebook``) or an already loaded notebook.
    Returns None if the notebook has no such cell; raises NotebookProblem if that cell is not
    valid Python.
    """
    if not isinstance(nb, dict):
        nb = load_notebook(nb)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        if "parameters" not in cell.get("metadata", {}).get("tags", []):
            continue
        source = cell.get("source", "")
        if isinstance(source, list):
            source = "".join(source)
        # Drop IPython magics / shell lines so the rest still parses.
        lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError as exc:
            raise NotebookProblem(f"cannot parse its parameters cell: {_one_line(exc)}") from exc
        defaults: dict[str, Any] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            for target in targets:
                names = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
                for name in names:
                    if isinstance(name, ast.Name):
                        try:
                            defaults[name.id] = ast.literal_eval(value) if len(names) == 1 else _UNKNOWN
                        except (ValueError, SyntaxError, TypeError):
                            defaults[name.id] = _UNKNOWN
        return defaults
    return None


def typed_value_problem(name: str, text: str, default: Any) -> str | None:
    """Why ``-p name text`` cannot have the type of the notebook's default, or None if it can.

    Only bool, int and float defaults are checked (a str default takes any text; None, a
    non-literal or a container default says nothing about the type wanted).
    """
    value = resolve_value(text)
    if isinstance(default, bool):
        ok, wanted, must, example = isinstance(value, bool), "bool", "True or False", not default
    elif isinstance(default, int):
        ok, wanted, must, example = type(value) is int, "int", "an int", default
    elif isinstance(default, float):
        ok, wanted, must, example = type(value) in (int, float), "float", "a number", default
    else:
        return None
    if ok:
        return None
    return (f"-p {name} {text!r}: the default of {name} is {default!r} ({wanted}), so the value "
            f"must be {must}, e.g. -p {name} {example!r}")


def parameters_for(
    defaults: dict[str, Any] | None,
    typed: list[tuple[str, str]],
    raw: list[tuple[str, str]],
) -> tuple[dict[str, Any], list[str]]:
    """The parameters to inject into one notebook, and the names skipped."""
    chosen: dict[str, Any] = {}
    skipped: list[str] = []
    requests = [(n, v, False) for n, v in typed] + [(n, v, True) for n, v in raw]
    for name, text, is_raw in requests:
        if defaults is None or name not in defaults:
            if name not in skipped:
                skipped.append(name)
            continue
        default = defaults[name]
        if is_raw or isinstance(default, str):
            value: Any = text
        else:
            value = resolve_value(text)
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
        chosen[name] = value
    return chosen, skipped


# --------------------------------------------------------------------------- notebooks
def find_notebooks(only: list[str]) -> list[Path]:
    """``NOTEBOOK_DIR/[0-9]*.ipynb`` in sorted order, filtered by ``--only`` patterns."""
    notebooks = sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
    if only:
        notebooks = [
            nb for nb in notebooks
            if any(fnmatch.fnmatch(nb.name, pat) or pat in nb.name for pat in only)
        ]
    return notebooks


def check_kernel(kernel_name: str) -> str:
    """Describe which interpreter the kernel will run; warn if it is not this environment's."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise SystemExit(
            f"error: no Jupyter kernel named {kernel_name!r} is visible to {sys.executable}. "
            "Install ipykernel in this environment (bash scripts/setup.sh does)."
        )
    exe = spec.argv[0] if spec.argv else "?"
    py = f"python{sys.version_info[0]}"
    if exe in {"python", py, f"{py}.{sys.version_info[1]}"}:
        return f"{kernel_name} -> {sys.executable} ({spec.resource_dir})"
    if Path(exe).resolve() != Path(sys.executable).resolve():
        print(
            f"warning: kernel {kernel_name!r} runs {exe} (from {spec.resource_dir}), "
            f"not this interpreter ({sys.executable}); the notebooks may not see this "
            "environment's packages. Remove that kernelspec, set JUPYTER_PREFER_ENV_PATH=1, "
            "or pass --kernel.",
            file=sys.stderr,
        )
    return f"{kernel_name} -> {exe} ({spec.resource_dir})"


@dataclass
class Result:
    name: str
    status: str = "not run"
    seconds: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    output: Path | None = None
    error: str = ""


def run_one(nb: Path, out: Path, parameters: dict[str, Any], args) -> Result:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    result = Result(nb.name, parameters=parameters, output=out)
    start = time.perf_counter()
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # reported in the summary like any other failure
            raise NotebookProblem(f"cannot create the output folder {out.parent} "
                                  f"({exc.strerror or exc}): pass --output-dir with a folder "
                                  "you can write") from None
        pm.execute_notebook(
            str(nb),
            str(out),
            parameters=parameters,
            kernel_name=args.kernel,
            language="python",
            cwd=str(NOTEBOOK_DIR),
            progress_bar=args.progress,
            log_output=args.log_output,
            execution_timeout=args.timeout,
            start_timeout=120,
        )
        result.status = "ok"
    except PapermillExecutionError as exc:
        result.status = "FAILED"
        result.error = f"cell {exc.cell_index} (In [{exc.exec_count}]): {exc.ename}: {exc.evalue}"
    except KeyboardInterrupt:
        result.status = "interrupted"
        raise
    except Exception as exc:  # kernel died, timeout, bad notebook...
        result.status = "FAILED"
        result.error = f"{type(exc).__name__}: {exc}"
        if args.verbose:
            traceback.print_exc()
    finally:
        result.seconds = time.perf_counter() - start
    return result


def print_table(results: list[Result], total: float) -> None:
    rows = [("notebook", "status", "wall time", "parameters")]
    for r in results:
        params = ", ".join(f"{k}={v!r}" for k, v in r.parameters.items()) or "-"
        rows.append((r.name, r.status, f"{r.seconds:.1f} s", params))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print()
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[j]) if j < 3 else cell for j, cell in enumerate(row)))
        if i == 0:
            print("  ".join("-" * w for w in widths) + "  " + "-" * 10)
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        if r.error:
            print(f"\n{r.name}: {r.error}")
    print(f"\ntotal wall time {total:.1f} s; executed notebooks in {display(results)}")
    print(f"notebooks: {len(results) - len(failed)} passed, {len(failed)} failed")


def display(results: list[Result]) -> str:
    outs = {str(r.output.parent) for r in results if r.output is not None}
    return ", ".join(sorted(outs)) or "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Execute notebooks/[0-9]*.ipynb with papermill into outputs/executed/.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("-p", "--parameters", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="parameter, typed like papermill's -p")
    parser.add_argument("-r", "--parameters-raw", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="parameter passed as a string")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="run only notebooks whose name contains PATTERN or matches it as a "
                             "glob (repeatable)")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR,
                        help="where executed copies go (default: outputs/executed)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="per-cell timeout in seconds (default: 600)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    parser.add_argument("--log-output", action="store_true", help="stream cell outputs")
    parser.add_argument("--progress", action="store_true", help="show papermill's progress bar")
    parser.add_argument("--list", action="store_true",
                        help="list the notebooks and their parameters, run nothing")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    all_notebooks = sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
    if not all_notebooks:
        print(f"no notebooks found ({_shown(NOTEBOOK_DIR)}/[0-9]*.ipynb): nothing to run.")
        return 0
    notebooks = find_notebooks(args.only)
    if not notebooks:
        print(f"error: no notebook matches --only {' '.join(args.only)}; there are: "
              + ", ".join(nb.name for nb in all_notebooks), file=sys.stderr)
        return 2

    # Each plan: (notebook, defaults, parameters, skipped names, problem). A notebook that
    # cannot be run gets its one-line problem here and is reported as FAILED, not run.
    plans = []
    bad_values: dict[str, list[str]] = {}  # message -> notebooks it applies to
    for nb in notebooks:
        try:
            defaults = parameters_cell_defaults(load_notebook(nb))
        except NotebookProblem as exc:
            plans.append((nb, None, {}, [], str(exc)))
            continue
        for name, text in args.parameters:
            if defaults is not None and name in defaults:
                problem = typed_value_problem(name, text, defaults[name])
                if problem:
                    bad_values.setdefault(problem, []).append(nb.name)
        # Headless: no widget explorers unless asked (nbclient can miss the reply to a widget
        # cell and wait for its timeout), and the default cell timeout bounds any such stall.
        headless = [("show_widgets", "False")] if not any(n == "show_widgets" for n, _ in
                                                           args.parameters + args.parameters_raw) else []
        params, skipped = parameters_for(defaults, headless + args.parameters, args.parameters_raw)
        skipped = [s for s in skipped if s != "show_widgets"]
        plans.append((nb, defaults, params, skipped, None))

    if args.list:
        for nb, defaults, _, _, problem in plans:
            if problem:
                print(f"{nb.name}: FAILED -- {problem}")
            elif defaults is None:
                print(f"{nb.name}: no cell tagged 'parameters'")
            else:
                shown = ", ".join(f"{k}={'?' if v is _UNKNOWN else repr(v)}" for k, v in defaults.items())
                print(f"{nb.name}: {shown or '(empty parameters cell)'}")
        return 1 if any(plan[4] for plan in plans) else 0

    if bad_values:
        for message, names in bad_values.items():
            print(f"error: {message} (in {', '.join(names)})", file=sys.stderr)
        print("nothing was run.", file=sys.stderr)
        return 2

    print(f"python: {sys.executable}")
    print(f"kernel: {check_kernel(args.kernel)}")
    print(f"cwd for the kernels: {NOTEBOOK_DIR}")
    output_dir = args.output_dir.resolve()
    results: list[Result] = []
    total_start = time.perf_counter()
    try:
        for i, (nb, defaults, params, skipped, problem) in enumerate(plans, 1):
            if problem:
                result = Result(nb.name, status="FAILED", error=problem)
                results.append(result)
                print(f"[{i}/{len(plans)}] {nb.name}: FAILED before running -- {problem}", flush=True)
                if args.fail_fast:
                    break
                continue
            note = ""
            if params:
                note += " with " + ", ".join(f"{k}={v!r}" for k, v in params.items())
            if skipped:
                why = "no parameters cell" if defaults is None else "not in its parameters cell"
                note += f" (skipping {', '.join(skipped)}: {why})"
            print(f"[{i}/{len(plans)}] {nb.name}{note} ...", flush=True)
            result = run_one(nb, output_dir / nb.name, params, args)
            result.skipped = skipped
            results.append(result)
            print(f"[{i}/{len(plans)}] {nb.name}: {result.status} in {result.seconds:.1f} s"
                  + (f" -- {result.error}" if result.error else ""), flush=True)
            if result.status != "ok" and args.fail_fast:
                break
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        results.append(Result(plans[len(results)][0].name, status="interrupted"))
    print_table(results, time.perf_counter() - total_start)
    ok = len(results) == len(plans) and all(r.status == "ok" for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
