"""The report's four models, by name: `create_model("cnn")`.

Each model's file is imported when that model is built, not before: a notebook or a run that
uses one model does not depend on the others' code (their provenance records list the files
they imported).
"""

from __future__ import annotations

import importlib
import inspect

from torch import nn

from ..errors import LabError

MODELS: dict[str, str] = {  # name: its class, in models/<name>.py
    "basic_cnn": "BasicCNN",
    "cnn": "CNN",
    "mobilenet": "MobileNet",
    "vit": "VisionTransformer",
}


def model_class(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise LabError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return getattr(importlib.import_module(f"{__name__}.{name}"), MODELS[name])


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; `overrides` are its constructor's keyword arguments."""
    constructor = model_class(name)
    accepted = [p for p in inspect.signature(constructor).parameters]
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise LabError(f"model {name!r} has no argument {', '.join(unknown)}; it accepts: {', '.join(accepted)}")
    return constructor(**overrides)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
