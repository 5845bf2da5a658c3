"""`make gpu-check` without a GPU: its phase planner and its table (the phases themselves need
CUDA and run on a GPU machine; without one the command refuses in one line, tests/test_cuda_path.py)."""

import pytest

from mnist_lab.bench import gpu_check
from mnist_lab.bench.phases import Phase, run_phases


class FakeClock:
    """Seconds that pass only when a phase says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def phase(self, seconds: float, result: dict | None = None, error: Exception | None = None):
        def run() -> dict:
            self.now += seconds
            if error:
                raise error
            return dict(result or {})

        return run


def test_phases_run_in_order_and_one_that_would_overrun_is_skipped_and_named():
    clock, ran = FakeClock(), []
    phases = [Phase("first", 100, clock.phase(90, {"ok": 1})),
              Phase("too-long", 400, clock.phase(1)),  # 310 s left: would overrun
              Phase("short", 60, clock.phase(50)),
              Phase("skipped", 10, clock.phase(5))]
    results = run_phases(phases, budget=400, started=0, skip=["skipped"], clock=clock,
                         on_phase=lambda key, result: ran.append(key), printer=lambda line: None)
    assert ran == ["first", "too-long", "short", "skipped"]  # each recorded as it ends, in order
    assert results["first"] == {"ok": 1, "seconds": 90}
    assert results["too-long"] == {"skipped": "would overrun: needs about 400 s, 310 s of the 400 s budget left"}
    assert results["short"] == {"seconds": 50}
    assert results["skipped"] == {"skipped": "--skip"}
    assert clock.now == 140  # nothing started that was skipped


def test_the_budget_counts_from_the_start_given_and_a_failed_phase_does_not_stop_the_rest():
    clock = FakeClock()
    clock.now = 30  # start-up already spent before the first phase
    phases = [Phase("fails", 10, clock.phase(5, error=RuntimeError("capture failed"))),
              Phase("fits", 60, clock.phase(60)),
              Phase("one-more", 10, clock.phase(1))]
    results = run_phases(phases, budget=100, started=0, clock=clock, printer=lambda line: None)
    assert results["fails"] == {"error": "RuntimeError: capture failed", "seconds": 5}
    assert results["fits"]["seconds"] == 60
    assert results["one-more"]["skipped"].startswith("would overrun: needs about 10 s, 5 s")


def _schedule(accuracy: float) -> dict:
    run = {"test_accuracy": accuracy, "train_seconds": 1.0, "wall_seconds": 1.5}
    return {"cold_first_run_seconds": 2.0, "runs": {name: run for name in gpu_check.SCHEDULE},
            "train_seconds": 5.0, "wall_seconds": 7.5, "seconds": 12.0}


def _report() -> dict:
    return {"device": "GPU", "torch": "2.11", "cuda": "13.0", "budget": 480, "seconds": 400, "profile": "full",
            "device-tests": {"exit_code": 0, "summary": "12 passed", "seconds": 20.0,
                             "left_out": ["tests/test_sweep.py (no ray)"]},
            "notebooks": {"ran": ["a", "b", "c", "d"], "train_seconds": 150.0, "notebook_seconds": 60.0,
                          "stages": [{"trained": 26, "at_once": 8, "train_seconds": 100.0},
                                     {"trained": 7, "at_once": 7, "train_seconds": 50.0}],
                          "archive": "out/artifacts-full.tar.gz", "archive_bytes": 90 * 2**20,
                          "report_archive": "out/artifacts-full-report.tar.gz", "report_archive_bytes": 3 * 2**20,
                          "test_accuracy": {"basic_cnn": 94.5, "vit": 98.7}, "seconds": 215.0},
            "side-by-side": {"runs": 8, "epochs": 3, "at_once": 8, "one_after_another_seconds": 60.0,
                             "side_by_side_seconds": 20.0, "speed_up": 3.0, "largest_accuracy_gap": 0.12,
                             "seconds": 85.0},
            "graphs": _schedule(99.0), "tf32": {"skipped": "would overrun: needs about 50 s, 20 s of the 480 s budget left"},
            "eager": {"skipped": "--skip"}, "deterministic": {"identical": True, "seconds": 9.0}}


def test_the_table_names_each_phase_its_time_and_the_accuracies_beside_the_reports():
    lines = gpu_check.table(_report()).splitlines()
    assert lines[0] == "GPU, torch 2.11, CUDA 13.0: 400 s of a 480 s budget"
    phase_lines = lines[lines.index(f"{'phase':<14} {'seconds':>8}  result") + 1:lines.index("", 2)]
    by_phase = {line.split()[0]: line for line in phase_lines}
    assert set(by_phase) == set(gpu_check.PHASES)  # every phase has its line, run or not
    assert by_phase["device-tests"].endswith("12 passed; left out: tests/test_sweep.py (no ray)")
    assert "4 notebooks by papermill in 60 s after training 150 s" in by_phase["notebooks"]
    assert "26 trained, 8 at a time, 100 s; 7 trained, 7 at a time, 50 s" in by_phase["notebooks"]
    assert "one after another 60.0 s, 8 at a time 20.0 s (3.00x)" in by_phase["side-by-side"]
    assert by_phase["tf32"].split()[1] == "-" and "would overrun" in by_phase["tf32"]
    assert by_phase["suite"].endswith("skipped, not run")
    report_row = next(line for line in lines if line.startswith("report (Tables 1-4)"))
    assert report_row.split()[3:] == ["94.91", "98.95", "-", "98.88", "98.90"]  # the report's last epochs
    notebooks_row = next(line for line in lines if line.startswith("notebooks (full)"))
    assert notebooks_row.split()[2:] == ["94.50", "-", "-", "-", "98.70"]
    assert lines[-1].split() == ["graphs"] + ["99.00"] * 5


def test_a_failed_phase_or_a_differing_deterministic_pair_fails_the_check():
    report = _report()
    assert gpu_check._passed(report)
    report["graphs"] = {"error": "RuntimeError: capture failed", "seconds": 3.0}
    assert not gpu_check._passed(report)
    assert any(line.startswith("graphs") and line.endswith("failed, RuntimeError: capture failed")
               for line in gpu_check.table(report).splitlines())
    report["graphs"], report["deterministic"] = _schedule(99.0), {"identical": False, "seconds": 9.0}
    assert not gpu_check._passed(report)
    report["deterministic"], report["suite"] = {"identical": True}, {"exit_code": 1, "summary": "1 failed"}
    assert not gpu_check._passed(report)


def test_every_phase_has_an_estimate_and_the_check_refuses_an_unknown_phase():
    assert set(gpu_check.ESTIMATES) == set(gpu_check.PHASES)
    with pytest.raises(SystemExit):
        gpu_check.main(["--skip", "no-such-phase"])


def test_a_runs_per_gpu_below_one_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit:
        gpu_check.main(["--runs-per-gpu", "0"])
    assert exit.value.code == 2 and "--runs-per-gpu: must be at least 1, got 0" in capsys.readouterr().err


def test_the_notebooks_line_names_both_archives_and_their_sizes():
    line = next(line for line in gpu_check.table(_report()).splitlines() if "notebooks by papermill" in line)
    assert "packed 90 MiB to out/artifacts-full.tar.gz" in line
    assert "without weights 3.0 MiB to out/artifacts-full-report.tar.gz" in line
