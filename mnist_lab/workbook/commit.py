"""Committing a notebook's outputs: whole or not at all.

The kernel writes its figures, tables and macros into a staging folder
(artifacts/<profile>/.staging/<notebook>/); only when every cell has run does the runner move
them, the executed notebook and the provenance record into place, with Ctrl-C held off for
those few renames. A failed or interrupted run leaves the previous set as it was; a failed one
keeps its executed notebook as notebooks/<name>.failed.ipynb, the log of what went wrong.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

from .. import paths
from ..errors import LabError
from ..files import write_json
from . import provenance
from .hook import PLANNED_FILE, PROGRESS_FILE, SESSION_FILE

_MACRO = re.compile(r"\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}$", re.MULTILINE)


def executed_path(name: str, profile: str) -> Path:
    return paths.profile_dir(profile) / "notebooks" / f"{name}.ipynb"


def staging_dir(name: str, profile: str) -> Path:
    return paths.profile_dir(profile) / ".staging" / name


def failed_path(name: str, profile: str) -> Path:
    return executed_path(name, profile).with_suffix(".failed.ipynb")


def _changes(directory: Path, staging: Path, staged: list[Path]) -> dict:
    """The numbers (macros) and tables of the report that this run changes, old → new."""
    macros, tables = [], []
    for relative in staged:
        old, new = directory / relative, staging / relative
        if not old.is_file():
            continue
        if relative.parts[0] == "macros":
            before, after = dict(_MACRO.findall(old.read_text())), dict(_MACRO.findall(new.read_text()))
            macros += [[name, before.get(name, "(new)"), value] for name, value in after.items()
                       if before.get(name) != value]
            macros += [[name, value, "(gone)"] for name, value in before.items() if name not in after]
        elif relative.parts[0] == "tables" and relative.suffix == ".csv" and old.read_bytes() != new.read_bytes():
            tables.append(relative.stem)
    return {"macros": macros, "tables": tables}


def keep_failed(name: str, profile: str, executed: Path) -> Path | None:
    """Keep a failed run's executed notebook as the log; drop the rest of its staging folder."""
    log = None
    if executed.is_file() and executed.stat().st_size:
        log = failed_path(name, profile)
        log.parent.mkdir(parents=True, exist_ok=True)
        os.replace(executed, log)
    kernel_log = staging_dir(name, profile) / "kernel.log"
    if kernel_log.is_file():
        os.replace(kernel_log, failed_path(name, profile).with_suffix(".kernel.log"))
    shutil.rmtree(staging_dir(name, profile), ignore_errors=True)
    return log


@contextmanager
def _no_interruption():
    """Hold Ctrl-C (SIGINT), SIGTERM and SIGHUP off while the outputs are moved into place; they arrive after."""
    blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def commit(name: str, profile: str, staging: Path, inputs: dict, wall_seconds: float) -> dict:
    """Move the staged outputs into the profile folder and write the provenance record last;
    returns what changed in the report's numbers and tables."""
    directory = paths.profile_dir(profile)
    session_file = staging / SESSION_FILE
    used = json.loads(session_file.read_text()) if session_file.exists() else {"runs": {}, "modules": []}
    session_file.unlink(missing_ok=True)
    (staging / "kernel.log").unlink(missing_ok=True)
    (staging / PROGRESS_FILE).unlink(missing_ok=True)
    (staging / PLANNED_FILE).unlink(missing_ok=True)
    staged = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
    previous = provenance.read_record(profile, name)
    first = previous is None
    previous = previous or {"outputs": {}}
    record = {
        **inputs,
        "wall_seconds": round(wall_seconds, 1),
        "device": used.get("device"),
        "environment": used.get("environment"),
        "sources": {module: provenance.code_hash(paths.ROOT / module) for module in used["modules"]},
        "code_scheme": provenance.CODE_SCHEME,  # how `sources` were hashed
        "runs": used["runs"],
        "frozen": used.get("frozen", {}),
        "outputs": {str(relative): provenance.file_hash(staging / relative) for relative in staged},
        "changes": _changes(directory, staging, staged),
        "first_run": first,  # no record before this one: every number and table is new
    }
    record_file = provenance.record_path(profile, name).relative_to(directory)
    _check_destinations(name, directory, [*staged, record_file])  # all of them, before the first move
    with _no_interruption():
        for relative in staged:
            (directory / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relative, directory / relative)
        for relative in set(previous["outputs"]) - set(record["outputs"]):  # made by the previous run, not this one
            _remove_output(directory, relative)
        write_json(provenance.record_path(profile, name), record)
        failed_path(name, profile).unlink(missing_ok=True)
        failed_path(name, profile).with_suffix(".kernel.log").unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return record["changes"]


def _check_destinations(name: str, directory: Path, relatives: list[Path]) -> None:
    """Refuse to commit, with the previous set whole, if any output could not be put in place:
    a file where a folder should be, a folder or a link where a file should be."""
    for relative in relatives:
        target = paths.inside(directory, relative, "output")
        for folder in [*reversed(target.relative_to(directory).parents[:-1]), None]:
            path = target if folder is None else directory / folder
            wrong = path.exists() and (not path.is_file() if folder is None else not path.is_dir())
            if wrong:
                raise LabError(f"notebook {name} ran, but its outputs cannot be put in place: {path} is "
                               f"{'not a regular file' if folder is None else 'not a folder'}; move it away and "
                               "run again (previous artifacts intact)")


def _remove_output(directory: Path, relative: str) -> None:
    """Remove an output the previous run made and this one did not: only a regular file inside
    the profile. The previous record may have come from elsewhere; anything else stays."""
    try:
        path = paths.inside(directory, relative, "output")
    except LabError:
        return
    if path.is_file() and not path.is_symlink():
        path.unlink()


