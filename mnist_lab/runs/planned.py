"""A run a build will read, with the name people know it by: what the plan hands the executor."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import RunSpec


@dataclass(frozen=True)
class Planned:
    """A run a build will read, with the name people know it by (a label, never a key)."""

    label: str  # an experiment or a variant: "vit", "vit[batch_size=64,hflip=false,max_rotation=10.0]"
    spec: RunSpec
    weights: bool = False  # a notebook loads its trained model (not only its results)

    @property
    def name(self) -> str:
        return f"{self.label} seed {self.spec.seed}"


def distinct(planned: list[Planned]) -> dict[str, list[Planned]]:
    """The planned runs by key: one entry per run to train, with every name it goes by."""
    by_key: dict[str, list[Planned]] = {}
    for run in planned:
        by_key.setdefault(run.spec.key, []).append(run)
    return by_key
