"""Executing the workbook's notebooks with papermill: strict parameters, kept logs, one-screen failures.

A notebook's outputs are committed whole or not at all. The kernel writes its figures,
tables and macros into a staging folder (artifacts/<profile>/.staging/<notebook>/); only when
every cell has run does the runner move them, the executed notebook and the provenance record
into place, with Ctrl-C held off for those few renames. A failed or interrupted run leaves the
previous set as it was; a failed one keeps its executed notebook as notebooks/<name>.failed.ipynb,
the log of what went wrong.
"""

from __future__ import annotations

import ast
import json
import os
import re
import threading
import shutil
import signal
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .. import paths
from ..errors import LabError
from ..files import write_json
from ..profiles import check_seeds, get_profile
from . import provenance
from .lock import profile_lock

STAGING_VARIABLE = "MNIST_LAB_STAGING"  # tells the kernel's Workbook where to stage its outputs
SESSION_FILE = "session.json"  # written by the Workbook in the staging folder: the runs and modules it used
PROGRESS_FILE = "progress.log"  # one line per finished epoch, from the kernel; the runner prints them
_MACRO = re.compile(r"\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}$", re.MULTILINE)


def available() -> list[str]:
    """The workbook's notebooks, in the report's order (their names sort that way: q1_, q2_, q3_)."""
    return sorted(p.stem for p in paths.NOTEBOOKS.glob("*.ipynb"))


def declared_parameters(name: str) -> dict:
    """The literal defaults of the notebook's `parameters` cell."""
    import papermill

    path = paths.NOTEBOOKS / f"{name}.ipynb"
    cells = provenance.read_notebook(path).get("cells", [])  # a clear error for a file that is not JSON
    if not any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in cells):
        raise LabError(f"notebook {name} has no cell tagged 'parameters', so it cannot be run with parameters; "
                       "tag its first code cell 'parameters'")
    declared = papermill.inspect_notebook(str(path))
    return {key: ast.literal_eval(info["default"]) for key, info in declared.items()}


def check_parameters(name: str, parameters: dict) -> None:
    """Unknown or mistyped parameters are errors (papermill itself only warns)."""
    declared = declared_parameters(name)
    for key, value in parameters.items():
        if key not in declared:
            raise LabError(f"notebook {name} has no parameter {key!r}; its parameters: {', '.join(declared)}")
        if not _same_shape(value, declared[key]):
            raise LabError(
                f"notebook {name}: parameter {key!r} must be {type(declared[key]).__name__} "
                f"like {declared[key]!r}, got {value!r}"
            )
    for key, value in parameters.items():
        if key.endswith("seeds"):  # seeds, calibration_seeds
            check_seeds(value)


def _same_shape(value, default) -> bool:
    """Same type as the default (bool is not an int here); a list's items like the default's first."""
    if type(value) is not type(default):
        return isinstance(default, float) and type(value) is int  # 1 is a fine float
    if isinstance(default, list) and default:
        return all(_same_shape(item, default[0]) for item in value)
    return True


def executed_path(name: str, profile: str) -> Path:
    return paths.profile_dir(profile) / "notebooks" / f"{name}.ipynb"


def effective_parameters(name: str, profile: str, parameters: dict | None = None,
                         shared: dict | None = None) -> dict:
    """The parameters a run of `name` would see: the notebook's defaults, then what was given.

    `parameters` must all be declared by the notebook; `shared` ones (device, seeds) go
    only to the notebooks that declare them, so one command can set them for all.
    """
    _check_name(name)
    get_profile(profile)
    if "profile" in (parameters or {}) and parameters["profile"] != profile:
        raise LabError(f"-p profile {parameters['profile']!r} disagrees with --profile {profile!r}; "
                       f"use --profile {parameters['profile']} alone")
    declared = declared_parameters(name)
    given = {"profile": profile, **{k: v for k, v in (shared or {}).items() if k in declared}, **(parameters or {})}
    check_parameters(name, given)
    effective = {**declared, **given}
    if "device" in effective:  # no GPU when one was asked for: say so now, not in a cell minutes later
        from ..device import resolve_device

        resolve_device(effective["device"])
    return effective


def status(name: str, profile: str, parameters: dict | None = None, shared: dict | None = None) -> list[str]:
    """Why the notebook's artifacts are stale under these parameters (empty: fresh)."""
    return _unreadable_record(name, profile) or provenance.staleness(
        provenance.read_record(profile, name), notebook_file=paths.NOTEBOOKS / f"{name}.ipynb",
        parameters=effective_parameters(name, profile, parameters, shared), profile_dir=paths.profile_dir(profile),
    )


def _unreadable_record(name: str, profile: str) -> list[str]:
    """A record that exists but cannot be used (cut short, another shape) makes the notebook stale, saying so."""
    path = provenance.record_path(profile, name)
    if path.exists() and provenance.read_record(profile, name) is None:
        return [f"its provenance record {path.name} is unreadable"]
    return []


def stale_as_run(name: str, profile: str) -> list[str]:
    """Why the notebook's artifacts no longer match the inputs of the run that made them.

    Unlike `status`, the parameters are the ones that run used: a report shows whatever
    seeds or device its notebooks were run with, as long as nothing else changed since.
    """
    record = provenance.read_record(profile, name)
    return _unreadable_record(name, profile) or provenance.staleness(
        record, notebook_file=paths.NOTEBOOKS / f"{name}.ipynb",
        parameters=record["parameters"] if record else {}, profile_dir=paths.profile_dir(profile),
    )


def staging_dir(name: str, profile: str) -> Path:
    return paths.profile_dir(profile) / ".staging" / name


def failed_path(name: str, profile: str) -> Path:
    return executed_path(name, profile).with_suffix(".failed.ipynb")


def execute(name: str, *, profile: str, parameters: dict | None = None, shared: dict | None = None,
            progress: bool = True) -> Path:
    """Run one notebook headlessly; commit its outputs, executed copy and provenance record together."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from .kernel import ENGINE, LoggedKernelManager

    effective = effective_parameters(name, profile, parameters, shared)
    source = paths.NOTEBOOKS / f"{name}.ipynb"
    inputs = {"notebook": name, "profile": profile, "parameters": effective,
              "notebook_hash": provenance.notebook_code_hash(source), "data": provenance.data_hashes(),
              "git": provenance.git_state(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    staging = staging_dir(name, profile)
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left: ours, and never committed
    staging.mkdir(parents=True)
    executed = staging / "notebooks" / f"{name}.ipynb"
    executed.parent.mkdir()
    LoggedKernelManager.log_path = staging / "kernel.log"
    start = time.perf_counter()
    try:
        with _environment(STAGING_VARIABLE, str(staging)), _printing(staging / PROGRESS_FILE):
            papermill.execute_notebook(str(source), str(executed), parameters=effective, cwd=str(paths.NOTEBOOKS),
                                       kernel_name="python3", progress_bar=progress, engine_name=ENGINE,
                                       kernel_manager_class="mnist_lab.build.kernel.LoggedKernelManager")
    except PapermillExecutionError as error:
        log = _keep_failed(name, profile, executed)
        first_line = error.source.strip().splitlines()[0] if error.source.strip() else ""
        raise LabError(
            f"notebook {name} failed in cell [{error.exec_count}] ({first_line}) with {error.ename}: "
            f"{error.evalue.strip()}; previous artifacts intact; the failed run is kept at {log}"
        ) from None
    except KeyboardInterrupt:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as error:  # the kernel died (out of memory, killed) or would not start
        log = _keep_failed(name, profile, executed)
        raise LabError(f"notebook {name} could not finish: {type(error).__name__}: {error}; "
                       f"previous artifacts intact{f'; what ran is kept at {log}' if log else ''}") from None
    try:
        changes = _commit(name, profile, staging, inputs, wall_seconds=time.perf_counter() - start)
    except LabError:  # refused before anything moved: the previous set stays whole, the staged one goes
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if changes["macros"] or changes["tables"]:
        listed = [f"{macro} {old} → {new}" for macro, old, new in changes["macros"]]
        listed += [f"table {table}" for table in changes["tables"]]
        print(f"      changed: {'; '.join(listed)}", flush=True)
    return executed_path(name, profile)


@contextmanager
def _printing(path: Path):
    """Print the lines the kernel appends to `path` while the notebook runs (training progress)."""
    stop = threading.Event()

    def follow() -> None:
        offset = 0
        while True:
            finished = stop.is_set()
            if path.is_file():
                with open(path) as handle:
                    handle.seek(offset)
                    for line in handle:
                        if line.endswith("\n"):
                            print(f"      {line.rstrip()}", flush=True)
                            offset += len(line.encode())
            if finished:
                return
            stop.wait(0.5)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


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


@contextmanager
def _environment(name: str, value: str):
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _keep_failed(name: str, profile: str, executed: Path) -> Path | None:
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
    """Hold Ctrl-C (SIGINT) and SIGTERM off while the outputs are moved into place; they arrive after."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _commit(name: str, profile: str, staging: Path, inputs: dict, wall_seconds: float) -> dict:
    """Move the staged outputs into the profile folder and write the provenance record last;
    returns what changed in the report's numbers and tables."""
    directory = paths.profile_dir(profile)
    session_file = staging / SESSION_FILE
    used = json.loads(session_file.read_text()) if session_file.exists() else {"runs": {}, "modules": []}
    session_file.unlink(missing_ok=True)
    (staging / "kernel.log").unlink(missing_ok=True)
    (staging / PROGRESS_FILE).unlink(missing_ok=True)
    staged = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
    previous = provenance.read_record(profile, name) or {"outputs": {}}
    record = {
        **inputs,
        "wall_seconds": round(wall_seconds, 1),
        "device": used.get("device"),
        "environment": used.get("environment"),
        "sources": {module: provenance.code_hash(paths.ROOT / module) for module in used["modules"]},
        "runs": used["runs"],
        "outputs": {str(relative): provenance.file_hash(staging / relative) for relative in staged},
        "changes": _changes(directory, staging, staged),
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


def _check_name(name: str) -> None:
    if name not in available():
        raise LabError(f"unknown notebook {name!r}; choose from: {', '.join(available())}")


def execute_all(names: list[str] | None, *, profile: str, parameters: dict | None = None, shared: dict | None = None,
                force: bool = False, progress: bool = True) -> list[str]:
    """Execute the stale notebooks among `names` (all by default), or all of them with `force`.

    Returns the names of the notebooks that ran.
    """
    names = names or available()
    # Check every name, parameter and the data before spending minutes on the first notebook.
    reasons = {name: status(name, profile, parameters, shared) for name in names}
    to_run = [name for name in names if force or reasons[name]]
    if to_run:
        from ..data import load_mnist

        load_mnist()  # verified once here: a corrupt file is one line now, not a failed cell later
    with profile_lock(profile, f"run ({', '.join(to_run) or 'nothing stale'})"):
        ran = _execute_in_order(names, reasons, profile=profile, parameters=parameters, shared=shared,
                                force=force, progress=progress)
        from .html import write_site

        print(f"pages: {write_site(profile)}", flush=True)
        return ran


def _execute_in_order(names, reasons, *, profile, parameters, shared, force, progress) -> list[str]:
    ran = []
    for index, name in enumerate(names, 1):
        if not force and not reasons[name]:
            print(f"[{index}/{len(names)}] {name}: fresh, skipped", flush=True)
            continue
        why = "forced" if force else "; ".join(reasons[name])
        print(f"[{index}/{len(names)}] {name} (profile {profile}): {why}", flush=True)
        start = time.perf_counter()
        output = execute(name, profile=profile, parameters=parameters, shared=shared, progress=progress)
        print(f"      done in {time.perf_counter() - start:.0f} s: {output}", flush=True)
        ran.append(name)
    return ran
