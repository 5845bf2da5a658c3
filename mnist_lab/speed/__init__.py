"""Speed-ups that keep the math, applied by the trainer to the model it was given.

The models in `mnist_lab.models` are the report's code in torch's own layers. What makes
them train faster on a given device lives here, in the spirit of `torch.compile` or timm's
layer config: `accelerate(model, device)` returns a module that computes the same function
with the same parameters (the very same tensors, so training it trains `model`), and
`fit(..., fast=False)` skips it all to train the report's code exactly. How much each piece
buys, and what was tried and dropped, is in docs/performance.md.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import FastDropout, FastSelfAttention
from .rewrites import cls_only_last_block, pool_before_relu, share_parameters, swap_modules

FUSED_OPTIMIZER_DEVICES = ("cuda", "cpu")  # where torch.optim has fused Adam, AdamW and SGD


def accelerate(model: nn.Module, device: torch.device) -> nn.Module:
    """A faster module computing `model`'s function on `device`; `model` itself is not changed."""
    fast = share_parameters(model)
    fast = cls_only_last_block(fast)
    if device.type == "cpu":  # on a GPU torch's own dropout and attention are already fast
        fast = swap_modules(fast, _cpu_layer)
    return pool_before_relu(fast)


def _cpu_layer(module: nn.Module) -> nn.Module | None:
    if type(module) is nn.Dropout:
        return FastDropout(module.p)
    if type(module) is nn.MultiheadAttention:
        return FastSelfAttention(module)
    return None


def memory_format(model: nn.Module, device: torch.device) -> torch.memory_format:
    """channels_last (NHWC) for convolutional models on CPUs and CUDA GPUs: their convolution
    libraries (oneDNN, cuDNN) run natively in NHWC and would otherwise reorder every
    activation and gradient. The numbers are the same either way."""
    if device.type in ("cpu", "cuda") and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return torch.channels_last
    return torch.contiguous_format


def optimizer_options(device: torch.device) -> dict:
    """Fused optimizers run each update as one kernel per parameter group instead of ~10 small
    ops per tensor; the results agree to float rounding."""
    return {"fused": True} if device.type in FUSED_OPTIMIZER_DEVICES else {}
