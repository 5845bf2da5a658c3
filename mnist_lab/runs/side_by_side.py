"""Several runs at once on one GPU: each in a process of its own, as many as the GPU holds.

At batch 64 these models leave a GPU far from busy (a step is tens to hundreds of kernels of a
few microseconds each, docs/performance.md), so runs side by side fill the gaps one run leaves.
Processes, not threads on streams in one process: a run seeds torch's global generators
(`torch.manual_seed` for the model's initialisation and dropout), so two runs in one process
would draw from each other's streams, and a run's result would depend on its neighbours. In a
process of its own each run computes what it computes alone with the same settings; a `device`
test checks this.

How many at once (`choose_runs_per_gpu`): as many as fit in 80% of the GPU's free memory at the
runs' measured footprint plus a CUDA context each, at most one per two CPU cores (each process
has a Python thread launching kernels and replaying graphs), and never more than there are runs;
`--runs-per-gpu N` overrides it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from ..errors import LabError
from ..files import write_json
from ..spec import RunSpec

GIB = 1 << 30
CONTEXT_BYTES = 1 * GIB  # a CUDA context with cuBLAS's and cuDNN's workspaces, per process
UNMEASURED_BYTES = 2 * GIB  # a run's peak before any run of its model was measured here
MEMORY_SHARE = 0.8  # of the free memory: room for allocator fragmentation and the parent
FOOTPRINTS = "footprints.json"  # in the cache's folder, beside index.json


def choose_runs_per_gpu(*, free_bytes: int, footprint_bytes: int, cpu_cores: int, runs: int) -> int:
    """How many runs to train at once on one GPU (at least 1)."""
    by_memory = int(MEMORY_SHARE * free_bytes // (footprint_bytes + CONTEXT_BYTES))
    by_cores = cpu_cores // 2
    return max(1, min(by_memory, by_cores, runs))


def footprint_bytes(cache, specs: list[RunSpec]) -> int:
    """The largest peak of GPU memory measured for these runs' models (the cache's footprints.json,
    written by the workers); UNMEASURED_BYTES for a model not measured yet."""
    measured = read_footprints(cache)
    return max(measured.get(spec.recipe.model, UNMEASURED_BYTES) for spec in specs)


def read_footprints(cache) -> dict[str, int]:
    """model → the largest peak of GPU memory a run of it reserved here. Only scheduling reads it,
    and a file of another shape counts as empty."""
    try:
        footprints = json.loads((cache.folder / FOOTPRINTS).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(footprints, dict):
        return {}
    return {model: peak for model, peak in footprints.items()
            if isinstance(model, str) and isinstance(peak, int) and not isinstance(peak, bool) and peak > 0}


def record_footprints(cache, peaks: dict[str, int]) -> None:
    """Keep each model's largest measured peak (bytes) for the next plan."""
    footprints = read_footprints(cache)
    for model, peak in peaks.items():
        footprints[model] = max(peak, footprints.get(model, 0))
    write_json(cache.folder / FOOTPRINTS, footprints)


def runs_per_gpu(cache, specs: list[RunSpec], requested: int | None = None) -> int:
    """How many of `specs` to train at once: 1 unless they are CUDA runs; `requested` if given."""
    if requested is not None and requested < 1:
        raise LabError(f"--runs-per-gpu must be at least 1, got {requested}")
    if not specs or any(spec.device != "cuda" for spec in specs):
        return 1  # a CPU trains fastest with every core on one run (docs/performance.md)
    if requested is not None:
        return min(requested, len(specs))
    import torch

    free, _ = torch.cuda.mem_get_info()
    return choose_runs_per_gpu(free_bytes=free, footprint_bytes=footprint_bytes(cache, specs),
                               cpu_cores=os.cpu_count() or 1, runs=len(specs))


def train_side_by_side(cache, runs: list, at_once: int, printer=print, *, stall_seconds: float = 3600) -> list[str]:
    """Train `runs` (executor.Planned), `at_once` at a time, each in a process of its own that
    puts its result in `cache`; returns the names of the runs that failed, each with its error
    printed. The parent checks every run it is handed back against the cache. If no run finishes
    within `stall_seconds`, the workers are stopped (an hour: longer than any run of the report's)."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    failed, peaks = [], {}
    with ProcessPoolExecutor(max_workers=at_once, mp_context=context, initializer=_start_worker,
                             initargs=(str(cache.folder),)) as pool:
        pending = {pool.submit(_train, run.label, run.spec.value(), f"[{number}/{len(runs)}] "): run
                   for number, run in enumerate(runs, 1)}
        try:
            while pending:
                done, _ = wait(pending, timeout=stall_seconds, return_when=FIRST_COMPLETED)
                if not done:
                    raise LabError(f"no run finished in {stall_seconds:.0f} s; stopped the {len(pending)} "
                                   "still training")
                for future in done:
                    run = pending.pop(future)
                    error = future.exception()
                    problems = [] if error else cache.problems(run.spec)
                    if not error and future.result():
                        model = run.spec.recipe.model
                        peaks[model] = max(future.result(), peaks.get(model, 0))
                    if error or problems:
                        failed.append(run.name)
                        why = str(error or problems[0])
                        printer(f"failed: {why}" if why.startswith(run.name) else f"{run.name} failed: {why}")
        except BaseException:  # Ctrl-C or a stall: stop the workers, keep what finished
            pool.shutdown(wait=False, cancel_futures=True)
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            raise
        finally:
            if peaks:
                record_footprints(cache, peaks)
    return failed


# ---- in each worker process ------------------------------------------------------------------

_WORKER: dict = {}


def _start_worker(cache_folder: str) -> None:
    from ..data import load_mnist
    from .cache import RunCache

    _WORKER["cache"] = RunCache(cache_folder)
    _WORKER["data"] = load_mnist()


def _train(label: str, value: dict, prefix: str) -> int:
    """Train one run into the cache; returns the GPU memory it reserved at its peak (0 on a CPU)."""
    import torch

    from .executor import Planned, train_here

    run = Planned(label, RunSpec.from_value(value))  # its key computed here again, from this code
    on_gpu = run.spec.device == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    train_here(_WORKER["cache"], run, _WORKER["data"], lambda line: print(line, flush=True), prefix)
    sys.stdout.flush()
    return torch.cuda.max_memory_reserved() if on_gpu else 0
