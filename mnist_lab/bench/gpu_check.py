"""`make gpu-check`: everything the GPU leg promises, checked in one call on a machine with CUDA.

    PYTHONPATH=. python3 -m mnist_lab.bench.gpu_check [--out DIR] [--skip-tests] [--skip-notebooks]

1. the test suite with CUDA present (tests that take a device run on the CPU and on CUDA);
2. the report's whole schedule (basic CNN 3, CNN 5, CNN with flip 5, MobileNet 5, ViT 10
   epochs on all 60,000 images, the test set after every epoch): with the fast path and CUDA
   graphs, with the fast path alone, and faithful in fp32; the fast path with 3 seeds; and the
   deterministic pair, which must give identical histories;
3. the four notebooks executed by papermill under the full profile on the GPU;
4. one table on the terminal, one JSON (device, torch and CUDA versions, times, accuracies) and
   artifacts/full packed into one archive, from which `mnist-lab unpack` and `mnist-lab report`
   build the PDF on a CPU machine.

Without CUDA it says so in one line and exits 2. Training time is measured warm: a first run of
each configuration's first model pays for CUDA's start and cuDNN's choices, and is reported
beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SCHEDULE = ("basic_cnn", "cnn", "cnn_flip", "mobilenet", "vit")
CONFIGURATIONS = {  # name: fit() keyword arguments
    "graphs": {"fast": True, "cuda_graphs": True},
    "fast": {"fast": True},
    "faithful-fp32": {"fast": False, "precision": "fp32"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "artifacts/gpu-check"),
                        help="where the JSON and the archive go (default: $OUT, else artifacts/gpu-check)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-notebooks", action="store_true")
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
    if not args.skip_tests:
        report["tests"] = _tests()
    report["schedule"] = _schedules()
    if not args.skip_notebooks:
        report["notebooks"] = _notebooks(args.out)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0 if _passed(report) else 1


def _tests() -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], capture_output=True,
                          text=True)
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return {"exit_code": done.returncode, "summary": last, "seconds": round(time.perf_counter() - start, 1)}


def _train(name: str, seed: int = 0, **settings) -> dict:
    import torch

    from ..experiments import get_experiment
    from ..train import fit

    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fit(get_experiment(name), seed=seed, device="cuda", data=_data(), progress=False, **settings)
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


def _schedules() -> dict:
    results = {}
    for configuration, settings in CONFIGURATIONS.items():
        cold = _train("basic_cnn", **settings)  # pays for start-up, capture and cuDNN's choices
        runs = {name: _train(name, **settings) for name in SCHEDULE}
        results[configuration] = {"cold_first_run_seconds": cold["wall_seconds"], "runs": runs,
                                  "train_seconds": round(sum(r["train_seconds"] for r in runs.values()), 2),
                                  "wall_seconds": round(sum(r["wall_seconds"] for r in runs.values()), 2)}
    best = min(CONFIGURATIONS, key=lambda c: results[c]["train_seconds"] if c != "faithful-fp32" else float("inf"))
    results["seeds"] = {name: [results[best]["runs"][name]["test_accuracy"]]
                        + [_train(name, seed=seed, **CONFIGURATIONS[best])["test_accuracy"] for seed in (1, 2)]
                        for name in SCHEDULE}
    pair = [_train("cnn", deterministic=True, **CONFIGURATIONS["fast"])["history"] for _ in range(2)]
    results["deterministic_identical"] = pair[0] == pair[1]
    results["seeds_configuration"] = best
    return results


def _notebooks(out: Path) -> dict:
    try:
        import papermill  # noqa: F401  (only whether it is there)
    except ImportError:
        return {"skipped": "papermill is not installed here (bring its wheels: see the README)"}
    from ..build import archive, notebooks

    start = time.perf_counter()
    ran = notebooks.execute_all(None, profile="full", shared={"device": "cuda"}, force=True, progress=False)
    seconds = round(time.perf_counter() - start, 1)
    packed = archive.pack("full", out / "artifacts-full.tar.gz")
    return {"ran": ran, "seconds": seconds, "archive": str(packed)}


def _passed(report: dict) -> bool:
    tests_ok = report.get("tests", {}).get("exit_code", 0) == 0
    return tests_ok and report["schedule"]["deterministic_identical"]


def table(report: dict) -> str:
    lines = [f"{report['device']}, torch {report['torch']}, CUDA {report['cuda']}", ""]
    if "tests" in report:
        lines.append(f"tests: {report['tests']['summary']} ({report['tests']['seconds']:.0f} s)")
    schedule = report["schedule"]
    lines.append(f"{'configuration':<15} {'train s':>8} {'wall s':>8} {'cold first run s':>17}  "
                 + "  ".join(f"{name:>9}" for name in SCHEDULE))
    for configuration in CONFIGURATIONS:
        result = schedule[configuration]
        accuracies = "  ".join(f"{result['runs'][name]['test_accuracy']:>8.2f}%" for name in SCHEDULE)
        lines.append(f"{configuration:<15} {result['train_seconds']:>8.1f} {result['wall_seconds']:>8.1f} "
                     f"{result['cold_first_run_seconds']:>17.1f}  {accuracies}")
    lines.append(f"seeds 0-2 ({schedule['seeds_configuration']}): "
                 + "; ".join(f"{name} {', '.join(f'{a:.2f}' for a in values)}" for name, values in schedule["seeds"].items()))
    lines.append(f"deterministic pair identical: {schedule['deterministic_identical']}")
    if "notebooks" in report:
        notebooks = report["notebooks"]
        if "skipped" in notebooks:
            lines.append(f"notebooks: skipped, {notebooks['skipped']}")
        else:
            lines.append(f"notebooks: {len(notebooks['ran'])} in {notebooks['seconds']:.0f} s, packed to "
                         f"{notebooks['archive']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
