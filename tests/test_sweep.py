"""`mnist-lab sweep`: Ray really schedules the runs, and they land where the notebooks look."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_lab import paths, sweep
from mnist_lab.build.workbook import Workbook
from mnist_lab.cli import main
from mnist_lab.errors import LabError

RAY = Path(sys.executable).with_name("ray")


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path / "artifacts")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every connection on loopback
    return tmp_path / "artifacts"


def _refuse_training(monkeypatch):
    def train(*args, **kwargs):
        raise AssertionError("this run should have come from the cache")

    monkeypatch.setattr("mnist_lab.build.workbook.fit", train)
    monkeypatch.setattr(sweep, "_submit", train)


def test_a_local_sweep_fills_the_cache_keeps_going_past_a_failure_and_resumes(artifacts, monkeypatch, capsys):
    # Two good runs and one whose loss diverges (lr=1e9): reported, and the good ones kept.
    code = main(["sweep", "basic_cnn", "--profile", "smoke", "--seeds", "0", "1", "--set", "lr=0.01,1e9"])
    printed = capsys.readouterr()
    # (Ray itself may say on stderr that its local cluster uses token authentication.)
    assert code == 1 and printed.err.count("mnist-lab: error:") == 1
    assert "2 run(s) failed" in printed.err.strip().splitlines()[-1]
    assert "basic_cnn[lr=1000000000.0] seed 0: FAILED: " in printed.out and "loss became nan" in printed.out
    assert "basic_cnn[lr=0.01] seed 1: test accuracy" in printed.out
    assert sorted(p.name for p in (artifacts / "smoke" / "runs").iterdir()) == ["basic_cnn[lr=0.01]"]

    _refuse_training(monkeypatch)  # from here on, nothing may train
    book = Workbook("sweep_test", profile="smoke", device="cpu", seeds=[0, 1])
    runs = book.runs("basic_cnn[lr=0.01]")  # a notebook asks for the variant by name
    assert [run.config["seed"] for run in runs] == [0, 1]
    assert all(run.metrics["test_accuracy"] > 20 for run in runs)
    summary = sweep.run(["basic_cnn"], seeds=[0, 1], settings=["lr=0.01"], profile="smoke")
    assert summary["outcomes"] == {"basic_cnn[lr=0.01]/seed0": "cached", "basic_cnn[lr=0.01]/seed1": "cached"}


@pytest.mark.parametrize("setting, message", [("lrr=1", "unknown experiment field 'lrr'"),
                                              ("hflip=yes", "augmentation field 'hflip' must be bool"),
                                              ("lr", "--set takes FIELD=VALUE")])
def test_a_bad_override_is_refused_before_anything_is_submitted(artifacts, monkeypatch, capsys, setting, message):
    _refuse_training(monkeypatch)
    assert main(["sweep", "cnn", "--profile", "smoke", "--set", setting]) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_variants_are_named_by_their_overrides_and_rebuilt_from_the_name():
    tasks = sweep.plan(["cnn"], [0], sweep.parse_overrides(["augmentation.hflip=true,false"]), "smoke", "cpu")
    names = [task.experiment.name for task in tasks]
    assert names == ["cnn[hflip=true]", "cnn[hflip=false]"]
    assert len({task.fingerprint for task in tasks}) == 2
    from mnist_lab.experiments import get_experiment

    assert get_experiment("cnn[hflip=true]").augmentation.hflip is True
    with pytest.raises(LabError, match="a variant is written"):
        get_experiment("cnn[hflip]")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_same_sweep_runs_on_an_existing_cluster_through_address(artifacts, tmp_path, capsys):
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    start = subprocess.run([str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        os.environ["RAY_AUTH_MODE"] = "disabled"  # the test's own throw-away cluster on loopback
        try:
            assert main(["sweep", "basic_cnn", "--profile", "smoke", "--address", f"127.0.0.1:{port}"]) == 0
        finally:
            del os.environ["RAY_AUTH_MODE"]
        assert "basic_cnn seed 0: test accuracy" in capsys.readouterr().out
        assert (artifacts / "smoke" / "runs" / "basic_cnn" / "seed0" / "model.pt").is_file()
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120)
