"""Results that travel: a profile packed without weights builds elsewhere with no stale mark;
records of the old code-hash scheme are moved to the new one without retraining; a stale report
says so in one short line however much changed."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_lab import codehash, fingerprint, paths
from mnist_lab.cli import main
from mnist_lab.runs import rekey
from mnist_lab.runs.directory import WEIGHTS_LEFT_OUT, read_run_record

# The last commit whose frozen/ records were hashed under the legacy scheme (ast.dump).
LEGACY_COMMIT = "4ff7ffb"


def _fresh_copy(smoke_artifacts: Path, tmp_path: Path, monkeypatch) -> Path:
    artifacts = tmp_path / "artifacts"
    shutil.copytree(smoke_artifacts.parent, artifacts)
    monkeypatch.setattr(paths, "ARTIFACTS", artifacts)
    return artifacts


def test_a_profile_packed_without_weights_builds_elsewhere_with_no_stale_mark(smoke_artifacts, tmp_path, monkeypatch,
                                                                              capsys):
    from mnist_lab.profiles import get_profile
    from mnist_lab.runs import for_profile
    from mnist_lab.workbook import notebooks
    from mnist_lab.workbook.parameters import effective_parameters
    from mnist_lab.workbook.plan import planned

    artifacts = _fresh_copy(smoke_artifacts, tmp_path, monkeypatch)
    with_weights, without = tmp_path / "with.tar.gz", tmp_path / "without.tar.gz"
    assert main(["pack", "--profile", "smoke", "--out", str(with_weights)]) == 0
    assert main(["pack", "--profile", "smoke", "--without-weights", "--out", str(without)]) == 0
    assert "without the runs' weights" in capsys.readouterr().out
    assert without.stat().st_size < with_weights.stat().st_size
    names = subprocess.run(["tar", "tzf", str(without)], capture_output=True, text=True, check=True).stdout.split()
    assert not [name for name in names if name.endswith("/model.pt")]

    elsewhere = tmp_path / "elsewhere"  # a fresh artifacts folder, as on the machine that builds the PDF
    monkeypatch.setattr(paths, "ARTIFACTS", elsewhere)
    assert main(["unpack", str(without)]) == 0
    assert all(notebooks.stale_as_run(name, "smoke") == [] for name in notebooks.available())
    assert not list((elsewhere / "smoke" / "runs").glob("*/model.pt"))

    # What `run` would train again: only the runs whose models a notebook loads, and it says why.
    cache, loaders = for_profile("smoke"), set()
    for name in notebooks.available():
        plan = planned(name, effective_parameters(name, "smoke", None, None), get_profile("smoke"), cache)
        for run in plan.runs:
            if run in plan.study:
                continue
            assert cache.problems(run.spec) == []  # whole for the results
            assert cache.problems(run.spec, weights=True) == [WEIGHTS_LEFT_OUT]
            if run.weights:
                loaders.add(name)
    assert loaders == {"q1_convolution", "q3_comparison"}

    from mnist_lab.workbook import report
    if shutil.which("latexmk") is None:
        pytest.skip("latexmk not installed: run `make tex` to build the report from the unpacked profile")
    pdf, _ = report.build("smoke")
    title = subprocess.run(["pdftotext", "-f", "1", "-l", "2", str(pdf), "-"], capture_output=True, text=True).stdout
    assert "STALE" not in title.upper().replace("STALE-", "")
    assert artifacts.is_dir()


def test_a_report_whose_code_changed_in_twenty_files_fails_in_one_short_line(smoke_artifacts, tmp_path, monkeypatch,
                                                                             capsys):
    from mnist_lab.workbook import provenance

    _fresh_copy(smoke_artifacts, tmp_path, monkeypatch)
    changed = sorted(str(p.relative_to(paths.ROOT)) for p in (paths.ROOT / "mnist_lab").rglob("*.py"))[:20]
    original = fingerprint.code_hash

    def edited(path):  # as if these twenty files had been edited since the runs
        digest = original(path)
        return "e" * 64 if str(Path(path).resolve().relative_to(paths.ROOT)) in changed else digest

    monkeypatch.setattr(fingerprint, "code_hash", edited)
    monkeypatch.setattr(provenance, "code_hash", edited)
    assert main(["report", "--profile", "smoke"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and len(error.rstrip("\n")) <= 300, error
    assert "stale (reasons: q1_convolution: " in error and "mnist-lab status --profile smoke" in error


# ---- the legacy scheme, moved without retraining -------------------------------------------------


def _legacy_frozen(tmp_path: Path, profile: str) -> Path:
    """frozen/<profile> as committed at LEGACY_COMMIT, extracted from git into a temporary folder."""
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", LEGACY_COMMIT, f"frozen/{profile}"],
                            cwd=paths.ROOT, capture_output=True, text=True)
    if listed.returncode != 0 or not listed.stdout:
        pytest.skip(f"commit {LEGACY_COMMIT} is not in this clone's history (a shallow clone?)")
    for name in listed.stdout.split():
        target = tmp_path / Path(name).relative_to("frozen")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(subprocess.run(["git", "show", f"{LEGACY_COMMIT}:{name}"], cwd=paths.ROOT,
                                          capture_output=True, check=True).stdout)
    return tmp_path / profile


@pytest.mark.skipif(sys.version_info[:2] not in rekey.LEGACY_PYTHONS, reason="the legacy hashes are checked with the ast.dump of Python 3.10 or 3.11")
def test_the_legacy_frozen_records_move_to_the_committed_keys_without_retraining(tmp_path):
    legacy = _legacy_frozen(tmp_path, "smoke")
    results = {p.name: (p / "metrics.json").read_bytes() for p in legacy.iterdir() if p.is_dir()}
    done = rekey.rekey_folder(legacy)
    assert done.refused == {} and len(done.moved) == len(results) > 10
    committed = paths.ROOT / "frozen" / "smoke"
    assert json.loads((legacy / "index.json").read_text()) == json.loads((committed / "index.json").read_text())
    for old, new in done.moved.items():
        moved = legacy / new[:16]
        record = read_run_record(moved)
        assert record["code_scheme"] == codehash.SCHEME and record["fingerprint"] == new
        assert (moved / "metrics.json").read_bytes() == results[old[:16]]  # the results are untouched
        assert json.loads((moved / "config.json").read_text())["fingerprint"] == new
    assert rekey.rekey_folder(legacy).moved == {}  # once moved, nothing more to do


def test_a_legacy_record_whose_code_does_not_verify_is_left_as_it_was(tmp_path):
    legacy = _legacy_frozen(tmp_path, "smoke")
    if sys.version_info[:2] not in rekey.LEGACY_PYTHONS:
        with pytest.raises(Exception, match="Python 3.10 or 3.11"):
            rekey.rekey_folder(legacy)
        return
    victim = sorted(p for p in legacy.iterdir() if p.is_dir())[0]
    record = json.loads((victim / "provenance.json").read_text())
    record["code"]["mnist_lab/train.py"] = "0" * 64  # as if trained from code never committed,
    record["fingerprint"] = fingerprint.key_of(record)  # its key recomputed to match
    (victim / "provenance.json").write_text(json.dumps(record))
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    done = rekey.rekey_folder(legacy)
    assert list(done.refused) == [victim.name] and "is not the code the run hashed" in done.refused[victim.name]
    assert {p.name: p.read_bytes() for p in (legacy / victim.name).iterdir()} == before
    record["inputs"]["seed"] = 7  # a record whose key is not the hash of what it says
    (victim / "provenance.json").write_text(json.dumps(record))
    assert rekey.rekey_folder(legacy).refused == {victim.name: "its key is not the hash of what it records"}


def test_a_record_naming_a_commit_that_is_not_hex_never_reaches_git_as_an_option(tmp_path):
    from mnist_lab.errors import LabError
    from mnist_lab.runs.frozen import commit_files

    for commit in ("--output=/tmp/x", "HEAD", "a" * 39, None):
        with pytest.raises(LabError, match="not 40 hex digits"):
            commit_files(commit, ["mnist_lab/train.py"])
    with pytest.raises(LabError, match="does not stay inside"):
        commit_files("0" * 40, ["../etc/passwd"])
