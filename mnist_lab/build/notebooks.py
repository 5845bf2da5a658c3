"""Executing the workbook's notebooks with papermill: strict parameters, kept logs, one-screen failures."""

from __future__ import annotations

import ast
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from .. import paths

from . import provenance
from ..errors import LabError
from ..files import atomic_path, write_json
from ..profiles import get_profile


def available() -> list[str]:
    """The workbook's notebooks, in the report's order (their names sort that way: q1_, q2_, q3_)."""
    return sorted(p.stem for p in paths.NOTEBOOKS.glob("*.ipynb"))


def declared_parameters(name: str) -> dict:
    """The literal defaults of the notebook's `parameters` cell."""
    import papermill

    declared = papermill.inspect_notebook(str(paths.NOTEBOOKS / f"{name}.ipynb"))
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
    return provenance.staleness(
        provenance.read_record(profile, name), notebook_file=paths.NOTEBOOKS / f"{name}.ipynb",
        parameters=effective_parameters(name, profile, parameters, shared), profile_dir=paths.profile_dir(profile),
    )


def stale_as_run(name: str, profile: str) -> list[str]:
    """Why the notebook's artifacts no longer match the inputs of the run that made them.

    Unlike `status`, the parameters are the ones that run used: a report shows whatever
    seeds or device its notebooks were run with, as long as nothing else changed since.
    """
    record = provenance.read_record(profile, name)
    return provenance.staleness(
        record, notebook_file=paths.NOTEBOOKS / f"{name}.ipynb",
        parameters=record["parameters"] if record else {}, profile_dir=paths.profile_dir(profile),
    )


def execute(name: str, *, profile: str, parameters: dict | None = None, shared: dict | None = None,
            progress: bool = True) -> Path:
    """Run one notebook headlessly and write its provenance record.

    The executed copy is kept, also when a cell fails: it is the log.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    effective = effective_parameters(name, profile, parameters, shared)
    source = paths.NOTEBOOKS / f"{name}.ipynb"
    inputs = {"notebook": name, "profile": profile, "parameters": effective,
              "notebook_hash": provenance.notebook_code_hash(source), "data": provenance.data_hashes(),
              "git": provenance.git_state(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    session = provenance.session_path(profile, name)
    session.unlink(missing_ok=True)
    output = executed_path(name, profile)
    start = time.perf_counter()
    with atomic_path(output) as temporary:  # the previous executed copy stays until this one is done
        try:
            papermill.execute_notebook(
                str(source), str(temporary), parameters=effective, cwd=str(paths.NOTEBOOKS),
                kernel_name="python3", progress_bar=progress,
            )
        except PapermillExecutionError as error:
            temporary.replace(output)  # the failed notebook is the log: keep it
            first_line = error.source.strip().splitlines()[0] if error.source.strip() else ""
            raise LabError(
                f"notebook {name} failed in cell [{error.exec_count}] ({first_line}) with {error.ename}: "
                f"{error.evalue.strip()}; the executed notebook is kept at {output}"
            ) from None
        except Exception as error:  # the kernel died (out of memory, killed) or would not start
            if temporary.stat().st_size:
                temporary.replace(output)
            raise LabError(f"notebook {name} could not finish: {type(error).__name__}: {error}; "
                           f"what ran is kept at {output}") from None
    _write_record(name, profile, inputs, session, wall_seconds=time.perf_counter() - start)
    return output


def _write_record(name: str, profile: str, inputs: dict, session: Path, wall_seconds: float) -> None:
    used = json.loads(session.read_text()) if session.exists() else {"outputs": [], "runs": {}, "modules": []}
    directory = paths.profile_dir(profile)
    outputs = [*used["outputs"], str(executed_path(name, profile).relative_to(directory))]
    record = {
        **inputs,
        "wall_seconds": round(wall_seconds, 1),
        "device": used.get("device"),
        "environment": used.get("environment"),
        "sources": {module: provenance.file_hash(paths.ROOT / module) for module in used["modules"]},
        "runs": used["runs"],
        "outputs": {relative: provenance.file_hash(directory / relative) for relative in sorted(outputs)},
    }
    write_json(provenance.record_path(profile, name), record)
    session.unlink(missing_ok=True)


def _check_name(name: str) -> None:
    if name not in available():
        raise LabError(f"unknown notebook {name!r}; choose from: {', '.join(available())}")


def execute_all(names: list[str] | None, *, profile: str, parameters: dict | None = None, shared: dict | None = None,
                force: bool = False, progress: bool = True) -> list[str]:
    """Execute the stale notebooks among `names` (all by default), or all of them with `force`.

    Returns the names of the notebooks that ran.
    """
    names = names or available()
    # Check every name and parameter before spending minutes on the first notebook.
    reasons = {name: status(name, profile, parameters, shared) for name in names}
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
