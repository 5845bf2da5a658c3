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
# Everything a run generates; never committed. Tests point it elsewhere through the
# environment, which the notebook kernels that papermill starts inherit.
ARTIFACTS = Path(os.environ.get("MNIST_LAB_ARTIFACTS") or ROOT / "artifacts")


def profile_dir(profile: str) -> Path:
    """Where one profile's outputs live: a smoke run never touches the full run's files."""
    return ARTIFACTS / profile
