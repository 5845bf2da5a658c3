"""`make gpu-check`: everything the GPU leg promises, checked in one call on a machine with CUDA.

    PYTHONPATH=. python3 -m mnist_lab.bench.gpu_check [--out DIR] [--skip PHASE ...] [--budget SECONDS]

Its phases, in order:
- device-tests: the tests marked `device`, each on the CPU and on CUDA (the accelerated models,
  the captured training step against the eager one);
- graphs, eager, seeds, deterministic, faithful-fp32: the report's whole schedule (basic CNN 3,
  CNN 5, CNN with flip 5, MobileNet 5, ViT 10 epochs on all 60,000 images, the test set after
  every epoch) with the trainer's default (the fast path, each step a replayed CUDA graph), with
  the fast path step by step, seeds 1 and 2 of the faster, the deterministic pair (identical
  histories), and the report's code as written in fp32;
- suite: the whole test suite (modules needing a package the GPU machine lacks, such as Ray's,
  are left out and named);
- notebooks: the four notebooks executed by papermill under the full profile, and artifacts/full
  packed into one archive, from which `mnist-lab unpack` and `mnist-lab report` build the PDF
  on a CPU machine.
It prints one table and writes one JSON (device, torch and CUDA versions, times, accuracies).

Without CUDA it says so in one line and exits 2. Training time is measured warm: a first run of
each configuration's first model pays for CUDA's start and cuDNN's choices, and is reported
beside it. Device time is scarce, so the JSON is rewritten after every phase, a phase that
fails is recorded and the next one still runs, and once `--budget` seconds have passed the
phases left are skipped and named.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

SCHEDULE = ("basic_cnn", "cnn", "cnn_flip", "mobilenet", "vit")
CONFIGURATIONS = {  # name: RunSpec.of() keyword arguments
    "graphs": {},  # the default: the fast path, each step a replayed CUDA graph
    "eager": {"cuda_graphs": False},  # the fast path step by step
    "faithful-fp32": {"fast": False, "precision": "fp32"},
}
PHASES = ("device-tests", "graphs", "eager", "seeds", "deterministic", "faithful-fp32", "suite", "notebooks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "artifacts/gpu-check"),
                        help="where the JSON and the archive go (default: $OUT, else artifacts/gpu-check)")
    parser.add_argument("--skip", nargs="+", choices=PHASES, default=[], metavar="PHASE",
                        help=f"phases not to run, of: {', '.join(PHASES)}")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds after which the phases not yet started are skipped (default 480)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu-check: torch is not installed for this Python; nothing to check", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU is visible to PyTorch here; run it on a machine with one", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}
    deadline = time.monotonic() + args.budget
    phases = {"device-tests": lambda: _tests(["-m", "device"]),
              "graphs": lambda: _schedule("graphs"),
              "eager": lambda: _schedule("eager"),
              "seeds": lambda: _seeds(report),
              "deterministic": _deterministic_pair,
              "faithful-fp32": lambda: _schedule("faithful-fp32"),
              "suite": lambda: _tests([]),
              "notebooks": lambda: _notebooks(args.out)}
    for key, run in phases.items():
        if key in args.skip:
            report[key] = {"skipped": "--skip"}
        elif time.monotonic() > deadline:
            report[key] = {"skipped": f"the --budget of {args.budget:.0f} s was spent"}
        else:
            print(f"gpu-check: {key}", flush=True)
            start = time.perf_counter()
            try:
                report[key] = run()
            except Exception as error:  # recorded; the phases after it still run
                report[key] = {"error": f"{type(error).__name__}: {error}"}
                traceback.print_exc()
            print(f"gpu-check: {key} done in {time.perf_counter() - start:.0f} s", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0 if _passed(report) else 1


# Test modules that need a package the GPU machine may lack (Ray's wheel alone is larger than
# what a device call can carry): left out there, and named in the report.
OPTIONAL_TEST_PACKAGES = {"tests/test_sweep.py": "ray", "tests/test_html.py": "selenium"}


def _tests(selection: list[str]) -> dict:
    left_out = {module: package for module, package in OPTIONAL_TEST_PACKAGES.items()
                if importlib.util.find_spec(package) is None}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection,
               *(f"--ignore={module}" for module in left_out)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines() or ["no output"]
    if done.returncode:
        print("\n".join(lines[-40:]), flush=True)
    return {"exit_code": done.returncode, "summary": lines[-1], "seconds": round(time.perf_counter() - start, 1),
            "left_out": [f"{module} (no {package})" for module, package in left_out.items()]}


def _train(name: str, seed: int = 0, **settings) -> dict:
    import torch

    from ..experiments import get_experiment
    from ..spec import RunSpec
    from ..train import fit

    torch.cuda.synchronize()
    start = time.perf_counter()
    spec = RunSpec.of(get_experiment(name), seed, device="cuda", **settings)
    result = fit(spec, label=f"{name} seed {seed}", data=_data(), progress=False)
    torch.cuda.synchronize()
    history = result.history
    return {"wall_seconds": round(time.perf_counter() - start, 2),
            "train_seconds": round(float(history["train_seconds"].sum()), 2),
            "test_accuracy": float(history["test_accuracy"].iloc[-1]),
            "history": history.drop(columns=["train_seconds", "seconds"]).to_dict("records")}


_MNIST = None


def _data():
    global _MNIST
    if _MNIST is None:
        from ..data import load_mnist

        _MNIST = load_mnist()
    return _MNIST


def _schedule(configuration: str) -> dict:
    settings = CONFIGURATIONS[configuration]
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
    return {"configuration": best,
            "test_accuracy": {name: [report[best]["runs"][name]["test_accuracy"]]
                              + [_train(name, seed=seed, **CONFIGURATIONS[best])["test_accuracy"] for seed in (1, 2)]
                              for name in SCHEDULE}}


def _deterministic_pair() -> dict:
    pair = [_train("cnn", deterministic=True)["history"] for _ in range(2)]
    return {"identical": pair[0] == pair[1]}


def _notebooks(out: Path) -> dict:
    try:
        import papermill  # noqa: F401  (only whether it is there)
    except ImportError:
        return {"skipped": "papermill is not installed here (bring its wheels: see the README)"}
    from ..workbook import archive, notebooks

    start = time.perf_counter()
    ran = notebooks.execute_all(None, profile="full", shared={"device": "cuda"}, force=True, progress=False)
    seconds = round(time.perf_counter() - start, 1)
    packed = archive.pack("full", out / "artifacts-full.tar.gz")
    return {"ran": ran, "seconds": seconds, "archive": str(packed)}


def _passed(report: dict) -> bool:
    """Every phase that ran ran cleanly, and a deterministic pair that ran agreed."""
    phases = [value for value in report.values() if isinstance(value, dict)]
    clean = all("error" not in phase and phase.get("exit_code", 0) == 0 for phase in phases)
    return clean and report.get("deterministic", {}).get("identical", True)


def table(report: dict) -> str:
    lines = [f"{report['device']}, torch {report['torch']}, CUDA {report['cuda']}", ""]
    for key in ("device-tests", "suite"):
        if key in report:
            lines.append(f"{key}: {_summary(report[key])}")
    lines.append(f"{'configuration':<15} {'train s':>8} {'wall s':>8} {'cold first run s':>17}  "
                 + "  ".join(f"{name:>9}" for name in SCHEDULE))
    for configuration in CONFIGURATIONS:
        result = report.get(configuration, {"skipped": "not run"})
        if "runs" not in result:
            lines.append(f"{configuration:<15} {_summary(result)}")
            continue
        accuracies = "  ".join(f"{result['runs'][name]['test_accuracy']:>8.2f}%" for name in SCHEDULE)
        lines.append(f"{configuration:<15} {result['train_seconds']:>8.1f} {result['wall_seconds']:>8.1f} "
                     f"{result['cold_first_run_seconds']:>17.1f}  {accuracies}")
    seeds = report.get("seeds", {"skipped": "not run"})
    lines.append(f"seeds 0-2 ({seeds['configuration']}): "
                 + "; ".join(f"{name} {', '.join(f'{a:.2f}' for a in values)}"
                             for name, values in seeds["test_accuracy"].items())
                 if "test_accuracy" in seeds else f"seeds: {_summary(seeds)}")
    pair = report.get("deterministic", {"skipped": "not run"})
    lines.append(f"deterministic pair identical: {pair['identical']}" if "identical" in pair
                 else f"deterministic pair: {_summary(pair)}")
    if "notebooks" in report:
        notebooks = report["notebooks"]
        lines.append(f"notebooks: {len(notebooks['ran'])} in {notebooks['seconds']:.0f} s, packed to "
                     f"{notebooks['archive']}" if "ran" in notebooks else f"notebooks: {_summary(notebooks)}")
    return "\n".join(lines)


def _summary(phase: dict) -> str:
    if "error" in phase:
        return f"failed, {phase['error']}"
    if "skipped" in phase:
        return f"skipped, {phase['skipped']}"
    left_out = f"; left out: {', '.join(phase['left_out'])}" if phase.get("left_out") else ""
    return f"{phase['summary']} ({phase['seconds']:.0f} s){left_out}"


if __name__ == "__main__":
    sys.exit(main())
