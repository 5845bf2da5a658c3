"""Run directories: a training result as files, so figures and tables are drawn from disk.

    <run>/config.json       the experiment's recipe, the seed and the run settings
    <run>/history.csv       one row per epoch (accuracies in percent)
    <run>/metrics.json      the final numbers the report quotes
    <run>/predictions.csv   test-set label and predicted class, for confusion matrices
    <run>/environment.json  torch and CUDA versions, device, threads
    <run>/provenance.json   what made it (`build.provenance.run_record`): inputs, code and data
                            hashes, fingerprint; git commit, wall time
    <run>/model.pt          the trained weights (state_dict)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

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


def is_run_directory(directory: Path) -> bool:
    return directory.is_dir() and all((directory / name).is_file() for name in ("config.json", "provenance.json"))


def check_replaceable(directory: str | Path) -> None:
    """`save_run` may write `directory`: absent, empty, or an earlier run directory; never the user's files."""
    directory = Path(directory)
    if directory.is_file() or (directory.exists() and not directory.is_dir()):
        raise LabError(f"{directory} is a file, not a run directory; choose a new folder for the run")
    if directory.is_dir() and any(directory.iterdir()) and not is_run_directory(directory):
        raise LabError(f"{directory} holds files that are not a training run; choose a new or empty folder")
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
        write_json(staging / "provenance.json", {
            **record, "git": provenance.git_state(), "wall_seconds": round(float(result.history["seconds"].sum()), 2),
        })
        torch.save(result.model.state_dict(), staging / "model.pt")
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
    directory = Path(directory)
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
    model.load_state_dict(torch.load(run.directory / "model.pt", map_location=device))
    return model.to(device).eval()
