"""How fast `train.fit` trains the report's models, against the usual PyTorch loop, on one machine.

For each model, on the same training subset and with the report's recipe, it measures
images/s of the project trainer (`train.fit`) and of the usual loop (`baseline.train`),
repetitions interleaved so that both see the same machine load, and reports the ratio
of each side-by-side pair (median, min, max). Both are timed the same way: a run of two
epochs over the subset, of which only the second epoch's training counts (the first is
the warm-up: allocator, oneDNN primitive caches; evaluation is never timed).

It also counts one training step's FLOPs (forward + backward on a batch of 64, with
`FlopCounterMode`) to turn images/s into GFLOP/s, next to the machine's measured peak
(the best of a few 2048×2048 fp32 matmuls on the same threads), and estimates the
report's full schedule (60,000 images × the experiment's epochs) from the throughput.

Where the time goes (torch.profiler, 100-200 steps per model, 2-core AMD EPYC, AVX2,
before the trainer used channels_last and fused optimizers on the CPU):
- basic_cnn: convolution backward ~25%, max-pool forward ~20%, the 6272→64 linear ~15%;
  steps are ~10 ms, so framework overhead (~100 ops) is a visible share.
- cnn: convolutions (forward + backward) ~40%, linear layers ~15%, pooling ~10%, ReLU
  ~6%; Adam's per-tensor loop (sqrt, lerp, addcdiv...) ~8%. In NCHW oneDNN reorders
  every activation; channels_last cut the convolution time ~2-4×.
- mobilenet: convolutions ~65-70% (backward alone 45-49%), BatchNorm forward + backward
  ~13-18%, ReLU ~5-8%. channels_last made the step ~1.25× faster in quiet side-by-side runs;
  fused Adam made no measurable difference (11 tensors' update is small next to the convs).
- vit: matmuls (mm/bmm/addmm) ~30%, copies ~12% (383 per step: head splitting and
  merging inside nn.MultiheadAttention), elementwise ops (GELU, dropout, LayerNorm)
  ~25%, the AdamW for-loop over 50 tensors ~15% of the step (fused AdamW replaces it; its
  gain could not be separated from the shared machine's noise).
"""

from __future__ import annotations

import math
import multiprocessing
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import baseline, paths
from .data import Mnist, load_mnist
from .experiments import Experiment, get_experiment
from .files import write_json
from .models import create_model

MODELS = ("basic_cnn", "cnn", "mobilenet", "vit")  # each trained with the experiment of the same name
FULL_TRAIN_SIZE = 60_000  # images per epoch in the report's schedule
FLOP_BATCH = 64


def flops_per_image(experiment: Experiment) -> float:
    """FLOPs of one training step (forward + backward) per image, counted on a batch of 64."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(experiment.model, **experiment.model_args).train()
    images = torch.randn(FLOP_BATCH, 1, 28, 28)
    labels = torch.randint(0, 10, (FLOP_BATCH,))
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops}) as counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops() / FLOP_BATCH


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **_) -> int:
    """Each of the gradients (input, weight) costs what the forward convolution costs.

    torch's own formula ignores `groups` in the backward pass: it counts a depthwise
    convolution's backward ~C times too high (MobileNet: 230 instead of ~70 MFLOP/image).
    """
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


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


def trainer_images_per_second(experiment: Experiment, images: int, device: str = "cpu",
                              root: str | Path | None = None) -> float:
    from .train import fit

    result = fit(experiment.replace(epochs=2), data=load_mnist(root), device=device, precision="fp32",
                 limit_train=images, limit_test=FLOP_BATCH, progress=False)
    return images / float(result.history["train_seconds"].iloc[1])


def baseline_images_per_second(experiment: Experiment, images: int, root: str | Path | None = None) -> float:
    rows = baseline.train(experiment.replace(epochs=2), limit_train=images, root=root)
    return images / rows[1]["train_seconds"]


def in_fresh_process(function, *args):
    """`function(*args)` in a new Python process.

    Every measurement starts from the same clean state, whatever ran before it: the
    trainer's allocator settings (`memory.keep_freed_memory`) last for the life of a
    process and would otherwise speed up the usual loop measured after it.
    """
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


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


def run(models: tuple[str, ...] = MODELS, *, images: int = 2048, repeats: int = 3, full_schedule: bool = False,
        device: str = "cpu", root: str | Path | None = None, out: str | Path | None = None,
        progress: bool = True) -> dict:
    """Measure, write `out` (default artifacts/bench/bench.json) atomically, and return the results."""
    data = load_mnist(root)
    images = min(images, len(data.train))
    experiments = {name: get_experiment(name) for name in models}
    trainer = {name: [] for name in models}
    reference = {name: [] for name in models}
    peaks = [matmul_gflops()]
    for repeat in range(repeats):
        for name, experiment in experiments.items():
            # Alternate which loop goes first, so a drift in machine load favours neither.
            order = ("trainer", "baseline") if repeat % 2 == 0 else ("baseline", "trainer")
            for which in order:
                if which == "trainer":
                    trainer[name].append(in_fresh_process(trainer_images_per_second, experiment, images, device, root))
                else:
                    reference[name].append(in_fresh_process(baseline_images_per_second, experiment, images, root))
            if progress:
                print(f"  repetition {repeat + 1}/{repeats} {name}: trainer {trainer[name][-1]:.0f} images/s, "
                      f"baseline {reference[name][-1]:.0f} images/s", flush=True)
        peaks.append(matmul_gflops())
    peak = max(peaks)

    results = {}
    for name, experiment in experiments.items():
        flops = flops_per_image(experiment)
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
    from .device import environment

    report = {
        "machine": {**environment(torch.device(device)), "cpu": _cpu_name(), "cores": _cores()},
        "settings": {"images": images, "repeats": repeats, "timed": "second of two epochs, training only",
                     "device": device, "precision": "fp32", "baseline": "torchvision MNIST + DataLoader(64, "
                     "shuffle, num_workers=0) + PIL transforms, loss.item() per step"},
        "peak_gflops_per_second": peak,
        "peak_gflops_per_second_values": peaks,
        "models": results,
        "schedule_total": total,
    }
    write_json(Path(out) if out else paths.ARTIFACTS / "bench" / "bench.json", report)
    return report


def _cores() -> int | None:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count()


def _full_schedule(experiment: Experiment, data: Mnist, device: str) -> dict:
    """Train the report's whole schedule once with the project trainer; seconds as measured."""
    from .train import fit

    result = fit(experiment, data=data, device=device, precision="fp32", progress=False)
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
