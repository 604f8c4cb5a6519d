"""scripts/run_notebooks.py on temporary notebook folders: a notebook that cannot be run
(broken JSON, not a notebook, no cells, no code) is reported by name as FAILED while the
others still run, and a -p value of the wrong type is refused before anything runs.

The runner reads its notebooks from the module attribute ``NOTEBOOK_DIR`` (monkeypatched
here) and writes executed copies to ``--output-dir``. A tiny notebook runs in a few seconds
in the python3 kernel of this environment.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "run_notebooks.py"
_spec = importlib.util.spec_from_file_location("run_notebooks", _SCRIPT)
rn = importlib.util.module_from_spec(_spec)
sys.modules["run_notebooks"] = rn  # before exec: dataclasses look their module up there
_spec.loader.exec_module(rn)


def notebook(*cells: dict) -> dict:
    return {"cells": list(cells), "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                              "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def code(source: str, tags: tuple[str, ...] = (), i: int = 0) -> dict:
    return {"cell_type": "code", "id": f"c{i}-{len(source)}", "metadata": {"tags": list(tags)},
            "source": source, "outputs": [], "execution_count": None}


def markdown(source: str) -> dict:
    return {"cell_type": "markdown", "id": "m0", "metadata": {}, "source": source}


#: a good tiny notebook: a parameters cell and one print(1) cell
GOOD = notebook(code("n_pairs: int = 2\nthreshold: float = 0.8\nshow_widgets: bool = True\n"
                     "label: str = 'x'", ("parameters",), 0),
                code("print(1)", i=1))

BAD = {  # name -> (file text, expected reason)
    "broken_json": ('{"cells": [', "not valid JSON"),
    "not_a_notebook": ('{"a": 1}', "not a Jupyter notebook"),
    "json_list": ("[1, 2]", "not a Jupyter notebook"),
    "invalid_cell": (json.dumps(notebook({**code("x = 1"), "bogus": 1})), "not a valid notebook"),
    "no_cells": (json.dumps(notebook()), "empty notebook: it has no cells"),
    "markdown_only": (json.dumps(notebook(markdown("# title"))), "no code cells"),
    "blank_code": (json.dumps(notebook(code("  \n"))), "every code cell is empty"),
}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty notebooks folder the runner reads from; write(name, text or dict) adds one."""
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    monkeypatch.setattr(rn, "NOTEBOOK_DIR", nb_dir)

    def write(name: str, content) -> None:
        text = content if isinstance(content, str) else json.dumps(content)
        (nb_dir / name).write_text(text, encoding="utf-8")

    write.dir = nb_dir
    write.out = tmp_path / "executed"
    return write


def run(folder, *args: str) -> int:
    return rn.main(["--output-dir", str(folder.out), "--timeout", "60", *args])


@pytest.mark.parametrize("kind", sorted(BAD))
def test_every_kind_of_unrunnable_notebook_gets_a_one_line_reason(tmp_path, kind):
    text, reason = BAD[kind]
    path = tmp_path / "x.ipynb"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(rn.NotebookProblem, match=reason) as info:
        rn.load_notebook(path)
    assert "\n" not in str(info.value)


def test_parameters_cell_that_is_not_python_fails_that_notebook_only(folder, capsys):
    folder("01_bad_parameters.ipynb", notebook(code("n_pairs = = 2", ("parameters",)), code("print(1)", i=1)))
    folder("02_good.ipynb", GOOD)
    assert run(folder) == 1
    out = capsys.readouterr().out
    assert "01_bad_parameters.ipynb: FAILED before running -- cannot parse its parameters cell" in out
    assert "02_good.ipynb: ok" in out


def test_good_tiny_notebook_runs_ok_with_its_parameter_injected(folder, capsys):
    folder("01_good.ipynb", GOOD)
    assert run(folder, "-p", "n_pairs", "5", "-p", "threshold", "1") == 0
    out = capsys.readouterr().out
    assert "01_good.ipynb: ok" in out and "1 passed, 0 failed" in out
    executed = json.loads((folder.out / "01_good.ipynb").read_text())
    sources = ["".join(c["source"]) for c in executed["cells"]]
    assert any("n_pairs = 5" in s and "threshold = 1.0" in s for s in sources)  # injected, float kept
    printed = [o.get("text", "") for c in executed["cells"] for o in c.get("outputs", [])]
    assert any("1" in "".join(t) for t in printed)


def test_empty_notebooks_fail_by_name_and_the_others_still_run(folder, capsys):
    folder("01_no_cells.ipynb", notebook())
    folder("02_markdown_only.ipynb", notebook(markdown("# nothing to run")))
    folder("03_good.ipynb", GOOD)
    assert run(folder) == 1
    out = capsys.readouterr().out
    assert "01_no_cells.ipynb: FAILED before running -- empty notebook: it has no cells" in out
    assert "02_markdown_only.ipynb: FAILED before running -- nothing to run: it has no code cells" in out
    assert "03_good.ipynb: ok" in out
    assert (folder.out / "03_good.ipynb").exists()
    assert "1 passed, 2 failed" in out


def test_broken_json_fails_by_name_the_others_still_run_and_exit_code_is_1(folder, capsys):
    folder("01_broken.ipynb", '{"cells": [')
    folder("02_good.ipynb", GOOD)
    folder("03_not_a_notebook.ipynb", '{"a": 1}')
    assert run(folder, "-p", "n_pairs", "3") == 1
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if "FAILED before running" in line]
    assert len(failed) == 2
    assert failed[0].startswith("[1/3] 01_broken.ipynb: FAILED before running -- not valid JSON: ")
    assert failed[1].startswith("[3/3] 03_not_a_notebook.ipynb: FAILED before running -- "
                                "not a Jupyter notebook")
    assert "02_good.ipynb: ok" in out and "1 passed, 2 failed" in out
    # the final table repeats each failure's reason under the notebook's name
    assert "\n01_broken.ipynb: not valid JSON" in out


def test_list_names_a_broken_notebook_and_exits_1(folder, capsys):
    folder("01_broken.ipynb", '{"cells": [')
    folder("02_good.ipynb", GOOD)
    assert run(folder, "--list") == 1
    out = capsys.readouterr().out
    assert "01_broken.ipynb: FAILED -- not valid JSON" in out
    assert "02_good.ipynb: n_pairs=2, threshold=0.8, show_widgets=True, label='x'" in out


@pytest.mark.parametrize("name, value, wanted, example", [
    ("n_pairs", "abc", "(int)", "e.g. -p n_pairs 2"),
    ("n_pairs", "2.5", "(int)", "e.g. -p n_pairs 2"),
    ("n_pairs", "True", "(int)", "e.g. -p n_pairs 2"),
    ("threshold", "high", "(float)", "e.g. -p threshold 0.8"),
    ("show_widgets", "1", "(bool)", "e.g. -p show_widgets False"),
])
def test_parameter_of_the_wrong_type_is_refused_before_anything_runs(folder, capsys, name, value,
                                                                     wanted, example):
    folder("01_good.ipynb", GOOD)
    assert run(folder, "-p", name, value) == 2
    err = capsys.readouterr().err
    assert f"-p {name} {value!r}: the default of {name} is" in err
    assert wanted in err and example in err and "01_good.ipynb" in err
    assert "nothing was run" in err
    assert not folder.out.exists()


@pytest.mark.parametrize("name, value, default", [
    ("n_pairs", "7", 2), ("threshold", "1", 0.8), ("threshold", "1e-3", 0.8),
    ("show_widgets", "False", True), ("label", "123", "x"), ("layer", "abc", None),
    ("layer", "3", rn._UNKNOWN),
])
def test_values_that_fit_the_default_type_are_accepted(name, value, default):
    assert rn.typed_value_problem(name, value, default) is None


def test_an_output_folder_that_cannot_be_created_is_a_failure_in_the_summary(folder, tmp_path, capsys):
    folder("01_good.ipynb", GOOD)
    (tmp_path / "file").write_text("")
    code = rn.main(["--output-dir", str(tmp_path / "file" / "executed"), "--timeout", "60"])
    out = capsys.readouterr().out
    assert code == 1
    assert "01_good.ipynb: FAILED" in out and "cannot create the output folder" in out
    assert "notebooks: 0 passed, 1 failed" in out
