"""A training run as a value: what it trains, on what, and how; its key is the run cache's.

    spec = RunSpec.of(get_experiment("vit"), seed=0, device="cpu", limit_train=1000, limit_test=500)
    spec.key        # sha256 of the value, the MNIST checksums and the code this run executes

An experiment's name is a label for people: two names that spell the same recipe (`vit` and
`vit[batch_size=64,hflip=true,max_rotation=10.0]`) are one spec, one key, one run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

from .augment import Augmentation
from .experiments import Experiment
from .fingerprint import run_record, torch_release
from .profiles import check_seeds

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class RunSpec:
    recipe: Experiment  # its name is always "": a name is a label, never part of a run
    seed: int
    device: str  # the device type: cpu, cuda or mps
    precision: str  # fp32 or bf16 (resolved)
    limit_train: int | None = None  # first N training images; None: all 60,000
    limit_test: int | None = None
    fast: bool = True  # `speed`'s device-specific speed-ups, or the report's code exactly
    cuda_graphs: bool = False  # a CUDA graph per step (CUDA's fast path only)
    deterministic: bool = False
    threads: int | None = None  # torch's CPU threads: the CPU's reductions round by how they split
    torch: str = ""  # torch's release (`fingerprint.torch_release`): another release computes other numbers

    @classmethod
    def of(cls, experiment: Experiment, seed: int = 0, *, device: str = "auto", precision: str = "auto",
           limit_train: int | None = None, limit_test: int | None = None, fast: bool = True,
           cuda_graphs: bool = True, deterministic: bool = False, threads: int | None = None) -> RunSpec:
        """The run of `experiment` with these settings, each resolved to what will happen here
        (`auto` device and precision, graphs only where they apply, this process's threads)."""
        import torch

        from .device import resolve_device
        from .errors import LabError

        check_seeds([seed])
        device_type = resolve_device(device).type
        if precision not in PRECISIONS:
            raise LabError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if precision == "auto":
            precision = "bf16" if device_type == "cuda" else "fp32"
        return cls(recipe=experiment.replace(name=""), seed=seed, device=device_type, precision=precision,
                   limit_train=limit_train, limit_test=limit_test, fast=fast,
                   cuda_graphs=fast and cuda_graphs and device_type == "cuda", deterministic=deterministic,
                   threads=(threads or torch.get_num_threads()) if device_type == "cpu" else None,
                   torch=torch_release())

    def value(self) -> dict:
        """The run as plain data: what its key hashes, and what its record holds."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        recipe = dataclasses.asdict(self.recipe)
        del recipe["name"]
        return {**fields, "recipe": recipe}

    @classmethod
    def from_value(cls, value: dict) -> RunSpec:
        recipe = dict(value["recipe"])
        recipe["augmentation"] = Augmentation(**recipe["augmentation"])
        return cls(**{**value, "recipe": Experiment(name="", **recipe)})

    @cached_property
    def record(self) -> dict:
        """The value, the code it executes and the data, with the key (`fingerprint.run_record`)."""
        return run_record(self.value())

    @property
    def key(self) -> str:
        return self.record["fingerprint"]

    def replace(self, **changes) -> RunSpec:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for people: the run's settings besides its recipe."""
        subset = f"{self.limit_train or 60000:,} images" + (f", {self.limit_test:,} test" if self.limit_test else "")
        speed = "fast" if self.fast else "faithful"
        return (f"seed {self.seed}, {self.recipe.epochs} epochs, {subset}, {self.device} {self.precision}, {speed}"
                + (", CUDA graphs" if self.cuda_graphs else "") + (f", {self.threads} threads" if self.threads else ""))
