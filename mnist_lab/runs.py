"""Run directories: a training result as files, so figures and tables are drawn from disk.

    <run>/config.json       the experiment's recipe, the seed and the run settings
    <run>/history.csv       one row per epoch (accuracies in percent)
    <run>/metrics.json      the final numbers the report quotes
    <run>/predictions.csv   test-set label and predicted class, for confusion matrices
    <run>/environment.json  torch and CUDA versions, device, threads
    <run>/provenance.json   training-code hash, data checksums, git commit, wall time
    <run>/model.pt          the trained weights (state_dict)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .data import MD5
from .files import atomic_dir, write_json
from .build.provenance import git_state, source_hash
from .train import RunResult


def save_run(result: RunResult, directory: str | Path) -> Path:
    """Write `result` to `directory` as a whole: an interrupted save leaves the previous run intact."""
    directory = Path(directory)
    with atomic_dir(directory) as staging:
        config = {"experiment": result.experiment.to_dict(), "seed": result.seed, **result.settings}
        write_json(staging / "config.json", config)
        result.history.to_csv(staging / "history.csv", index=False)
        write_json(staging / "metrics.json", result.metrics)
        pd.DataFrame({"label": result.labels.numpy(), "prediction": result.predictions.numpy()}).to_csv(
            staging / "predictions.csv", index=False
        )
        write_json(staging / "environment.json", result.environment)
        write_json(staging / "provenance.json", {
            "fingerprint": result.settings.get("fingerprint"), "training_code": source_hash(), "data": MD5,
            "git": git_state(), "wall_seconds": round(float(result.history["seconds"].sum()), 2),
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
