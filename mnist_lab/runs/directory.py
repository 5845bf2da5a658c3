"""Run directories: a training result as files, so figures and tables are drawn from disk.

    <run>/config.json       the recipe (no name: names are labels), the seed and the run settings
    <run>/history.csv       one row per epoch (accuracies in percent)
    <run>/metrics.json      the final numbers the report quotes
    <run>/predictions.csv   test-set label and predicted class, for confusion matrices
    <run>/environment.json  torch and CUDA versions, device, threads
    <run>/provenance.json   what made it (`fingerprint.run_record`): the run's value, code and
                            data hashes, its key; the hash of every other file here; git commit, wall time
    <run>/model.pt          the trained weights (state_dict)

A run directory may come from another machine (an archive, a sweep's worker), so it is
verified, not trusted: its files must be exactly these, each with the hash its record holds,
and the weights are read with `weights_only=True`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from .. import records
from ..errors import LabError
from ..files import atomic_dir, write_json
from ..fingerprint import file_hash, git_state

if TYPE_CHECKING:
    from ..train import RunResult

# The files a run directory holds: its record, and what the record vouches for by hash.
RUN_FILES = ("config.json", "history.csv", "metrics.json", "predictions.csv", "environment.json", "model.pt",
             "provenance.json")


def run_file_hashes(run_directory: Path) -> dict[str, str]:
    return {name: file_hash(Path(run_directory) / name) for name in RUN_FILES if name != "provenance.json"}


def read_run_record(run_directory: Path) -> dict | None:
    """A run's provenance.json, or None where there is none or it is not a record of this project's
    (`records.RUN_RECORD`; an unusable one is told once, then as if absent)."""
    return records.load(Path(run_directory) / "provenance.json", records.RUN_RECORD)


WEIGHTS = "model.pt"
WEIGHTS_LEFT_OUT = "its weights (model.pt) were left out when it was packed"


def run_file_problems(run_directory: Path, weights: bool = True) -> list[str]:
    """What is wrong with a run directory's files against its record: missing, changed since the
    run, or not a file a run writes. Empty: every file is the one the run wrote.

    `weights=False`: a run packed without its weights (`mnist-lab pack --without-weights`) is whole
    for what reads only its results (tables, figures, the report); weights that are there must
    still be the run's own."""
    directory = Path(run_directory)
    record = read_run_record(directory)
    if record is None:
        return ["provenance.json is missing or unreadable"]
    hashes = record.get("files")
    if not isinstance(hashes, dict) or set(hashes) != set(RUN_FILES) - {"provenance.json"}:
        return ["its record lists no hash for each of its files (made by an older version)"]
    problems = []
    for name, digest in sorted(hashes.items()):
        path = directory / name
        if name == WEIGHTS and not os.path.lexists(path):
            problems += [WEIGHTS_LEFT_OUT] if weights else []
        elif path.is_symlink() or not path.is_file():
            problems.append(f"{name} is missing")
        elif file_hash(path) != digest:
            problems.append(f"{name} changed since the run")
    problems += [f"{p.name} is not a file a run writes" for p in sorted(directory.iterdir()) if p.name not in RUN_FILES]
    return problems


def check_replaceable(directory: str | Path, verified: bool = False) -> None:
    """`save_run` may write `directory`: absent, empty, or a run directory holding exactly the
    files a run writes; never the user's own files, which are named in the refusal.

    `verified` (a folder the user names, `train --out`): a folder that holds files must hold a run
    of this project whose every file matches its record; a user's own config.json and
    provenance.json are not one. The run cache's own folders are not held to it, so that a damaged
    run there is trained again over."""
    directory = Path(directory)
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise LabError(f"{directory} is a file, not a run directory; choose a new folder for the run")
    if directory.is_dir():
        entries = sorted(directory.iterdir())
        foreign = [p.name for p in entries if p.name not in RUN_FILES or p.is_symlink() or not p.is_file()]
        if foreign:
            raise LabError(f"{directory} holds files that are not a training run ({foreign[0]}); "
                           "choose a new or empty folder")
        if entries and not (directory / "provenance.json").is_file():
            raise LabError(f"{directory} holds files that are not a training run (no provenance.json); "
                           "choose a new or empty folder")
        problems = run_file_problems(directory) if entries and verified else []
        if problems:
            raise LabError(f"{directory} holds files that are not a verified training run ({problems[0]}); "
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
    record = result.spec.record
    with atomic_dir(directory) as staging:
        config = {"experiment": result.spec.value()["recipe"], "seed": result.seed, **result.settings,
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
            **record, "files": run_file_hashes(staging), "git": git_state(),
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


# What `load_run` reads of a run's JSON files: verified by hash, but the record vouching for them
# may be as forged as they are.
_KINDS = {"config.json": records.RUN_CONFIG, "metrics.json": records.RUN_METRICS,
          "environment.json": records.RUN_ENVIRONMENT}


def load_run(directory: str | Path) -> Run:
    """Read a run directory back, after checking every file against its record (its weights
    may have been left out: `load_model` says so where they are needed)."""
    directory = Path(directory)
    problems = run_file_problems(directory, weights=False)
    if problems:
        raise LabError(f"the run in {directory} cannot be used: {problems[0]}; train it again")
    fix = "train it again"
    read = lambda name: records.read(directory / name, _KINDS[name], fix=fix)  # noqa: E731
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
    from ..models import create_model

    if not os.path.lexists(run.directory / WEIGHTS):
        raise LabError(f"the run in {run.directory} has no weights: {WEIGHTS_LEFT_OUT}; "
                       "`mnist-lab run` trains it again for the notebooks that load its model")
    experiment = run.config["experiment"]
    model = create_model(experiment["model"], **experiment["model_args"])
    try:
        state = torch.load(run.directory / "model.pt", map_location=device, weights_only=True)
        model.load_state_dict(state)
    except Exception as error:  # verified by hash at load_run, so this is a run from other code
        raise LabError(f"{run.directory / 'model.pt'} does not hold this model's weights "
                       f"({type(error).__name__}); train the run again") from None
    return model.to(device).eval()

