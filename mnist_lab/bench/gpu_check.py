"""`make gpu-check`: the design card's path on one CUDA GPU, in one call, inside a time budget.

    PYTHONPATH=. python3 -m mnist_lab.bench.gpu_check [--out DIR] [--profile full|smoke]
                                                     [--skip PHASE ...] [--budget SECONDS] [--runs-per-gpu N]

Its phases, in order of value (`phases.run_phases`: one that would overrun the budget is skipped
and named, never started and cut off):
- device-tests: the tests marked `device`, each on the CPU and on CUDA (the accelerated models,
  the captured step against the eager one, runs side by side against runs alone);
- notebooks: the design card's path. Every run the four notebooks read, the calibration studies
  included (`--studies train`), trained by the run executor (several at once on the GPU), then
  the notebooks executed by papermill; artifacts/<profile> packed into one archive for
  `mnist-lab unpack` and `mnist-lab report` on a CPU machine;
- side-by-side: what training side by side buys: the same ViT screening runs of the study one
  after another in this process and side by side, timed;
- graphs, tf32: the report's schedule (basic CNN 3, CNN 5, CNN with flip 5, MobileNet 5, ViT 10
  epochs on all 60,000 images, the test set after every epoch, seed 0, one after another) with
  the trainer's CUDA default (bf16 autocast, each step a replayed CUDA graph), and the same in
  fp32 with TF32 matmuls (a lead of docs/performance.md, measured beside it);
- seeds, deterministic: seeds 1 and 2 of the faster schedule; the deterministic pair;
- suite: the rest of the test suite (modules needing a package the GPU machine lacks, such as
  Ray's, are left out and named);
- eager, faithful-fp32: the schedule step by step, and the report's code as written in fp32.
It prints one table (each phase, its time, the runs' accuracies beside the report's) and writes
one JSON, rewritten after every phase.

Without CUDA it says so in one line and exits 2. Training time is measured warm: a first run of
each configuration's first model pays for CUDA's start and cuDNN's choices, and is reported
beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import names
from .phases import Phase, run_phases

STARTED = time.monotonic()  # the budget counts from the import: start-up included
DEVICE = "cuda"  # what the notebooks and side-by-side phases train on (a dry run on a CPU may change it)
SCHEDULE = names.EXPERIMENTS  # the report's schedule: every experiment, seed 0
CONFIGURATIONS = {  # name: RunSpec.of() keyword arguments
    "graphs": {},  # the default: the fast path, each step a replayed CUDA graph, bf16 autocast
    "tf32": {"precision": "fp32"},  # the same in fp32, matmuls on TF32 tensor cores (`_tf32`)
    "eager": {"cuda_graphs": False},  # the fast path step by step
    "faithful-fp32": {"fast": False, "precision": "fp32"},
}
# Seconds on one H200, as measured there on 2026-12-04 (docs/performance.md) and rounded up; the
# suite, eager and faithful-fp32 from the 2-core CPU's suite time and the 2026-11-26 calls. The
# notebooks: 236 s measured at 4ff7ffb under MPS (36 runs in 129 s, papermill 98 s, one archive),
# plus the report-only archive, a few seconds.
ESTIMATES = {"device-tests": 45, "notebooks": 260, "side-by-side": 100, "graphs": 45, "tf32": 45, "seeds": 80,
             "deterministic": 10, "suite": 400, "eager": 175, "faithful-fp32": 185}
SMOKE_ESTIMATES = {"notebooks": 100, "side-by-side": 40}  # the smoke profile's subsets
PHASES = tuple(ESTIMATES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "artifacts/gpu-check"),
                        help="where the JSON and the archive go (default: $OUT, else artifacts/gpu-check)")
    parser.add_argument("--profile", choices=("full", "smoke"), default="full",
                        help="the notebooks' profile (default: full; smoke for a quick look)")
    parser.add_argument("--skip", nargs="+", choices=PHASES, default=[], metavar="PHASE",
                        help=f"phases not to run, of: {', '.join(PHASES)}")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds for the whole check; a phase that would overrun is skipped (default 480)")
    parser.add_argument("--runs-per-gpu", type=_at_least_one, metavar="N",
                        help="runs trained at once (default: under the MPS daemon it starts, as many as the GPU holds)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu-check: torch is not installed for this Python; nothing to check", file=sys.stderr)
        return 2
    from ..runs.side_by_side import mps_daemon

    # MPS before CUDA's first use here: this process and every worker are its clients, as measured.
    try:
        with mps_daemon(printer=lambda line: print(f"gpu-check: {line}", flush=True)) as mps:
            if not torch.cuda.is_available():
                print("gpu-check: no CUDA GPU is visible to PyTorch here; run it on a machine with one", file=sys.stderr)
                return 2
            return _check(args, mps)
    except KeyboardInterrupt:  # the JSON holds every phase that ended; the daemon is stopped
        print("gpu-check: interrupted", file=sys.stderr)
        return 130


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _check(args, mps: bool) -> int:
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    from .. import codehash, paths

    digest, files = codehash.package_digest(paths.ROOT)
    # Compared with `python -m mnist_lab.codehash --package` on the machine that builds the PDF: the
    # same digest there means the runs packed here keep their keys there, whatever its Python.
    print(f"gpu-check: code-hash digest {digest} of mnist_lab ({files} files, scheme {codehash.SCHEME}, "
          f"Python {platform.python_version()})", flush=True)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "budget": args.budget, "profile": args.profile, "mps": mps, "python": platform.python_version(),
              "code_digest": digest}
    budget_end = STARTED + args.budget

    def left() -> float:
        return budget_end - time.monotonic()

    run = {"device-tests": lambda: _tests(["-m", "device"], left()),
           "notebooks": lambda: _notebooks(args.profile, args.out, args.runs_per_gpu),
           "side-by-side": lambda: _side_by_side(args.profile, args.out, args.runs_per_gpu),
           "graphs": lambda: _schedule("graphs"),
           "tf32": lambda: _schedule("tf32"),
           "seeds": lambda: _seeds(report),
           "deterministic": _deterministic_pair,
           "suite": lambda: _tests(["-m", "not device"], left()),
           "eager": lambda: _schedule("eager"),
           "faithful-fp32": lambda: _schedule("faithful-fp32")}

    def save(key: str, result: dict) -> None:
        report[key] = result
        report["seconds"] = round(time.monotonic() - STARTED, 1)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")

    estimates = {**ESTIMATES, **(SMOKE_ESTIMATES if args.profile == "smoke" else {})}
    run_phases([Phase(key, estimates[key], run[key]) for key in PHASES], budget=args.budget, started=STARTED,
               skip=args.skip, on_phase=save, printer=lambda line: print(line, flush=True))
    print(table(report))
    return 0 if _passed(report) else 1


# Test modules that need a package the GPU machine may lack (Ray's wheel alone is larger than
# what a device call can carry): left out there, and named in the report.
OPTIONAL_TEST_PACKAGES = {"tests/test_sweep.py": "ray", "tests/test_html.py": "selenium",
                          "tests/test_fuzz_readers.py": "hypothesis", "tests/test_layers.py": "grimp"}


def _tests(selection: list[str], seconds_left: float) -> dict:
    left_out = {module: package for module, package in OPTIONAL_TEST_PACKAGES.items()
                if importlib.util.find_spec(package) is None}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection,
               *(f"--ignore={module}" for module in left_out)]
    try:  # never past the budget: a suite still running then is stopped, and says so
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(seconds_left, 30))
    except subprocess.TimeoutExpired as stopped:
        output = stopped.stdout.decode(errors="replace") if isinstance(stopped.stdout, bytes) else stopped.stdout or ""
        return {"error": f"stopped at the budget after {stopped.timeout:.0f} s",
                "tail": output.strip().splitlines()[-20:]}
    lines = done.stdout.strip().splitlines() or ["no output"]
    if done.returncode:
        print("\n".join(lines[-40:]), flush=True)
    return {"exit_code": done.returncode, "summary": lines[-1],
            "left_out": [f"{module} (no {package})" for module, package in left_out.items()]}


def _train(name: str, seed: int = 0, **settings) -> dict:
    import torch

    from ..experiments import get_experiment
    from ..spec import RunSpec
    from ..train import fit

    tf32 = settings.pop("tf32", False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    spec = RunSpec.of(get_experiment(name), seed, device="cuda", **settings)
    with _tf32(tf32):
        result = fit(spec, label=f"{name} seed {seed}", data=_data(), progress=False)
    torch.cuda.synchronize()
    history = result.history
    return {"wall_seconds": round(time.perf_counter() - start, 2),
            "train_seconds": round(float(history["train_seconds"].sum()), 2),
            "test_accuracy": float(history["test_accuracy"].iloc[-1]),
            "history": history.drop(columns=["train_seconds", "seconds"]).to_dict("records")}


@contextlib.contextmanager
def _tf32(on: bool):
    """fp32 matmuls on TF32 tensor cores inside the block (cuDNN's convolutions use TF32 by
    default already); the previous setting afterwards. A measurement here: the trainer's runs
    keep torch's defaults until this wins (docs/performance.md)."""
    import torch

    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = previous or on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


_MNIST = None


def _data():
    global _MNIST
    if _MNIST is None:
        from ..data import load_mnist

        _MNIST = load_mnist()
    return _MNIST


def _schedule(configuration: str) -> dict:
    settings = {**CONFIGURATIONS[configuration], "tf32": configuration == "tf32"}
    cold = _train("basic_cnn", **settings)  # pays for start-up, capture and cuDNN's choices
    runs = {}
    for name in SCHEDULE:
        runs[name] = _train(name, **settings)
        print(f"  {name}: {runs[name]['train_seconds']:.1f} s training, {runs[name]['test_accuracy']:.2f}%", flush=True)
    return {"cold_first_run_seconds": cold["wall_seconds"], "runs": runs,
            "train_seconds": round(sum(r["train_seconds"] for r in runs.values()), 2),
            "wall_seconds": round(sum(r["wall_seconds"] for r in runs.values()), 2)}


def _seeds(report: dict) -> dict:
    """Seeds 1 and 2 in the fastest configuration that ran; seed 0 is its schedule run."""
    ran = [c for c in CONFIGURATIONS if c != "faithful-fp32" and "runs" in report.get(c, {})]
    if not ran:
        return {"skipped": "no fast configuration ran"}
    best = min(ran, key=lambda c: report[c]["train_seconds"])
    settings = {**CONFIGURATIONS[best], "tf32": best == "tf32"}
    return {"configuration": best,
            "test_accuracy": {name: [report[best]["runs"][name]["test_accuracy"]]
                              + [_train(name, seed=seed, **settings)["test_accuracy"] for seed in (1, 2)]
                              for name in SCHEDULE}}


def _deterministic_pair() -> dict:
    pair = [_train("cnn", deterministic=True)["history"] for _ in range(2)]
    return {"identical": pair[0] == pair[1]}


def _notebooks(profile: str, out: Path, runs_per_gpu: int | None) -> dict:
    """The design card's path: plan, train (studies included, side by side), execute, pack."""
    try:
        import papermill  # noqa: F401  (only whether it is there)
    except ImportError:
        return {"skipped": "papermill is not installed here (bring its wheels: see the README)"}
    from ..profiles import get_profile
    from ..runs import for_profile
    from ..workbook import archive, notebooks
    from ..workbook.html import write_site
    from ..workbook.plan import experiment_runs

    _find_installed_templates()
    shared = {"device": DEVICE}
    start = time.perf_counter()
    stages = notebooks.train_planned(notebooks.available(), profile=profile, shared=shared, studies="train",
                                     runs_per_gpu=runs_per_gpu)
    train_seconds = time.perf_counter() - start
    ran = notebooks.execute_all(None, profile=profile, shared=shared, force=True, progress=False, studies="train",
                                after=write_site)
    notebook_seconds = time.perf_counter() - start - train_seconds
    packed = archive.pack(profile, out / f"artifacts-{profile}.tar.gz")
    # What the PDF and the pages need, for the machine that builds them: a fraction of the size.
    report_only = archive.pack(profile, out / f"artifacts-{profile}-report.tar.gz", weights=False)
    cache = for_profile(profile)
    accuracies = {}
    for name in SCHEDULE:  # seed 0 of each, as the notebooks read it
        run = cache.get(experiment_runs(name, [0], get_profile(profile), DEVICE)[0].spec)
        if run is not None:
            accuracies[name] = float(run.history["test_accuracy"].iloc[-1])
    return {"ran": ran, "stages": [{k: stage[k] for k in ("trained", "at_once", "train_seconds")} for stage in stages],
            "train_seconds": round(train_seconds, 1), "notebook_seconds": round(notebook_seconds, 1),
            "archive": str(packed), "archive_bytes": packed.stat().st_size, "report_archive": str(report_only),
            "report_archive_bytes": report_only.stat().st_size, "test_accuracy": accuracies}


def _find_installed_templates() -> None:
    """Packages installed with `pip install --target DIR` (a GPU machine without network) put
    nbconvert's templates in DIR/share/jupyter, where Jupyter does not look unless JUPYTER_PATH
    says so; without them the HTML pages fail after the notebooks ran (seen on an H200)."""
    import nbconvert

    shared = Path(nbconvert.__file__).resolve().parents[1] / "share" / "jupyter"
    known = os.environ.get("JUPYTER_PATH", "").split(os.pathsep)
    if (shared / "nbconvert" / "templates").is_dir() and str(shared) not in known:
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(shared), *known]))


def _side_by_side(profile: str, out: Path, runs_per_gpu: int | None) -> dict:
    """The ViT study's screening runs (its most numerous), trained one after another in this
    process and then side by side, each set into a cache of its own: the speed-up, and how far
    apart the two sets' results are (the trainer's CUDA default is not deterministic, so equal
    only to rounding; the deterministic comparison is a `device` test)."""
    from ..runs import RunCache
    from ..runs.executor import distinct, train_here
    from ..runs.side_by_side import runs_per_gpu as choose, train_side_by_side
    from ..workbook import notebooks

    plan = notebooks.plan_runs(["q3_comparison"], profile=profile, shared={"device": DEVICE}, studies="train")
    screens = [runs[0] for runs in distinct([run for run in plan.study if run.spec.recipe.model == "vit"]).values()]
    screens = sorted(screens, key=lambda run: run.spec.recipe.epochs)
    scratch = Path(tempfile.mkdtemp(dir=out, prefix="side-by-side."))
    alone, together = RunCache(scratch / "alone"), RunCache(scratch / "together")
    at_once = choose(together, [run.spec for run in screens], runs_per_gpu)
    sample = screens[:at_once]
    if at_once < 2:
        return {"skipped": f"{len(screens)} screening run(s) and room for {at_once} at once: nothing to compare"}
    start = time.perf_counter()
    for run in sample:
        train_here(alone, run, _data(), printer=lambda line: None)
    serial = time.perf_counter() - start
    start = time.perf_counter()
    failed = train_side_by_side(together, sample, at_once, printer=lambda line: None)
    side_by_side = time.perf_counter() - start
    if failed:
        return {"error": f"failed side by side: {', '.join(failed)}"}
    gaps = [abs(alone.get(run.spec).history["test_accuracy"].iloc[-1]
                - together.get(run.spec).history["test_accuracy"].iloc[-1]) for run in sample]
    shutil.rmtree(scratch)  # its own two caches of weights, measured
    return {"runs": len(sample), "epochs": sample[0].spec.recipe.epochs, "at_once": at_once,
            "one_after_another_seconds": round(serial, 1), "side_by_side_seconds": round(side_by_side, 1),
            "speed_up": round(serial / side_by_side, 2), "largest_accuracy_gap": round(max(gaps), 3)}


def _passed(report: dict) -> bool:
    """Every phase that ran ran cleanly, and a deterministic pair that ran agreed."""
    phases = [value for value in report.values() if isinstance(value, dict)]
    clean = all("error" not in phase and phase.get("exit_code", 0) == 0 for phase in phases)
    return clean and report.get("deterministic", {}).get("identical", True)


def table(report: dict) -> str:
    """Each phase with its time and what it found; then the runs' final test accuracies beside the report's."""
    from ..results.reference import REPORT_TABLES, report_final_test_accuracy

    mps = {True: ", MPS on", False: ", no MPS"}.get(report.get("mps"), "")
    lines = [f"{report['device']}, torch {report['torch']}, CUDA {report['cuda']}{mps}: "
             f"{report.get('seconds', 0):.0f} s of a {report.get('budget', 0):.0f} s budget", "",
             f"{'phase':<14} {'seconds':>8}  result"]
    for key in PHASES:
        phase = report.get(key, {"skipped": "not run"})
        seconds = f"{phase['seconds']:>8.0f}" if "seconds" in phase else f"{'-':>8}"
        lines.append(f"{key:<14} {seconds}  {_summary(key, phase)}")
    lines += ["", f"{'test accuracy %':<22}" + "".join(f"{name:>10}" for name in SCHEDULE)]
    rows = [("report (Tables 1-4)", {name: report_final_test_accuracy(name) for name in REPORT_TABLES})]
    notebooks = report.get("notebooks", {})
    if "test_accuracy" in notebooks:
        rows.append((f"notebooks ({report.get('profile', 'full')})", notebooks["test_accuracy"]))
    rows += [(configuration, {name: run["test_accuracy"] for name, run in report[configuration]["runs"].items()})
             for configuration in CONFIGURATIONS if "runs" in report.get(configuration, {})]
    seeds = report.get("seeds", {})
    if "test_accuracy" in seeds:
        rows += [(f"{seeds['configuration']} seed {seed}", {name: values[seed] for name, values in
                                                           seeds["test_accuracy"].items()}) for seed in (1, 2)]
    for label, accuracies in rows:
        lines.append(f"{label:<22}" + "".join(f"{accuracies[name]:>10.2f}" if name in accuracies else f"{'-':>10}"
                                              for name in SCHEDULE))
    return "\n".join(lines)


def _summary(key: str, phase: dict) -> str:
    if "error" in phase:
        return f"failed, {phase['error']}"
    if "skipped" in phase:
        return f"skipped, {phase['skipped']}"
    if "summary" in phase:
        left_out = f"; left out: {', '.join(phase['left_out'])}" if phase.get("left_out") else ""
        return f"{phase['summary']}{left_out}"
    if key == "notebooks":
        stages = "; ".join(f"{stage['trained']} trained, {stage['at_once']} at a time, {stage['train_seconds']:.0f} s"
                           for stage in phase["stages"])
        return (f"{len(phase['ran'])} notebooks by papermill in {phase['notebook_seconds']:.0f} s after training "
                f"{phase['train_seconds']:.0f} s (stages: {stages}); packed {phase['archive_bytes'] / 2**20:.0f} MiB "
                f"to {phase['archive']}, without weights {phase['report_archive_bytes'] / 2**20:.1f} MiB to "
                f"{phase['report_archive']}")
    if key == "side-by-side":
        return (f"{phase['runs']} ViT screens of {phase['epochs']} epochs: one after another "
                f"{phase['one_after_another_seconds']:.1f} s, {phase['at_once']} at a time "
                f"{phase['side_by_side_seconds']:.1f} s ({phase['speed_up']:.2f}x); largest final-accuracy gap "
                f"{phase['largest_accuracy_gap']:.2f} points")
    if "runs" in phase:
        return (f"schedule: training {phase['train_seconds']:.1f} s, wall {phase['wall_seconds']:.1f} s, "
                f"cold first run {phase['cold_first_run_seconds']:.1f} s")
    if "identical" in phase:
        return f"pair identical: {phase['identical']}"
    if "test_accuracy" in phase:
        return f"seeds 1 and 2 of {phase['configuration']}"
    return json.dumps(phase)


if __name__ == "__main__":
    sys.exit(main())
