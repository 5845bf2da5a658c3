"""The calibration studies' runs, frozen with the repository: their records without weights.

    frozen/<profile>/<key[:16]>/   config, history, metrics, environment and provenance (the run's
                                   full record: its value, key, code hashes, commit, machine)
    frozen/<profile>/index.json    name → seed → key, as the run cache's index
    frozen/<profile>/studies.json  the declaration the runs were frozen under (candidates, seeds,
                                   epochs), so that a changed declaration cannot pass unnoticed

A build reads a study's run from here when the run cache lacks it (`studies = frozen`, the
default). A frozen run whose key is the spec's is as good as training it here. One whose key
differs is still used, and says exactly why it differs: the files of its code that changed, and
the fields of its value (device, threads, ...) that are not the build's. `mnist-lab run --studies
train` trains the studies instead, and `mnist-lab freeze` writes them here again.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import paths, records
from ..errors import LabError, printable
from ..files import atomic_dir, write_json
from ..fingerprint import code_hash_of, file_hash, run_record
from ..spec import RunSpec
from .cache import KEY_LENGTH
from .directory import Run, read_run_record

FILES = ("config.json", "history.csv", "metrics.json", "environment.json", "provenance.json")
INDEX = "index.json"
STUDIES = "studies.json"


@dataclass(frozen=True)
class Frozen:
    """A frozen run, read back and checked, with why it is not the run of the spec asked for."""

    directory: Path
    record: dict
    run: Run
    differences: tuple[str, ...]  # empty: its key is the spec's

    @property
    def commit(self) -> str:
        return (self.record.get("git") or {}).get("commit") or "unknown"


def folder(profile: str) -> Path:
    return paths.FROZEN / profile


def index(profile: str) -> dict:
    return records.load(folder(profile) / INDEX, records.FROZEN_INDEX) or {}


def find(profile: str, name: str, spec: RunSpec) -> Frozen | None:
    """The frozen run of `name` seed `spec.seed`, if one was frozen and its files are whole."""
    return _read(profile, (index(profile).get(name) or {}).get(str(spec.seed)), spec)


def twin(profile: str, spec: RunSpec) -> Frozen | None:
    """The run frozen with `spec`'s very key, under whichever name (a smoke screen and its
    confirmation can be one recipe), if its files are whole."""
    return _read(profile, spec.key, spec)


def _read(profile: str, key, spec: RunSpec) -> Frozen | None:
    if not isinstance(key, str) or len(key) < KEY_LENGTH or not key.isalnum():
        return None
    directory = folder(profile) / key[:KEY_LENGTH]
    if not directory.exists():
        return None
    record = read_run_record(directory)
    problems = ["its record is missing or unusable"] if record is None else \
        ["its record is another run's"] if record["fingerprint"] != key else _file_problems(directory, record)
    if problems:
        records.tell(f"the frozen run {printable(directory, 160)} is not used: {printable(problems[0], 100)}")
        return None
    read = {name: records.load(directory / name, kind) for name, kind in
            (("config.json", records.RUN_CONFIG), ("metrics.json", records.RUN_METRICS),
             ("environment.json", records.RUN_ENVIRONMENT))}
    if None in read.values():
        return None
    import pandas as pd

    run = Run(directory=directory, config=read["config.json"], history=pd.read_csv(directory / "history.csv"),
              metrics=read["metrics.json"], predictions=None, environment=read["environment.json"])
    return Frozen(directory, record, run, tuple(differences(record, spec)))


def _file_problems(directory: Path, record: dict) -> list[str]:
    hashes = record.get("files") if isinstance(record.get("files"), dict) else {}
    problems = [f"{name} changed" for name in FILES[:-1]
                if not (directory / name).is_file() or file_hash(directory / name) != hashes.get(name)]
    return problems + [f"{p.name} is not a frozen file" for p in directory.iterdir() if p.name not in FILES]


def differences(record: dict, spec: RunSpec) -> list[str]:
    """Why a frozen run is not the run of `spec`: the code files that changed since it was frozen,
    its value's fields that differ (`device (cpu vs cuda)`), the data. Empty: the same key."""
    if record["fingerprint"] == spec.key:
        return []
    now = spec.record
    then_code, now_code = record.get("code") or {}, now["code"]
    found = [path for path in sorted({*then_code, *now_code}) if then_code.get(path) != now_code.get(path)]
    then_inputs, now_inputs = record.get("inputs") or {}, now["inputs"]
    for field in sorted({*then_inputs, *now_inputs}):
        before, after = then_inputs.get(field), now_inputs.get(field)
        if field == "recipe" and isinstance(before, dict):
            found += [f"{name} ({before.get(name)} vs {after.get(name)})" for name in sorted({*before, *after})
                      if before.get(name) != after.get(name)]
        elif before != after:
            found.append(f"{field} ({before} vs {after})")
    if record.get("data") != now["data"]:
        found.append("the MNIST data")
    return found or ["its key"]


def summary(frozen: list[Frozen]) -> str:
    """One line for the terminal, the index and the title page: how many study runs are frozen,
    at which commit(s), and what differs for those whose key is not the spec's."""
    if not frozen:
        return ""
    commits = sorted({item.commit[:7] for item in frozen})
    marked = [item for item in frozen if item.differences]
    head = f"{len(frozen)} calibration-study run(s) frozen at commit {', '.join(commits)}"
    if not marked:
        return f"{head}, every key matching this code"
    reasons = sorted({reason for item in marked for reason in item.differences})
    return f"{head}; {len(marked)} no longer match: {' and '.join(reasons)} differ"


# ---- writing them -----------------------------------------------------------------------------


def freeze(profile: str, runs: list, cache, declaration: dict) -> Path:
    """Write the study runs `runs` (Planned) into frozen/<profile>/, as a whole: each as frozen there
    already where a run with its very key is (so a study that gains a candidate trains only the new
    runs, and a record frozen once stays as it is), else from `cache`.

    Refused, with nothing written, if a run is in neither, or was trained from code that was not
    committed: its record's commit must hold every file of its code as the run hashed it."""
    chosen = {}
    for planned in runs:
        chosen[planned.spec.key] = (planned, _source(profile, planned, cache))
    target = folder(profile)
    target.parent.mkdir(parents=True, exist_ok=True)
    names: dict[str, dict[str, str]] = {}
    with atomic_dir(target) as staging:  # the old folder stays readable until the new one replaces it
        for key, (planned, directory) in chosen.items():
            (staging / key[:KEY_LENGTH]).mkdir()
            for name in FILES:
                shutil.copyfile(directory / name, staging / key[:KEY_LENGTH] / name)
        for planned in runs:
            names.setdefault(planned.label, {})[str(planned.spec.seed)] = planned.spec.key
        write_json(staging / INDEX, names)
        write_json(staging / STUDIES, declaration)
    return target


def _source(profile: str, planned, cache) -> Path:
    """Where `planned`'s run is frozen from: its frozen twin of the same key, else the run cache."""
    frozen = twin(profile, planned.spec)
    if frozen is not None:
        return frozen.directory  # checked when it was frozen; its files are as its record says (`_read`)
    problems = cache.problems(planned.spec)
    if problems:
        raise LabError(f"{planned.name} is not in the run cache ({problems[0]}) nor frozen with this code; "
                       f"train the studies first: `mnist-lab run --profile {profile} --studies train`")
    directory = cache.directory(planned.spec)
    _check_committed(planned.name, read_run_record(directory))
    return directory


def _check_committed(name: str, record: dict) -> None:
    commit = (record.get("git") or {}).get("commit")
    if not commit:
        raise LabError(f"{name} was trained outside a git checkout: only runs of committed code are frozen")
    for path, digest in sorted(record["code"].items()):
        shown = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=paths.ROOT, capture_output=True)
        if shown.returncode != 0 or code_hash_of(shown.stdout, Path(path).suffix) != digest:
            raise LabError(f"{name} was trained from uncommitted code ({path} is not as in commit {commit[:7]}); "
                           "commit the code, train the studies again and freeze them")


def stale_record(record: dict) -> list[str]:
    """For `status`: whether a frozen run still matches the code it recorded (run_record of its value)."""
    now = run_record(record["inputs"])
    return [] if now["fingerprint"] == record["fingerprint"] else sorted(
        path for path in {*record["code"], *now["code"]} if record["code"].get(path) != now["code"].get(path))
