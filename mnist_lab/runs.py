"""Run directories: a training result as files, so figures and tables are drawn from disk.

    <run>/config.json       the experiment's recipe, the seed and the run settings
    <run>/history.csv       one row per epoch (accuracies in percent)
    <run>/metrics.json      the final numbers the report quotes
    <run>/predictions.csv   test-set label and predicted class, for confusion matrices
    <run>/environment.json  torch and CUDA versions, device, threads
    <run>/provenance.json   what made it (`build.provenance.run_record`): inputs, code and data
                            hashes, fingerprint; the hash of every other file here; git commit, wall time
    <run>/model.pt          the trained weights (state_dict)

A run directory may come from another machine (an archive, a sweep's worker), so it is
verified, not trusted: its files must be exactly these, each with the hash its record holds,
and the weights are read with `weights_only=True`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import paths
from .build import provenance
from .errors import LabError
from .experiments import Experiment
from .files import atomic_dir, write_json
from .train import RunResult, resolve_precision, uses_cuda_graphs


def training_record(experiment: Experiment, seed: int, *, device: str, precision: str = "auto",
                    limit_train: int | None = None, limit_test: int | None = None, deterministic: bool = False,
                    fast: bool = True, cuda_graphs: bool = True) -> dict:
    """What a run of these settings depends on, and its fingerprint: the cache key of a run."""
    device_type = torch.device(device).type
    return provenance.run_record(experiment=experiment.to_dict(), seed=seed, device=device_type,
                                 precision=resolve_precision(precision, device_type), limit_train=limit_train,
                                 limit_test=limit_test, deterministic=deterministic, fast=fast,
                                 **({"cuda_graphs": True} if uses_cuda_graphs(device_type, fast=fast,
                                                                              cuda_graphs=cuda_graphs) else {}))


def result_record(result: RunResult) -> dict:
    settings = result.settings
    return training_record(result.experiment, result.seed, device=settings["device"],
                           precision=settings["precision"], limit_train=settings["limit_train"],
                           limit_test=settings["limit_test"], deterministic=settings["deterministic"],
                           fast=settings["fast"], cuda_graphs=settings.get("cuda_graphs", False))


def run_directory(runs: Path, experiment_name: str, seed: int) -> Path:
    """Where the run of `experiment_name` and `seed` lives under `runs`: the name is a label, and
    one that is not a plain folder name (a `/`, `..`, a leading dot) is refused, never followed."""
    if (not isinstance(experiment_name, str) or not experiment_name or experiment_name.startswith(".")
            or any(char in experiment_name for char in "/\\\0")):
        raise LabError(f"experiment name {experiment_name!r} cannot name a run directory")
    return paths.inside(runs, f"{experiment_name}/seed{int(seed)}", "run directory")


def check_replaceable(directory: str | Path) -> None:
    """`save_run` may write `directory`: absent, empty, or a run directory holding exactly the
    files a run writes; never the user's own files, which are named in the refusal."""
    directory = Path(directory)
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise LabError(f"{directory} is a file, not a run directory; choose a new folder for the run")
    if directory.is_dir():
        entries = sorted(directory.iterdir())
        foreign = [p.name for p in entries if p.name not in provenance.RUN_FILES or p.is_symlink() or not p.is_file()]
        if foreign:
            raise LabError(f"{directory} holds files that are not a training run ({foreign[0]}); "
                           "choose a new or empty folder")
        if entries and not (directory / "provenance.json").is_file():
            raise LabError(f"{directory} holds files that are not a training run (no provenance.json); "
                           "choose a new or empty folder")
    for parent in directory.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LabError(f"{directory} cannot be created: {parent} is a file")
            break


def save_run(result: RunResult, directory: str | Path) -> Path:
    """Write `result` to `directory` as a whole: an interrupted save leaves the previous run intact."""
    directory = Path(directory)
    check_replaceable(directory)
    record = result_record(result)
    with atomic_dir(directory) as staging:
        config = {"experiment": result.experiment.to_dict(), "seed": result.seed, **result.settings,
                  "fingerprint": record["fingerprint"]}
        write_json(staging / "config.json", config)
        result.history.to_csv(staging / "history.csv", index=False)
        write_json(staging / "metrics.json", result.metrics)
        pd.DataFrame({"label": result.labels.numpy(), "prediction": result.predictions.numpy()}).to_csv(
            staging / "predictions.csv", index=False
        )
        write_json(staging / "environment.json", result.environment)
        torch.save(result.model.state_dict(), staging / "model.pt")
        write_json(staging / "provenance.json", {  # last: it holds the hash of every other file
            **record, "files": provenance.run_file_hashes(staging), "git": provenance.git_state(),
            "wall_seconds": round(float(result.history["seconds"].sum()), 2),
        })
    return directory


@dataclass(frozen=True)
class Run:
    """A run directory read back: what notebooks draw figures and tables from."""

    directory: Path
    config: dict
    history: pd.DataFrame
    metrics: dict
    predictions: pd.DataFrame
    environment: dict


def load_run(directory: str | Path) -> Run:
    """Read a run directory back, after checking every file against its record."""
    directory = Path(directory)
    problems = provenance.run_file_problems(directory)
    if problems:
        raise LabError(f"the run in {directory} cannot be used: {problems[0]}; train it again")
    read = lambda name: json.loads((directory / name).read_text())  # noqa: E731
    return Run(
        directory=directory,
        config=read("config.json"),
        history=pd.read_csv(directory / "history.csv"),
        metrics=read("metrics.json"),
        predictions=pd.read_csv(directory / "predictions.csv"),
        environment=read("environment.json"),
    )


def load_model(run: Run, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained network of a run, in evaluation mode."""
    from .models import create_model

    experiment = run.config["experiment"]
    model = create_model(experiment["model"], **experiment["model_args"])
    try:
        state = torch.load(run.directory / "model.pt", map_location=device, weights_only=True)
        model.load_state_dict(state)
    except Exception as error:  # verified by hash at load_run, so this is a run from other code
        raise LabError(f"{run.directory / 'model.pt'} does not hold this model's weights "
                       f"({type(error).__name__}); train the run again") from None
    return model.to(device).eval()
