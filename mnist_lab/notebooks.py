"""Executing the workbook's notebooks with papermill: strict parameters, kept logs, one-screen failures."""

from __future__ import annotations

import ast
import time
from pathlib import Path

from . import paths
from .errors import LabError
from .files import atomic_path
from .profiles import get_profile


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


def execute(name: str, *, profile: str, parameters: dict | None = None, shared: dict | None = None,
            progress: bool = True) -> Path:
    """Run one notebook headlessly; the executed copy is kept, also when a cell fails.

    `parameters` must all be declared by the notebook; `shared` ones (device, seeds) go
    only to the notebooks that declare them, so one command can set them for all.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if name not in available():
        raise LabError(f"unknown notebook {name!r}; choose from: {', '.join(available())}")
    get_profile(profile)
    declared = declared_parameters(name)
    shared = {key: value for key, value in (shared or {}).items() if key in declared}
    parameters = {"profile": profile, **shared, **(parameters or {})}
    check_parameters(name, parameters)
    output = executed_path(name, profile)
    with atomic_path(output) as temporary:  # the previous executed copy stays until this one is done
        try:
            papermill.execute_notebook(
                str(paths.NOTEBOOKS / f"{name}.ipynb"), str(temporary), parameters=parameters,
                cwd=str(paths.NOTEBOOKS), kernel_name="python3", progress_bar=progress,
            )
        except PapermillExecutionError as error:
            temporary.replace(output)  # the failed notebook is the log: keep it
            first_line = error.source.strip().splitlines()[0] if error.source.strip() else ""
            raise LabError(
                f"notebook {name} failed in cell [{error.exec_count}] ({first_line}) with {error.ename}: "
                f"{error.evalue.strip()}; "
                f"the executed notebook is kept at {output}"
            ) from None
    return output


def execute_all(names: list[str] | None, *, profile: str, parameters: dict | None = None, shared: dict | None = None,
                progress: bool = True) -> None:
    names = names or available()
    for name in names:  # check every name before spending minutes on the first notebook
        if name not in available():
            raise LabError(f"unknown notebook {name!r}; choose from: {', '.join(available())}")
    for index, name in enumerate(names, 1):
        print(f"[{index}/{len(names)}] {name} (profile {profile})", flush=True)
        start = time.perf_counter()
        output = execute(name, profile=profile, parameters=parameters, shared=shared, progress=progress)
        print(f"      done in {time.perf_counter() - start:.0f} s: {output.relative_to(paths.ROOT)}", flush=True)
