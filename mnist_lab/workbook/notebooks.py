"""Running the workbook: plan the runs, train the missing ones, then execute the notebooks.

`mnist-lab run` (and so `make report`) first gathers every run the notebooks it will execute
read (`plan`), trains the missing ones, each distinct spec once, through one executor
(`runs.executor`), and only then executes the notebooks with papermill; they only read runs.
Each notebook's outputs are committed whole or not at all (`commit`); its parameters are
checked strictly first (`parameters`).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .. import paths
from ..errors import LabError, printable
from ..files import write_json
from . import provenance
from .commit import commit, executed_path, keep_failed, staging_dir
from .hook import PLANNED_FILE, PROGRESS_FILE, STAGING_VARIABLE
from .lock import profile_lock
from .parameters import available, check_parameters, declared_parameters, effective_parameters
from .status import (frozen_declaration_problem, frozen_in_use, frozen_line, plan_runs, stale_as_run, status,
                     study_seeds)

# The status queries live in `status` (the pages and the report ask there); the runner re-exports them.
__all__ = ["available", "check_parameters", "declared_parameters", "effective_parameters", "execute",
           "execute_all", "executed_path", "freeze", "frozen_declaration_problem", "frozen_in_use", "frozen_line",
           "plan_runs", "stale_as_run", "status", "study_seeds"]


def execute(name: str, *, profile: str, parameters: dict | None = None, shared: dict | None = None,
            progress: bool = True, studies: str = "frozen", why: str = "asked for") -> Path:
    """Run one notebook headlessly; commit its outputs, executed copy and provenance record together."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from .kernel import ENGINE, LoggedKernelManager

    effective = effective_parameters(name, profile, parameters, shared)
    source = paths.NOTEBOOKS / f"{name}.ipynb"
    inputs = {"notebook": name, "profile": profile, "parameters": effective, "why": why,
              "notebook_hash": provenance.notebook_code_hash(source), "data": provenance.data_hashes(),
              "git": provenance.git_state(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    staging = staging_dir(name, profile)
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left: ours, and never committed
    staging.mkdir(parents=True)
    plan = plan_runs([name], profile=profile, parameters=parameters, shared=shared, studies=studies)
    write_json(staging / PLANNED_FILE, {"keys": sorted({run.spec.key for run in plan.runs}), "studies": studies})
    executed = staging / "notebooks" / f"{name}.ipynb"
    executed.parent.mkdir()
    LoggedKernelManager.log_path = staging / "kernel.log"
    start = time.perf_counter()
    try:
        with _environment(STAGING_VARIABLE, str(staging)), _printing(staging / PROGRESS_FILE):
            papermill.execute_notebook(str(source), str(executed), parameters=effective, cwd=str(paths.NOTEBOOKS),
                                       kernel_name="python3", progress_bar=progress, engine_name=ENGINE,
                                       kernel_manager_class="mnist_lab.workbook.kernel.LoggedKernelManager")
    except PapermillExecutionError as error:
        log = keep_failed(name, profile, executed)
        first_line = error.source.strip().splitlines()[0] if error.source.strip() else ""
        raise LabError(
            f"notebook {name} failed in cell [{error.exec_count}] ({first_line}) with {error.ename}: "
            f"{error.evalue.strip()}; previous artifacts intact; the failed run is kept at {log}"
        ) from None
    except KeyboardInterrupt:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as error:  # the kernel died (out of memory, killed) or would not start
        log = keep_failed(name, profile, executed)
        raise LabError(f"notebook {name} could not finish: {type(error).__name__}: {error}; "
                       f"previous artifacts intact{f'; what ran is kept at {log}' if log else ''}") from None
    try:
        changes = commit(name, profile, staging, inputs, wall_seconds=time.perf_counter() - start)
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
    """Print the lines the kernel appends to `path` while the notebook runs (a wait for the CPU,
    say), above papermill's bar of cells where one is drawn (tqdm.write), never on its line."""
    from tqdm import tqdm

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
                            tqdm.write(f"      {line.rstrip()}")
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


def execute_all(names: list[str] | None, *, profile: str, parameters: dict | None = None, shared: dict | None = None,
                force: bool = False, progress: bool = True, address: str | None = None,
                studies: str = "frozen", runs_per_gpu: int | None = None, after=None) -> list[str]:
    """Execute the stale notebooks among `names` (all by default), or all of them with `force`,
    after training every run they read that the cache lacks. Returns the names of the notebooks that ran.

    `after(profile)` runs last, still under the profile's lock: the command line writes the pages
    there (`html.write_site`), so the runner itself knows nothing of them."""
    names = names or available()
    # Check every name, parameter and the data before spending minutes on the first run.
    reasons = {name: status(name, profile, parameters, shared) for name in names}
    if studies == "train":  # a notebook that read its studies from frozen/ reads trained runs now
        for name in names:
            record = provenance.read_record(profile, name) or {}
            if record.get("frozen") and not reasons[name]:
                reasons[name] = ["its studies' runs came from frozen/; --studies train trains them"]
    to_run = [name for name in names if force or reasons[name]]
    if to_run:
        from ..data import load_mnist

        load_mnist()  # verified once here: a corrupt file is one line now, not a failed run later
    with profile_lock(profile, f"run ({', '.join(to_run) or 'nothing stale'})"):
        if to_run:
            train_planned(to_run, profile=profile, parameters=parameters, shared=shared, address=address,
                          studies=studies, runs_per_gpu=runs_per_gpu)
        ran = _execute_in_order(names, reasons, profile=profile, parameters=parameters, shared=shared,
                                force=force, progress=progress, studies=studies)
        if after is not None:
            after(profile)
        return ran


def train_planned(names: list[str], *, profile: str, parameters: dict | None = None, shared: dict | None = None,
                  address: str | None = None, studies: str = "frozen", runs_per_gpu: int | None = None) -> list[dict]:
    """Train what the notebooks `names` will read, stage after stage (a study's confirmation waits
    for its screen), each distinct spec once; a study's runs from frozen/ where it has them.
    Returns what the executor reported for each stage (`train_missing`)."""
    from ..runs import for_profile
    from ..runs import frozen as frozen_runs
    from ..runs.executor import train_missing

    cache = for_profile(profile)
    stages = []  # what train_missing reports for each stage
    for stage in range(1, 10):  # a study has at most two stages; the bound only guards a loop
        plan = plan_runs(names, profile=profile, parameters=parameters, shared=shared, studies=studies)
        note = f" (stage {stage}" + (f"; later: {', '.join(plan.later)})" if plan.later else ")") \
            if plan.later or stage > 1 else ""
        stand_ins = plan.stand_ins()
        stages.append(train_missing(cache, plan.to_train(), address=address, printer=_say(note),
                                    frozen=len(stand_ins), read=len(plan.runs), runs_per_gpu=runs_per_gpu))
        if not plan.later:
            if stand_ins:
                print(f"frozen: {frozen_runs.summary(list(stand_ins.values()))} "
                      f"(`--studies train` trains them here)", flush=True)
            return stages
    return stages


def _say(note: str):
    def printer(line: str) -> None:
        if line.startswith("runs:"):
            line += note
        print(line, flush=True)

    return printer


def _execute_in_order(names, reasons, *, profile, parameters, shared, force, progress, studies) -> list[str]:
    ran = []
    for index, name in enumerate(names, 1):
        if not force and not reasons[name]:
            print(f"[{index}/{len(names)}] {name}: fresh, skipped", flush=True)
            continue
        why = "forced" if force else printable("; ".join(reasons[name]), 400)  # reasons quote paths from records
        print(f"[{index}/{len(names)}] {name} (profile {profile}): {why}", flush=True)
        start = time.perf_counter()
        output = execute(name, profile=profile, parameters=parameters, shared=shared, progress=progress,
                         studies=studies, why=why)
        print(f"      done in {time.perf_counter() - start:.0f} s: {output}", flush=True)
        ran.append(name)
    return ran


def freeze(profile: str) -> Path:
    """`mnist-lab freeze`: the studies' runs, as the notebooks read them, from the run cache (or
    frozen/ itself, for a run frozen there with the same key) into frozen/<profile>/ with the
    declaration they were chosen by."""
    from ..profiles import get_profile
    from ..runs import for_profile
    from ..runs import frozen as frozen_runs
    from .plan import reads, study_declaration

    with_studies = [name for name in available() if reads(name).studies]
    plan = plan_runs(with_studies, profile=profile, studies="frozen")
    if plan.later:
        raise LabError(f"{', '.join(plan.later)} is not trained yet: run `mnist-lab run --profile {profile} "
                       "--studies train` first")
    runs = list({(run.label, run.spec.seed): run for run in plan.study}.values())
    declaration = study_declaration(get_profile(profile), study_seeds(profile))
    return frozen_runs.freeze(profile, runs, for_profile(profile), declaration)
