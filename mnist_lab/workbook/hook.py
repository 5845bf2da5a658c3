"""The runner's side of a notebook kernel: where its outputs wait, what it tells the runner.

Under `mnist-lab run`, the runner sets STAGING_VARIABLE to a staging folder before it starts
the kernel, and lists there (PLANNED_FILE) the runs it planned and trained for the notebook:
the Workbook reads only those, writes its outputs there, and records in SESSION_FILE which
runs and package modules it used; lines for the runner's terminal go to PROGRESS_FILE. Explored by hand there
is no staging folder, and none of this happens.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .. import paths
from ..files import write_json

STAGING_VARIABLE = "MNIST_LAB_STAGING"  # tells the kernel's Workbook where to stage its outputs
SESSION_FILE = "session.json"  # the runs and modules a kernel used, for the notebook's record
PROGRESS_FILE = "progress.log"  # lines for the runner's terminal, printed as they come
PLANNED_FILE = "planned.json"  # the keys of the runs the runner planned (and trained) for this notebook


def staging() -> Path | None:
    """The runner's staging folder for this kernel, or None when explored by hand."""
    folder = os.environ.get(STAGING_VARIABLE)
    return Path(folder) if folder else None


def planned() -> tuple[set[str] | None, str]:
    """The keys of the runs the runner planned for this notebook (None when explored by hand), and
    where the studies' runs come from ("frozen", the default, or "train")."""
    import json

    folder = staging()
    if folder is None:
        return None, "frozen"
    try:
        plan = json.loads((folder / PLANNED_FILE).read_text())
        return set(plan["keys"]), str(plan["studies"])
    except (OSError, ValueError, TypeError, KeyError):
        return set(), "train"


def say(line: str) -> None:
    """A line for the runner's terminal (explored by hand: the cell's output)."""
    folder = staging()
    if folder is None:
        print(line, file=sys.stderr, flush=True)
        return
    with open(folder / PROGRESS_FILE, "a") as log:
        log.write(line + "\n")


def record_session(runs: dict[str, str], frozen: dict[str, str], device, environment: dict) -> None:
    """Tell the runner which runs this kernel used (folder → key; frozen runs by their folder
    under frozen/) and which package modules it imported (what it wrote, the runner sees in its
    staging folder)."""
    folder = staging()
    if folder is None:
        return
    modules = sorted(
        str(Path(module.__file__).resolve().relative_to(paths.ROOT))
        for name, module in list(sys.modules.items())
        if name.startswith("mnist_lab") and getattr(module, "__file__", None)
    )
    write_json(folder / SESSION_FILE, {"runs": runs, "frozen": frozen, "modules": modules, "device": str(device),
                                      "environment": environment})
