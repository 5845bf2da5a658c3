"""Provenance: what each artifact was made from, and whether it still matches its inputs.

Two kinds of record:

* a training run's *fingerprint* (in its config.json): the recipe, seed and settings, the
  training code and the data. A cached run is reused only while it matches, so changing a
  plot never retrains a model and changing a hyperparameter retrains exactly that model;
* a notebook's *record* (artifacts/<profile>/provenance/<notebook>.json), written by the
  runner after a successful execution: its parameters, the hash of its code cells, the hash
  of each package file it imported, the data, the environment, the git commit, the wall
  time, and a hash of every artifact it wrote. `staleness` compares a record with the
  present and says what changed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from .. import paths
from ..data import MD5

# The source files that decide what training produces. Plotting and table code is not
# here on purpose: changing a figure must never retrain a model.
TRAINING_SOURCES = ("data.py", "augment.py", "experiments.py", "train.py", "checkpoint.py", "models", "speed")


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source_hash(names=TRAINING_SOURCES) -> str:
    """SHA-256 over the named files (folders: every .py and .c file in them) of the package."""
    digest = hashlib.sha256()
    package = paths.ROOT / "mnist_lab"
    for name in names:
        target = package / name
        files = sorted([*target.rglob("*.py"), *target.rglob("*.c")]) if target.is_dir() else [target]
        for path in files:
            digest.update(str(path.relative_to(package)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(**inputs) -> str:
    """Hash of a training run's inputs: the recipe and settings given, the training code and the data."""
    record = {"inputs": inputs, "code": source_hash(), "data": MD5}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def notebook_code_hash(path: str | Path) -> str:
    """Hash of a notebook's code cells only: outputs, metadata and prose do not change results."""
    notebook = json.loads(Path(path).read_text())
    code = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    return hashlib.sha256(json.dumps(code).encode()).hexdigest()


def data_hashes(root: Path | None = None) -> dict[str, str]:
    """Hash of each MNIST file the loader would read (by content: touching a file changes nothing)."""
    from ..data import default_root, find_file

    root = root or default_root()
    found = {name: find_file(root, name) for name in MD5}
    return {name: file_hash(path) if path else "missing" for name, path in found.items()}


def git_state() -> dict:
    """The commit of the work tree and whether it had uncommitted changes (None outside git)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def record_path(profile: str, notebook: str) -> Path:
    return paths.profile_dir(profile) / "provenance" / f"{notebook}.json"


def read_record(profile: str, notebook: str) -> dict | None:
    """The notebook's last provenance record, or None if it never ran through the runner."""
    path = record_path(profile, notebook)
    return json.loads(path.read_text()) if path.exists() else None


def session_path(profile: str, notebook: str) -> Path:
    """What the notebook's Workbook reports while it runs: its outputs, runs and imported modules."""
    return paths.profile_dir(profile) / "provenance" / f"{notebook}.session.json"


def staleness(record: dict | None, *, notebook_file: Path, parameters: dict, profile_dir: Path) -> list[str]:
    """Why a notebook's artifacts no longer match their inputs; an empty list means fresh."""
    if record is None:
        return ["never run (no provenance record)"]
    reasons = []
    if notebook_code_hash(notebook_file) != record["notebook_hash"]:
        reasons.append(f"{notebook_file.name}'s code changed")
    for relative, digest in record["sources"].items():
        path = paths.ROOT / relative
        if not path.exists():
            reasons.append(f"{relative} was removed")
        elif file_hash(path) != digest:
            reasons.append(f"{relative} changed")
    if data_hashes() != record["data"]:
        changed = [name for name, digest in data_hashes().items() if record["data"].get(name) != digest]
        reasons.append(f"MNIST data changed ({', '.join(changed)})")
    for key, value in parameters.items():
        if record["parameters"].get(key) != value:
            reasons.append(f"parameter {key} changed ({record['parameters'].get(key)!r} -> {value!r})")
    for relative, key in record["runs"].items():
        config = profile_dir / relative / "config.json"
        if not config.exists() or json.loads(config.read_text()).get("fingerprint") != key:
            reasons.append(f"{relative} was retrained or removed")
    for relative, digest in record["outputs"].items():
        path = profile_dir / relative
        if not path.exists():
            reasons.append(f"{relative} is missing")
        elif file_hash(path) != digest:
            reasons.append(f"{relative} was modified after the run")
    return reasons
