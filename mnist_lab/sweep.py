"""Seeds and ablations as Ray tasks: `mnist-lab sweep cnn vit --seeds 0 1 2 --set lr=1e-3,3e-4`.

Every combination of experiment (or variant), seed and override is one Ray task. With no
address, `ray.init()` starts Ray on this machine; with `--address` (or RAY_ADDRESS) the same
sweep runs on an existing cluster. The run cache is the contract: each finished run comes back
to this process as data (the files of its run directory, and the MNIST tensors go out the same
way), and lands in the profile's run cache under its key, where the runner and the notebooks
look, so they use it without retraining. `mnist-lab run --address` trains a build's missing
runs the same way (`train_on_cluster`). Runs
already cached are not submitted; a run that fails is reported and the others are kept, so a
second sweep resumes what is missing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import math
import os
import re
import socket
import statistics
import tempfile
import time
from pathlib import Path

from . import paths
from .errors import LabError, printable
from .experiments import get_experiment, parse_value, variant
from .files import atomic_dir
from .profiles import check_seeds, get_profile
from .runs import RunCache, check_replaceable, for_profile
from .runs.directory import RUN_FILES, read_run_record, run_file_problems
from .runs.planned import Planned
from .spec import RunSpec


MAX_RUNS = 1000  # runs one sweep may plan: a typo in --seeds or --set should not queue days of training


def parse_overrides(settings: list[str]) -> list[dict]:
    """`["lr=1e-3,3e-4", "hflip=true,false"]` → every combination, as one dict each."""
    axes = []
    for setting in settings:
        field, sep, values = setting.partition("=")
        if not sep or not field or not values:
            raise LabError(f"--set takes FIELD=VALUE[,VALUE...], got {printable(repr(setting), 100)}")
        axes.append([(field.strip(), parse_value(value.strip())) for value in values.split(",")])
    combinations = math.prod(len(axis) for axis in axes)
    if combinations > MAX_RUNS:  # counted before the product is built: it could fill the memory
        raise LabError(f"--set makes {combinations} combinations, over the limit of {MAX_RUNS} runs in one sweep")
    return [dict(combination) for combination in itertools.product(*axes)]


def plan(names: list[str], seeds: list[int], overrides: list[dict], profile: str, device: str,
         threads: int | None = None) -> list[Planned]:
    """Every run of the sweep, checked (unknown fields, wrong types) before anything is submitted;
    each distinct spec once."""
    settings = get_profile(profile)
    check_seeds(seeds)
    count = len(names) * max(1, len(overrides)) * len(seeds)
    if count > MAX_RUNS:
        raise LabError(f"the sweep plans {count} runs, over the limit of {MAX_RUNS} in one sweep; "
                       "sweep fewer experiments, seeds or values")
    planned = []
    for name, override, seed in itertools.product(names, overrides or [{}], seeds):
        experiment = settings.apply(variant(name, override) if override else get_experiment(name))
        spec = RunSpec.of(experiment, seed, device=device, limit_train=settings.limit_train,
                          limit_test=settings.limit_test, threads=threads)
        planned.append(Planned(experiment.name, spec))
    return list({run.spec.key: run for run in planned}.values())


def train_task(spec: RunSpec, name: str, data) -> dict:
    """What runs in a Ray worker: train, save the run directory, return its files as bytes."""
    from .runs.directory import save_run
    from .speed import memory
    from .train import fit

    memory.keep_freed_memory()  # a worker is a process of the project's own
    start = time.perf_counter()
    result = fit(spec, label=name, data=data, progress=False)  # with the spec's own threads
    with tempfile.TemporaryDirectory() as folder:
        directory = save_run(result, Path(folder) / "run")
        files = {p.name: p.read_bytes() for p in directory.iterdir()}
    return {"files": files, "test_accuracy": result.metrics["test_accuracy"], "seconds": time.perf_counter() - start,
            "host": socket.gethostname()}


def land(run: Planned, cache: RunCache, files: dict[str, bytes]) -> Path:
    """Write a returned run into the cache, as a whole; it must be the run that was planned."""
    target = cache.directory(run.spec)
    check_replaceable(target)
    if set(files) != set(RUN_FILES):
        raise LabError(f"{run.name} came back with other files than a run writes")
    cache.folder.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target) as staging:
        for name, content in files.items():
            (staging / name).write_bytes(content)
        record = read_run_record(staging)
        if record is None or record["fingerprint"] != run.spec.key:
            raise LabError(f"{run.name} came back with another key: the worker's code or data differ from this "
                           "checkout's")
        problems = run_file_problems(staging)
        if problems:
            raise LabError(f"{run.name} came back damaged: {problems[0]}")
    return target


def run(names: list[str], *, seeds: list[int], settings: list[str], profile: str, address: str | None = None,
        device: str = "cpu", cpus_per_run: int | None = None, connect_timeout: float = 60, printer=print) -> dict:
    """Plan, submit what is not cached, land each result as it finishes; returns a summary."""
    cache = for_profile(profile)
    planned = plan(names, seeds, parse_overrides(settings), profile, device, threads=cpus_per_run)
    todo = [run for run in planned if cache.problems(run.spec)]
    printer(f"sweep ({profile}): {len(planned)} run(s), {len(planned) - len(todo)} already cached, {len(todo)} to train")
    outcomes = {run.name: "cached" for run in planned if run not in todo}
    if todo:
        failed = train_on_cluster(todo, cache, address=address, connect_timeout=connect_timeout, printer=printer)
        outcomes.update({run.name: "failed" if run.name in failed else "trained" for run in todo})
    cache.label_all([(run.label, run.spec) for run in planned if outcomes[run.name] != "failed"])
    summary = _summary(planned, outcomes, cache)
    for line in summary["table"]:
        printer(line)
    return summary


def train_on_cluster(todo: list[Planned], cache: RunCache, *, address: str | None, connect_timeout: float = 60,
                     printer=print) -> list[str]:
    """Train the runs `todo` as Ray tasks (on the cluster at `address`, else on Ray started here),
    landing each in `cache` as it finishes; returns the names of those that failed."""
    import ray
    from ray._raylet import Config

    from .data import load_mnist

    address = address or os.environ.get("RAY_ADDRESS")
    environment = dict(os.environ)
    try:
        if address:  # an existing cluster: the package travels with the tasks
            _connect(address, connect_timeout)
        else:  # Ray started here, for this sweep
            _start_local(printer)
        remote = ray.remote(train_task)
        data = ray.put(load_mnist())  # the workers need no copy of MNIST of their own
        pending = {remote.options(**_per_run(run.spec), max_retries=0).remote(run.spec, run.name, data): run
                   for run in todo}
        failed = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(done[0])
            try:
                returned = ray.get(done[0])
                land(run, cache, returned["files"])
            except Exception as error:  # a failed task: report it, keep the others
                message = str(getattr(error, "cause", None) or error).strip().splitlines()
                failed.append(run.name)
                printer(f"  {run.name}: FAILED: {printable(message[-1] if message else type(error).__name__, 300)}")
                continue
            printer(f"  {run.name}: test accuracy {returned['test_accuracy']:.2f}% in {returned['seconds']:.0f} s "
                    f"on {returned['host']}")
        return failed
    finally:
        ray.shutdown()
        _put_back({**dict.fromkeys(os.environ), **environment})  # Ray's own additions too (its token mode)
        Config.initialize("")  # and Ray's config in this process from it again (see _ray_environment)


def _put_back(saved: dict) -> None:
    """Environment variables as they were: each its value, or None for one that was not set."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        elif os.environ.get(name) != value:
            os.environ[name] = value


def _per_run(spec: RunSpec) -> dict:
    """Ray's resources for one run: one GPU for a CUDA run; on CPUs, as many CPUs as the run's
    threads (by default every core here: one run at a time, measured in docs/performance.md).
    A run is one task, on one node: asking for more CPUs than the largest node has would wait
    for ever, so it is refused here."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    cpus = int(max([node.get("CPU", 0) for node in nodes], default=0))
    gpus = max([node.get("GPU", 0) for node in nodes], default=0)
    if spec.device == "cuda" and gpus:
        return {"num_gpus": 1, "num_cpus": 1}
    threads = spec.threads or 1
    if threads > cpus:
        raise LabError(f"--cpus-per-run {threads} is more than any node of the Ray cluster has "
                       f"(the largest has {cpus} CPUs): it would wait for ever")
    return {"num_cpus": threads}


# A local sweep's Ray, on a machine that may be busy. In ray 2.60 the wait that fails first under
# load is fixed: the raylet gives its dashboard agent 15 s to report its ports, then aborts
# (raylet binary: NodeManager::WaitForDashboardAgentPorts, 15000 ms), and ray.init then reports
# "node timed out during startup". So a start that timed out is tried again, after ending what it
# left running; the waits that can be set are raised.
LOCAL_STARTS = 3
LOCAL_SETTINGS = {
    # 0: 127.0.0.1 stays 127.0.0.1, so every service (GCS, raylet, agents, workers) binds to loopback
    # only (otherwise Ray swaps in the machine's address: see _ray_environment)
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_gcs_server_port_wait_time_s": "120",  # the GCS reporting its port (default 30 s), then answering
    # ray.init's wait for the raylet to register (each look waits this long: default 10 s). Not
    # more: a raylet that aborted never registers, and the start is retried only after this.
    "RAY_raylet_start_wait_time_s": "60",
    "RAY_worker_register_timeout_seconds": "600",  # a worker importing Ray before it registers (default 60 s)
}


def _start_local(printer) -> None:
    """Ray on this machine for this sweep, on 127.0.0.1 only; one line if it cannot start."""
    import ray

    for attempt in range(1, LOCAL_STARTS + 1):
        before = _descendants()
        try:
            with _ray_environment(LOCAL_SETTINGS, loopback=True), _project_signals(), _quiet_ray():
                ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            return
        except Exception as error:
            ray.shutdown()
            _stop_started_since(before)  # a failed start leaves Ray's GCS and helpers running
            timed_out = "timed out during startup" in str(error)
            if not timed_out or attempt == LOCAL_STARTS:
                busy = f" ({attempt} attempts: the machine may be too busy)" if timed_out else ""
                raise LabError(f"Ray could not start on this machine: {_reason(error)}{busy}") from None
            printer(f"  Ray's start-up timed out (a busy machine?); starting it again ({attempt + 1}/{LOCAL_STARTS})")


@contextlib.contextmanager
def _project_signals():
    """ray.init with the process's own signal handlers kept. Ray's core installs its own for SIGTERM
    (a C++ handler that prints a stack dump and aborts: exit 134, six lines) while ray.init runs,
    and its Python side may add more. So SIGTERM and SIGHUP are held off (blocked) while ray.init
    runs, the handlers the process had are put back when it returns or fails, and only then is a
    signal that arrived meanwhile delivered: it unwinds through `train_on_cluster`'s clean-up
    (ray.shutdown) to cli's one line and exit 143 or 129. (Threads Ray starts meanwhile keep them
    blocked, so the main thread is the one that takes them.)"""
    import signal

    held = {getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)}
    saved = {number: signal.getsignal(number) for number in (*held, signal.SIGINT)}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        for number, handler in saved.items():
            if handler is not None:  # None: set from outside Python, which cannot be put back from here
                signal.signal(number, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# A warning line of Ray's core (C++), written to the process's stderr itself, not through Python.
# And its notice that token authentication is on (Ray 2.60's default), which asks nothing of a user here.
_RAY_WARNING = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,.]+ W \d+ \d+\] |Token authentication is enabled for this Ray")


@contextlib.contextmanager
def _quiet_ray():
    """Ray's warnings off while it connects: a failed connection is the one line _connect raises,
    not three lines of its core's ("Failed to connect to GCS ...") before it. Its core writes them
    to file descriptor 2 from C++, so that descriptor goes to a file while ray.init runs; what is
    there besides Ray's warning lines is written back to stderr after."""
    import logging
    import sys
    import warnings

    loggers = [logging.getLogger(name) for name in ("ray", "ray._private", "ray._private.worker")]
    levels = [logger.level for logger in loggers]
    sys.stderr.flush()
    saved = os.dup(2)
    captured = tempfile.TemporaryFile()
    os.dup2(captured.fileno(), 2)
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        captured.seek(0)
        kept = [line for line in captured.read().decode(errors="replace").splitlines()
                if line.strip() and not _RAY_WARNING.match(line)]
        captured.close()
        for line in kept:
            print(line, file=sys.stderr)


def _descendants() -> set[int]:
    import psutil  # a dependency of Ray's

    return {process.pid for process in psutil.Process().children(recursive=True)}


def _stop_started_since(before: set[int]) -> None:
    """End the processes this one started since `before` was taken, and only those."""
    import psutil

    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for process in started:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(started, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=10)  # and reaped: no zombies left behind


def _connect(address: str, seconds: float) -> None:
    """ray.init on an existing cluster within `seconds`, or one line with Ray's reason.

    Ray's own loop tries 20 times, up to ~40 s each, so an address where nothing answers waited
    for minutes: a plain TCP connection answers at once for the common cases, and Ray's
    connection settings are cut to fit what is left of the limit."""
    import ray

    deadline = time.monotonic() + seconds
    host_port = _host_port(address)
    if host_port:
        _probe(address, *host_port, seconds)
    left = max(1.0, deadline - time.monotonic())
    try:
        with _ray_environment(_connect_settings(left), loopback=bool(host_port) and _is_loopback(host_port[0])), \
                _project_signals(), _quiet_ray():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     runtime_env={"py_modules": [str(paths.ROOT / "mnist_lab")]})
    except Exception as error:
        reason = _reason(error)
        if "timed out" in reason.lower():
            raise LabError(f"no answer from the Ray cluster at {address} within {seconds:g} s "
                           f"(--connect-timeout): {reason}") from None
        raise LabError(f"cannot connect to the Ray cluster at {address}: {reason}") from None


def _connect_settings(seconds: float) -> dict:
    """One attempt, its waits (connecting, then waiting for the GCS to answer) within `seconds`."""
    return {"RAY_gcs_server_port_wait_time_s": "1",  # attempts of about a second each, plus the waits below
            "RAY_gcs_rpc_server_connect_timeout_s": str(max(1, int(seconds / 5))),  # twice: GCS, its pubsub
            "RAY_py_gcs_connect_timeout_s": str(max(1, int(seconds / 2)))}


def _host_port(address: str) -> tuple[str, int] | None:
    """("10.0.0.5", 6379) from "10.0.0.5:6379" (also "ray://…", "[::1]:6379"); None for Ray's other forms ("auto")."""
    host, sep, port = address.split("://")[-1].rpartition(":")
    return (host.strip("[]"), int(port)) if sep and host and port.isdigit() else None


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _probe(address: str, host: str, port: int, seconds: float) -> None:
    """A plain TCP connection to the cluster's address: refused or silent, say so now."""
    try:
        with socket.create_connection((host, port), timeout=seconds):
            pass
    except TimeoutError:
        raise LabError(f"no answer from the Ray cluster at {address} within {seconds:g} s (--connect-timeout)") from None
    except ConnectionRefusedError:
        raise LabError(f"cannot connect to the Ray cluster at {address}: nothing is listening there "
                       "(connection refused)") from None
    except OSError as error:
        raise LabError(f"cannot connect to the Ray cluster at {address}: {error.strerror or error}") from None


@contextlib.contextmanager
def _ray_environment(settings: dict, loopback: bool):
    """Ray's settings for one ray.init: in this process's environment only while it runs (the
    processes it starts inherit them), then the environment as it was.

    Ray reads them when it is imported, so its copies are refreshed here: its C++ config
    (Config.initialize, as Ray does for its own token mode), its cached token, and the flag that
    makes it replace 127.0.0.1 with the machine's address (ENABLE_RAY_CLUSTER, read at import from
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER: ray/_private/services.py, resolve_ip_for_localhost and
    get_node_ip_address). The C++ config keeps them until train_on_cluster refreshes it after shutdown."""
    import ray._private.ray_constants as constants
    from ray._raylet import AuthenticationTokenLoader, Config

    saved = {name: os.environ.get(name) for name in settings}
    flag = constants.ENABLE_RAY_CLUSTER
    os.environ.update(settings)
    if loopback:
        constants.ENABLE_RAY_CLUSTER = False
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()  # the token in the environment now, or none
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = flag
        _put_back(saved)


def _reason(error: BaseException) -> str:
    """Ray's own words for a failure, on one line: the innermost error it chained, and of a
    traceback it quotes ("Last connection error: Traceback ..."), the last line."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip()
    if "Traceback (most recent call last)" in text:
        text = text.splitlines()[-1]
    text = re.sub(r"^[\w.]+(Error|Exception): ", "", " ".join(text.split()))
    return text or type(error).__name__


def _summary(planned: list[Planned], outcomes: dict, cache: RunCache) -> dict:
    """Mean ± std of the final test accuracy per experiment, over the seeds whose runs are in the cache."""
    accuracies: dict[str, list[float]] = {}
    for run in planned:
        if outcomes.get(run.name) in ("trained", "cached"):
            accuracies.setdefault(run.label, []).append(cache.get(run.spec).metrics["test_accuracy"])
    width = max([len(name) for name in accuracies] + [10])
    table = [f"{'experiment':<{width}}  seeds  test accuracy (%)"]
    for name, values in accuracies.items():
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        table.append(f"{name:<{width}}  {len(values):>5}  {statistics.mean(values):.2f}{spread}")
    failed = [run.name for run in planned if outcomes.get(run.name) == "failed"]
    if failed:
        table.append(f"failed: {', '.join(failed)} (run the same sweep again to retry them)")
    return {"accuracies": accuracies, "outcomes": outcomes, "failed": failed, "table": table}
