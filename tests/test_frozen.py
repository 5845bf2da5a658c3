"""The studies' runs frozen with the repository: used where the run cache lacks them, marked
exactly when they no longer match the code, refused when missing or made from uncommitted code."""

from __future__ import annotations

import json
import shutil

import pytest

from mnist_lab import paths
from mnist_lab.errors import LabError
from mnist_lab.results import calibration
from mnist_lab.runs import RunCache
from mnist_lab.runs import frozen as frozen_runs
from mnist_lab.workbook import notebooks

from conftest import write_pages

STUDY_NOTEBOOKS = ["q2_cnn", "q3_comparison"]


@pytest.fixture
def frozen_smoke(smoke_artifacts, tmp_path, monkeypatch):
    """The smoke build's study runs frozen into a folder of the test's own; artifacts elsewhere."""
    monkeypatch.setattr(paths, "FROZEN", tmp_path / "frozen")
    monkeypatch.setenv("MNIST_LAB_FROZEN", str(tmp_path / "frozen"))
    monkeypatch.setattr(paths, "ARTIFACTS", smoke_artifacts.parent)
    target = notebooks.freeze("smoke")
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path / "artifacts")  # a fresh clone's: nothing cached
    return target


def test_freeze_writes_the_studies_records_without_weights(frozen_smoke, smoke_artifacts):
    files = [path for path in frozen_smoke.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) < 1_000_000
    assert not any(path.name in ("model.pt", "predictions.csv") for path in files)
    assert all(sorted(p.name for p in run.iterdir()) == sorted(frozen_runs.FILES)
               for run in frozen_smoke.iterdir() if run.is_dir())
    index = json.loads((frozen_smoke / frozen_runs.INDEX).read_text())
    assert "basic_cnn[batch_size=64]" in index and set(index["basic_cnn[batch_size=64]"]) == {"0", "1", "2"}
    record = json.loads(next(frozen_smoke.glob("*/provenance.json")).read_text())
    assert record["git"]["commit"] and record["fingerprint"] and record["code"]  # the run's full record
    assert notebooks.frozen_declaration_problem("smoke") is None


def test_a_frozen_run_whose_key_matches_stands_in_for_training(frozen_smoke):
    plan = notebooks.plan_runs(STUDY_NOTEBOOKS, profile="smoke")
    stand_ins = plan.stand_ins()
    assert plan.later == [] and stand_ins and not any(item.differences for item in stand_ins.values())
    experiments = {run.spec.key for run in plan.runs if run.label in ("basic_cnn", "cnn", "cnn_flip", "mobilenet", "vit")}
    assert {run.spec.key for run in plan.to_train()} == experiments  # the report's experiments alone
    assert not experiments & set(stand_ins)  # a study run that is also an experiment's is trained
    assert frozen_runs.summary(list(stand_ins.values())).endswith("every key matching this code")


def test_a_code_change_marks_the_frozen_runs_it_touches_naming_the_file(frozen_smoke, tmp_path, monkeypatch):
    shutil.copytree(paths.ROOT / "mnist_lab", tmp_path / "checkout" / "mnist_lab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(paths, "ROOT", tmp_path / "checkout")
    vit = tmp_path / "checkout" / "mnist_lab" / "models" / "vit.py"
    vit.write_text(vit.read_text() + "\n_EDITED = True\n")
    stand_ins = notebooks.plan_runs(STUDY_NOTEBOOKS, profile="smoke").stand_ins().values()
    marked = {item.directory.name: item.differences for item in stand_ins if item.differences}
    assert marked and all(why == ("mnist_lab/models/vit.py",) for why in marked.values())
    assert all(item.record["inputs"]["recipe"]["model"] == "vit" for item in stand_ins if item.differences)
    assert any(not item.differences for item in stand_ins)  # the basic CNN's study: unchanged code, unmarked
    line = frozen_runs.summary(list(stand_ins))
    assert f"{len(marked)} no longer match: mnist_lab/models/vit.py differ" in line
    with pytest.raises(LabError, match=r"vit\[.*\] seed \d is not in the run cache .* nor frozen with this code"):
        notebooks.freeze("smoke")  # a frozen run of other code is never frozen again as this code's


def test_a_changed_study_declaration_fails_naming_the_commands(frozen_smoke, monkeypatch):
    vit = calibration.STUDIES["vit"]
    monkeypatch.setitem(calibration.STUDIES, "vit", calibration.Study(vit.experiment, vit.candidates[:3], vit.title,
                                                                      vit.baseline, vit.screen_epochs))
    problem = notebooks.frozen_declaration_problem("smoke")
    assert "vit: candidates" in problem and "vit: epochs" in problem
    assert "`make report PROFILE=smoke STUDIES=train`" in problem and "`mnist-lab freeze --profile smoke`" in problem


@pytest.mark.parametrize("profile", ["full", "smoke"])
def test_the_checkouts_frozen_studies_match_their_declaration(profile, monkeypatch):
    """frozen/ as committed: if a study's candidates, seeds or epochs change, this fails naming the
    commands that freeze them again."""
    monkeypatch.setattr(paths, "FROZEN", paths.ROOT / "frozen")
    problem = notebooks.frozen_declaration_problem(profile)
    assert problem is None, problem


def test_freeze_refuses_a_missing_run_and_uncommitted_code(smoke_artifacts, tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "FROZEN", tmp_path / "frozen")
    shutil.copytree(smoke_artifacts, tmp_path / "artifacts" / "smoke")
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path / "artifacts")
    cache = RunCache(tmp_path / "artifacts" / "smoke" / "runs")
    missing = cache.folder / cache.index()["basic_cnn[batch_size=256]"]["1"][:16]
    shutil.move(missing, tmp_path / "aside")
    with pytest.raises(LabError, match=r"basic_cnn\[batch_size=256\] seed 1 is not in the run cache .*--studies train"):
        notebooks.freeze("smoke")
    assert not (tmp_path / "frozen").exists()
    shutil.move(tmp_path / "aside", missing)
    record_file = missing / "provenance.json"
    record = json.loads(record_file.read_text())
    record["code"]["mnist_lab/train.py"] = "0" * 64  # as if trained from an edit never committed
    record_file.write_text(json.dumps(record))
    with pytest.raises(LabError, match=r"trained from uncommitted code \(mnist_lab/train.py is not as in commit"):
        notebooks.freeze("smoke")
    assert not (tmp_path / "frozen").exists()


def test_freezing_again_trains_nothing_already_frozen_and_refuses_what_is_not(frozen_smoke, monkeypatch):
    files = lambda: {p.relative_to(frozen_smoke): p.read_bytes() for p in frozen_smoke.rglob("*") if p.is_file()}  # noqa: E731
    before = files()
    notebooks.freeze("smoke")  # an empty run cache: every run comes from its frozen twin of the same key
    assert files() == before
    table1 = calibration.STUDIES["basic_cnn"]  # a candidate added: only its runs are missing
    monkeypatch.setitem(calibration.STUDIES, "basic_cnn", calibration.Study(
        table1.experiment, (*table1.candidates, ("batch 32", "basic_cnn[batch_size=32]")), table1.title))
    with pytest.raises(LabError, match=r"basic_cnn\[batch_size=32\] seed 0 is not in the run cache "
                                       r"\(not trained yet\) nor frozen with this code"):
        notebooks.freeze("smoke")
    assert files() == before


def test_a_build_reads_the_frozen_studies_and_says_so(frozen_smoke, capsys):
    ran = notebooks.execute_all(["q2_cnn"], profile="smoke", progress=False, after=write_pages)
    printed = capsys.readouterr().out
    assert ran == ["q2_cnn"]
    assert "frozen: " in printed and "every key matching this code" in printed
    plan_line = next(line for line in printed.splitlines() if line.startswith("runs:"))
    assert " frozen, " in plan_line
    record = json.loads((paths.ARTIFACTS / "smoke" / "provenance" / "q2_cnn.json").read_text())
    assert record["frozen"]  # the study's runs it read, by their frozen folder
    assert "every key matching this code" in notebooks.frozen_line("smoke")
    assert notebooks.status("q2_cnn", "smoke") == []
    index = (paths.ARTIFACTS / "smoke" / "index.html").read_text()
    assert "Calibration studies: " in index and "frozen at commit" in index
