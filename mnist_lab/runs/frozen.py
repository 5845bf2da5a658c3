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

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import fingerprint, paths, records
from ..errors import LabError, printable, shortlist
from ..files import atomic_dir, write_json
from ..fingerprint import code_hash_of, file_hash
from ..spec import RunSpec
from .cache import KEY_LENGTH, hashed_by
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
    return Frozen(directory, record, run, tuple(differences(record, spec, directory)))


def _file_problems(directory: Path, record: dict) -> list[str]:
    hashes = record.get("files") if isinstance(record.get("files"), dict) else {}
    problems = [f"{name} changed" for name in FILES[:-1]
                if not (directory / name).is_file() or file_hash(directory / name) != hashes.get(name)]
    return problems + [f"{p.name} is not a frozen file" for p in directory.iterdir() if p.name not in FILES]


def differences(record: dict, spec: RunSpec, directory: Path | None = None) -> list[str]:
    """Why a frozen run is not the run of `spec` (`fingerprint.differences`): the code files that
    changed since it was frozen, its value's fields that differ (`device (cpu vs cuda)`), the data.
    Empty: the same key."""
    if record["fingerprint"] == spec.key:
        return []
    return fingerprint.differences(record, spec.record, hashed_by=directory and hashed_by(directory)) or ["its key"]


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
    return f"{head}; {len(marked)} no longer match: {' and '.join(shortlist(reasons))} differ"


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
        for key, (_, directory) in chosen.items():
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


COMMIT = re.compile(r"[0-9a-f]{40}")


def commit_files(commit, paths_: list[str]) -> dict[str, bytes | None]:
    """Each of `paths_` as committed in `commit` (None where git has no such file). Both come from
    a record, so they are checked as data before git sees them: a commit is 40 hex digits, a path a
    relative one inside the checkout, never text git could take as an option."""
    if not isinstance(commit, str) or not COMMIT.fullmatch(commit):
        raise LabError(f"the commit {str(commit)[:50]!r} of a run's record is not 40 hex digits; refused")
    found = {}
    for path in paths_:
        paths.inside(paths.ROOT, path, "code file")  # relative, no `..`: the name of a file of the checkout
        shown = subprocess.run(["git", "cat-file", "blob", f"{commit}:{path}"], cwd=paths.ROOT, capture_output=True)
        found[path] = shown.stdout if shown.returncode == 0 else None
    return found


def _check_committed(name: str, record: dict) -> None:
    commit = (record.get("git") or {}).get("commit")
    if not commit:
        raise LabError(f"{name} was trained outside a git checkout: only runs of committed code are frozen")
    committed = commit_files(commit, sorted(record["code"]))
    for path, digest in sorted(record["code"].items()):
        content = committed[path]
        if content is None or code_hash_of(content, Path(path).suffix) != digest:
            raise LabError(f"{name} was trained from uncommitted code ({path} is not as in commit {commit[:7]}); "
                           "commit the code, train the studies again and freeze them")
