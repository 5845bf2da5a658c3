"""Fingerprints: what a result depends on, hashed, so a cached result is reused only when nothing changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import paths
from .data import MD5

# The source files that decide what training produces. Plotting and table code is not
# here on purpose: changing a figure must never retrain a model.
TRAINING_SOURCES = ("data.py", "augment.py", "experiments.py", "train.py", "models")


def source_hash(names=TRAINING_SOURCES) -> str:
    """SHA-256 over the named files (folders: every .py file in them) of the package."""
    digest = hashlib.sha256()
    package = paths.ROOT / "mnist_lab"
    for name in names:
        target = package / name
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for path in files:
            digest.update(str(path.relative_to(package)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(**inputs) -> str:
    """Hash of a training run's inputs: the recipe and settings given, the training code and the data."""
    record = {"inputs": inputs, "code": source_hash(), "data": MD5}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
