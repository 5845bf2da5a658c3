"""The run cache: one folder per run, named by its key, verified every time it hands a run out.

    cache = RunCache(paths.profile_dir("smoke") / "runs")
    run = cache.get(spec)             # the run of this spec, checked file by file; None if absent
    run = cache.put(fit(spec))        # saved whole, under spec.key
    cache.label("vit", spec)          # index.json: the names people know the run by

A folder is `<key[:16]>/`; its record holds the whole key and its files' hashes, so a folder
renamed, cut or written elsewhere is never handed out as a run it is not. Names live only in
`index.json` (label → seed → key), for people and the report's provenance appendix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .. import paths, records
from ..errors import LabError
from ..files import write_json
from ..fingerprint import differences, key_of, run_record
from ..spec import RunSpec
from .directory import Run, load_run, read_run_record, run_file_problems, save_run

KEY_LENGTH = 16  # hex digits of the key in a folder's name (64 bits); the record holds all of it
INDEX = "index.json"


class RunCache:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def directory(self, spec: RunSpec) -> Path:
        return self.folder / spec.key[:KEY_LENGTH]

    def get(self, spec: RunSpec, weights: bool = False) -> Run | None:
        """The run of `spec`, if it is here whole: its record's key is the spec's, every file the one
        the run wrote. Anything else (absent, another key, a cut file) is None: train it.
        `weights`: its model is loaded, so a run packed without weights is not whole."""
        directory = self.directory(spec)
        if self.problems(spec, weights):
            return None
        return load_run(directory)

    def problems(self, spec: RunSpec, weights: bool = False) -> list[str]:
        """Why `get(spec, weights)` finds no run (empty: it does)."""
        directory = self.directory(spec)
        if directory.is_symlink() or not directory.is_dir():
            return ["not trained yet"]
        record = read_run_record(directory)
        if record is None or record["fingerprint"] != spec.key:
            return [f"{directory.name} holds another run"]
        return run_file_problems(directory, weights)

    def put(self, result) -> Run:
        """Save a finished run under its spec's key, as a whole (an interrupted save leaves the cache
        as it was). A run trained on other images than its spec names is refused."""
        spec = result.spec
        expected = (spec.limit_train or 60000, spec.limit_test or 10000)
        if (result.settings["train_size"], result.settings["test_size"]) != expected:
            raise LabError(f"a run trained on {result.settings['train_size']} training and {result.settings['test_size']} "
                           f"test images is not the run of its spec ({expected[0]} and {expected[1]}); "
                           "only runs on the spec's own data go into the run cache")
        self.folder.mkdir(parents=True, exist_ok=True)
        return load_run(save_run(result, self.directory(spec)))

    def checkpoint(self, spec: RunSpec) -> Path:
        """Where an interrupted training of `spec` keeps its last completed epoch (fit resumes from it)."""
        return self.folder / f".{spec.key[:KEY_LENGTH]}.checkpoint.pt"

    # ---- names, for people ----------------------------------------------------------------

    def label(self, name: str, spec: RunSpec) -> None:
        """Record that `name` seed `spec.seed` is the run of `spec` (a name may change its run; a
        run may have several names)."""
        self.label_all([(name, spec)])

    def label_all(self, named: list[tuple[str, RunSpec]]) -> None:
        with self._index_lock():
            index = self.index()
            for name, spec in named:
                index.setdefault(name, {})[str(spec.seed)] = spec.key
            write_json(self.folder / INDEX, index)

    def index(self) -> dict[str, dict[str, str]]:
        """label → seed → key; an index that is not of that shape counts as empty (it only names runs)."""
        return records.load(self.folder / INDEX, records.RUN_INDEX) or {}

    def names(self) -> dict[str, list[str]]:
        """key → the names it is known by ("vit seed 0")."""
        names: dict[str, list[str]] = {}
        for label, seeds in self.index().items():
            for seed, key in seeds.items():
                names.setdefault(key, []).append(f"{label} seed {seed}")
        return names

    def runs(self) -> list[tuple[Path, dict]]:
        """Every run folder here with its record (unreadable ones with None), in name order."""
        if not self.folder.is_dir():
            return []
        return [(path, read_run_record(path)) for path in sorted(self.folder.iterdir())
                if path.is_dir() and not path.is_symlink() and not path.name.startswith(".")]

    @contextlib.contextmanager
    def _index_lock(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.folder / ".index.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)


def for_profile(profile: str) -> RunCache:
    return RunCache(paths.profile_dir(profile) / "runs")


def staleness(run_directory: Path, fingerprint: str | None = None, name: str | None = None) -> list[str]:
    """Why the run in `run_directory` would be trained again now (empty: it still matches its code).

    With `fingerprint`, the run must also be the one of that key (the one a notebook used).
    """
    name = name or f"run {Path(run_directory).name}"
    record = read_run_record(run_directory)
    if record is None:
        return [f"{name} is missing"]
    if fingerprint is not None and record["fingerprint"] != fingerprint:
        return [f"{name} was retrained"]
    problems = run_file_problems(run_directory, weights=False)  # what was drawn from it is all there
    if problems:
        return [f"{name}: {problem}" for problem in problems]
    now = run_record(record["inputs"])
    if now["fingerprint"] == record["fingerprint"]:
        return []
    found = differences(record, now, hashed_by=hashed_by(run_directory))
    if not found:  # a key that its own fields do not give
        return [f"{name}'s inputs changed"]
    reasons = [f"{item} changed (code of {name})" if item.startswith("mnist_lab/") else f"{item} ({name})"
               for item in found if item != "the MNIST data"]
    if "the MNIST data" in found:
        reasons.append(f"MNIST data changed ({name})")
    return reasons


def verified(directory: Path) -> bool:
    """Whether a run folder is a run to show as a result (the appendix, the pages, the headline):
    a record of this project's whose key is what its own fields hash to and names the folder, and
    every file the one it hashes (its weights may have been left out when packed). A run of older
    code still counts: it is what it says it is, and staleness says it is old. (Someone who can
    write artifacts/ and recompute every hash is out of scope: docs/security.md.)"""
    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        return False
    record = read_run_record(directory)
    return (record is not None and record["fingerprint"] == key_of(record)
            and record["fingerprint"][:KEY_LENGTH] == directory.name and not run_file_problems(directory, weights=False))


def hashed_by(run_directory: Path) -> str | None:
    """The Python a run's record was hashed under, as its environment.json says (None: unknown)."""
    environment = records.load(Path(run_directory) / "environment.json", records.RUN_ENVIRONMENT) or {}
    python = environment.get("python")
    return python if isinstance(python, str) and len(python) <= 32 and python.isprintable() else None
