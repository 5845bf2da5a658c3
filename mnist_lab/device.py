"""Choosing the device, and describing the machine a result came from."""

from __future__ import annotations

import platform

import torch

from .errors import LabError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; asking for an absent GPU is an error."""
    check_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LabError("device 'cuda' was asked for but no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise LabError("device 'mps' was asked for but Apple's MPS backend is not available; use --device cpu or auto")
    return torch.device(name)


def check_name(name: str) -> None:
    if name not in DEVICES:
        raise LabError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")


def environment(device: torch.device) -> dict:
    """What a result depends on besides the code and the config."""
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
