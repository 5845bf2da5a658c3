"""The LaTeX report: built from the smoke notebooks' artifacts, and true to the runs it quotes.

The build tests need latexmk (and poppler's pdftotext); CI installs both first (`make tex`
in .ci/run), so they only skip on a developer machine without TeX.
"""

from __future__ import annotations
from conftest import run_folder

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from mnist_lab import cli, paths
from mnist_lab.workbook import report
from mnist_lab.errors import LabError

HAVE_TEX = shutil.which("latexmk") is not None and shutil.which("pdftotext") is not None
needs_tex = pytest.mark.skipif(not HAVE_TEX, reason="latexmk/pdftotext not installed: run `make tex` to build the report")

# The course report's Tables 1-4, by the experiment whose run each one shows.
HISTORY_TABLES = {1: "basic_cnn", 2: "cnn", 3: "mobilenet", 4: "vit"}
# The artifact contract: what the notebooks write and the report must show.
CONTRACT_FIGURES = {
    "q1_convolution": ["q1_cnn_pipeline", "q1_kernel_sliding", "q1_classic_kernels"],
    "q1_losses": ["q1_losses", "q1_outliers"],
    "q2_cnn": ["basic_cnn_loss", "basic_cnn_confusion", "basic_cnn_samples", "cnn_loss", "cnn_confusion",
               "cnn_samples", "cnn_ablation"],
    "q3_comparison": ["mobilenet_loss", "vit_curves", "comparison", "misclassified", "per_class_accuracy"],
}
CONTRACT_TABLES = {
    "q2_cnn": ["basic_cnn_history", "cnn_history", "cnn_ablation"],
    "q3_comparison": ["mobilenet_history", "vit_history", "comparison"],
}


def _use_artifacts(monkeypatch, directory: Path) -> None:
    # paths.ARTIFACTS is read at import; the notebook kernels papermill starts read the environment.
    monkeypatch.setenv("MNIST_LAB_ARTIFACTS", str(directory))
    monkeypatch.setattr(paths, "ARTIFACTS", directory)


def _pdftotext(pdf: Path, *args: str) -> str:
    text = subprocess.run(["pdftotext", "-layout", *args, str(pdf), "-"], check=True, capture_output=True,
                          text=True).stdout
    return text.replace("\u2019", "'")  # LaTeX's closing quote


@pytest.fixture(scope="session")
def smoke_report(smoke_artifacts):
    """The report built from the shared smoke run of every notebook (tests/conftest.py)."""
    if not HAVE_TEX:
        pytest.skip("latexmk/pdftotext not installed: run `make tex` to build the report")
    assert paths.profile_dir("smoke") == smoke_artifacts  # the shared fixture points paths there
    pdf, changed = report.build("smoke")
    return SimpleNamespace(artifacts=smoke_artifacts.parent, directory=smoke_artifacts, pdf=pdf, changed=changed,
                           text=_pdftotext(pdf), latex=smoke_artifacts / "latex")


# ---- without TeX: the source and the checks around LaTeX ------------------------------------


def test_source_shows_the_whole_artifact_contract():
    needed = report.required_artifacts()
    for notebook, names in CONTRACT_FIGURES.items():
        for name in names:
            assert needed.get(f"figures/{name}.pdf") == notebook, name
    for notebook, names in CONTRACT_TABLES.items():
        for name in names:
            assert needed.get(f"tables/{name}.tex") == notebook, name
    assert {"CnnTestAccuracy", "CnnFlipTestAccuracy", "VitTestAccuracy", "Seeds"} <= report.required_values()


def test_missing_artifacts_name_the_notebook_that_makes_them(tmp_path, monkeypatch):
    _use_artifacts(monkeypatch, tmp_path)
    with pytest.raises(LabError) as error:
        report.check_artifacts("smoke")
    message = str(error.value)
    assert "figures/cnn_loss.pdf (made by notebooks/q2_cnn.ipynb)" in message
    assert "tables/vit_history.tex (made by notebooks/q3_comparison.ipynb)" in message
    assert "mnist-lab run --profile smoke" in message


def test_first_error_of_a_log():
    log = ("(./main.tex\nsome noise\n./sections/q2.tex:57: Undefined control sequence.\n"
           "<argument> \\CnnBogus\n\nl.57 ...accuracy of \\pct{CnnBogus}\n\nmore noise\n")
    assert report.first_error(log) == ("./sections/q2.tex:57: Undefined control sequence.\n"
                                       "<argument> \\CnnBogus\nl.57 ...accuracy of \\pct{CnnBogus}")
    assert report.first_error("! Emergency stop.\n<*> main.tex\n").startswith("! Emergency stop.")
    assert report.first_error("all is well\n") is None


def test_report_info_is_rewritten_only_when_it_changes(tmp_path, monkeypatch):
    _use_artifacts(monkeypatch, tmp_path)
    assert report.write_info("smoke") is True
    target = tmp_path / "smoke" / "report_info.tex"
    stamp = target.stat().st_mtime_ns
    assert report.write_info("smoke") is False
    assert target.stat().st_mtime_ns == stamp
    text = target.read_text()
    assert "\\SmokeProfiletrue" in text and "\\newcommand{\\ReportBuildCommit}" in text


# ---- the smoke build ------------------------------------------------------------------------


@needs_tex
def test_pdf_is_built_and_marked_as_smoke(smoke_report):
    assert smoke_report.pdf == smoke_report.directory / "report.pdf"
    assert smoke_report.pdf.read_bytes().startswith(b"%PDF")
    title_page = _pdftotext(smoke_report.pdf, "-f", "1", "-l", "1")
    assert "SMOKE PROFILE" in title_page and "not the report's numbers" in title_page
    assert "INT305 Assessment 2" in title_page
    for heading in ("Contents", "Q1: Introduction to CNNs", "Q2: Constructing a CNN for MNIST",
                    "Q3: Model comparison", "References", "Appendix: code for the models"):
        assert heading in smoke_report.text, heading


@needs_tex
@pytest.mark.parametrize("course_table, experiment", HISTORY_TABLES.items())
def test_history_tables_show_the_runs_final_numbers(smoke_report, course_table, experiment):
    # The tables show the notebooks' `seeds` (default [0]); the calibration studies train more seeds.
    metrics = json.loads((run_folder(smoke_report.directory, experiment) / "metrics.json").read_text())
    # The row the tables print for the last epoch (mnist_lab.results.tables.history formats it so).
    row = (rf"^\s*{metrics['epochs']}\s+{metrics['train_loss']:.4f}\s+{metrics['train_accuracy']:.2f}%"
           rf"\s+{metrics['test_accuracy']:.2f}%\s*$")
    caption = re.search(rf"In\s+the\s+course\s+report:\s+Table\s+{course_table}\.", smoke_report.text)
    assert caption, f"no table captioned as the course report's Table {course_table}"
    following = smoke_report.text[caption.end(): caption.end() + 2000]
    assert re.search(row, following, re.MULTILINE), f"Table {course_table} lacks the final row of {experiment}"


@needs_tex
def test_prose_quotes_the_runs(smoke_report):
    metrics = json.loads((run_folder(smoke_report.directory, "cnn") / "metrics.json").read_text())
    text = " ".join(smoke_report.text.split())
    assert f"reaches a test accuracy of {metrics['test_accuracy']:.2f} %" in text


@needs_tex
def test_every_generated_figure_and_table_is_in_the_report(smoke_report):
    generated = {f"figures/{p.name}" for p in (smoke_report.directory / "figures").glob("*.pdf")}
    generated |= {f"tables/{p.name}" for p in (smoke_report.directory / "tables").glob("*.tex")}
    log = (smoke_report.latex / "main.log").read_text(errors="replace")
    included = set(re.findall(r"^mnist-lab artifact: (\S+)$", log, re.MULTILINE))
    assert included == generated
    # And LaTeX really read each file, from this profile's folder.
    read = (smoke_report.latex / "main.fls").read_text()
    for name in generated:
        assert f"INPUT {smoke_report.directory / name}" in read, name
    figures = [name for name in generated if name.startswith("figures/")]
    numbers = set(re.findall(r"^\s*Figure (\d+): ", smoke_report.text, re.MULTILINE))
    assert len(numbers) == len(figures)
    for notebook in CONTRACT_FIGURES:
        assert f"[notebooks/{notebook}.ipynb]" in " ".join(smoke_report.text.split())


@needs_tex
def test_rebuilding_with_nothing_changed_does_nothing(smoke_report, monkeypatch, capsys):
    _use_artifacts(monkeypatch, smoke_report.artifacts)
    info = smoke_report.directory / "report_info.tex"
    built = smoke_report.latex / "main.pdf"
    stamps = info.stat().st_mtime_ns, built.stat().st_mtime_ns, smoke_report.pdf.stat().st_mtime_ns
    assert cli.main(["report", "--profile", "smoke"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (info.stat().st_mtime_ns, built.stat().st_mtime_ns, smoke_report.pdf.stat().st_mtime_ns) == stamps


@needs_tex
def test_latex_error_is_a_lab_error_with_the_first_error_line(smoke_report, tmp_path, monkeypatch):
    broken = tmp_path / "artifacts"
    shutil.copytree(smoke_report.directory, broken / "smoke", ignore=shutil.ignore_patterns("latex"))
    (broken / "smoke" / "tables" / "cnn_history.tex").write_text(
        "\\begin{tabular}{r}\n\\NoSuchCommandAnywhere\n\\end{tabular}\n")
    _use_artifacts(monkeypatch, broken)
    # The scanner would refuse the unknown command before LaTeX (tests/test_report_hostile.py); off here.
    monkeypatch.setattr(report.contract, "check_latex_inputs", lambda profile: None)
    # An edited table is stale too; let it through to reach LaTeX.
    with pytest.raises(LabError) as error:
        report.build("smoke", allow_stale=True)
    message = str(error.value)
    assert "cnn_history.tex:2: Undefined control sequence." in message
    assert "NoSuchCommandAnywhere" in message
    assert cli.main(["report", "--profile", "smoke", "--allow-stale"]) == 1


@needs_tex
def test_the_pdf_carries_a_provenance_appendix(smoke_report):
    appendix = smoke_report.text[smoke_report.text.rindex("Appendix: provenance"):]
    for notebook in ("q1_convolution", "q1_losses", "q2_cnn", "q3_comparison"):
        assert notebook in appendix
    metrics = json.loads((run_folder(smoke_report.directory, "vit") / "metrics.json").read_text())
    fingerprint = json.loads((run_folder(smoke_report.directory, "vit") / "config.json").read_text())["fingerprint"]
    # The smoke ViT run goes by more names than one (`vit`, and the study's spelled-out screen).
    assert re.search(rf"vit \(\+\d\)\s+0\s+2\s+{metrics['test_accuracy']:.2f}\s*%.*{fingerprint[:12]}", appendix)


@needs_tex
def test_a_report_from_stale_artifacts_is_refused_or_marked(smoke_report, tmp_path, monkeypatch):
    copy = tmp_path / "artifacts"
    shutil.copytree(smoke_report.artifacts, copy)
    _use_artifacts(monkeypatch, copy)
    macros = copy / "smoke" / "macros" / "q1_losses.tex"
    macros.write_text(macros.read_text() + "% edited by hand\n")
    with pytest.raises(LabError, match=r"the smoke artifacts are stale \(reasons: q1_losses: 1; first: "
                                       r"macros/q1_losses.tex was modified after the run\); run `mnist-lab run "
                                       r"--profile smoke` first"):
        report.build("smoke")
    pdf, _ = report.build("smoke", allow_stale=True)
    title_page = _pdftotext(pdf, "-f", "1", "-l", "1")
    assert "BUILT FROM STALE ARTIFACTS" in title_page and "q1_losses" in title_page
