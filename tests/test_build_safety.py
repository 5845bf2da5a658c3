"""The build loses nothing and misses nothing: one test per case of the reliability review.

Each test names its case: the command, and what must hold afterwards (the user's files
intact, the previous artifacts byte-identical, one clear line, the exit code). Interruptions
are real signals sent to real processes at a chosen point.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from mnist_lab import paths
from mnist_lab.workbook import notebooks, provenance
from mnist_lab.workbook.lock import profile_lock
from mnist_lab.cli import INTERRUPTED, main
from mnist_lab.files import atomic_dir, atomic_path

from conftest import SLOW, lock_held_elsewhere, make_notebook, start_for_signals


HAVE_TEX = shutil.which("latexmk") is not None
REPOSITORY = Path(__file__).resolve().parent.parent  # the checkout (tests point paths.ROOT at copies)
TRAIN_SMALL = ["train", "basic_cnn", "--epochs", "1", "--limit-train", "200", "--limit-test", "100", "--no-progress"]

def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _start_slow(project: Path) -> tuple[subprocess.Popen, Path]:
    """`mnist-lab run` of the slow notebook, told to wait at its marker file once it gets there."""
    marker = project / "reached"
    marker.unlink(missing_ok=True)
    process = _start("run", "--profile", "smoke", "--force", "--no-progress", "slow", "-p", "wait", "True",
                     "-p", "marker", str(marker))
    return process, marker


def _start(*args: str, **kwargs) -> subprocess.Popen:
    """`mnist-lab ARGS` in its own process group, as a terminal would start it."""
    return _start_command([sys.executable, "-m", "mnist_lab", *args], **kwargs)


def _start_command(command: list[str], **kwargs) -> subprocess.Popen:
    """A command in its own process group, with Ctrl-C's default action even where the suite
    itself was started in the background, which leaves SIGINT ignored for everything it starts."""
    return start_for_signals(command, **kwargs)


def _wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the process never reached the point to interrupt it at"
        time.sleep(0.05)


def _ctrl_c(process: subprocess.Popen) -> tuple[int, list[str]]:
    """What Ctrl-C does in a terminal: SIGINT to the whole foreground process group."""
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, [line for line in stderr.splitlines() if line.strip()]


# ---- 1. data loss ----------------------------------------------------------------------------------


def test_case1_out_never_replaces_the_users_files(tmp_path, capsys, monkeypatch):
    thesis = tmp_path / "thesis"
    (thesis / "sub").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("my thesis")
    (thesis / "sub" / "notes.txt").write_text("my notes")
    before = _snapshot(thesis)
    assert main([*TRAIN_SMALL, "--out", str(thesis)]) == 1
    assert _snapshot(thesis) == before and sorted(p.name for p in thesis.iterdir()) == ["sub", "thesis.tex"]
    assert "holds files that are not a training run" in capsys.readouterr().err

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    for out in (a_file, a_file / "run"):  # a file, and a folder inside a file
        assert main([*TRAIN_SMALL, "--out", str(out)]) == 1
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "is a file" in error
    assert a_file.read_text() == "keep me"

    monkeypatch.chdir(thesis)  # `--out .`: no retired folder or checkpoint left beside it either
    assert main([*TRAIN_SMALL, "--out", "."]) == 1
    assert _snapshot(thesis) == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "thesis"]

    run = tmp_path / "run"  # an earlier run directory is still replaced, as a whole
    assert main([*TRAIN_SMALL, "--out", str(run)]) == 0
    first = (run / "config.json").read_text()
    assert main([*TRAIN_SMALL, "--seed", "1", "--out", str(run)]) == 0
    assert (run / "config.json").read_text() != first and '"seed": 1' in (run / "config.json").read_text()


# ---- 2. half-written outputs ------------------------------------------------------------------------


def test_case2_ctrl_c_mid_notebook_leaves_the_previous_outputs_byte_identical(project):
    before = _snapshot(project / "artifacts" / "smoke")
    process, marker = _start_slow(project)
    _wait_for(marker.exists)  # the first macro is staged; the notebook waits for its second
    code, lines = _ctrl_c(process)
    assert (code, lines) == (130, [INTERRUPTED])  # one line: no traceback from papermill or the kernel
    assert _snapshot(project / "artifacts" / "smoke") == before
    assert not (project / "artifacts" / "smoke" / ".staging" / "slow").exists()


def test_case2_a_failing_cell_leaves_the_previous_outputs_and_keeps_its_log(project, capsys):
    before = _snapshot(project / "artifacts" / "smoke")
    assert main(["run", "--profile", "smoke", "--no-progress", "slow", "-p", "fail", "True"]) == 1
    error = capsys.readouterr().err
    assert "AssertionError: told to fail; previous artifacts intact" in error and error.count("\n") == 1
    log = project / "artifacts" / "smoke" / "notebooks" / "slow.failed.ipynb"
    assert log.is_file() and str(log) in error
    assert {k: v for k, v in _snapshot(project / "artifacts" / "smoke").items() if "failed" not in k} == before
    assert "macros/slow.tex" in provenance.read_record("smoke", "slow")["outputs"]
    assert notebooks.status("slow", "smoke") == []  # the previous run's outputs still count as fresh
    assert main(["run", "--profile", "smoke", "--no-progress", "--force", "slow"]) == 0
    assert not log.exists()  # a later success removes the old failure's log


# Noise a terminal showed after the one line when the kernel was shut down under a pending cell.
NOISE = ("Traceback", "Task exception", "Kernel died", "DeadKernelError")


@pytest.mark.parametrize("through", ["mnist-lab run", "make report"])
def test_case2_ctrl_c_to_the_whole_group_mid_cell_is_the_one_line(project, through):
    """As a terminal does it: SIGINT to the foreground group (make, the runner), mid-cell."""
    before = _snapshot(project / "artifacts" / "smoke")
    if through == "make report":  # the real Makefile, its set-up steps taken as done
        marker = project / "reached"
        make_notebook(project / "notebooks" / "slow.ipynb",
                      f'profile = "smoke"\nmarker = "{marker}"\nwait = True\nfail = False', SLOW)
        shutil.copy(REPOSITORY / "Makefile", project)
        process = _start_command(["make", "-o", "setup", "-o", "tex", "report", "PROFILE=smoke",
                                  f"VENV={Path(sys.executable).parent.parent}"], cwd=project)
    else:
        process, marker = _start_slow(project)
    _wait_for(marker.exists)
    time.sleep(1)  # well inside the cell
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    printed = stdout + stderr
    assert printed.count(INTERRUPTED) == 1 and not [word for word in NOISE if word in printed], printed
    if through == "mnist-lab run":
        assert process.returncode == 130 and [line for line in stderr.splitlines() if line.strip()] == [INTERRUPTED]
    else:
        assert process.returncode != 0
        assert "Executing" not in printed  # papermill's cell bar is drawn on a terminal only, never into a log
    assert _snapshot(project / "artifacts" / "smoke") == before


# ---- 3. -p profile against --profile ------------------------------------------------------------------


def test_case3_a_profile_parameter_must_agree_with_the_profile(capsys):
    assert main(["run", "--profile", "smoke", "q1_losses", "-p", "profile", "full"]) == 1
    error = capsys.readouterr().err
    assert "-p profile 'full' disagrees with --profile 'smoke'" in error and error.count("\n") == 1


# ---- 4. Ctrl-C during LaTeX -----------------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_TEX, reason="latexmk not installed: run `make tex`")
def test_case4_ctrl_c_during_latex_does_not_poison_the_next_build(smoke_artifacts, tmp_path):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(smoke_artifacts.parent, artifacts)
    env = {**os.environ, "MNIST_LAB_ARTIFACTS": str(artifacts)}
    assert subprocess.run([sys.executable, "-m", "mnist_lab", "report", "--profile", "smoke"], env=env,
                          capture_output=True).returncode == 0
    pdf = (artifacts / "smoke" / "report.pdf").read_bytes()
    process = _start("report", "--profile", "smoke", "--force", env=env)
    partial = artifacts / "smoke" / "latex.partial"
    # Interrupted while pdflatex runs (in the command's session: started by latexmk, started by it).
    _wait_for(lambda: subprocess.run(["pgrep", "-s", str(process.pid), "pdflatex"], capture_output=True).returncode == 0)
    code, lines = _ctrl_c(process)
    assert (code, lines) == (130, [INTERRUPTED])
    assert (artifacts / "smoke" / "report.pdf").read_bytes() == pdf and not partial.exists()
    again = subprocess.run([sys.executable, "-m", "mnist_lab", "report", "--profile", "smoke", "--force"], env=env,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr


# ---- 5. one fingerprint, derived from the package ------------------------------------------------------


def test_case5_every_training_source_changed_in_turn_makes_status_name_it(project):
    from mnist_lab.fingerprint import training_sources

    sources = training_sources("basic_cnn", cuda_graphs=False)  # what the `trains` notebook's CPU run executes
    names = {str(p.relative_to(project)) for p in sources}
    assert {"mnist_lab/train.py", "mnist_lab/data.py", "mnist_lab/augment.py", "mnist_lab/speed/layers.py",
            "mnist_lab/models/basic_cnn.py", "mnist_lab/models/__init__.py"} <= names
    assert "mnist_lab/models/vit.py" not in names  # another model's file
    assert "mnist_lab/results/figures.py" not in names  # a plot never retrains a model
    assert "mnist_lab/experiments.py" not in names  # the recipes: recorded field by field instead
    assert "mnist_lab/machine.py" not in names  # when a run trains, not what it computes
    assert "mnist_lab/speed/cuda.py" not in names  # no CUDA graph on the CPU
    assert notebooks.status("trains", "smoke") == []
    for path in sources:
        original = path.read_bytes()
        edit = b"\n_EDITED = True\n" if path.suffix == ".py" else b"\n"  # code, not a comment
        path.write_bytes(original + edit)
        reasons = notebooks.status("trains", "smoke")
        path.write_bytes(original)
        relative = str(path.relative_to(project))
        assert any(relative in reason for reason in reasons), (relative, reasons)
    extra = project / "mnist_lab" / "speed" / "tuning.json"  # a new file of any type counts too
    extra.write_text("{}")
    assert any("mnist_lab/speed/tuning.json changed" in reason for reason in notebooks.status("trains", "smoke"))


def test_case5_comments_and_docstrings_retrain_nothing_and_a_model_edit_only_its_runs(project):
    from mnist_lab.experiments import get_experiment
    from mnist_lab.spec import RunSpec

    def fingerprints():
        return {name: RunSpec.of(get_experiment(name), 0, device="cpu", limit_train=512).key
                for name in ("basic_cnn", "cnn", "vit")}

    before = fingerprints()
    vit = project / "mnist_lab" / "models" / "vit.py"
    train = project / "mnist_lab" / "train.py"
    original_vit, original_train = vit.read_text(), train.read_text()
    vit.write_text(original_vit + "\n# a comment\n")
    train.write_text(original_train.replace('"""The trainer:', '"""The trainer, reworded:', 1))
    assert fingerprints() == before and notebooks.status("trains", "smoke") == []
    vit.write_text(original_vit + "\n_EDITED = True\n")  # code: the ViT's runs alone
    after = fingerprints()
    assert after["vit"] != before["vit"] and {k: after[k] for k in ("basic_cnn", "cnn")} == \
        {k: before[k] for k in ("basic_cnn", "cnn")}


def test_case5_editing_one_recipe_retrains_that_model_alone(project):
    from mnist_lab.experiments import get_experiment
    from mnist_lab.spec import RunSpec

    def fingerprint(experiment):
        return RunSpec.of(experiment, 0, device="cpu", limit_train=512).key

    basic_cnn, vit = get_experiment("basic_cnn"), get_experiment("vit")
    before = fingerprint(basic_cnn), fingerprint(vit)
    source = project / "mnist_lab" / "experiments.py"
    assert "lr_step=3," in source.read_text()
    source.write_text(source.read_text().replace("lr_step=3,", "lr_step=4,"))  # Table 4's schedule
    assert fingerprint(basic_cnn) == before[0]  # the file is not training code ...
    assert fingerprint(vit) == before[1] and fingerprint(vit.replace(lr_step=4)) != before[1]  # ... its recipes are
    assert any("mnist_lab/experiments.py" in reason for reason in notebooks.status("trains", "smoke"))


# ---- 6. one run at a time -------------------------------------------------------------------------------


def test_case6_a_second_run_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(project, capsys):
    with lock_held_elsewhere() as holder:  # SIGKILLed at the end of the block
        assert main(["run", "--profile", "smoke", "--force", "--no-progress", "slow"]) == 1
        error = capsys.readouterr().err
        assert f"in use by `mnist-lab run (test) (pid {holder.pid})`" in error and error.count("\n") == 1
        if HAVE_TEX:
            assert main(["report", "--profile", "smoke"]) == 1
            assert f"pid {holder.pid}" in capsys.readouterr().err
    with profile_lock("smoke", "run"):  # the dead holder's lock is free
        pass
    assert main(["run", "--profile", "smoke", "--force", "--no-progress", "slow"]) == 0


# ---- 7. one line, not a traceback ------------------------------------------------------------------------


def test_case7_a_notebook_that_is_not_json_is_one_line(project, capsys):
    (project / "notebooks" / "slow.ipynb").write_text("{ not json")
    for command in (["status", "--profile", "smoke"], ["run", "--profile", "smoke", "slow"]):
        assert main(command) == 1
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "slow.ipynb is not a valid notebook" in error


def test_case7_ctrl_c_during_start_up_is_one_line(tmp_path):
    process = _start(*TRAIN_SMALL, "--out", str(tmp_path / "run"))
    # Importing torch, which the command does first: its library mapped, however busy the machine.
    _wait_for(lambda: "libtorch" in Path(f"/proc/{process.pid}/maps").read_text(), timeout=60)
    code, lines = _ctrl_c(process)
    assert (code, lines) == (130, [INTERRUPTED])


# ---- 8. checked before the kernel starts -----------------------------------------------------------------


@pytest.mark.parametrize("seeds", ["[]", "[-1]", "[0, 0]"])
def test_case8_bad_seeds_are_refused_before_the_kernel_starts(project, capsys, seeds):
    before = _snapshot(project / "artifacts" / "smoke")
    assert main(["run", "--profile", "smoke", "--force", "trains", "-p", "seeds", seeds]) == 1
    error = capsys.readouterr().err
    assert "seeds must be" in error and error.count("\n") == 1
    assert _snapshot(project / "artifacts" / "smoke") == before


def test_case8_corrupt_data_is_refused_before_the_kernel_starts(project, capsys):
    before = _snapshot(project / "artifacts" / "smoke")
    labels = project / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-100])
    assert main(["run", "--profile", "smoke", "--force", "trains"]) == 1
    error = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte.gz" in error and error.count("\n") == 1
    assert _snapshot(project / "artifacts" / "smoke") == before


# ---- 9. the smaller ones ----------------------------------------------------------------------------------


def test_case9_files_and_folders_get_the_umasks_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "file.txt") as temporary:
            temporary.write_text("x")
        with atomic_dir(tmp_path / "folder") as staging:
            (staging / "inside.txt").write_text("y")
    finally:
        os.umask(previous)
    assert (tmp_path / "file.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755


def test_case9_repeated_seeds_and_too_large_subsets_are_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--profile", "smoke", "--seeds", "0", "0"])
    assert exit_.value.code == 2 and "each value once" in capsys.readouterr().err
    assert main([*TRAIN_SMALL[:5], "99999999", "--out", str(tmp_path / "run")]) == 1
    assert "only 60,000" in capsys.readouterr().err


def test_case9_a_killed_run_leaves_nothing_behind_after_the_next(project):
    process, marker = _start_slow(project)
    _wait_for(marker.exists)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert main(["run", "--profile", "smoke", "--force", "--no-progress", "slow"]) == 0
    leftovers = [p for p in (project / "artifacts").rglob("*") if ".tmp" in p.name or ".staging" in p.parts]
    assert leftovers == [p for p in leftovers if p.is_dir() and not any(p.iterdir())]


def test_case9_a_notebook_without_a_parameters_cell_says_so(project, capsys):
    notebook = nbformat.read(project / "notebooks" / "slow.ipynb", as_version=4)
    notebook.cells[0].metadata["tags"] = []
    nbformat.write(notebook, project / "notebooks" / "slow.ipynb")
    assert main(["status", "--profile", "smoke", "slow"]) == 1
    assert "has no cell tagged 'parameters'" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_TEX, reason="latexmk not installed: run `make tex`")
def test_case9_an_unclosed_group_in_the_report_fails_the_build(smoke_artifacts, tmp_path, monkeypatch, capsys):
    shutil.copytree(paths.REPORT, tmp_path / "report")
    (tmp_path / "mnist_lab").symlink_to(paths.ROOT / "mnist_lab")  # the appendix reads ../mnist_lab/
    section = tmp_path / "report" / "sections" / "q1.tex"
    section.write_text(section.read_text() + "\n{\\bfseries an unclosed group\n")
    artifacts = tmp_path / "artifacts"
    shutil.copytree(smoke_artifacts.parent, artifacts)
    monkeypatch.setattr(paths, "REPORT", tmp_path / "report")
    monkeypatch.setattr(paths, "ARTIFACTS", artifacts)
    assert main(["report", "--profile", "smoke"]) == 1
    error = capsys.readouterr().err
    assert "broken document: (\\end occurred inside a group" in error
