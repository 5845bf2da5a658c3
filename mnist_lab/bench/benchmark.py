"""How fast `train.fit` trains the report's models, against the usual PyTorch loop, on one machine.

For each model, on the same training subset and with the report's recipe, it measures
images/s of the project trainer (`train.fit`, with `speed.accelerate`) and of the usual loop
(`baseline.train`: the report's model as written, a DataLoader, NCHW, glibc's default
allocator), each in its own process, the two taking turns epoch by epoch
(`measure_in_turns`), and reports the ratio of each side-by-side pair of epochs (median,
min, max): on a shared machine only ratios taken side by side mean much.

It also counts one training step's FLOPs to turn images/s into GFLOP/s, next to the
machine's measured peak (the best of a few 2048×2048 fp32 matmuls on the same threads),
and estimates the report's full schedule from the throughput. Results and their history:
docs/performance.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import multiprocessing
import platform
import statistics
import time
from pathlib import Path

import torch

from . import baseline

from .. import names, paths
from ..data import Mnist, load_mnist
from ..errors import LabError
from ..experiments import Experiment, get_experiment
from ..files import write_json
from ..models import create_model
from ..results.compare import flops_per_image
from ..speed import accelerate, memory

MODELS = names.MODELS  # each trained with the experiment of the same name
SIDES = ("trainer", "baseline")
WARMUP_EPOCHS = 2  # per side, not timed: after only one, the next epoch was seen ~25% slower
FULL_TRAIN_SIZE = 60_000  # images per epoch in the report's schedule
EVAL_IMAGES = 64  # the benchmark times training; evaluation only has to run


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The best fp32 GFLOP/s of a size×size matmul on the current threads: the practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def measure_in_turns(experiment: Experiment, images: int, rounds: int, *, device: str = "cpu",
                     root: str | Path | None = None) -> tuple[list[float], list[float]]:
    """Images/s of the trainer and of the usual loop, epoch by epoch, the two taking turns.

    Each side trains in a fresh process of its own, so neither inherits the other's state:
    the trainer's side keeps freed memory (`speed.memory`), the usual loop's starts with
    glibc's defaults. After warm-up epochs (allocator, oneDNN primitive caches), they train
    one epoch at a time in turns, trainer-baseline then baseline-trainer: the two epochs of
    a round run back to back on the same machine load, which on a shared machine drifts
    by more than the effects measured. While one side trains the other waits, idle; no
    side exits before the last timed epoch is done. Evaluation is not timed.
    """
    context = multiprocessing.get_context("spawn")
    connections = {}
    workers = []
    for side in SIDES:
        ours, theirs = context.Pipe()
        worker = context.Process(target=_serve, args=(side, experiment.replace(epochs=WARMUP_EPOCHS + rounds),
                                                      images, device, root, theirs), daemon=True)
        with _environment_without(memory.ENVIRONMENT):  # glibc reads them when the worker starts
            worker.start()
        theirs.close()  # so that a worker's death shows here as EOFError, not a hang
        connections[side] = ours
        workers.append(worker)
    seconds = {side: [] for side in SIDES}
    try:
        # A worker sends each epoch's seconds, then waits for a word to go on (or to finish).
        for side in SIDES:
            for epoch in range(1, WARMUP_EPOCHS + 1):
                connections[side].recv()  # warm-up seconds, not counted
                if epoch < WARMUP_EPOCHS:
                    connections[side].send("go")
        for turn in range(rounds):
            for side in SIDES if turn % 2 == 0 else SIDES[::-1]:
                connections[side].send("go")
                seconds[side].append(connections[side].recv())
        for side in SIDES:
            connections[side].send("done")
    except EOFError:
        raise LabError(f"benchmark of {experiment.name}: a training process died; see its error above") from None
    finally:
        for connection in connections.values():
            connection.close()  # a worker still waiting for its turn gets EOFError and exits
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    return [images / s for s in seconds["trainer"]], [images / s for s in seconds["baseline"]]


def _serve(side: str, experiment: Experiment, images: int, device: str, root, connection) -> None:
    """Train in this process; after each epoch, send its training seconds and wait for the next turn."""

    def take_turns(row: dict) -> None:
        connection.send(row["train_seconds"])
        connection.recv()  # "go" for another epoch, or "done" after the last

    if side == "trainer":
        from ..spec import RunSpec
        from ..train import fit

        memory.keep_freed_memory()
        spec = RunSpec.of(experiment, device=device, precision="fp32", limit_train=images, limit_test=EVAL_IMAGES)
        fit(spec, label=experiment.name, data=load_mnist(root), progress=False, on_epoch_end=take_turns)
    else:
        baseline.train(experiment, limit_train=images, root=root, on_epoch_end=take_turns)


@contextlib.contextmanager
def _environment_without(names):
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(models: tuple[str, ...] = MODELS, *, images: int = 1024, repeats: int = 8, full_schedule: bool = False,
        device: str = "cpu", root: str | Path | None = None, out: str | Path | None = None,
        progress: bool = True) -> dict:
    """Measure, write `out` (default artifacts/bench/bench.json) atomically, and return the results."""
    from ..files import check_output

    if out:
        check_output(out, "bench")  # before the measuring, not after it: never over a device node or a link
    data = load_mnist(root)
    images = min(images, len(data.train))
    experiments = {name: get_experiment(name) for name in models}
    trainer, reference = {}, {}
    peaks = [matmul_gflops()]
    for name, experiment in experiments.items():
        trainer[name], reference[name] = measure_in_turns(experiment, images, repeats, device=device, root=root)
        peaks.append(matmul_gflops())
        if progress:
            print(f"  {name}: trainer {statistics.median(trainer[name]):.0f} images/s, "
                  f"baseline {statistics.median(reference[name]):.0f} images/s (medians of {repeats} epochs)", flush=True)
    peak = max(peaks)

    results = {}
    for name, experiment in experiments.items():
        trained_model = accelerate(create_model(experiment.model, **experiment.model_args), torch.device(device))
        flops = flops_per_image(trained_model, training_step=True)
        speedups = [t / b for t, b in zip(trainer[name], reference[name])]
        trainer_median = statistics.median(trainer[name])
        baseline_median = statistics.median(reference[name])
        schedule_images = FULL_TRAIN_SIZE * experiment.epochs
        entry = {
            "experiment": experiment.to_dict(),
            "trainer_images_per_second": _summary(trainer[name]),
            "baseline_images_per_second": _summary(reference[name]),
            "speedup": _summary(speedups),
            "train_flops_per_image": flops,
            "trainer_gflops_per_second": flops * trainer_median / 1e9,
            "baseline_gflops_per_second": flops * baseline_median / 1e9,
            "fraction_of_peak": flops * trainer_median / 1e9 / peak,
            "schedule": {
                "epochs": experiment.epochs,
                "images": schedule_images,
                "estimated_trainer_seconds": schedule_images / trainer_median,
                "estimated_baseline_seconds": schedule_images / baseline_median,
                "estimated_seconds_at_peak": schedule_images * flops / (peak * 1e9),
            },
        }
        if full_schedule:
            entry["schedule"].update(_full_schedule(experiment, data, device))
        results[name] = entry

    total = {key: sum(r["schedule"][key] for r in results.values())
             for key in ("estimated_trainer_seconds", "estimated_baseline_seconds", "estimated_seconds_at_peak")}
    if full_schedule:
        for key in ("measured_train_seconds", "measured_seconds"):
            total[key] = sum(r["schedule"][key] for r in results.values())
    from ..device import environment

    report = {
        "machine": {**environment(torch.device(device)), "cpu": _cpu_name(), "cores": _cores()},
        "settings": {"images": images, "repeats": repeats, "device": device, "precision": "fp32",
                     "timed": f"training epochs after {WARMUP_EPOCHS} warm-up epochs, each loop in its own "
                              "process, the two taking turns epoch by epoch",
                     "baseline": "torchvision MNIST + DataLoader(64, shuffle, num_workers=0) + PIL transforms, "
                                 "loss.item() per step; the model as written, NCHW, glibc's default allocator"},
        "peak_gflops_per_second": peak,
        "peak_gflops_per_second_values": peaks,
        "models": results,
        "schedule_total": total,
    }
    write_json(Path(out) if out else paths.ARTIFACTS / "bench" / "bench.json", report)
    return report


def _cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count()


def _full_schedule(experiment: Experiment, data: Mnist, device: str) -> dict:
    """Train the report's whole schedule once with the project trainer; seconds as measured."""
    from ..spec import RunSpec
    from ..train import fit

    result = fit(RunSpec.of(experiment, device=device, precision="fp32"), label=experiment.name, data=data,
                 progress=False)
    return {"measured_train_seconds": float(result.history["train_seconds"].sum()),
            "measured_seconds": float(result.history["seconds"].sum()),
            "measured_test_accuracy": float(result.history["test_accuracy"].iloc[-1])}


def table(report: dict) -> str:
    """The results as a plain-text table (what `mnist-lab bench` prints)."""
    machine = report["machine"]
    settings = report["settings"]
    lines = [
        f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads, torch {machine['torch']}; "
        f"{settings['images']} images, {settings['repeats']} repetitions, batch 64, fp32; "
        f"peak {report['peak_gflops_per_second']:.0f} GFLOP/s (2048² matmul)",
        "",
        f"{'model':<10} {'trainer img/s':>13} {'baseline img/s':>14} {'speedup (min-max)':>19} "
        f"{'MFLOP/img':>9} {'GFLOP/s':>7} {'% peak':>6} {'schedule (est.)':>17}",
    ]
    for name, r in report["models"].items():
        s = r["speedup"]
        schedule = r["schedule"]
        estimate = f"{schedule['estimated_trainer_seconds'] / 60:.1f} vs {schedule['estimated_baseline_seconds'] / 60:.1f} min"
        lines.append(
            f"{name:<10} {r['trainer_images_per_second']['median']:>13.0f} "
            f"{r['baseline_images_per_second']['median']:>14.0f} "
            f"{s['median']:>6.2f}× ({s['min']:.2f}-{s['max']:.2f}) "
            f"{r['train_flops_per_image'] / 1e6:>9.1f} {r['trainer_gflops_per_second']:>7.1f} "
            f"{100 * r['fraction_of_peak']:>5.0f}% {estimate:>17}"
        )
        if "measured_train_seconds" in schedule:
            lines.append(f"{'':<10} full schedule measured: {schedule['measured_train_seconds'] / 60:.1f} min training, "
                         f"test accuracy {schedule['measured_test_accuracy']:.2f}%")
    total = report["schedule_total"]
    lines += ["", f"report's schedule (60,000 images × epochs), estimated: trainer "
                  f"{total['estimated_trainer_seconds'] / 60:.1f} min, baseline {total['estimated_baseline_seconds'] / 60:.1f} min, "
                  f"arithmetic at peak {total['estimated_seconds_at_peak'] / 60:.1f} min"]
    if "measured_train_seconds" in total:
        lines.append(f"measured: {total['measured_train_seconds'] / 60:.1f} min training "
                     f"({total['measured_seconds'] / 60:.1f} min with evaluation)")
    return "\n".join(lines)
