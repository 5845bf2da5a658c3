"""Hostile inputs do no harm: files under artifacts/ another machine wrote, names and parameters.

One test per case of the hostile-inputs review, each with the real input (a planted pickle,
a cut CSV, a record naming a file outside, `--set name=...`), asserting one line and that
nothing outside the artifacts folder changed. Archives: tests/test_archive.py; the report and
the pages: tests/test_report_hostile.py; Ray: tests/test_sweep.py.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from mnist_lab import paths
from mnist_lab.workbook import notebooks, provenance
from mnist_lab.cli import HUNG_UP, TERMINATED, main
from mnist_lab.errors import LabError
from mnist_lab.experiments import get_experiment
from mnist_lab.runs import RunCache, check_replaceable, load_model, load_run
from mnist_lab.spec import RunSpec

from test_build_safety import TRAIN_SMALL, _snapshot, _start_slow, _wait_for


def _one_line(capsys) -> str:
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    return error


def _run_dir(project):
    """The folder of the run the `trains` notebook reads, found by its name in the cache's index."""
    cache = RunCache(project / "artifacts" / "smoke" / "runs")
    return cache.folder / cache.index()["basic_cnn"]["0"][:16]


class _RunsCode:
    """What a crafted pickle holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---- 1. code from a file ---------------------------------------------------------------------------


def test_case1_a_planted_checkpoint_runs_no_code(project, capsys):
    marker = project / "pwned"
    run = _run_dir(project)
    torch.save({"identity": _RunsCode(marker)}, run.parent / f".{run.name}.checkpoint.pt")
    (run / "history.csv").write_text("epoch\n1\n")  # cut: the run trains again, where a checkpoint could resume it
    # No training here wrote it (runs/checkpoints.py): ignored in one line, never loaded, trained from the start.
    assert main(["run", "--profile", "smoke", "--no-progress", "trains"]) == 0
    printed = capsys.readouterr()
    assert "not written by a training on this machine" in printed.out + printed.err
    assert not marker.exists()
    assert not (run.parent / f".{run.name}.checkpoint.pt").exists()


# ---- 2. a record that names a file outside ----------------------------------------------------------


def test_case2_a_record_naming_files_outside_deletes_nothing(project, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    next_door = project / "artifacts" / "victim.txt"  # beside the profile, reached with ..
    next_door.write_text("keep me too")
    record_file = provenance.record_path("smoke", "trains")
    record = json.loads(record_file.read_text())
    record["outputs"].update({str(victim): "0" * 64, "../victim.txt": "0" * 64})
    record_file.write_text(json.dumps(record))
    reasons = notebooks.status("trains", "smoke")
    assert any("does not stay inside" in reason for reason in reasons)
    assert main(["run", "--profile", "smoke", "--no-progress", "trains"]) == 0
    assert victim.read_text() == "keep me" and next_door.read_text() == "keep me too"
    assert notebooks.status("trains", "smoke") == []


# ---- 5. --out next to a user's files -----------------------------------------------------------------


def test_case5_out_refuses_a_run_directory_holding_anything_else(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN_SMALL, "--out", str(run)]) == 0
    capsys.readouterr()
    (run / "NOTES.md").write_text("my notes")
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    for name in ("config.json", "provenance.json"):
        (thesis / name).write_text("{}")
    (thesis / "thesis.tex").write_text("my thesis")
    for out, name in ((run, "NOTES.md"), (thesis, "thesis.tex")):
        before = _snapshot(out)
        assert main([*TRAIN_SMALL, "--out", str(out)]) == 1
        assert f"({name})" in _one_line(capsys)
        assert _snapshot(out) == before


# ---- 6. a name is a label -------------------------------------------------------------------------------


def test_case6_a_name_never_becomes_a_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path / "artifacts")
    assert main(["sweep", "basic_cnn", "--profile", "smoke", "--set", "name=../../../../tmp/x"]) == 1
    assert "'name' is a label" in _one_line(capsys)
    assert not (tmp_path / "artifacts").exists()
    with pytest.raises(LabError, match="is a label"):
        get_experiment("cnn[name=../x]")
    # A run's folder is named by its key; a name only labels it, in the index.
    cache = RunCache(tmp_path / "runs")
    spec = RunSpec.of(get_experiment("cnn"), 0, device="cpu")
    for name in ("../x", "a/b", ".hidden", "", "/etc/passwd"):
        cache.label(name, spec)
    assert sorted(p.name for p in cache.folder.iterdir()) == [".index.lock", "index.json"]
    assert cache.directory(spec).parent == cache.folder and len(cache.directory(spec).name) == 16
    cache.directory(spec).symlink_to(tmp_path)  # a link planted where the run's folder goes
    assert cache.get(spec) is None
    with pytest.raises(LabError, match="is a file, not a run directory"):
        check_replaceable(cache.directory(spec))


# ---- 7. a damaged run cache ------------------------------------------------------------------------------


def test_case7_a_cut_history_is_stale_and_retrained_never_used(project, capsys):
    history = _run_dir(project) / "history.csv"
    full = history.read_text()
    history.write_text(full.splitlines()[0] + "\n" + full.splitlines()[1] + "\n")  # one epoch of two
    assert any("history.csv changed since the run" in reason for reason in notebooks.status("trains", "smoke"))
    with pytest.raises(LabError, match="history.csv changed since the run"):
        load_run(_run_dir(project))
    assert main(["run", "--profile", "smoke", "--no-progress", "trains"]) == 0
    results = lambda text: [line.split(",")[:-2] for line in text.splitlines()]  # noqa: E731 (less the timings)
    assert results(history.read_text()) == results(full)  # trained again: the numbers from before the cut
    assert notebooks.status("trains", "smoke") == []


def test_case7_garbage_weights_are_stale_and_one_line(project):
    weights = _run_dir(project) / "model.pt"
    weights.write_bytes(b"not a torch file")
    assert any("model.pt changed since the run" in reason for reason in notebooks.status("trains", "smoke"))
    record_file = _run_dir(project) / "provenance.json"  # vouched for by a record rewritten to match
    record = json.loads(record_file.read_text())
    record["files"]["model.pt"] = provenance.file_hash(weights)
    record_file.write_text(json.dumps(record))
    with pytest.raises(LabError, match="does not hold this model's weights"):
        load_model(load_run(_run_dir(project)))


# ---- 11. half a commit --------------------------------------------------------------------------------


def test_case11_a_file_in_the_way_fails_before_anything_moves(project, capsys):
    profile = project / "artifacts" / "smoke"
    executed = profile / "notebooks"
    kept = {p.name: p.read_bytes() for p in executed.iterdir()}
    os.rename(executed, project / "executed")
    executed.write_text("a file where the executed notebooks go")
    before = _snapshot(profile)
    assert main(["run", "--profile", "smoke", "--no-progress", "--force", "slow"]) == 1
    error = _one_line(capsys)
    assert "cannot be put in place" in error and "is not a folder" in error
    assert _snapshot(profile) == before  # macros/slow.tex was not moved in before the failure
    assert {p.name: p.read_bytes() for p in (project / "executed").iterdir()} == kept


# ---- 12. one line, never a traceback ---------------------------------------------------------------------


@pytest.mark.parametrize("content", ["[]", '{"cells": 5}', '{"cells": [{"cell_type": "code"}], "metadata": {}, '
                                                           '"nbformat": 4, "nbformat_minor": 5}'])
def test_case12_json_that_is_not_a_notebook_is_one_line(project, capsys, content):
    (project / "notebooks" / "slow.ipynb").write_text(content)
    for command in (["status", "--profile", "smoke"], ["run", "--profile", "smoke", "slow"]):
        assert main(command) == 1
        assert "slow.ipynb is not a valid notebook" in _one_line(capsys)


@pytest.mark.parametrize("record", [{}, [], "wall_seconds"])
def test_case12_a_malformed_record_is_stale_not_a_traceback(project, capsys, record):
    record_file = provenance.record_path("smoke", "slow")
    if record == "wall_seconds":
        record = {**json.loads(record_file.read_text()), "wall_seconds": "12"}
    record_file.write_text(json.dumps(record))
    assert notebooks.status("slow", "smoke") == ["its provenance record slow.json is unreadable"]
    assert main(["status", "--profile", "smoke"]) == 0
    printed = capsys.readouterr()
    assert "slow: STALE" in printed.out and printed.err == ""


@pytest.mark.parametrize("number, status, line", [(signal.SIGTERM, 143, TERMINATED), (signal.SIGHUP, 129, HUNG_UP)])
def test_case12_sigterm_and_sighup_are_one_line_their_status_and_the_outputs_intact(project, number, status, line):
    before = _snapshot(project / "artifacts" / "smoke")
    process, marker = _start_slow(project)
    _wait_for(marker.exists)
    process.send_signal(number)
    _, stderr = process.communicate(timeout=120)
    assert (process.returncode, [text for text in stderr.splitlines() if text.strip()]) == (status, [line])
    assert _snapshot(project / "artifacts" / "smoke") == before


def test_case12_a_garbage_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    spec = RunSpec.of(get_experiment("basic_cnn").replace(epochs=1), 0, device="cpu", limit_train=200, limit_test=100)
    checkpoint = RunCache(paths.ARTIFACTS / "runs").checkpoint(spec)  # where `train` resumes this run from
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"\x80\x04garbage")
    # Not written by a training here (runs/checkpoints.py): one line, never loaded, and the run trains.
    assert main([*TRAIN_SMALL, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"ignoring checkpoint {checkpoint}: not written by a training on this machine" in printed.out
    assert "Traceback" not in printed.err and out.is_dir() and not checkpoint.exists()
