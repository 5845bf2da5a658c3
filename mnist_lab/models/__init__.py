"""The report's four models, by name: `create_model("cnn")`."""

from __future__ import annotations

import inspect

from torch import nn

from ..errors import LabError
from .basic_cnn import BasicCNN
from .cnn import CNN
from .mobilenet import MobileNet
from .vit import VisionTransformer

MODELS: dict[str, type[nn.Module]] = {
    "basic_cnn": BasicCNN,
    "cnn": CNN,
    "mobilenet": MobileNet,
    "vit": VisionTransformer,
}


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; `overrides` are its constructor's keyword arguments."""
    if name not in MODELS:
        raise LabError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    model_class = MODELS[name]
    accepted = [p for p in inspect.signature(model_class).parameters]
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise LabError(f"model {name!r} has no argument {', '.join(unknown)}; it accepts: {', '.join(accepted)}")
    return model_class(**overrides)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
