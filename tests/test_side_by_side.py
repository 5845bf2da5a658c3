"""Several runs at once on one GPU (`runs.side_by_side`): how many, and that each run computes
what it computes alone. The choice is arithmetic, checked here; the processes are real: on the
CPU they take turns at the machine's CPU slot (the pool's plumbing is what is checked there),
on a GPU (`device`) they share it."""

import os
from pathlib import Path

import pytest
import torch
from conftest import start_for_signals

from mnist_lab.errors import LabError
from mnist_lab.experiments import get_experiment
from mnist_lab.runs import RunCache, side_by_side
from mnist_lab.runs.executor import Planned, train_here, train_missing
from mnist_lab.runs.side_by_side import (GIB, UNMEASURED_BYTES, choose_runs_per_gpu, footprint_bytes, mps_daemon,
                                         mps_running, read_footprints, record_footprints, runs_per_gpu,
                                         train_side_by_side)
from mnist_lab.spec import RunSpec


def test_memory_bounds_the_runs_at_once():
    # 80% of 10 GiB free, 1 GiB a run + 1 GiB of context: 4 runs
    assert choose_runs_per_gpu(free_bytes=10 * GIB, footprint_bytes=GIB, cpu_cores=64, runs=30) == 4


def test_cores_bound_the_runs_at_once():
    # an H200's 139 GiB would hold dozens; 16 cores launch for 8
    assert choose_runs_per_gpu(free_bytes=139 * GIB, footprint_bytes=GIB // 2, cpu_cores=16, runs=30) == 8


def test_never_more_runs_at_once_than_runs_and_never_none():
    assert choose_runs_per_gpu(free_bytes=139 * GIB, footprint_bytes=GIB, cpu_cores=16, runs=3) == 3
    assert choose_runs_per_gpu(free_bytes=GIB, footprint_bytes=8 * GIB, cpu_cores=1, runs=5) == 1


def _spec(name="basic_cnn", seed=0, device="cpu", **settings) -> RunSpec:
    experiment = get_experiment(name).with_override("epochs", 1)
    spec = RunSpec.of(experiment, seed, device="cpu", limit_train=256, limit_test=128, threads=1, **settings)
    # A CUDA run's spec, without CUDA: what the executor decides from (nothing here trains it).
    return spec.replace(device="cuda", precision="bf16", threads=None, cuda_graphs=True) if device == "cuda" else spec


def test_runs_on_a_cpu_train_one_at_a_time_whatever_is_asked(tmp_path):
    cache = RunCache(tmp_path)
    specs = [_spec(seed=seed) for seed in range(3)]
    assert runs_per_gpu(cache, specs) == 1
    assert runs_per_gpu(cache, specs, requested=4) == 1


def test_without_an_mps_daemon_gpu_runs_train_one_at_a_time_unless_asked(tmp_path, monkeypatch):
    """Without MPS a GPU gives processes time slices in turn: side by side bought nothing (0.96x)."""
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "no-daemon"))
    specs = [_spec(seed=seed, device="cuda") for seed in range(3)]
    assert not mps_running()
    assert runs_per_gpu(RunCache(tmp_path), specs) == 1
    assert runs_per_gpu(RunCache(tmp_path), specs, requested=3) == 3


def test_a_requested_count_is_used_on_a_gpu_up_to_the_number_of_runs(tmp_path):
    cache = RunCache(tmp_path)
    specs = [_spec(seed=seed, device="cuda") for seed in range(3)]
    assert runs_per_gpu(cache, specs, requested=2) == 2
    assert runs_per_gpu(cache, specs, requested=8) == 3
    with pytest.raises(LabError, match="at least 1"):
        runs_per_gpu(cache, specs, requested=0)


def test_the_footprint_is_the_largest_measured_peak_of_the_runs_models(tmp_path):
    cache = RunCache(tmp_path)
    assert footprint_bytes(cache, [_spec()]) == UNMEASURED_BYTES  # nothing measured yet
    record_footprints(cache, {"basic_cnn": 3 * GIB, "cnn": GIB // 2})
    record_footprints(cache, {"basic_cnn": GIB})  # a smaller peak later keeps the larger
    assert footprint_bytes(cache, [_spec(seed=1)]) == 3 * GIB
    assert footprint_bytes(cache, [_spec("cnn")]) == GIB // 2
    assert footprint_bytes(cache, [_spec("cnn"), _spec("vit")]) == UNMEASURED_BYTES  # the ViT not measured


def test_a_footprints_file_of_another_shape_counts_as_nothing_measured(tmp_path):
    cache = RunCache(tmp_path)
    for text in ("[1, 2]", "{not json", '{"basic_cnn": "3 GiB"}', '{"basic_cnn": true}', '{"basic_cnn": -5}'):
        (tmp_path / "footprints.json").write_text(text)
        assert footprint_bytes(cache, [_spec()]) == UNMEASURED_BYTES, text


def _comparable(run) -> tuple:
    history = run.history.drop(columns=["train_seconds", "seconds"])
    return history.to_dict("records"), run.predictions.to_dict("list")


def _side_by_side_matches_alone(tmp_path, device: str, settings: dict) -> None:
    runs = [Planned("cnn", RunSpec.of(get_experiment("cnn").with_override("epochs", 1), seed, device=device,
                                      limit_train=512, limit_test=256, **settings)) for seed in (0, 1)]
    alone, together = RunCache(tmp_path / "alone"), RunCache(tmp_path / "together")
    from mnist_lab.data import load_mnist

    data = load_mnist()
    for run in runs:
        train_here(alone, run, data, printer=lambda line: None)
    lines = []
    assert train_side_by_side(together, runs, at_once=2, printer=lines.append) == []
    for run in runs:
        assert together.problems(run.spec) == []
        assert _comparable(together.get(run.spec)) == _comparable(alone.get(run.spec))
    assert _comparable(together.get(runs[0].spec)) != _comparable(together.get(runs[1].spec))
    if device == "cuda":  # each worker measured what it took, for the next plan's count
        assert read_footprints(together)["cnn"] > 0


@pytest.mark.slow
def test_runs_side_by_side_compute_what_they_compute_alone_on_the_cpu(tmp_path):
    _side_by_side_matches_alone(tmp_path, "cpu", {"threads": 1})


@pytest.mark.device
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (`make gpu-check`)")
def test_runs_side_by_side_compute_what_they_compute_alone_on_a_gpu(tmp_path):
    """With the trainer's CUDA defaults (graphs, bf16) in deterministic mode: run to run
    identical alone, so side by side it must be identical too."""
    _side_by_side_matches_alone(tmp_path, "cuda", {"deterministic": True})


@pytest.mark.slow
def test_a_failing_run_side_by_side_is_named_and_the_others_kept(tmp_path):
    cache = RunCache(tmp_path)
    good = Planned("basic_cnn", _spec(seed=0))
    # 1e12, the largest learning rate a recipe takes: four steps on 512 images overflow to nan.
    diverging = Planned("basic_cnn[lr=1e12]", RunSpec.of(get_experiment("basic_cnn").with_override("epochs", 1)
                                                         .with_override("lr", 1e12), 0, device="cpu",
                                                         limit_train=512, limit_test=128, threads=1))
    lines = []
    failed = train_side_by_side(cache, [good, diverging], at_once=2, printer=lines.append)
    assert failed == [diverging.name]
    assert cache.problems(good.spec) == [] and cache.problems(diverging.spec) == ["not trained yet"]
    assert any(line.startswith(f"failed: {diverging.name}: the training loss became nan") for line in lines), lines


def test_the_plan_line_says_nothing_of_side_by_side_on_a_cpu(tmp_path):
    lines = []
    report = train_missing(RunCache(tmp_path), [], printer=lines.append)
    assert report["at_once"] == 1 and "at a time" not in lines[0]


def _fake_mps_control(folder, exit_code: int = 0):
    """A stand-in for nvidia-cuda-mps-control on PATH: it logs its arguments, its input and the
    pipe folder it was given, then exits with `exit_code`."""
    folder.mkdir()
    log = folder / "calls.log"
    program = folder / "nvidia-cuda-mps-control"
    program.write_text(f"""#!/bin/sh
echo "args=$* pipes=$CUDA_MPS_PIPE_DIRECTORY" >> {log}
if [ "$1" != "-d" ]; then cat >> {log}; fi
exit {exit_code}
""")
    program.chmod(0o755)
    return log


def test_mps_daemon_starts_one_for_the_block_and_stops_it_after(tmp_path, monkeypatch):
    log = _fake_mps_control(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.setattr(side_by_side, "MPS_DEFAULT_PIPES", str(tmp_path / "none"))
    with mps_daemon(printer=pytest.fail) as on:
        pipes = Path(os.environ["CUDA_MPS_PIPE_DIRECTORY"])
        assert on and pipes.is_dir() and Path(os.environ["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ and "CUDA_MPS_LOG_DIRECTORY" not in os.environ
    assert not pipes.parent.exists()  # its own folder, removed
    assert log.read_text().splitlines() == [f"args=-d pipes={pipes}", f"args= pipes={pipes}", "quit"]


def test_mps_daemon_uses_a_running_one_and_runs_without_when_none_starts(tmp_path, monkeypatch):
    running = tmp_path / "running"
    running.mkdir()
    (running / "control").touch()
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(running))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no control program: not needed for a running one
    with mps_daemon(printer=pytest.fail) as on:
        assert on and os.environ["CUDA_MPS_PIPE_DIRECTORY"] == str(running)
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "none"))
    with mps_daemon(printer=pytest.fail) as on:  # no program: silently without
        assert not on
    log = _fake_mps_control(tmp_path / "bin", exit_code=1)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    lines = []
    with mps_daemon(printer=lines.append) as on:
        assert not on and os.environ["CUDA_MPS_PIPE_DIRECTORY"] == str(tmp_path / "none")
    assert len(lines) == 1 and lines[0].startswith("MPS did not start") and log.read_text().count("args=-d") == 1


SIDE_BY_SIDE_SCRIPT = """
import sys
from mnist_lab.experiments import get_experiment
from mnist_lab.runs import RunCache
from mnist_lab.runs.executor import Planned
from mnist_lab.runs.side_by_side import train_side_by_side
from mnist_lab.spec import RunSpec

if __name__ == "__main__":  # the spawned workers import this file too
    experiment = get_experiment("basic_cnn").with_override("epochs", 3)
    runs = [Planned("basic_cnn", RunSpec.of(experiment, seed, device="cpu", limit_train=20000, limit_test=256,
                                            threads=1)) for seed in (0, 1)]
    try:
        train_side_by_side(RunCache(sys.argv[1]), runs, 2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
"""


@pytest.mark.slow
def test_ctrl_c_stops_every_run_side_by_side_and_keeps_their_last_epoch(tmp_path):
    """A terminal's Ctrl-C reaches the whole foreground group: the parent stops the workers (which
    ignore it themselves), and a run resumes later from its checkpoint."""
    import signal
    import sys
    import time

    import psutil

    script = tmp_path / "side_by_side.py"
    script.write_text(SIDE_BY_SIDE_SCRIPT)
    process = start_for_signals([sys.executable, str(script), str(tmp_path / "runs")],
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    lines = []
    deadline = time.monotonic() + 120
    while not any("epoch 1/3" in line for line in lines):
        assert time.monotonic() < deadline and process.poll() is None, lines
        lines.append(process.stdout.readline())
    workers = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and out.strip().endswith("interrupted"), (out, err)
    assert "Traceback" not in err, err
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []
    checkpoints = list((tmp_path / "runs").glob(".*.checkpoint.pt"))
    assert checkpoints, "the run that finished an epoch keeps it"
