"""What a notebook calls: the runs it reads, their summaries and studies, and its outputs.

    wb = Workbook("q2_cnn", profile=profile, device=device, seeds=seeds)
    runs = wb.runs("cnn")                   # from the run cache
    wb.figure(figures.loss_curve(runs), "cnn_loss")
    wb.table(tables.history(runs), "cnn_history")
    wb.macro("CnnTestAccuracy", "98.95")
    wb.study("vit", calibration_seeds)      # a calibration study, presented in one call

Under the runner (`mnist-lab run`) every run was planned and trained before the kernel started
(`workbook.plan`): the notebook only reads, and a run it was not planned, or that is missing, is
an error naming it. Explored by hand in JupyterLab, a missing run trains here, with its progress bar.

The run cache, the recipes and the trainer are imported when a run is first asked for: a
notebook that reads no run (q1_*) does not go stale when they change.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from .. import paths
from ..data import Mnist, load_mnist
from ..device import check_name as check_device_name
from ..device import environment, resolve_device
from ..errors import LabError
from ..profiles import check_seeds, get_profile
from . import hook
from .outputs import Outputs, latex_integer, macro_prefix

if TYPE_CHECKING:
    from ..experiments import Experiment
    from ..runs import Run

__all__ = ["Workbook", "latex_integer", "macro_prefix"]


class Workbook(Outputs):
    def __init__(self, notebook: str, *, profile: str = "smoke", device: str = "auto", seeds=(0,)):
        super().__init__()
        self.notebook = notebook
        self.profile = get_profile(profile)
        self.profile_name = self.profile.name
        check_device_name(device)
        self.device = device
        self.seeds = check_seeds(seeds)
        self.directory = paths.profile_dir(self.profile.name)
        # Under the runner, outputs wait in its staging folder until the whole notebook has
        # succeeded. Explored by hand (JupyterLab), they go apart, to scratch/: what the report
        # reads is only ever what the runner committed, and a hand-run kernel never makes it stale.
        self.under_runner = hook.staging() is not None
        self.outputs = hook.staging() or self.directory / "scratch"
        self._runs: dict[str, str] = {}  # run folder → key: the runs this session read, for its record
        self._frozen: dict[str, str] = {}  # the same for the studies' runs read from frozen/
        self._marked: dict[str, tuple[str, ...]] = {}  # frozen runs whose key is not the spec's: why

    @cached_property
    def data(self) -> Mnist:
        return load_mnist()

    @cached_property
    def cache(self):
        from ..runs import for_profile

        return for_profile(self.profile.name)

    # ---- runs ---------------------------------------------------------------------------

    def recipe(self, experiment_name: str) -> Experiment:
        """The experiment as this profile trains it (the smoke profile caps the epochs)."""
        from ..experiments import get_experiment

        return self.profile.apply(get_experiment(experiment_name))

    def describe(self, experiment_name: str) -> str:
        """The recipe in words, from the recipe itself (see `experiments.describe`)."""
        from ..experiments import describe

        return describe(self.recipe(experiment_name))

    def runs(self, experiment_name: str, seeds: list[int] | None = None) -> list[Run]:
        """One run per seed (the notebook's, or those given) of the named experiment under this profile."""
        from .plan import experiment_runs, reads

        planned = experiment_runs(experiment_name, check_seeds(seeds) if seeds else self.seeds, self.profile,
                                  self.device, reads(self.notebook).weights)
        return [self._read(run) for run in planned]

    def run(self, experiment_name: str, seed: int = 0) -> Run:
        return self.runs(experiment_name, [seed])[0]

    def _read(self, planned, study: bool = False) -> Run:
        """The planned run from the cache; a study's, else from frozen/ (unless the runner trains the
        studies); explored by hand, trained here first if missing."""
        from .plan import read_study_run

        planned_keys, studies = hook.planned()
        if planned_keys is not None and planned.spec.key not in planned_keys:
            raise LabError(f"notebook {self.notebook} reads {planned.name}, a run the runner did not plan for it: "
                           "declare what it reads in mnist_lab/workbook/plan.py (READS)")
        run, stand_in = read_study_run(planned, self.profile, self.cache, studies) if study else \
            (self.cache.get(planned.spec, planned.weights), None)
        if stand_in is not None:
            self._frozen[str(stand_in.directory.relative_to(paths.FROZEN))] = stand_in.record["fingerprint"]
            if stand_in.differences:
                self._marked[planned.name] = stand_in.differences
            self._wrote()
            return run
        if run is None:
            if self.under_runner:
                raise LabError(f"{planned.name} ({planned.spec.describe()}; key {planned.spec.key[:12]}) is not in "
                               f"the run cache: {'; '.join(self.cache.problems(planned.spec, planned.weights))}. The runner trains "
                               "every run a notebook declares before executing it")
            from ..runs.executor import train_here

            run = train_here(self.cache, planned, self.data, hook.say, progress=True, announce=hook.say)
        if not self.under_runner:  # the runner named every run it planned
            self.cache.label(planned.label, planned.spec)
        self._runs[str(run.directory.relative_to(self.directory))] = planned.spec.key
        self._wrote()
        return run

    def summarize(self, experiment_name: str) -> list[Run]:
        """The experiment's runs, with their headline numbers written as macros and printed.

        Macros are named after the experiment: basic_cnn gives \\BasicCnnTestAccuracy,
        \\BasicCnnEpochs, \\BasicCnnParameters, \\BasicCnnAugmentation, ... (means over the seeds).
        """
        from ..experiments import describe_augmentation
        from ..results.reference import report_final_test_accuracy
        from ..results.tables import mean_at

        runs = self.runs(experiment_name)
        prefix = macro_prefix(experiment_name)
        recipe = self.recipe(experiment_name)
        epochs = len(runs[0].history)
        self.macro(f"{prefix}TestAccuracy", f"{mean_at(runs, 'test_accuracy'):.2f}")
        self.macro(f"{prefix}TrainAccuracy", f"{mean_at(runs, 'train_accuracy'):.2f}")
        self.macro(f"{prefix}FirstLoss", f"{mean_at(runs, 'train_loss', 0):.4f}")
        self.macro(f"{prefix}LastLoss", f"{mean_at(runs, 'train_loss'):.4f}")
        self.macro(f"{prefix}Epochs", epochs)
        self.macro(f"{prefix}Parameters", latex_integer(runs[0].metrics["parameters"]))
        self.macro(f"{prefix}BatchSize", recipe.batch_size)
        self.macro(f"{prefix}Augmentation", describe_augmentation(recipe.augmentation))
        print(f"{experiment_name}: {self.describe(experiment_name)}")
        print(f"{experiment_name}: test accuracy {mean_at(runs, 'test_accuracy'):.2f}% after {epochs} epochs, "
              f"mean of {len(runs)} seed(s) (the report: {report_final_test_accuracy(recipe.model):.2f}%)")
        return runs

    def study(self, name: str, seeds: list[int]):
        """Run the calibration study `name` (results.calibration.STUDIES) over `seeds`, as declared:
        its screen (if any), its confirmation, their tables and figure, the decision and its macros.
        Returns the decision (`calibration.Decision`)."""
        import matplotlib.pyplot as plt
        from IPython.display import Markdown, display

        from ..results import calibration
        from .plan import confirmation_runs, screening_runs

        study, seeds = calibration.get_study(name), check_seeds(seeds)
        self._marked = {}
        load = lambda groups: {label: [self._read(run, study=True) for run in runs]  # noqa: E731
                               for label, runs in groups.items()}
        screened = load(screening_runs(study, seeds, self.profile, self.device))
        if screened:
            display(self.table(calibration.table(screened, study.model), f"{name}_calibration_screen"))
            labels = calibration.finalists(study, screened)
        else:
            labels = list(study.names)
        labels = [label for label in study.names if label in labels]  # shown in the declared order, as screened
        confirmed = load(confirmation_runs(study, labels, seeds, self.profile, self.device))
        display(self.table(calibration.table(confirmed, study.model, headline=True), f"{name}_calibration"))
        figure = self.figure(calibration.figure(confirmed, study.model, study.title), f"{name}_calibration")
        display(figure)
        plt.close(figure)  # shown once, here, before the decision
        decision = calibration.decide(study, confirmed)
        prefix = macro_prefix(name)
        self.macro(f"{prefix}ClosestRecipe", decision.closest)
        self.macro(f"{prefix}RunnerUpRecipe", decision.other)
        self.macro(f"{prefix}CurvesClosestRecipe", decision.closest_curves)
        self.macro(f"{prefix}ClearlyCloser", "clearly" if decision.clearly else "not clearly")
        self.macro(f"{prefix}Recipe", decision.in_use or "none of the candidates")
        self.macro(f"{prefix}CalibrationSeeds", len(seeds))
        text = decision.sentence(study)
        display(Markdown(text if decision.settled else f"**{text}**"))
        if self._marked:
            reasons = sorted({reason for why in self._marked.values() for reason in why})
            display(Markdown(f"**{len(self._marked)} of these runs come from frozen/ and no longer match the code "
                             f"they would be trained with here: {' and '.join(reasons)} differ.** "
                             "`mnist-lab run --studies train` trains them here."))
        return decision

    def _wrote(self) -> None:
        """Tell the runner which runs this session read and which package modules it imported."""
        if self.under_runner:
            device = resolve_device(self.device)
            hook.record_session(self._runs, self._frozen, device, environment(device))
