"""The trainer: MNIST resident on the device, batches by permutation, augmentation batched.

One epoch is a loop over slices of a random permutation. There is no DataLoader, no
per-sample transform and no host sync per step: losses and correct counts are summed
on the device and read once per epoch (and every `CHECK_EVERY` steps, to stop early
on a NaN).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .augment import augment
from .checkpoint import restore as restore_checkpoint
from .checkpoint import save as save_checkpoint
from .data import Mnist, Split, load_mnist, normalize, pixels
from .device import environment, resolve_device
from .errors import LabError
from .experiments import Experiment
from .machine import cpu_slot
from .models import count_parameters, create_model
from .speed import accelerate, memory_format, optimizer_options
from .speed.cuda import StepGraph, captured_optimizer

CHECK_EVERY = 50  # steps between NaN checks; each check waits for the device
EVAL_BATCH = 1000  # evaluation needs no gradients, so it can take big batches
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class RunResult:
    """What one training run produced; `runs.save_run` writes it to a run directory."""

    experiment: Experiment
    seed: int
    settings: dict  # device, precision, subset sizes: everything besides the recipe
    history: pd.DataFrame  # one row per epoch; accuracies in percent
    labels: torch.Tensor  # test-set labels, on the CPU
    predictions: torch.Tensor  # test-set predicted classes after the last epoch
    model: nn.Module  # the report's model class, whatever trained it
    environment: dict = field(default_factory=dict)

    @property
    def metrics(self) -> dict:
        last = self.history.iloc[-1]
        return {
            "experiment": self.experiment.name,
            "seed": self.seed,
            "epochs": int(last["epoch"]),
            "train_loss": float(last["train_loss"]),
            "train_accuracy": float(last["train_accuracy"]),
            "test_loss": float(last["test_loss"]),
            "test_accuracy": float(last["test_accuracy"]),
            "parameters": count_parameters(self.model),
            "train_seconds": float(self.history["train_seconds"].sum()),
            "train_images_per_second": float(
                self.settings["train_size"] * len(self.history) / self.history["train_seconds"].sum()
            ),
        }


@contextlib.contextmanager
def deterministic_kernels(on: bool = True):
    """Make CUDA repeatable inside the block (deterministic algorithms only, no cuDNN autotuning),
    then put the previous settings back: a process that trains several configurations in turn
    (gpu_check) gives each a clean state."""
    if not on:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    # cuBLAS needs a fixed workspace to be deterministic; it reads this when CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        enabled, warn_only, benchmark, workspace = previous
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def _training_context(train):
    """`fit` trains inside `deterministic_kernels()` when asked, and on the CPU in the machine's
    CPU slot (`machine.cpu_slot`: one CPU training at a time)."""
    @functools.wraps(train)
    def wrapper(experiment: Experiment, *, deterministic: bool = False, **kwargs):
        on_cpu = resolve_device(kwargs.get("device", "auto")).type == "cpu"
        slot = cpu_slot(f"{experiment.name} seed {kwargs.get('seed', 0)}") if on_cpu else contextlib.nullcontext()
        with slot, deterministic_kernels(deterministic):
            return train(experiment, deterministic=deterministic, **kwargs)

    return wrapper


@_training_context
def fit(
    experiment: Experiment,
    *,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    limit_train: int | None = None,
    limit_test: int | None = None,
    data: Mnist | None = None,
    progress: bool = True,
    bar=tqdm,
    checkpoint: str | Path | None = None,
    deterministic: bool = False,
    fast: bool = True,
    cuda_graphs: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> RunResult:
    """Train `experiment` and evaluate it on the test set after every epoch.

    precision: `fp32` is bit-faithful; `bf16` autocasts matmuls and convolutions on a GPU;
    `auto` means bf16 on CUDA and fp32 elsewhere.
    checkpoint: a file saved after every epoch; a run started again with it resumes after
    the last completed epoch (the caller deletes it once the result is saved).
    deterministic: on a GPU, only deterministic kernels (slower); the CPU always is.
    fast: apply `speed`'s device-specific speed-ups to the model (the same function, computed
    faster); False trains the report's code exactly, with torch's default optimizer loop.
    cuda_graphs: on CUDA with `fast`, capture each training step as a CUDA graph and replay it
    (`speed.cuda`); False keeps the eager loop there too.
    bar: the progress bar's class: tqdm.auto's (a widget in JupyterLab) by default; the runner's
    kernels pass tqdm's text bar, whose last state is what the kept notebook shows.
    on_epoch_end: called with each epoch's history row once the epoch is done and saved
    (the benchmark uses it to take turns with the usual loop between epochs).
    """
    target = resolve_device(device)
    precision = resolve_precision(precision, target.type)
    data = data or load_mnist()
    train_set = data.train.head(limit_train).to(target)
    test_set = data.test.head(limit_test).to(target)

    torch.manual_seed(seed)  # model initialisation and dropout
    generator = torch.Generator(target).manual_seed(seed)  # batch order and augmentation
    model = create_model(experiment.model, **experiment.model_args).to(target)
    layout = memory_format(model, target) if fast else torch.contiguous_format
    model = model.to(memory_format=layout)
    trained = accelerate(model, target) if fast else model  # shares model's parameters
    graphs = uses_cuda_graphs(target.type, fast=fast, cuda_graphs=cuda_graphs)
    if graphs:
        optimizer = captured_optimizer(model, experiment.optimizer, experiment.lr, experiment.weight_decay)
    else:
        optimizer = make_optimizer(model, experiment, **(optimizer_options(target) if fast else {}))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, experiment.lr_step, experiment.lr_gamma) if experiment.lr_step else None
    autocast = (  # a graph cannot hold autocast's cache of cast weights
        torch.autocast(target.type, dtype=torch.bfloat16, cache_enabled=not graphs) if precision == "bf16"
        else contextlib.nullcontext()
    )

    settings = {"device": str(target), "precision": precision, "train_size": len(train_set), "test_size": len(test_set),
                "limit_train": limit_train, "limit_test": limit_test, "deterministic": deterministic, "fast": fast,
                **({"cuda_graphs": True} if graphs else {})}
    identity = {"experiment": experiment.to_dict(), "seed": seed, **settings}
    done, rows = restore_checkpoint(checkpoint, identity=identity, model=model, optimizer=optimizer,
                                    scheduler=scheduler, generator=generator)
    step_graph = StepGraph(trained, optimizer, train_set, batch_size=experiment.batch_size,
                           augmentation=experiment.augmentation, autocast=autocast, layout=layout) if graphs else None
    predictions = None
    for epoch in range(done + 1, experiment.epochs + 1):
        start = time.perf_counter()
        epoch_bar = bar(total=len(train_set), desc=f"{experiment.name} {epoch}/{experiment.epochs}", unit="img",
                   disable=not progress, leave=True)
        if step_graph:
            train_loss, train_accuracy = step_graph.run_epoch(torch.randperm(len(train_set), generator=generator,
                                                                             device=target))
            epoch_bar.update(len(train_set))
            check_finite(train_loss, experiment, epoch)  # a graph cannot stop mid-epoch; its sums are read here
        else:
            train_loss, train_accuracy = _train_epoch(trained, optimizer, train_set, experiment, generator,
                                                      autocast, layout, epoch, epoch_bar)
        train_seconds = time.perf_counter() - start
        if scheduler:
            scheduler.step()
        test_loss, test_accuracy, predictions = evaluate(trained, test_set, autocast, layout)
        epoch_bar.set_postfix(loss=f"{train_loss:.4f}", test_acc=f"{test_accuracy:.2f}%")
        epoch_bar.close()
        rows.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "test_loss": test_loss,
                "test_accuracy": test_accuracy,
                "train_seconds": train_seconds,
                "seconds": time.perf_counter() - start,
            }
        )
        if checkpoint:
            save_checkpoint(Path(checkpoint), identity=identity, epoch=epoch, rows=rows, model=model,
                            optimizer=optimizer, scheduler=scheduler, generator=generator)
        if on_epoch_end:
            on_epoch_end(rows[-1])
    if predictions is None:  # every epoch was already done by the run that saved the checkpoint
        _, _, predictions = evaluate(trained, test_set, autocast, layout)
    return RunResult(experiment, seed, settings, pd.DataFrame(rows), test_set.labels.cpu(), predictions.cpu(),
                     model, environment(target))


def uses_cuda_graphs(device_type: str, *, fast: bool, cuda_graphs: bool) -> bool:
    """Graphs are a speed-up of the fast path, and CUDA's alone."""
    return fast and cuda_graphs and device_type == "cuda"


def resolve_precision(precision: str, device_type: str) -> str:
    """`auto` is bf16 on CUDA and fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise LabError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


def make_optimizer(model: nn.Module, experiment: Experiment, **options) -> torch.optim.Optimizer:
    """The experiment's optimizer over the model's parameters; `options` such as fused=True go to torch."""
    optimizer_class = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[experiment.optimizer]
    # SGD as in the report: plain, no momentum.
    return optimizer_class(model.parameters(), lr=experiment.lr, weight_decay=experiment.weight_decay, **options)


def _train_epoch(model, optimizer, train_set: Split, experiment: Experiment, generator, autocast, layout,
                 epoch: int, bar) -> tuple[float, float]:
    model.train()
    n = len(train_set)
    order = torch.randperm(n, generator=generator, device=generator.device)
    loss_sum = torch.zeros((), device=generator.device)
    correct = torch.zeros((), dtype=torch.long, device=generator.device)
    for step, start in enumerate(range(0, n, experiment.batch_size), 1):
        batch = order[start : start + experiment.batch_size]
        # Augment in pixel space, where 0 is the black background the rotation fills in.
        x = normalize(augment(pixels(train_set.images[batch], layout), experiment.augmentation, generator))
        y = train_set.labels[batch]
        with autocast:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().float() * len(batch)
        correct += (logits.argmax(1) == y).sum()
        bar.update(len(batch))
        if step % CHECK_EVERY == 0 or start + experiment.batch_size >= n:
            check_finite(loss_sum.item(), experiment, epoch, step)
    return loss_sum.item() / n, 100.0 * correct.item() / n


def check_finite(loss: float, experiment: Experiment, epoch: int, step: int | None = None) -> None:
    """Stop a diverging run instead of saving it as a good one: both drivers (the eager loop and
    the CUDA graph's) check their loss sums with this."""
    if not math.isfinite(loss):
        where = f"epoch {epoch}" + (f" (step {step})" if step is not None else "")
        raise LabError(f"{experiment.name}: the training loss became {loss} in {where}; "
                       "the run was stopped. Try a lower learning rate.")


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, autocast=contextlib.nullcontext(),
             layout=torch.contiguous_format) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy in percent and predicted classes of `model` on `split`."""
    model.eval()
    loss_sum = torch.zeros((), device=split.labels.device)
    predictions = []
    for start in range(0, len(split), EVAL_BATCH):
        x = normalize(pixels(split.images[start : start + EVAL_BATCH], layout))
        y = split.labels[start : start + EVAL_BATCH]
        with autocast:
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        predictions.append(logits.argmax(1))
    predictions = torch.cat(predictions)
    accuracy = 100.0 * (predictions == split.labels).sum().item() / len(split)
    return loss_sum.item() / len(split), accuracy, predictions
