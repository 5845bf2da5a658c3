"""The trainer: MNIST resident on the device, batches by permutation, augmentation batched.

One epoch is a loop over slices of a random permutation. There is no DataLoader, no
per-sample transform and no host sync per step: losses and correct counts are summed
on the device and read once per epoch (and every `CHECK_EVERY` steps, to stop early
on a NaN).
"""

from __future__ import annotations

import contextlib
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

from .augment import Augmentation, augment
from .checkpoint import restore as restore_checkpoint
from .checkpoint import save as save_checkpoint
from .data import Mnist, Split, load_mnist, normalize, pixels
from .device import environment, resolve_device
from .errors import LabError
from .experiments import Experiment
from .machine import cpu_slot
from .models import count_parameters, create_model
from .speed import accelerate, memory_format, optimizer_options
from .spec import RunSpec
from .speed.cuda import StepGraph, captured_optimizer

CHECK_EVERY = 50  # steps between NaN checks; each check waits for the device
EVAL_BATCH = 1000  # evaluation needs no gradients, so it can take big batches


@dataclass
class RunResult:
    """What one training run produced; `runs.save_run` writes it to a run directory."""

    spec: RunSpec
    settings: dict  # device, precision, subset sizes as trained: everything besides the recipe
    history: pd.DataFrame  # one row per epoch; accuracies in percent
    labels: torch.Tensor  # test-set labels, on the CPU
    predictions: torch.Tensor  # test-set predicted classes after the last epoch
    model: nn.Module  # the report's model class, whatever trained it
    environment: dict = field(default_factory=dict)

    @property
    def experiment(self) -> Experiment:
        return self.spec.recipe

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def metrics(self) -> dict:
        last = self.history.iloc[-1]
        return {
            "model": self.spec.recipe.model,
            "seed": self.spec.seed,
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


def fit(
    spec: RunSpec,
    *,
    label: str | None = None,
    data: Mnist | None = None,
    progress: bool = True,
    bar=tqdm,
    checkpoint: str | Path | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> RunResult:
    """Train the run `spec` describes, evaluating on the test set after every epoch.

    label: what people call it (`vit seed 0`), for progress bars and errors; never part of the run.
    data: MNIST already loaded (the default: loaded and verified here). A caller that passes a
    subset of its own trains a run that is not the spec's, and keeps it out of the run cache.
    checkpoint: a file saved after every epoch; a run started again with it resumes after
    the last completed epoch (the caller deletes it once the result is saved).
    bar: the progress bar's class: tqdm.auto's (a widget in JupyterLab) by default.
    on_epoch_end: called with each epoch's history row once the epoch is done and saved.
    announce: where to say that the run waits for the machine's CPU slot (default: stderr).

    On the CPU the run holds the machine's CPU slot (`machine.cpu_slot`: one CPU training at a
    time), and with `spec.deterministic` it trains inside `deterministic_kernels()`.
    """
    label = label or f"{spec.recipe.model} seed {spec.seed}"
    slot = cpu_slot(label, announce) if spec.device == "cpu" else contextlib.nullcontext()
    with slot, deterministic_kernels(spec.deterministic), _threads(spec.threads):
        return _fit(spec, label, data or load_mnist(), progress, bar, checkpoint, on_epoch_end)


@contextlib.contextmanager
def _threads(threads: int | None):
    """The spec's CPU threads for the run, then the process's own again."""
    previous = torch.get_num_threads()
    if threads and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def _fit(spec: RunSpec, label: str, data: Mnist, progress: bool, bar, checkpoint, on_epoch_end) -> RunResult:
    experiment = spec.recipe
    target = resolve_device(spec.device)
    train_set = data.train.head(spec.limit_train).to(target)
    test_set = data.test.head(spec.limit_test).to(target)

    torch.manual_seed(spec.seed)  # model initialisation and dropout
    generator = torch.Generator(target).manual_seed(spec.seed)  # batch order and augmentation
    model = create_model(experiment.model, **experiment.model_args).to(target)
    layout = memory_format(model, target) if spec.fast else torch.contiguous_format
    model = model.to(memory_format=layout)
    trained = accelerate(model, target) if spec.fast else model  # shares model's parameters
    if spec.cuda_graphs:
        optimizer = captured_optimizer(model, experiment.optimizer, experiment.lr, experiment.weight_decay)
    else:
        optimizer = make_optimizer(model, experiment, **(optimizer_options(target) if spec.fast else {}))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, experiment.lr_step, experiment.lr_gamma) if experiment.lr_step else None
    autocast = (  # a graph cannot hold autocast's cache of cast weights
        torch.autocast(target.type, dtype=torch.bfloat16, cache_enabled=not spec.cuda_graphs)
        if spec.precision == "bf16" else contextlib.nullcontext()
    )

    settings = {"device": str(target), "precision": spec.precision, "train_size": len(train_set),
                "test_size": len(test_set), "limit_train": spec.limit_train, "limit_test": spec.limit_test,
                "deterministic": spec.deterministic, "fast": spec.fast, "cuda_graphs": spec.cuda_graphs,
                "threads": spec.threads}
    identity = {**spec.value(), **settings}
    done, rows = restore_checkpoint(checkpoint, identity=identity, model=model, optimizer=optimizer,
                                    scheduler=scheduler, generator=generator)
    step = TrainStep(trained, optimizer, train_set, augmentation=experiment.augmentation, generator=generator,
                     autocast=autocast, layout=layout)
    step_graph = StepGraph(step, batch_size=experiment.batch_size) if spec.cuda_graphs else None
    predictions = None
    for epoch in range(done + 1, experiment.epochs + 1):
        start = time.perf_counter()
        epoch_bar = bar(total=len(train_set), desc=f"{label} {epoch}/{experiment.epochs}", unit="img",
                        disable=not progress, leave=True)
        order = torch.randperm(len(train_set), generator=generator, device=target)
        if step_graph:
            train_loss, train_accuracy = step_graph.run_epoch(order)
            epoch_bar.update(len(train_set))
            check_finite(train_loss, label, epoch)  # a graph cannot stop mid-epoch; its sums are read here
        else:
            train_loss, train_accuracy = _eager_epoch(step, order, experiment.batch_size, label, epoch, epoch_bar)
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
    return RunResult(spec, settings, pd.DataFrame(rows), test_set.labels.cpu(), predictions.cpu(), model,
                     environment(target))


def make_optimizer(model: nn.Module, experiment: Experiment, **options) -> torch.optim.Optimizer:
    """The experiment's optimizer over the model's parameters; `options` such as fused=True go to torch."""
    optimizer_class = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[experiment.optimizer]
    # SGD as in the report: plain, no momentum.
    return optimizer_class(model.parameters(), lr=experiment.lr, weight_decay=experiment.weight_decay, **options)


class TrainStep:
    """One optimizer step on the training images at some positions of the epoch's order, adding
    the batch's loss and correct count to device-side sums. Written once: the eager loop calls it
    step by step, and `speed.cuda.StepGraph` captures it as a CUDA graph and replays it."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, train_set: Split, *,
                 augmentation: Augmentation, generator: torch.Generator, autocast, layout):
        self.model, self.optimizer, self.train_set = model, optimizer, train_set
        self.augmentation, self.generator, self.autocast, self.layout = augmentation, generator, autocast, layout
        device = train_set.labels.device
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)

    def start_epoch(self) -> None:
        self.model.train()
        self.loss_sum.zero_()
        self.correct.zero_()

    def __call__(self, index: torch.Tensor) -> None:
        # Augment in pixel space, where 0 is the black background the rotation fills in.
        images = pixels(self.train_set.images.index_select(0, index), self.layout)
        x = normalize(augment(images, self.augmentation, self.generator))
        y = self.train_set.labels.index_select(0, index)
        with self.autocast:
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)  # a graph keeps writing into the same gradient tensors
        self.loss_sum += loss.detach().float() * index.numel()
        self.correct += (logits.argmax(1) == y).sum()

    def totals(self, n: int) -> tuple[float, float]:
        """(mean loss, accuracy in percent) of the epoch's `n` images: one wait for the device."""
        return self.loss_sum.item() / n, 100.0 * self.correct.item() / n


def _eager_epoch(step: TrainStep, order: torch.Tensor, batch_size: int, label: str, epoch: int,
                 bar) -> tuple[float, float]:
    step.start_epoch()
    n = len(order)
    for number, start in enumerate(range(0, n, batch_size), 1):
        step(order[start : start + batch_size])
        bar.update(min(batch_size, n - start))
        if number % CHECK_EVERY == 0 or start + batch_size >= n:
            check_finite(step.loss_sum.item(), label, epoch, number)
    return step.totals(n)


def check_finite(loss: float, label: str, epoch: int, step: int | None = None) -> None:
    """Stop a diverging run instead of saving it as a good one: both drivers (the eager loop and
    the CUDA graph's) check their loss sums with this."""
    if not math.isfinite(loss):
        where = f"epoch {epoch}" + (f" (step {step})" if step is not None else "")
        raise LabError(f"{label}: the training loss became {loss} in {where}; "
                       "the run was stopped. Try a lower learning rate.")


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, autocast=contextlib.nullcontext(),  # noqa: B008 (holds no state)
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
