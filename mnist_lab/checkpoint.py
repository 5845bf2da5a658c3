"""Resuming a training run from its last completed epoch.

After every epoch the trainer saves everything the next epoch depends on: the weights,
the optimizer's and scheduler's state, the random generators (batch order, augmentation,
dropout) and the history so far. A run started again with the same checkpoint file picks
up where the last one stopped and, on the CPU, ends with the same numbers as a run that
was never interrupted.

A checkpoint is read with `weights_only=True`: tensors and plain containers only, so a file
planted in the artifacts folder can hold wrong numbers at worst, never code that runs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .errors import LabError
from .files import atomic_path


def save(path: Path, *, identity: dict, epoch: int, rows: list[dict], model, optimizer, scheduler, generator) -> None:
    state = {
        "identity": json.dumps(identity, sort_keys=True, default=str),
        "epoch": epoch,
        "rows": rows,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler else None,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    with atomic_path(path) as temporary:  # a run killed while saving keeps the previous epoch's checkpoint
        torch.save(state, temporary)


def restore(path: Path | None, *, identity: dict, model, optimizer, scheduler, generator) -> tuple[int, list[dict]]:
    """Load the checkpoint into the given objects; returns (epochs done, their history rows).

    A missing checkpoint, or one from another recipe, seed or subset, starts from scratch.
    """
    if path is None or not Path(path).exists():
        return 0, []
    try:
        with warnings.catch_warnings():  # torch's warnings about a foreign file's pickle protocol: one line below says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a checkpoint, or one holding more than tensors and containers
        raise LabError(f"{path} is not a checkpoint this project wrote ({type(error).__name__}); "
                       "delete it to train from the start") from None
    if not isinstance(state, dict) or state.get("identity") != json.dumps(identity, sort_keys=True, default=str):
        return 0, []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler:
        scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["epoch"], state["rows"]
