"""Run profiles: the report's full schedule, or a smoke run that finishes in minutes on a CPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import LabError, printable

if TYPE_CHECKING:  # a notebook that trains nothing does not import the recipes
    from .experiments import Experiment


@dataclass(frozen=True)
class Profile:
    name: str
    limit_train: int | None  # first N training images; None = all 60,000
    limit_test: int | None  # first N test images; None = all 10,000
    max_epochs: int | None  # cap on each experiment's epochs; None = the report's

    def apply(self, experiment: Experiment) -> Experiment:
        if self.max_epochs is None or experiment.epochs <= self.max_epochs:
            return experiment
        return experiment.replace(epochs=self.max_epochs)


PROFILES = {
    "full": Profile("full", None, None, None),
    # Two epochs, so curves have two points and the ViT's schedule is exercised; 1,000
    # training images are enough for every model to land well above chance.
    "smoke": Profile("smoke", limit_train=1000, limit_test=500, max_epochs=2),
}


MAX_SEED = 2**32 - 1  # what every generator takes (torch's own reaches 2**64 - 1, numpy's 2**32 - 1)
MAX_SEEDS = 100  # seeds in one request: each is a run of every experiment (the studies use 3 to 5)


def check_seeds(seeds) -> list[int]:
    """Seeds are a non-empty list of distinct integers from 0 to MAX_SEED (each trains one run)."""
    if isinstance(seeds, (list, tuple)) and len(seeds) > MAX_SEEDS:
        raise LabError(f"{len(seeds)} seeds are over the limit of {MAX_SEEDS} in one request (each trains a run "
                       "of every experiment); ask for fewer")
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds
    ):
        raise LabError(f"seeds must be a non-empty list of integers from 0 to {MAX_SEED}, "
                       f"got {printable(repr(seeds), 100)}")
    if len(set(seeds)) != len(seeds):
        raise LabError(f"seeds must be distinct, got {printable(repr(list(seeds)), 100)}")
    return list(seeds)


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise LabError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]
