"""Training what a build is missing: each distinct spec once, through one executor.

    report = train_missing(cache, planned)                   # here: one at a time, or several on a GPU
    report = train_missing(cache, planned, address="...")    # as Ray tasks on a cluster (`sweep`)

On a CPU, runs train one after another in this process, each with every core (the fastest
there is: two at once on 2 cores run many times slower, docs/performance.md). On a GPU with
CUDA's MPS daemon running, several train at once, each in a process of its own (`side_by_side`:
as many as the GPU holds, or `runs_per_gpu`); without MPS one at a time, as sharing then buys
nothing. With an address, the runs go to Ray through the sweep's submission, and come back verified.
"""

from __future__ import annotations

import statistics
import time

from .. import records
from .here import human_seconds, train_here
from .planned import Planned, distinct

__all__ = ["Planned", "distinct", "human_seconds", "train_here", "train_missing"]  # the executor's vocabulary


def train_missing(cache, planned: list[Planned], *, address: str | None = None, connect_timeout: float = 60,
                  printer=print, frozen: int = 0, read: int | None = None, runs_per_gpu: int | None = None) -> dict:
    """Train every distinct spec of `planned` the cache lacks, name every planned run in the
    cache's index, and return what happened: {"planned", "distinct", "cached", "trained", "at_once",
    "train_seconds"}. `frozen`: how many more distinct runs the notebooks read from frozen/, and
    `read` how many they read in all (the plan's line says both). `runs_per_gpu`: how many CUDA
    runs train at once (default `side_by_side.runs_per_gpu`: under MPS as many as the GPU holds)."""
    from .side_by_side import mps_running, runs_per_gpu as choose, train_side_by_side

    by_key = distinct(planned)
    missing = [runs[0] for runs in by_key.values() if cache.problems(runs[0].spec, any(r.weights for r in runs))]
    for run in missing:
        if cache.problems(run.spec) == []:  # whole but for the weights an archive left out
            printer(f"{run.name}: trained again, since a notebook loads its model and its weights were left out "
                    "when it was packed")
    at_once = 1 if address else choose(cache, [run.spec for run in missing], runs_per_gpu)
    from_frozen = f"{frozen} frozen, " if frozen else ""
    side_by_side = f", {at_once} at a time on the GPU" if at_once > 1 else ""
    if at_once == 1 and runs_per_gpu is None and len(missing) > 1 and missing[0].spec.device == "cuda" \
            and not mps_running():
        side_by_side = ", one at a time (no MPS daemon: `nvidia-cuda-mps-control -d` lets several share the GPU)"
    printer(f"runs: {len(planned) if read is None else read} read by the notebooks, {len(by_key) + frozen} distinct, "
            f"{len(by_key) - len(missing)} cached, {from_frozen}{len(missing)} to train{side_by_side}"
            f"{_estimate(cache, missing, at_once)}")
    start = time.perf_counter()
    failed, where = [], ""
    if missing and address:
        from .. import sweep

        failed = sweep.train_on_cluster(missing, cache, address=address, connect_timeout=connect_timeout,
                                        printer=printer)
        where = " on the cluster"
    elif at_once > 1:
        failed = train_side_by_side(cache, missing, at_once, printer)
    elif missing:
        from ..data import load_mnist

        data = load_mnist()
        for number, run in enumerate(missing, 1):
            train_here(cache, run, data, printer, f"[{number}/{len(missing)}] ")
    if failed:
        from ..errors import LabError

        raise LabError(f"{len(failed)} run(s) failed{where}: {', '.join(failed)}; the others are in the run cache, "
                       "and the same command retries the failed ones")
    cache.label_all([(run.label, run.spec) for run in planned])
    return {"planned": len(planned), "distinct": len(by_key), "cached": len(by_key) - len(missing),
            "trained": len(missing), "at_once": at_once, "train_seconds": round(time.perf_counter() - start, 2)}


def _estimate(cache, missing: list[Planned], at_once: int = 1) -> str:
    """About how long the missing runs take, from the speed of the runs already cached (per model
    and device: seconds per training image per epoch); nothing when no run tells. Runs side by side
    are counted one after another, and said so: what sharing the GPU saves is measured by
    `make gpu-check`, not assumed here."""
    if not missing:
        return ""
    rates: dict[tuple, list[float]] = {}
    for directory, record in cache.runs():
        try:
            metrics = records.load(directory / "metrics.json", records.RUN_METRICS) or {}
            inputs = record["inputs"]
            per_image = 1 / metrics["train_images_per_second"]
            rates.setdefault((inputs["recipe"]["model"], inputs["device"]), []).append(per_image)
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            continue  # a run without a speed to tell
    known = [run for run in missing if (run.spec.recipe.model, run.spec.device) in rates]
    if not known:
        return ""
    total = sum(statistics.median(rates[(run.spec.recipe.model, run.spec.device)])
                * (run.spec.limit_train or 60000) * run.spec.recipe.epochs for run in known)
    unknown = len(missing) - len(known)
    serial = " one after another" if at_once > 1 else ""
    untimed = f" (+ {unknown} of models not yet timed here)" if unknown else ""
    return f", about {human_seconds(total)}{serial}{untimed}"
