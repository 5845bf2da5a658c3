"""`mnist-lab sweep`: Ray really schedules the runs, and they land where the notebooks look."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil  # a dependency of Ray's
import pytest

from mnist_lab import paths, sweep
from mnist_lab.workbook import Workbook
from mnist_lab.cli import main
from mnist_lab.errors import LabError
from mnist_lab.runs import RunCache

from conftest import run_folder

pytestmark = pytest.mark.slow  # Ray starts and trains

RAY = Path(sys.executable).with_name("ray")


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path / "artifacts")
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # Ray's token for a local cluster lands here, not in ~/.ray
    return tmp_path / "artifacts"


def _refuse_training(monkeypatch):
    def train(*args, **kwargs):
        raise AssertionError("this run should have come from the cache")

    monkeypatch.setattr("mnist_lab.train.fit", train)  # the workbook imports it when it trains
    monkeypatch.setattr("mnist_lab.workbook.fit", train, raising=False)  # or at import
    monkeypatch.setattr(sweep, "train_on_cluster", train)


class _ListeningSockets(threading.Thread):
    """Every listening TCP socket of this process and of the processes it started, sampled twice a
    second while a sweep runs: (process name, address)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: set[tuple[str, str]] = set()
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.5):
            me = psutil.Process()
            for process in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    name = process.name()
                    self.seen |= {(name, c.laddr.ip) for c in process.net_connections("tcp")
                                  if c.status == psutil.CONN_LISTEN}


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # ::ffff:127.0.0.1 too


def test_a_local_sweep_fills_the_cache_keeps_going_past_a_failure_and_resumes(artifacts, monkeypatch, capsys):
    # Two good runs and one whose loss diverges (lr=1e9): reported, and the good ones kept.
    import ray._private.ray_constants as ray_constants

    environment, flag = dict(os.environ), ray_constants.ENABLE_RAY_CLUSTER
    sockets = _ListeningSockets()
    sockets.start()
    try:
        code = main(["sweep", "basic_cnn", "--profile", "smoke", "--seeds", "0", "1", "--set", "lr=0.01,1e9"])
    finally:
        sockets.done.set()
        sockets.join()
    printed = capsys.readouterr()
    # Ray's own services were seen running, and nothing it started listened beyond this machine.
    assert {"gcs_server", "raylet"} <= {name for name, _ in sockets.seen}, sockets.seen
    assert [(name, ip) for name, ip in sockets.seen if not _is_loopback(ip)] == []
    # Ray's settings held only while the sweep ran.
    assert dict(os.environ) == environment and ray_constants.ENABLE_RAY_CLUSTER == flag
    # (Ray itself may say on stderr that its local cluster uses token authentication.)
    assert code == 1 and printed.err.count("mnist-lab: error:") == 1
    assert "2 run(s) failed" in printed.err.strip().splitlines()[-1]
    assert "basic_cnn[lr=1000000000.0] seed 0: FAILED: " in printed.out and "loss became nan" in printed.out
    assert "basic_cnn[lr=0.01] seed 1: test accuracy" in printed.out
    cache = RunCache(artifacts / "smoke" / "runs")
    assert list(cache.index()) == ["basic_cnn[lr=0.01]"] and len(cache.runs()) == 2  # the failed ones: nothing

    _refuse_training(monkeypatch)  # from here on, nothing may train
    book = Workbook("sweep_test", profile="smoke", device="cpu", seeds=[0, 1])
    runs = book.runs("basic_cnn[lr=0.01]")  # a notebook asks for the variant by name
    assert [run.config["seed"] for run in runs] == [0, 1]
    assert all(run.metrics["test_accuracy"] > 20 for run in runs)
    summary = sweep.run(["basic_cnn"], seeds=[0, 1], settings=["lr=0.01"], profile="smoke")
    assert summary["outcomes"] == {"basic_cnn[lr=0.01] seed 0": "cached", "basic_cnn[lr=0.01] seed 1": "cached"}


@pytest.mark.parametrize("failures", [1, sweep.LOCAL_STARTS])
def test_a_local_start_that_times_out_is_tried_again_then_given_up_in_one_line(monkeypatch, failures):
    # Ray's own start-up waits are fixed (15 s for its agents): on a busy machine they run out.
    import ray
    import ray._private.ray_constants as ray_constants

    seen, flag = [], ray_constants.ENABLE_RAY_CLUSTER

    def init(**kwargs):  # what Ray was given, and the settings in force while it started
        seen.append((kwargs["_node_ip_address"], os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"),
                     ray_constants.ENABLE_RAY_CLUSTER))
        if len(seen) <= failures:
            raise Exception("The current node timed out during startup. This could happen because some of "
                            "the raylet failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    printed = []
    if failures < sweep.LOCAL_STARTS:
        sweep._start_local(printed.append)
    else:
        with pytest.raises(LabError, match=r"^Ray could not start on this machine: The current node timed out "
                                           r"during startup\..* \(3 attempts: the machine may be too busy\)$"):
            sweep._start_local(printed.append)
    assert len(seen) == min(failures + 1, sweep.LOCAL_STARTS) and len(printed) == min(failures, sweep.LOCAL_STARTS - 1)
    assert "starting it again (2/3)" in printed[0]
    assert set(seen) == {("127.0.0.1", "0", False)}  # loopback, for Ray here and the processes it starts
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ and ray_constants.ENABLE_RAY_CLUSTER == flag


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
    names = [task.label for task in tasks]
    assert names == ["cnn[hflip=true]", "cnn[hflip=false]"]
    assert len({task.spec.key for task in tasks}) == 2
    # A variant that spells out the experiment's own values is that experiment's run: planned once.
    same = sweep.plan(["cnn"], [0], sweep.parse_overrides(["augmentation.hflip=false"]), "smoke", "cpu")
    assert same[0].spec.key == sweep.plan(["cnn"], [0], [], "smoke", "cpu")[0].spec.key
    from mnist_lab.experiments import get_experiment

    assert get_experiment("cnn[hflip=true]").augmentation.hflip is True
    with pytest.raises(LabError, match="a variant is written"):
        get_experiment("cnn[hflip]")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _sweep_error(argv: list[str], capsys) -> tuple[int, str, float]:
    """Exit status, the error line and the seconds taken of `mnist-lab sweep ...`."""
    start = time.monotonic()
    code = main(["sweep", "basic_cnn", "--profile", "smoke", *argv])
    seconds = time.monotonic() - start
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mnist-lab: error:")]
    assert len(errors) == 1, errors
    return code, errors[0], seconds


def test_an_address_where_nothing_listens_fails_at_once_in_one_line(artifacts, capsys):
    code, error, seconds = _sweep_error(["--address", "127.0.0.1:1", "--connect-timeout", "5"], capsys)
    assert code == 1 and "nothing is listening there" in error and seconds < 5
    assert not (artifacts / "smoke" / "runs").exists()


def test_an_address_that_never_answers_fails_when_the_connect_timeout_expires(artifacts, capsys):
    # A socket that accepts connections and never speaks: Ray's own retries took minutes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        code, error, seconds = _sweep_error(["--address", address, "--connect-timeout", "5"], capsys)
    assert code == 1 and f"no answer from the Ray cluster at {address} within 5 s" in error
    assert seconds < 15  # the limit, plus importing Ray when this test runs alone


def _ray_processes() -> set[psutil.Process]:
    """Ray's services running on this machine now, whoever started them."""
    return {p for p in psutil.process_iter(["name"])
            if p.info["name"] in ("gcs_server", "raylet") or (p.info["name"] or "").startswith("ray::")}


@contextlib.contextmanager
def _ray_head(env: dict):
    """A Ray cluster of the test's own on 127.0.0.1: `ray start --head --block` in a temp dir of its
    own; yields its port. Stopped by ending that process and what it started, by pid: never
    `ray stop`, which ends every Ray process on the machine, other users' clusters included."""
    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    log = temp / "start.log"
    with log.open("w") as out:
        head = subprocess.Popen([str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                                 f"--port={port}", f"--temp-dir={temp}", "--num-cpus=2", "--include-dashboard=false",
                                 "--disable-usage-stats"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        yield port
    finally:
        _stop_head(head, temp)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_head(head: subprocess.Popen, temp: Path) -> None:
    """SIGTERM makes `ray start --block` end the processes it started; whatever is left of them
    (its descendants, or a process naming its temp dir) is killed by pid."""
    ours = set()
    with contextlib.suppress(psutil.Error):
        ours = {psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)}
    ours |= {p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])}
    head.terminate()
    _, alive = psutil.wait_procs(ours, timeout=30)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    head.wait(30)


def test_the_same_sweep_runs_on_an_existing_cluster_through_address(artifacts, tmp_path, monkeypatch, capsys):
    others = _ray_processes()  # other Ray clusters on this machine: they must outlive this test
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # for `ray start` itself: keep 127.0.0.1
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)  # and HOME is the test's own: no token to find
    with _ray_head(env) as port:
        address = ["--address", f"127.0.0.1:{port}"]
        # Without the cluster's token: refused, with Ray's reason, in one line.
        code, error, _ = _sweep_error(address, capsys)
        assert code == 1 and "Authentication token is missing or incorrect" in error

        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
        # More CPUs per run than any node has: refused before anything is submitted.
        code, error, _ = _sweep_error([*address, "--cpus-per-run", "64"], capsys)
        assert code == 1 and "--cpus-per-run 64 is more than any node of the Ray cluster has" in error
        assert not (artifacts / "smoke" / "runs").exists()

        assert main(["sweep", "basic_cnn", "--profile", "smoke", *address]) == 0
        assert "basic_cnn seed 0: test accuracy" in capsys.readouterr().out
        assert (run_folder(artifacts / "smoke", "basic_cnn") / "model.pt").is_file()
    assert all(process.is_running() for process in others)
