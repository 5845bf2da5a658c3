"""Several runs at once on one GPU: each in a process of its own, under CUDA's Multi-Process Service.

At batch 64 these models leave a GPU far from busy (a step is tens to hundreds of kernels of a
few microseconds each, docs/performance.md), so runs side by side could fill the gaps one run
leaves. Processes, not threads on streams in one process: a run seeds torch's global generators
(`torch.manual_seed` for the model's initialisation and dropout), so two runs in one process
would draw from each other's streams, and a run's result would depend on its neighbours. In a
process of its own each run computes what it computes alone with the same settings; a `device`
test checks this.

Processes share a GPU well only under MPS (NVIDIA's Multi-Process Service: one server runs the
kernels of every client process side by side). Without it the GPU gives each process's context
time slices in turn, and on one H200 eight ViT runs side by side took as long as one after
another (0.96×; with MPS 1.90×, docs/performance.md). So by default runs go side by side only
where an MPS daemon answers (`mps_running`); `mps_daemon()` starts one for a block, as
`make gpu-check` does before CUDA starts.

How many at once (`choose_runs_per_gpu`): as many as fit in 80% of the GPU's free memory at the
runs' measured footprint plus a CUDA context each, at most one per two CPU cores (each process
has a Python thread launching kernels and replaying graphs), and never more than there are runs;
`--runs-per-gpu N` overrides it (MPS or not).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from .. import records
from ..errors import LabError, printable
from ..files import write_json
from ..spec import RunSpec

GIB = 1 << 30
CONTEXT_BYTES = 1 * GIB  # a CUDA context with cuBLAS's and cuDNN's workspaces, per process
UNMEASURED_BYTES = 2 * GIB  # a run's peak before any run of its model was measured here
MEMORY_SHARE = 0.8  # of the free memory: room for allocator fragmentation and the parent
FOOTPRINTS = "footprints.json"  # in the cache's folder, beside index.json
MPS_CONTROL = "nvidia-cuda-mps-control"
MPS_DEFAULT_PIPES = "/tmp/nvidia-mps"  # where a daemon listens unless CUDA_MPS_PIPE_DIRECTORY says otherwise
MPS_SECONDS = 10  # the most the daemon's start or stop may take


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
    return records.load(cache.folder / FOOTPRINTS, records.FOOTPRINTS) or {}


def record_footprints(cache, peaks: dict[str, int]) -> None:
    """Keep each model's largest measured peak (bytes) for the next plan."""
    footprints = read_footprints(cache)
    for model, peak in peaks.items():
        footprints[model] = max(peak, footprints.get(model, 0))
    write_json(cache.folder / FOOTPRINTS, footprints)


def runs_per_gpu(cache, specs: list[RunSpec], requested: int | None = None) -> int:
    """How many of `specs` to train at once: `requested` if given for CUDA runs; else 1 unless they
    are CUDA runs and an MPS daemon answers, then `choose_runs_per_gpu` on the GPU's free memory."""
    if requested is not None and requested < 1:
        raise LabError(f"--runs-per-gpu must be at least 1, got {requested}")
    if not specs or any(spec.device != "cuda" for spec in specs):
        return 1  # a CPU trains fastest with every core on one run (docs/performance.md)
    if requested is not None:
        return min(requested, len(specs))
    if not mps_running():
        return 1  # time slices: side by side buys nothing (see above)
    import torch

    free, _ = torch.cuda.mem_get_info()
    return choose_runs_per_gpu(free_bytes=free, footprint_bytes=footprint_bytes(cache, specs),
                               cpu_cores=os.cpu_count() or 1, runs=len(specs))


def mps_running() -> bool:
    """Whether an MPS control daemon listens where this process's CUDA would look for one."""
    pipes = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or MPS_DEFAULT_PIPES)
    return (pipes / "control").exists()


@contextlib.contextmanager
def mps_daemon(printer=print):
    """CUDA's Multi-Process Service for the block, for every process whose CUDA starts inside it
    (the driver connects at CUDA's first use): a daemon already running is used; else one is
    started in a folder of its own where the control program is installed, and stopped after.
    Yields whether MPS is on. Without the program, or if it does not start, the block runs
    without it, and says so."""
    if mps_running():
        yield True
        return
    control = shutil.which(MPS_CONTROL)
    if control is None:
        yield False
        return
    folder = Path(tempfile.mkdtemp(prefix="mnist-lab-mps."))
    settings = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipes"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    for path in settings.values():
        Path(path).mkdir()
    environment = {**os.environ, **settings}
    try:
        started = subprocess.run([control, "-d"], env=environment, capture_output=True,
                                 timeout=MPS_SECONDS).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        started = False
    if not started:
        shutil.rmtree(folder, ignore_errors=True)
        printer(f"MPS did not start ({control} -d); runs side by side would take turns on the GPU")
        yield False
        return
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield True
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([control], input=b"quit\n", env=environment, capture_output=True, timeout=MPS_SECONDS)
        shutil.rmtree(folder, ignore_errors=True)


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
                        why = printable(error or problems[0], 300)
                        printer(f"failed: {why}" if why.startswith(run.name) else f"{run.name} failed: {why}")
        except BaseException:  # Ctrl-C or a stall: stop the workers, keep what finished
            workers = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
            pool.shutdown(wait=False, cancel_futures=True)
            for process in workers:
                process.terminate()
            raise
        finally:
            if peaks:
                record_footprints(cache, peaks)
    return failed


# ---- in each worker process ------------------------------------------------------------------

_WORKER: dict = {}


def _start_worker(cache_folder: str) -> None:
    import signal

    from ..data import load_mnist
    from .cache import RunCache

    # Ctrl-C belongs to the parent, which stops the workers (a run resumes from its last epoch's
    # checkpoint); a worker ignoring it prints no traceback of its own under the parent's one line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER["cache"] = RunCache(cache_folder)
    _WORKER["data"] = load_mnist()


def _train(label: str, value: dict, prefix: str) -> int:
    """Train one run into the cache; returns the GPU memory it reserved at its peak (0 on a CPU)."""
    import torch

    from .here import train_here
    from .planned import Planned

    run = Planned(label, RunSpec.from_value(value))  # its key computed here again, from this code
    on_gpu = run.spec.device == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    train_here(_WORKER["cache"], run, _WORKER["data"], lambda line: print(line, flush=True), prefix)
    sys.stdout.flush()
    return torch.cuda.max_memory_reserved() if on_gpu else 0
