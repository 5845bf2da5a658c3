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
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..data import Split, normalize
from ..models import count_parameters
from ..runs import Run, load_model
from .tables import mean_at


def flops_per_image(model: nn.Module, *, training_step: bool = False) -> float:
    """Floating-point operations for one 28×28 image (a multiply-add counts 2): the forward
    pass, or with `training_step` a whole training step (forward and backward)."""
    batch = 16
    # Counted in training mode on a copy: in evaluation mode PyTorch may take fused fast
    # paths (nn.MultiheadAttention's) that the counter cannot see into.
    model = copy.deepcopy(model).train()
    device = next(model.parameters()).device
    images, labels = torch.randn(batch, 1, 28, 28, device=device), torch.randint(0, 10, (batch,), device=device)
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        if training_step:
            F.cross_entropy(model(images), labels).backward()
        else:
            with torch.no_grad():
                model(images)
    return counter.get_total_flops() / batch


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **_) -> int:
    """Each of the gradients (input, weight) costs what the forward convolution costs.

    torch's own formula ignores `groups` in the backward pass: it counts a depthwise
    convolution's backward ~C times too high (MobileNet: 230 instead of ~70 MFLOP/image).
    """
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


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
