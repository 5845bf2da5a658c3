"""The usual PyTorch training loop, written as the reference the benchmark compares against.

This is pytorch/examples' `mnist/main.py` pattern applied to the report's recipes:
`torchvision.datasets.MNIST` + `DataLoader(batch_size=64, shuffle=True, num_workers=0)`
+ per-sample PIL transforms, fp32, and `loss.item()` after every step. Same model class,
optimizer, learning-rate schedule and training subset as `train.fit`, but the model runs as
written (no `speed.accelerate`), in NCHW, with torch's default for-loop optimizer. It is not
used to make the report's numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import paths
from ..data import MD5, MEAN, STD, default_root, find_file, raw_dir, read_verified
from ..errors import LabError
from ..experiments import Experiment
from ..files import atomic_path
from ..models import create_model
from ..train import make_optimizer


def torchvision_root(source: str | Path | None = None) -> Path:
    """A folder torchvision's MNIST can read: it wants `MNIST/raw/<name>` uncompressed.

    The files are verified and decompressed once into a cache under artifacts/.
    """
    source = Path(source) if source is not None else default_root()
    cache = paths.ARTIFACTS / "cache" / "torchvision"
    for name in MD5:
        target = raw_dir(cache) / name
        if not target.is_file():
            if find_file(source, name) is None:
                raise LabError(f"MNIST not found in {raw_dir(source)}: missing {name} (plain or .gz)")
            with atomic_path(target) as temporary:  # a killed run leaves no half file under the real name
                temporary.write_bytes(read_verified(source, name))
    return cache


def transform(experiment: Experiment):
    """The per-sample PIL pipeline of the usual loop, following the experiment's augmentation."""
    from torchvision import transforms

    steps = []
    if experiment.augmentation.max_rotation > 0:
        steps.append(transforms.RandomRotation(experiment.augmentation.max_rotation))
    if experiment.augmentation.hflip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]
    return transforms.Compose(steps)


def loader(experiment: Experiment, *, limit_train: int | None = None, root: str | Path | None = None,
           seed: int = 0) -> torch.utils.data.DataLoader:
    """The first `limit_train` training images (all for None), shuffled per epoch, one PIL image at a time."""
    from torchvision.datasets import MNIST

    dataset = MNIST(root=torchvision_root(root), train=True, download=False, transform=transform(experiment))
    if limit_train is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit_train, len(dataset))))
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=experiment.batch_size, shuffle=True, num_workers=0,
                                       generator=generator)


def train_epoch(model: nn.Module, data: torch.utils.data.DataLoader, optimizer: torch.optim.Optimizer) -> float:
    """One epoch as pytorch/examples writes it; returns the mean training loss."""
    model.train()
    total, seen = 0.0, 0
    for images, labels in data:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(labels)  # a host sync per step, as in the examples' logging
        seen += len(labels)
    return total / seen


def train(experiment: Experiment, *, seed: int = 0, limit_train: int | None = None,
          root: str | Path | None = None, on_epoch_end: Callable[[dict], None] | None = None) -> list[dict]:
    """Train `experiment` on the CPU the usual way: one row per epoch (loss, training seconds).

    on_epoch_end: called with each epoch's row, as in `train.fit`.
    """
    torch.manual_seed(seed)
    model = create_model(experiment.model, **experiment.model_args)
    optimizer = make_optimizer(model, experiment)  # torch's default for-loop optimizer
    scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, experiment.lr_step, experiment.lr_gamma)
                 if experiment.lr_step else None)
    data = loader(experiment, limit_train=limit_train, root=root, seed=seed)
    rows = []
    for epoch in range(1, experiment.epochs + 1):
        start = time.perf_counter()
        loss = train_epoch(model, data, optimizer)
        rows.append({"epoch": epoch, "train_loss": loss, "train_seconds": time.perf_counter() - start})
        if scheduler:
            scheduler.step()
        if on_epoch_end:
            on_epoch_end(rows[-1])
    return rows
