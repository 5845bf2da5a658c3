"""Which runs each notebook reads: declared once, here, for the runner and the notebooks alike.

The runner (`mnist-lab run`) plans every run the notebooks it will execute read, trains the
missing ones through one executor (`runs.executor`), then executes notebooks that only read.
A notebook reads through the same declaration (`Workbook.runs`, `Workbook.study`): under the
runner, a run it was not declared to read is an error, so the two cannot drift apart.

A study whose confirmation depends on its screen (the ViT's) is planned in stages: the screen
first; once its runs are in the cache, the finalists.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..experiments import get_experiment
from ..profiles import Profile
from ..runs.executor import Planned
from ..spec import RunSpec


@dataclass(frozen=True)
class Reads:
    experiments: tuple[str, ...] = ()  # read once per seed of the notebook's `seeds`
    studies: tuple[str, ...] = ()  # calibration studies (results.calibration.STUDIES), over `calibration_seeds`


READS = {
    "q1_convolution": Reads(experiments=("basic_cnn",)),  # the trained basic CNN's kernels
    "q1_losses": Reads(),
    "q2_cnn": Reads(experiments=("basic_cnn", "cnn", "cnn_flip"), studies=("basic_cnn",)),
    "q3_comparison": Reads(experiments=("mobilenet", "vit", "basic_cnn", "cnn"), studies=("vit",)),
}


def reads(notebook: str) -> Reads:
    return READS.get(notebook, Reads())


def experiment_runs(name: str, seeds, profile: Profile, device: str) -> list[Planned]:
    """The runs of experiment (or variant) `name` under `profile`, one per seed."""
    recipe = profile.apply(get_experiment(name))
    return [Planned(name, RunSpec.of(recipe, seed, device=device, limit_train=profile.limit_train,
                                     limit_test=profile.limit_test)) for seed in seeds]


def screening_runs(study, seeds, profile: Profile, device: str) -> dict[str, list[Planned]]:
    """A study's screen: every candidate cut to its first `screen_epochs` epochs ({} without one)."""
    from ..results.calibration import screening

    if study.screen_epochs is None:
        return {}
    epochs = min(study.screen_epochs, profile.apply(get_experiment(study.experiment)).epochs)
    return {label: experiment_runs(screening(name, epochs), seeds, profile, device) for label, name in study.candidates}


def confirmation_runs(study, labels, seeds, profile: Profile, device: str) -> dict[str, list[Planned]]:
    return {label: experiment_runs(study.names[label], seeds, profile, device) for label in labels}


def planned(notebook: str, parameters: dict, profile: Profile, cache) -> tuple[list[Planned], list[str]]:
    """The runs `notebook` reads under these parameters, as far as the cache lets us know them,
    and what waits for a later stage ("the vit study's confirmation, after its screen")."""
    from ..results.calibration import finalists, get_study

    declared = reads(notebook)
    device = parameters.get("device", "auto")
    runs = [run for name in declared.experiments for run in experiment_runs(name, parameters["seeds"], profile, device)]
    later = []
    for name in declared.studies:
        study, seeds = get_study(name), parameters["calibration_seeds"]
        screen = screening_runs(study, seeds, profile, device)
        runs += [run for group in screen.values() for run in group]
        if screen:
            screened = {label: [cache.get(run.spec) for run in group] for label, group in screen.items()}
            if any(run is None for group in screened.values() for run in group):
                later.append(f"the {name} study's confirmation, after its screen")
                continue
            labels = finalists(study, screened)
        else:
            labels = list(study.names)
        runs += [run for group in confirmation_runs(study, labels, seeds, profile, device).values() for run in group]
    return runs, later
