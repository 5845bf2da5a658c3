"""Where the workbook stands: which notebooks' artifacts are stale and why, the runs they read,
the frozen runs in use. Queries only: the runner (`notebooks`), the pages (`html`), the report
(`report`) and the command line all ask here, and nothing here runs a notebook.
"""

from __future__ import annotations

from .. import paths
from ..errors import LabError
from . import provenance
from .parameters import available, effective_parameters

__all__ = ["frozen_declaration_problem", "frozen_in_use", "frozen_line", "plan_runs", "stale_as_run", "status",
           "study_seeds"]


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


def plan_runs(names: list[str], *, profile: str, parameters: dict | None = None, shared: dict | None = None,
              studies: str = "frozen"):
    """What the notebooks `names` read under these parameters (`plan.Plan`), as far as the cache
    and frozen/ know it now."""
    from ..profiles import get_profile
    from ..runs import for_profile
    from .plan import Plan, planned

    cache, plan = for_profile(profile), Plan()
    for name in names:
        plan.add(planned(name, effective_parameters(name, profile, parameters, shared), get_profile(profile), cache,
                         studies))
    return plan


def study_seeds(profile: str, parameters: dict | None = None, shared: dict | None = None) -> dict[str, list[int]]:
    """Each declared study's seeds: the `calibration_seeds` of the notebook that presents it."""
    from .plan import reads

    return {study: effective_parameters(name, profile, parameters, shared)["calibration_seeds"]
            for name in available() for study in reads(name).studies}


def frozen_in_use(profile: str) -> list:
    """The frozen runs the notebooks read when they last ran (from their records), each checked
    against the spec it stands in for now: [(the names it stands in for, Frozen)]."""
    used = []
    for name in available():
        record = provenance.read_record(profile, name)
        if not record or not record.get("frozen"):
            continue
        parameters = {key: value for key, value in record["parameters"].items() if key != "profile"}
        try:
            plan = plan_runs([name], profile=profile, parameters=parameters)
        except LabError:
            continue  # parameters no longer valid: the notebook is stale, and says why
        keys = set(record["frozen"].values())
        for key, stand_in in plan.stand_ins().items():
            if stand_in.record["fingerprint"] in keys:
                names = sorted({run.name for run in plan.runs if run.spec.key == key})
                used.append((names, stand_in))
    unique = {stand_in.directory: (names, stand_in) for names, stand_in in used}
    return list(unique.values())


def frozen_line(profile: str) -> str:
    """One line on the frozen runs in use, for `status`, the index and the title page ("" if none)."""
    from ..runs import frozen as frozen_runs

    return frozen_runs.summary([stand_in for _, stand_in in frozen_in_use(profile)])


def frozen_declaration_problem(profile: str) -> str | None:
    """What makes frozen/<profile>/ out of date with the studies' declaration (their candidates,
    rule, seeds, epochs), naming the commands that refresh it; None when it matches or is absent."""
    from .. import records
    from ..profiles import get_profile
    from ..runs import frozen as frozen_runs
    from .plan import study_declaration

    path = frozen_runs.folder(profile) / frozen_runs.STUDIES
    if not path.is_file():
        return None
    frozen = records.load(path, records.FROZEN_STUDIES) or {}  # unusable: every field differs, and says so
    now = study_declaration(get_profile(profile), study_seeds(profile))
    changed = sorted(f"{name}: {field}" for name in {*frozen, *now}
                     for field in sorted({*(frozen.get(name) or {}), *(now.get(name) or {})})
                     if (frozen.get(name) or {}).get(field) != (now.get(name) or {}).get(field))
    if not changed:
        return None
    return (f"{path.relative_to(paths.FROZEN.parent)} was frozen under another declaration of the studies "
            f"({', '.join(changed)}): run `make report PROFILE={profile} STUDIES=train` and then "
            f"`mnist-lab freeze --profile {profile}`")
