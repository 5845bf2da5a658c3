"""Absolute paths of the project, so code works from any working directory.

Papermill runs a notebook with its own directory as the working directory, and
the CLI may be started from anywhere; every path is therefore derived from the
location of this file, never from `os.getcwd()`.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"  # the MNIST files the repository carries (gzipped)
NOTEBOOKS = Path(os.environ.get("MNIST_LAB_NOTEBOOKS") or ROOT / "notebooks")  # tests point it at their own
REPORT = ROOT / "report"
# The calibration studies' runs, frozen with their records and committed (`mnist-lab freeze`);
# tests point it elsewhere.
FROZEN = Path(os.environ.get("MNIST_LAB_FROZEN") or ROOT / "frozen")
# Everything a run generates; never committed. Tests point it elsewhere through the
# environment, which the notebook kernels that papermill starts inherit.
ARTIFACTS = Path(os.environ.get("MNIST_LAB_ARTIFACTS") or ROOT / "artifacts")


def profile_dir(profile: str) -> Path:
    """Where one profile's outputs live: a smoke run never touches the full run's files."""
    return ARTIFACTS / profile


def inside(folder: Path, relative, what: str = "path") -> Path:
    """`folder / relative`, refused unless it stays inside `folder`.

    Names and records that come from outside (an archive, a run directory another machine
    wrote, a variant's name) are labels, never paths: a relative path with `..`, an absolute
    one, or one that passes through a symbolic link could reach a file the project did not make.
    """
    from .errors import LabError

    text = str(relative) if isinstance(relative, (str, Path)) else None
    parts = Path(text).parts if text else ()
    if not parts or Path(text).is_absolute() or any(part in ("..", ".") for part in parts) or "\0" in text:
        raise LabError(f"{what} {relative!r} does not stay inside {folder}; refused")
    current = Path(folder)
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise LabError(f"{what} {relative!r} passes through the link {current}; refused")
    return current
