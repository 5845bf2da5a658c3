"""Seeds and ablations as Ray tasks: `mnist-lab sweep cnn vit --seeds 0 1 2 --set lr=1e-3,3e-4`.

Every combination of experiment (or variant), seed and override is one Ray task. With no
address, `ray.init()` starts Ray on this machine; with `--address` (or RAY_ADDRESS) the same
sweep runs on an existing cluster. The run cache is the contract: each finished run comes back
to this process as data (the files of its run directory, and the MNIST tensors go out the same
way), and lands in artifacts/<profile>/runs/<experiment>/seed<S>/ under its fingerprint, exactly
where `Workbook.run` looks, so the notebooks and the report use it without retraining. Runs
already cached are not submitted; a run that fails is reported and the others are kept, so a
second sweep resumes what is missing.
"""

from __future__ import annotations

import itertools
import os
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .build import provenance
from .errors import LabError
from .experiments import Experiment, get_experiment, parse_value, variant
from .files import atomic_dir
from .profiles import check_seeds, get_profile
from .runs import check_replaceable, training_record


@dataclass(frozen=True)
class Task:
    experiment: Experiment  # with the profile applied
    seed: int
    fingerprint: str

    @property
    def key(self) -> tuple[str, int]:
        return self.experiment.name, self.seed

    @property
    def directory(self) -> Path:
        return Path("runs") / self.experiment.name / f"seed{self.seed}"


def parse_overrides(settings: list[str]) -> list[dict]:
    """`["lr=1e-3,3e-4", "hflip=true,false"]` → every combination, as one dict each."""
    axes = []
    for setting in settings:
        field, sep, values = setting.partition("=")
        if not sep or not field or not values:
            raise LabError(f"--set takes FIELD=VALUE[,VALUE...], got {setting!r}")
        axes.append([(field.strip(), parse_value(value.strip())) for value in values.split(",")])
    return [dict(combination) for combination in itertools.product(*axes)]


def plan(names: list[str], seeds: list[int], overrides: list[dict], profile: str, device: str) -> list[Task]:
    """Every run of the sweep, checked (unknown fields, wrong types) before anything is submitted."""
    settings = get_profile(profile)
    check_seeds(seeds)
    tasks = []
    for name, override, seed in itertools.product(names, overrides or [{}], seeds):
        experiment = settings.apply(variant(name, override) if override else get_experiment(name))
        record = training_record(experiment, seed, device=device, limit_train=settings.limit_train,
                                 limit_test=settings.limit_test)
        tasks.append(Task(experiment, seed, record["fingerprint"]))
    return list({t.key: t for t in tasks}.values())  # each run once


def is_cached(task: Task, profile: str) -> bool:
    record = provenance.read_run_record(paths.profile_dir(profile) / task.directory)
    return record is not None and record["fingerprint"] == task.fingerprint


def train_task(experiment: Experiment, seed: int, settings: dict, data, threads: int) -> dict:
    """What runs in a Ray worker: train, save the run directory, return its files as bytes."""
    import torch

    from .runs import save_run
    from .speed import memory
    from .train import fit

    torch.set_num_threads(threads)
    memory.keep_freed_memory()  # a worker is a process of the project's own
    start = time.perf_counter()
    result = fit(experiment, seed=seed, data=data, progress=False, **settings)
    with tempfile.TemporaryDirectory() as folder:
        directory = save_run(result, Path(folder) / "run")
        files = {p.name: p.read_bytes() for p in directory.iterdir()}
    return {"files": files, "test_accuracy": result.metrics["test_accuracy"], "seconds": time.perf_counter() - start,
            "host": socket.gethostname()}


def land(task: Task, profile: str, files: dict[str, bytes]) -> Path:
    """Write a returned run into the profile's cache, as a whole; it must be the run that was planned."""
    target = paths.profile_dir(profile) / task.directory
    check_replaceable(target)
    with atomic_dir(target) as staging:
        for name, content in files.items():
            (staging / name).write_bytes(content)
        record = provenance.read_run_record(staging)
        if record is None or record["fingerprint"] != task.fingerprint:
            raise LabError(f"{task.experiment.name} seed {task.seed} came back with another fingerprint: "
                           "the worker's code or data differ from this checkout's")
    return target


def run(names: list[str], *, seeds: list[int], settings: list[str], profile: str, address: str | None = None,
        device: str = "cpu", cpus_per_run: int | None = None, printer=print) -> dict:
    """Plan, submit what is not cached, land each result as it finishes; returns a summary."""
    tasks = plan(names, seeds, parse_overrides(settings), profile, device)
    todo = [task for task in tasks if not is_cached(task, profile)]
    printer(f"sweep ({profile}): {len(tasks)} run(s), {len(tasks) - len(todo)} already cached, {len(todo)} to train")
    outcomes = {task.key: "cached" for task in tasks if task not in todo}
    if todo:
        outcomes.update(_submit(todo, profile, address, device, cpus_per_run, printer))
    summary = _summary(tasks, outcomes, profile)
    for line in summary["table"]:
        printer(line)
    return summary


def _submit(todo: list[Task], profile: str, address: str | None, device: str, cpus_per_run: int | None,
            printer) -> dict:
    import ray

    from .data import load_mnist

    settings = get_profile(profile)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:  # an existing cluster: the package travels with the tasks
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"py_modules": [str(paths.ROOT / "mnist_lab")]})
    else:  # Ray started here, for this sweep, listening on loopback only (its default is the machine's address)
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    try:
        resources = ray.cluster_resources()
        # One run per GPU; on CPUs, one run at a time with every core (measured: docs/performance.md).
        gpus = resources.get("GPU", 0)
        threads = cpus_per_run or max(1, int(min(resources.get("CPU", 1), os.cpu_count() or 1)))
        options = {"num_gpus": 1, "num_cpus": 1} if device == "cuda" and gpus else {"num_cpus": threads}
        remote = ray.remote(train_task).options(**options, max_retries=0)
        data = ray.put(load_mnist())  # the workers need no copy of MNIST of their own
        run_settings = {"device": device, "limit_train": settings.limit_train, "limit_test": settings.limit_test}
        pending = {remote.remote(task.experiment, task.seed, run_settings, data, threads): task for task in todo}
        outcomes = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(done[0])
            label = f"{task.experiment.name} seed {task.seed}"
            try:
                returned = ray.get(done[0])
                land(task, profile, returned["files"])
            except Exception as error:  # a failed task: report it, keep the others
                message = str(getattr(error, "cause", None) or error).strip().splitlines()
                outcomes[task.key] = "failed"
                printer(f"  {label}: FAILED: {message[-1] if message else type(error).__name__}")
                continue
            outcomes[task.key] = "trained"
            printer(f"  {label}: test accuracy {returned['test_accuracy']:.2f}% in {returned['seconds']:.0f} s "
                    f"on {returned['host']}")
        return outcomes
    finally:
        ray.shutdown()


def _summary(tasks: list[Task], outcomes: dict, profile: str) -> dict:
    """Mean ± std of the final test accuracy per experiment, over the seeds whose runs are in the cache."""
    from .runs import load_run

    accuracies: dict[str, list[float]] = {}
    for task in tasks:
        if outcomes.get(task.key) in ("trained", "cached"):
            run = load_run(paths.profile_dir(profile) / task.directory)
            accuracies.setdefault(task.experiment.name, []).append(run.metrics["test_accuracy"])
    width = max([len(name) for name in accuracies] + [10])
    table = [f"{'experiment':<{width}}  seeds  test accuracy (%)"]
    for name, values in accuracies.items():
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        table.append(f"{name:<{width}}  {len(values):>5}  {statistics.mean(values):.2f}{spread}")
    failed = [f"{t.experiment.name} seed {t.seed}" for t in tasks if outcomes.get(t.key) == "failed"]
    if failed:
        table.append(f"failed: {', '.join(failed)} (run the same sweep again to retry them)")
    return {"accuracies": accuracies, "outcomes": {f"{name}/seed{seed}": o for (name, seed), o in outcomes.items()},
            "failed": failed, "table": table}
