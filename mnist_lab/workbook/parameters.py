"""A notebook's parameters: declared by its `parameters` cell, checked strictly before anything runs."""

from __future__ import annotations


from .. import paths
from ..errors import LabError
from ..profiles import check_seeds, get_profile
from . import provenance


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
    from ..experiments import parse_value  # the project's one literal parser, as -p and --set read values

    declared = papermill.inspect_notebook(str(path))
    return {key: parse_value(info["default"]) for key, info in declared.items()}


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


def effective_parameters(name: str, profile: str, parameters: dict | None = None,
                         shared: dict | None = None) -> dict:
    """The parameters a run of `name` would see: the notebook's defaults, then what was given.

    `parameters` must all be declared by the notebook; `shared` ones (device, seeds) go
    only to the notebooks that declare them, so one command can set them for all.
    """
    check_name(name)
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


def check_name(name: str) -> None:
    if name not in available():
        raise LabError(f"unknown notebook {name!r}; choose from: {', '.join(available())}")


