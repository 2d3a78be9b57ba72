"""Every notebook is clean, parameterised and tested; one source of truth: notebooks/[0-9][0-9]_*.ipynb."""
from __future__ import annotations

import ast
import json

import pytest

from conftest import NOTEBOOKS, ROOT


def _cells(path):
    return json.loads(path.read_text())["cells"]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    for c in _cells(path):
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, f"{path.name}: clear outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_flat_parameters_cell_visible_to_papermill(path):
    cells = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    src = "".join(cells[0]["source"])
    tree = ast.parse(src)
    names = []
    for node in tree.body:  # flat and literal-only: annotated assignments of literals
        assert isinstance(node, (ast.AnnAssign, ast.Assign)), f"{path.name}: only assignments in parameters"
        value = node.value
        ast.literal_eval(value)  # raises on anything but a literal
        names.append(node.target.id if isinstance(node, ast.AnnAssign) else node.targets[0].id)
    assert "model" in names and "results_json" in names
    import papermill as pm
    inferred = set(pm.inspect_notebook(str(path)))
    assert set(names) <= inferred, f"{path.name}: papermill cannot parse {set(names) - inferred} (no '|' in " \
                                   f"annotations, no '=' in comments)"
    assert json.loads(path.read_text())["metadata"]["kernelspec"]["name"] == "linker-nb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_has_its_own_test_file(path):
    num = path.stem.split("_")[0]
    assert list((ROOT / "tests").glob(f"test_nb_{num}_*.py")), f"no tests/test_nb_{num}_*.py for {path.name}"
    assert any(path.stem in p.read_text() for p in (ROOT / "tests").glob(f"test_nb_{num}_*.py"))


def test_demo_runs_every_notebook():
    """make demo iterates the same glob as the tests."""
    assert "wildcard notebooks/[0-9][0-9]_*.ipynb" in (ROOT / "Makefile").read_text()


def _code_lines(path):
    """Non-blank line counts of every code cell after the parameters cell."""
    code = [c for c in _cells(path) if c["cell_type"] == "code"
            and "parameters" not in c.get("metadata", {}).get("tags", [])]
    return [len([ln for ln in "".join(c["source"]).splitlines() if ln.strip()]) for c in code]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_stay_thin(path):
    """The contract (STYLE.md): the cell after `parameters` is the package's setup (<= 6 lines), every code cell
    is short (mean <= 5 lines), the parameters are validated by `params.setup` from the cell's annotations (never
    a hand-written dict of types), and the results JSON is built by a `schemas` function."""
    lines = _code_lines(path)
    assert lines[0] <= 6, f"{path.name}: setup cell has {lines[0]} lines"
    assert sum(lines) / len(lines) <= 5, f"{path.name}: mean code cell {sum(lines) / len(lines):.1f} lines"
    code = "".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code")
    assert "params.setup(globals())" in code and "schemas." in code and "run.write(" in code
    assert "validate(" not in code and "dict(model=" not in code, f"{path.name}: parameters written twice"
