"""One CPU training at a time per machine: a second one waits, saying for whom, then trains."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from mnist_lab import machine
from mnist_lab.cli import main

HOLD = ("import sys, time\nfrom mnist_lab.machine import cpu_slot\n"
        "with cpu_slot('vit seed 0'):\n    print('held', flush=True)\n    time.sleep(float(sys.argv[1]))\n")


def test_a_second_training_waits_for_the_first_and_says_for_whom(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv(machine.HELD, raising=False)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "3"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    assert main(["train", "basic_cnn", "--epochs", "1", "--limit-train", "200", "--limit-test", "100",
                 "--no-progress", "--out", str(tmp_path / "run")]) == 0
    waited = time.monotonic() - start
    holder.wait(timeout=60)
    error = capsys.readouterr().err
    assert f"waiting for the CPU: vit seed 0 is training in pid {holder.pid}" in error
    assert waited > 2  # it trained only once the holder let go (the whole run takes well under that alone)
    assert os.environ.get(machine.HELD) is None and (tmp_path / "run" / "model.pt").is_file()


def test_a_process_holding_the_slot_passes_it_to_those_it_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv(machine.HELD, raising=False)
    with machine.cpu_slot("the benchmark"):
        child = subprocess.run([sys.executable, "-c", HOLD, "0"], capture_output=True, text=True, timeout=60)
        with machine.cpu_slot("nested"):  # and a nested call in this process goes straight through
            pass
    assert child.stdout.strip() == "held" and "waiting" not in child.stderr
