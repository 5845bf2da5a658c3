import json
import subprocess
import sys

import pytest
import torch

from mnist_lab.cli import main


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "resnet"], "invalid choice: 'resnet'"),
        (["train", "cnn", "--epochs", "three"], "expected a positive integer, got 'three'"),
        (["train", "cnn", "--epochs", "0"], "expected a positive integer, got 0"),
        (["train", "cnn", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["train", "cnn", "--seed", "99999999999999999999"], "expected an integer from 0 to 4294967295"),
        (["run", "--seeds", "0", "4294967296"], "expected an integer from 0 to 4294967295"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in _one_line_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_one_line(capsys, tmp_path):
    assert main(["train", "cnn", "--device", "cuda", "--out", str(tmp_path / "run")]) == 1
    assert "no CUDA GPU" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_missing_data_is_one_line(capsys, tmp_path):
    assert main(["train", "cnn", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")]) == 1
    assert "MNIST not found" in _one_line_error(capsys)


def test_train_writes_a_run_directory_and_trains_a_spec_once(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mnist_lab", "train", "basic_cnn", "--epochs", "1", "--limit-train", "256",
               "--limit-test", "128", "--seed", "3", "--out", str(out), "--no-progress"]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "basic_cnn seed 3 (trained): test accuracy" in completed.stdout
    again = subprocess.run(command[:-3] + ["--no-progress"], capture_output=True, text=True, check=True)
    assert "basic_cnn seed 3 (already in the run cache)" in again.stdout  # the same spec: read, not retrained
    assert {p.name for p in out.iterdir()} == {"config.json", "history.csv", "metrics.json", "predictions.csv",
                                               "environment.json", "provenance.json", "model.pt"}
    config = json.loads((out / "config.json").read_text())
    assert (config["seed"], config["train_size"], config["test_size"]) == (3, 256, 128)
    assert config["experiment"]["epochs"] == 1


def test_the_parsers_choices_are_the_registrys():
    from mnist_lab import cli, names
    from mnist_lab.profiles import MAX_SEED

    assert (cli.EXPERIMENT_NAMES, cli.PROFILE_NAMES, cli.DEVICES) == (names.EXPERIMENTS, names.PROFILES, names.DEVICES)
    assert cli.BENCH_MODELS == names.MODELS
    assert cli.MAX_SEED == MAX_SEED


def test_help_answers_without_importing_torch():
    done = subprocess.run([sys.executable, "-c", "import sys\nfrom mnist_lab.cli import build_parser\n"
                           "build_parser()\nprint('torch' in sys.modules)"], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_the_command_answers_help_before_importing_torch():
    script = ("import sys\nsys.argv = ['mnist-lab', 'run', '--help']\nfrom mnist_lab.cli import entry_point\n"
              "try:\n    entry_point()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "usage: mnist-lab run" in done.stdout and done.stdout.strip().endswith("False"), done.stderr


def test_a_reader_that_stops_early_gets_no_error_line():
    """`mnist-lab status | head -1`: the rest of the output has nowhere to go, which is no error."""
    process = subprocess.Popen([sys.executable, "-m", "mnist_lab", "status", "--profile", "smoke"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith("profile smoke: ")
    process.stdout.close()  # as `head` exits after its line
    errors = process.stderr.read()
    assert process.wait(timeout=120) == 141 and errors == ""
