"""Measuring the models against each other: size, arithmetic, speed, accuracy.

The report says MobileNet's efficiency "is not evident" on MNIST. FLOPs per image and
measured throughput say how much cheaper it is on paper and whether that shows up
in practice on the hardware at hand.
"""

from __future__ import annotations

import copy
import time

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .data import Split, normalize
from .models import count_parameters
from .models.layers import use_stock_layers
from .runs import Run, load_model
from .tables import mean_at


def flops_per_image(model: nn.Module) -> int:
    """Forward-pass floating-point operations for one 28×28 image (a multiply-add counts 2).

    The architecture's count, on torch's stock layers: the fast layers compute the same
    function, and the ViT's with less arithmetic (its last block only for the CLS token).
    """
    batch = 16
    # Counted in training mode on a copy: in evaluation mode PyTorch may take fused fast
    # paths (nn.MultiheadAttention's) that the counter cannot see into.
    model = use_stock_layers(copy.deepcopy(model)).train()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(batch, 1, 28, 28, device=next(model.parameters()).device))
    return counter.get_total_flops() // batch


@torch.inference_mode()
def inference_throughput(model: nn.Module, images: Split, *, batch: int = 1000, repeats: int = 3) -> float:
    """Best-of-`repeats` images per second classifying `images` in batches (after one warm-up pass)."""
    device = next(model.parameters()).device
    x = normalize(images.images.to(device).unsqueeze(1).float() / 255)
    model.eval()
    best = float("inf")
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            model(x[i : i + batch]).argmax(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt:  # the first pass warms caches and allocators up
            best = min(best, time.perf_counter() - start)
    return len(x) / best


def comparison_table(runs_by_model: dict[str, list[Run]], images: Split, device: str = "cpu") -> pd.DataFrame:
    """One row per model: accuracy, parameters, FLOPs, training and inference speed."""
    rows = []
    for name, runs in runs_by_model.items():
        model = load_model(runs[0], device)
        train_seconds = pd.concat([run.history["train_seconds"] for run in runs])
        train_size = runs[0].config["train_size"]
        rows.append({
            "Model": name,
            "Test Accuracy (%)": mean_at(runs, "test_accuracy"),
            "Parameters": count_parameters(model),
            "MFLOPs per Image": flops_per_image(model) / 1e6,
            "Training s/epoch": train_seconds.mean(),
            "Training Images/s": train_size / train_seconds.mean(),
            "Inference Images/s": inference_throughput(model, images),
        })
    return pd.DataFrame(rows)
