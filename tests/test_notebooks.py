"""The notebooks, executed by papermill under the smoke profile, and the runner's checks."""

import json
from conftest import run_folder

import nbformat
import pandas as pd
import pytest

from mnist_lab import paths
from mnist_lab.workbook import notebooks
from mnist_lab.errors import LabError
from mnist_lab.runs import load_run

REPORT_TABLES = {"basic_cnn_history": "basic_cnn", "cnn_history": "cnn", "mobilenet_history": "mobilenet",
                 "vit_history": "vit"}
FIGURES = {
    "q2_cnn": ["basic_cnn_loss", "basic_cnn_confusion", "basic_cnn_samples", "cnn_loss", "cnn_confusion",
               "cnn_samples", "cnn_ablation"],
    "q3_comparison": ["mobilenet_loss", "vit_curves", "comparison", "misclassified", "per_class_accuracy"],
}


@pytest.mark.parametrize("name", notebooks.available())
def test_committed_notebooks_have_no_outputs_and_a_parameters_cell(name):
    notebook = nbformat.read(paths.NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert notebooks.declared_parameters(name)["profile"] == "smoke"


def test_the_smoke_run_keeps_every_executed_notebook(smoke_artifacts):
    for name in notebooks.available():
        executed = nbformat.read(smoke_artifacts / "notebooks" / f"{name}.ipynb", as_version=4)
        errors = [o for cell in executed.cells for o in cell.get("outputs", []) if o.output_type == "error"]
        assert errors == []
        assert executed.metadata["papermill"]["parameters"]["profile"] == "smoke"


@pytest.mark.parametrize("notebook", FIGURES)
def test_figures_are_vector_pdfs_with_embedded_truetype_fonts(smoke_artifacts, notebook):
    for figure in FIGURES[notebook]:
        pdf = (smoke_artifacts / "figures" / f"{figure}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"/Type3" not in pdf and b"/CreationDate" not in pdf
        assert (smoke_artifacts / "figures" / f"{figure}.png").stat().st_size > 5_000


@pytest.mark.parametrize("table, experiment", REPORT_TABLES.items())
def test_report_tables_match_their_runs(smoke_artifacts, table, experiment):
    run = load_run(run_folder(smoke_artifacts, experiment))
    frame = pd.read_csv(smoke_artifacts / "tables" / f"{table}.csv")
    assert list(frame.columns) == ["Epoch", "Loss", "Train Accuracy", "Test Accuracy"]
    assert frame["Epoch"].tolist() == run.history["epoch"].tolist() == [1, 2]  # smoke caps epochs at 2
    assert frame["Test Accuracy"].iloc[-1] == f"{run.metrics['test_accuracy']:.2f}%"
    assert run.config["train_size"] == 1000 and run.config["test_size"] == 500
    latex = (smoke_artifacts / "tables" / f"{table}.tex").read_text()
    assert "\\toprule" in latex and f"{run.metrics['test_accuracy']:.2f}\\%" in latex


def test_macros_quote_the_runs(smoke_artifacts):
    macros = (smoke_artifacts / "macros" / "q2_cnn.tex").read_text()
    accuracy = json.loads((run_folder(smoke_artifacts, "cnn") / "metrics.json").read_text())["test_accuracy"]
    assert f"\\newcommand{{\\CnnTestAccuracy}}{{{accuracy:.2f}}}" in macros
    assert "\\newcommand{\\CnnParameters}{421{,}642}" in macros
    # A macro is defined by one notebook only, so the report can \input them all.
    names = [line.split("}")[0] for name in notebooks.available()
             if (smoke_artifacts / "macros" / f"{name}.tex").exists()
             for line in (smoke_artifacts / "macros" / f"{name}.tex").read_text().splitlines()
             if line.startswith("\\newcommand")]
    assert len(names) == len(set(names))


def test_comparison_covers_the_four_models(smoke_artifacts):
    frame = pd.read_csv(smoke_artifacts / "tables" / "comparison.csv")
    assert frame["Model"].tolist() == ["basic_cnn", "cnn", "mobilenet", "vit"]
    assert (frame["MFLOPs per Image"] > 0).all() and (frame["Inference Images/s"] > 0).all()
    # MobileNet: fewer parameters than the optimized CNN, but more arithmetic per image.
    by_model = frame.set_index("Model")
    assert by_model.loc["mobilenet", "Parameters"] < by_model.loc["cnn", "Parameters"]
    assert by_model.loc["mobilenet", "MFLOPs per Image"] > by_model.loc["cnn", "MFLOPs per Image"]


# ---- the runner's checks, without executing anything --------------------------------------

def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(LabError, match=r"notebook q2_cnn has no parameter 'seed'; its parameters: profile, device, seeds"):
        notebooks.check_parameters("q2_cnn", {"seed": 1})


@pytest.mark.parametrize("value", ["0", 0, [0.5], True, [True]])
def test_mistyped_parameter_is_an_error(value):
    with pytest.raises(LabError, match="parameter 'seeds' must be list"):
        notebooks.check_parameters("q2_cnn", {"seeds": value})


def test_unknown_notebook_and_profile(tmp_path):
    with pytest.raises(LabError, match="unknown notebook 'q4'; choose from: .*q2_cnn, q3_comparison"):
        notebooks.execute_all(["q2_cnn", "q4"], profile="smoke")
    with pytest.raises(LabError, match="unknown profile 'fast'"):
        notebooks.execute("q2_cnn", profile="fast")


def test_a_failing_cell_is_reported_and_its_notebook_kept(tmp_path, monkeypatch):
    source = tmp_path / "notebooks"
    source.mkdir()
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('profile = "smoke"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise ValueError('the data went missing')"),
    ])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, source / "broken.ipynb")
    monkeypatch.setattr(paths, "NOTEBOOKS", source)
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path / "artifacts")
    with pytest.raises(LabError, match=r"notebook broken failed in cell \[4\] \(raise ValueError\('the data went missing'\)\) "
                                       r"with ValueError: the data went missing; "
                                       r"previous artifacts intact; the failed run is kept at .*broken.failed.ipynb"):
        notebooks.execute("broken", profile="smoke", progress=False)
    kept = nbformat.read(tmp_path / "artifacts" / "smoke" / "notebooks" / "broken.failed.ipynb", as_version=4)
    errors = [o for cell in kept.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    assert [e.ename for e in errors] == ["ValueError"]
