"""Which runs each notebook reads: declared once, here, for the runner and the notebooks alike.

The runner (`mnist-lab run`) plans every run the notebooks it will execute read, trains the
missing ones through one executor (`runs.executor`), then executes notebooks that only read.
A notebook reads through the same declaration (`Workbook.runs`, `Workbook.study`): under the
runner, a run it was not declared to read is an error, so the two cannot drift apart.

A study whose confirmation depends on its screen (the ViT's) is planned in stages: the screen
first; once its runs are in the cache, the finalists.

The studies' runs come from frozen/ by default (`studies="frozen"`, `runs.frozen`): a study run
the cache lacks is read from its frozen record, and trained only where none was frozen.
`studies="train"` trains them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..experiments import get_experiment
from ..profiles import Profile
from ..runs import frozen as frozen_runs
from ..runs.executor import Planned
from ..spec import RunSpec


@dataclass(frozen=True)
class Reads:
    experiments: tuple[str, ...] = ()  # read once per seed of the notebook's `seeds`
    studies: tuple[str, ...] = ()  # calibration studies (results.calibration.STUDIES), over `calibration_seeds`
    weights: bool = False  # it loads its experiments' trained models, not only their results


READS = {
    "q1_convolution": Reads(experiments=("basic_cnn",), weights=True),  # the trained basic CNN's kernels
    "q1_losses": Reads(),
    "q2_cnn": Reads(experiments=("basic_cnn", "cnn", "cnn_flip"), studies=("basic_cnn",)),
    "q3_comparison": Reads(experiments=("mobilenet", "vit", "basic_cnn", "cnn"), studies=("vit",),
                           weights=True),  # parameters, FLOPs and inference speed of each trained model
}


def reads(notebook: str) -> Reads:
    return READS.get(notebook, Reads())


def experiment_runs(name: str, seeds, profile: Profile, device: str, weights: bool = False) -> list[Planned]:
    """The runs of experiment (or variant) `name` under `profile`, one per seed."""
    recipe = profile.apply(get_experiment(name))
    return [Planned(name, RunSpec.of(recipe, seed, device=device, limit_train=profile.limit_train,
                                     limit_test=profile.limit_test), weights) for seed in seeds]


def screening_runs(study, seeds, profile: Profile, device: str) -> dict[str, list[Planned]]:
    """A study's screen: every candidate cut to its first `screen_epochs` epochs ({} without one)."""
    from ..results.calibration import screening

    if study.screen_epochs is None:
        return {}
    epochs = min(study.screen_epochs, profile.apply(get_experiment(study.experiment)).epochs)
    return {label: experiment_runs(screening(name, epochs), seeds, profile, device) for label, name in study.candidates}


def confirmation_runs(study, labels, seeds, profile: Profile, device: str) -> dict[str, list[Planned]]:
    return {label: experiment_runs(study.names[label], seeds, profile, device) for label in labels}


@dataclass
class Plan:
    """What notebooks read: every run, the frozen runs standing in for some (by the key they
    stand in for), and what waits for a later stage."""

    runs: list[Planned] = field(default_factory=list)
    frozen: dict[str, frozen_runs.Frozen] = field(default_factory=dict)
    later: list[str] = field(default_factory=list)
    study: list[Planned] = field(default_factory=list)  # the runs of the calibration studies among `runs`

    def stand_ins(self) -> dict[str, frozen_runs.Frozen]:
        """The frozen runs the build reads, by key: a run a notebook also reads as one of its
        experiments (its weights, its predictions) is trained, whatever frozen/ holds."""
        experiments = {run.spec.key for run in self.runs if run not in self.study}
        return {key: stand_in for key, stand_in in self.frozen.items() if key not in experiments}

    def to_train(self) -> list[Planned]:
        frozen = self.stand_ins()
        return [run for run in self.runs if run.spec.key not in frozen]

    def add(self, other: Plan) -> None:
        self.runs += other.runs
        self.frozen.update(other.frozen)
        self.later += other.later
        self.study += other.study


def read_study_run(run: Planned, profile: Profile, cache, studies: str):
    """A study's run from the cache, else (studies = frozen) its frozen record: (Run, Frozen or None),
    or (None, None) when neither has it."""
    found = cache.get(run.spec)
    if found is not None or studies != "frozen":
        return found, None
    stand_in = frozen_runs.find(profile.name, run.label, run.spec)
    return (stand_in.run, stand_in) if stand_in else (None, None)


def planned(notebook: str, parameters: dict, profile: Profile, cache, studies: str = "frozen") -> Plan:
    """The runs `notebook` reads under these parameters, as far as the cache (and frozen/) let us
    know them, and what waits for a later stage ("the vit study's confirmation, after its screen")."""
    from ..results.calibration import finalists, get_study

    declared = reads(notebook)
    device = parameters.get("device", "auto")
    plan = Plan([run for name in declared.experiments
                 for run in experiment_runs(name, parameters["seeds"], profile, device, declared.weights)])
    for name in declared.studies:
        study, seeds = get_study(name), parameters["calibration_seeds"]

        def take(groups: dict[str, list[Planned]]) -> dict[str, list]:
            found = {}
            for label, group in groups.items():
                plan.runs.extend(group)
                plan.study.extend(group)
                found[label] = []
                for run in group:
                    read, stand_in = read_study_run(run, profile, cache, studies)
                    if stand_in is not None:
                        plan.frozen[run.spec.key] = stand_in
                    found[label].append(read)
            return found

        screened = take(screening_runs(study, seeds, profile, device))
        if screened:
            if any(run is None for group in screened.values() for run in group):
                plan.later.append(f"the {name} study's confirmation, after its screen")
                continue
            labels = finalists(study, screened)
        else:
            labels = list(study.names)
        take(confirmation_runs(study, labels, seeds, profile, device))
    return plan


def study_declaration(profile: Profile, seeds: dict[str, list[int]]) -> dict:
    """What the studies' frozen runs were chosen by (frozen/<profile>/studies.json): each study's
    candidates, rule, screen and seeds, and the epochs its runs train under this profile. A frozen
    folder whose declaration differs from the package's is out of date (the tests say so)."""
    from ..results.calibration import STUDIES

    return {name: {"candidates": [list(pair) for pair in study.candidates], "baseline": study.baseline,
                   "screen_epochs": study.screen_epochs, "finalists": study.finalists, "seeds": seeds[name],
                   "epochs": {label: profile.apply(get_experiment(variant)).epochs for label, variant in study.candidates}}
            for name, study in STUDIES.items() if name in seeds}
