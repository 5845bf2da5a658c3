"""Provenance records and staleness: what makes a notebook's artifacts stale, and what does not."""

import json

import nbformat
import pytest

from mnist_lab.workbook import notebooks, provenance

from conftest import copy_project, new_project, point_at

# Two tiny notebooks that use the Workbook as the real ones do, so a test runs in seconds.
SOURCE = '''from mnist_lab.workbook import Workbook
wb = Workbook("{name}", profile=profile)
wb.macro("{macro}", scale * 2)'''


@pytest.fixture(scope="module")
def executed_project(tmp_path_factory):
    """A copy of the project's package and data, two tiny notebooks, executed once by the runner."""
    root = new_project(tmp_path_factory.mktemp("project"), {
        name: ('profile = "smoke"  # which outputs\nscale = 1  # a number', SOURCE.format(name=name, macro=macro))
        for name, macro in (("alpha", "Alpha"), ("beta", "Beta"))})
    with pytest.MonkeyPatch.context() as patch:
        point_at(patch, root)
        assert notebooks.execute_all(None, profile="smoke", progress=False) == ["alpha", "beta"]
    return root


@pytest.fixture
def tiny_project(executed_project, tmp_path, monkeypatch):
    """A fresh copy of the executed project for one test to change."""
    return copy_project(executed_project, tmp_path, monkeypatch)


def _status(**kwargs):
    return {name: notebooks.status(name, "smoke", **kwargs) for name in notebooks.available()}


def test_a_fresh_run_records_its_inputs_and_outputs(tiny_project):
    assert _status() == {"alpha": [], "beta": []}
    record = json.loads(provenance.record_path("smoke", "alpha").read_text())
    assert record["parameters"] == {"profile": "smoke", "scale": 1}
    assert set(record["outputs"]) == {"macros/alpha.tex", "notebooks/alpha.ipynb"}
    assert "mnist_lab/workbook/book.py" in record["sources"] and "mnist_lab/q1/losses.py" not in record["sources"]
    assert record["git"]["commit"] and record["wall_seconds"] > 0 and record["environment"]["torch"]
    assert "\\newcommand{\\Alpha}{2}" in (tiny_project / "artifacts/smoke/macros/alpha.tex").read_text()
    # Nothing is stale, so nothing runs again.
    assert notebooks.execute_all(None, profile="smoke", progress=False) == []


def test_editing_one_notebook_makes_only_it_stale(tiny_project):
    path = tiny_project / "notebooks" / "alpha.ipynb"
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[1].source += "\nprint('one more line')"
    nbformat.write(notebook, path)
    assert _status() == {"alpha": ["alpha.ipynb's code changed"], "beta": []}
    assert notebooks.execute_all(None, profile="smoke", progress=False) == ["alpha"]
    assert _status() == {"alpha": [], "beta": []}


def test_prose_and_outputs_in_the_notebook_do_not_count(tiny_project):
    path = tiny_project / "notebooks" / "beta.ipynb"
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_markdown_cell("A new paragraph."))
    nbformat.write(notebook, path)
    assert _status()["beta"] == []


def test_a_changed_package_module_makes_its_users_stale(tiny_project):
    workbook = tiny_project / "mnist_lab" / "workbook" / "book.py"
    original = workbook.read_text()
    workbook.write_text(original + "\n# a comment changes nothing\n")
    assert _status() == {"alpha": [], "beta": []}
    workbook.write_text(original + "\n_EDITED = True\n")
    assert _status() == {"alpha": ["mnist_lab/workbook/book.py changed"], "beta": ["mnist_lab/workbook/book.py changed"]}
    # A module neither notebook imported changes nothing.
    losses = tiny_project / "mnist_lab" / "results" / "reference.py"
    workbook.write_text(original)
    losses.write_text(losses.read_text() + "\n_EDITED = True\n")
    assert _status() == {"alpha": [], "beta": []}


def test_a_changed_parameter_makes_the_notebook_stale(tiny_project):
    assert _status(parameters={"scale": 3})["alpha"] == ["parameter scale changed (1 → 3)"]


def test_changed_data_makes_every_notebook_stale(tiny_project):
    labels = tiny_project / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes() + b"\0")
    assert _status()["beta"] == ["MNIST data changed (t10k-labels-idx1-ubyte)"]


def test_an_edited_or_missing_output_is_stale(tiny_project):
    (tiny_project / "artifacts/smoke/macros/alpha.tex").write_text("% edited by hand\n")
    (tiny_project / "artifacts/smoke/notebooks/beta.ipynb").unlink()
    assert _status() == {"alpha": ["macros/alpha.tex was modified after the run"],
                         "beta": ["notebooks/beta.ipynb is missing"]}


def test_force_runs_everything(tiny_project):
    assert notebooks.execute_all(["beta"], profile="smoke", force=True, progress=False) == ["beta"]
