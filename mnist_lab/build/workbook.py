"""What a notebook calls: training runs by name, and figures, tables and macros written for LaTeX.

    wb = Workbook("q2_cnn", profile=profile, device=device, seeds=seeds)
    runs = wb.runs("cnn")                   # trained once, then read from disk
    wb.figure(figures.loss_curve(runs), "cnn_loss")
    wb.table(tables.history(runs), "cnn_history")
    wb.macro("CnnTestAccuracy", "98.95")

Outputs go to artifacts/<profile>/: a smoke run never overwrites the full run's files. Under
the runner (`mnist-lab run`) they go to its staging folder first, and reach artifacts/ all
together only when the whole notebook has run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
from pandas.io.formats.style import Styler

from .. import paths
from ..data import Mnist, load_mnist
from ..device import check_name as check_device_name
from ..device import environment, resolve_device
from ..errors import LabError
from ..experiments import Experiment, get_experiment
from ..files import atomic_path, write_json, write_text
from ..profiles import check_seeds, get_profile
from . import provenance
from .notebooks import PROGRESS_FILE, SESSION_FILE, STAGING_VARIABLE

if TYPE_CHECKING:
    from ..runs import Run

# Vector PDFs that journals accept (TrueType, not Type 3, fonts) and that are byte-stable
# across re-runs (no creation date).
FIGURE_STYLE = {"pdf.fonttype": 42, "ps.fonttype": 42, "figure.dpi": 100, "savefig.bbox": "tight"}
PDF_METADATA = {"CreationDate": None, "Creator": None, "Producer": None}
PNG_METADATA = {"Software": None}


def macro_prefix(experiment_name: str) -> str:
    """basic_cnn -> BasicCnn: LaTeX macro names have letters only."""
    return "".join(part.capitalize() for part in experiment_name.split("_"))


def latex_integer(value: float) -> str:
    """12345.6 -> 12{,}346: thousands separated, without LaTeX's extra space after a comma."""
    return f"{value:,.0f}".replace(",", "{,}")


class Workbook:
    def __init__(self, notebook: str, *, profile: str = "smoke", device: str = "auto", seeds=(0,)):
        self.notebook = notebook
        self.profile = get_profile(profile)
        check_device_name(device)
        self.device = device
        self.seeds = check_seeds(seeds)
        self.directory = paths.profile_dir(self.profile.name)  # the training runs' cache
        # Under the runner, figures, tables and macros wait in its staging folder until the whole
        # notebook has succeeded; explored by hand, they are written in place.
        staging = os.environ.get(STAGING_VARIABLE)
        self.outputs = Path(staging) if staging else self.directory
        self._macros: dict[str, str] = {}
        self._runs: dict[str, str] = {}  # the training runs this session used, for the runner's record
        matplotlib.rcParams.update(FIGURE_STYLE)

    @cached_property
    def data(self) -> Mnist:
        return load_mnist()

    # ---- training runs -------------------------------------------------------------

    def runs(self, experiment_name: str, seeds: list[int] | None = None) -> list[Run]:
        """One run per seed (the notebook's, or those given) of the named experiment under this profile."""
        return [self.run(experiment_name, seed) for seed in (check_seeds(seeds) if seeds else self.seeds)]

    def recipe(self, experiment_name: str) -> Experiment:
        """The experiment as this profile trains it (the smoke profile caps the epochs)."""
        return self.profile.apply(get_experiment(experiment_name))

    def run(self, experiment_name: str, seed: int = 0) -> Run:
        """Train the experiment, or read the saved run if its inputs have not changed."""
        # Imported here: a notebook that trains nothing does not go stale when the trainer changes.
        from ..machine import cpu_slot
        from ..runs import load_run, run_directory, save_run, training_record
        from ..train import fit

        experiment = self.recipe(experiment_name)
        device = resolve_device(self.device)
        key = training_record(experiment, seed, device=str(device), limit_train=self.profile.limit_train,
                              limit_test=self.profile.limit_test)["fingerprint"]
        directory = run_directory(self.directory / "runs", experiment.name, seed)
        cached = provenance.read_run_record(directory)
        # A run is used only as its record says it was written: a cut or replaced file retrains it.
        if cached is None or cached["fingerprint"] != key or provenance.run_file_problems(directory):
            # An interrupted run left its last completed epoch here; fit() resumes from it.
            checkpoint = directory.parent / f".{directory.name}.{key[:12]}.checkpoint.pt"
            on_cpu = device.type == "cpu"  # one CPU training per machine; the runner's terminal says who waits
            with cpu_slot(f"{experiment.name} seed {seed}", announce=self._say) if on_cpu else contextlib.nullcontext():
                result = fit(experiment, seed=seed, device=self.device, limit_train=self.profile.limit_train,
                             limit_test=self.profile.limit_test, data=self.data, checkpoint=checkpoint,
                             **self._progress(experiment, seed))
            save_run(result, directory)
            checkpoint.unlink()
        self._runs[str(directory.relative_to(self.directory))] = key
        self._record_session()
        return load_run(directory)

    def _say(self, line: str) -> None:
        """A line for the runner's terminal (explored by hand: the cell's output)."""
        if self.outputs == self.directory:
            print(line, file=sys.stderr, flush=True)
            return
        with open(self.outputs / PROGRESS_FILE, "a") as log:
            log.write(line + "\n")

    def _progress(self, experiment: Experiment, seed: int) -> dict:
        """Under the runner: text progress bars (the kept notebook shows where they ended) and one
        line per finished epoch for the runner to print on the terminal. Explored by hand: as fit has it."""
        if self.outputs == self.directory:
            return {}
        from tqdm.std import tqdm

        images = self.profile.limit_train or len(self.data.train)
        seconds: list[float] = []

        def report(row: dict) -> None:
            seconds.append(row["seconds"])
            left = sum(seconds) / len(seconds) * (experiment.epochs - row["epoch"])
            line = (f"{experiment.name} seed {seed}: epoch {row['epoch']}/{experiment.epochs}, "
                    f"{images / row['train_seconds']:,.0f} images/s, loss {row['train_loss']:.4f}, "
                    f"test accuracy {row['test_accuracy']:.2f}%, {left:.0f} s left")
            with open(self.outputs / PROGRESS_FILE, "a") as log:
                log.write(line + "\n")

        # Drawn only when closed: each epoch leaves one line, its final state, in the kept notebook.
        return {"bar": functools.partial(tqdm, delay=float("inf")), "on_epoch_end": report}

    def summarize(self, experiment_name: str) -> list[Run]:
        """The experiment's runs, with their headline numbers written as macros and printed.

        Macros are named after the experiment: basic_cnn gives \\BasicCnnTestAccuracy,
        \\BasicCnnEpochs, \\BasicCnnParameters, ... (means over the seeds).
        """
        from ..results.reference import report_final_test_accuracy
        from ..results.tables import mean_at

        runs = self.runs(experiment_name)
        prefix = macro_prefix(experiment_name)
        epochs = len(runs[0].history)
        self.macro(f"{prefix}TestAccuracy", f"{mean_at(runs, 'test_accuracy'):.2f}")
        self.macro(f"{prefix}TrainAccuracy", f"{mean_at(runs, 'train_accuracy'):.2f}")
        self.macro(f"{prefix}FirstLoss", f"{mean_at(runs, 'train_loss', 0):.4f}")
        self.macro(f"{prefix}LastLoss", f"{mean_at(runs, 'train_loss'):.4f}")
        self.macro(f"{prefix}Epochs", epochs)
        self.macro(f"{prefix}Parameters", latex_integer(runs[0].metrics["parameters"]))
        model = runs[0].config["experiment"]["model"]
        print(f"{experiment_name}: test accuracy {mean_at(runs, 'test_accuracy'):.2f}% after {epochs} epochs, "
              f"mean of {len(runs)} seed(s) (the report: {report_final_test_accuracy(model):.2f}%)")
        return runs

    # ---- outputs for LaTeX -----------------------------------------------------------

    def figure(self, fig: plt.Figure, name: str) -> plt.Figure:
        """Save `fig` as figures/<name>.pdf (for LaTeX) and .png (for people); return it for display."""
        for suffix, metadata in ((".pdf", PDF_METADATA), (".png", PNG_METADATA)):
            target = self._path("figures", f"{name}{suffix}")
            with atomic_path(target) as temporary:
                fig.savefig(temporary, format=suffix[1:], metadata=metadata, dpi=150)
            self._record_session()
        return fig

    def table(self, frame: pd.DataFrame, name: str, **format_kwargs) -> Styler:
        """Save `frame` as tables/<name>.csv and a booktabs tables/<name>.tex; return it styled
        for display as the report prints it (formatted, without pandas' index column).

        format_kwargs go to `Styler.format` (e.g. precision=4); text is escaped for LaTeX.
        """
        format_kwargs.setdefault("escape", "latex")
        with atomic_path(self._path("tables", f"{name}.csv")) as temporary:
            frame.to_csv(temporary, index=False)
        styler = frame.style.hide(axis="index").format(**format_kwargs)
        latex = styler.format_index(escape="latex", axis="columns").to_latex(
            hrules=True, column_format="r" * len(frame.columns)
        )
        write_text(self._path("tables", f"{name}.tex"), latex)
        self._record_session()
        return frame.style.hide(axis="index").format(**{**format_kwargs, "escape": "html"})

    def macro(self, name: str, value) -> None:
        """Define \\<name> in macros/<notebook>.tex: prose quotes results through these, never by hand."""
        if not name.isalpha():
            raise LabError(f"a LaTeX macro name has letters only, got {name!r}")
        self._macros[name] = str(value)
        lines = [f"% Generated by notebooks/{self.notebook}.ipynb (profile {self.profile.name}); do not edit."]
        lines += [f"\\newcommand{{\\{key}}}{{{text}}}" for key, text in sorted(self._macros.items())]
        write_text(self._path("macros", f"{self.notebook}.tex"), "\n".join(lines) + "\n")
        self._record_session()

    def _record_session(self) -> None:
        """Tell the runner which runs this session used and which package modules it imported
        (what it wrote, the runner sees in its staging folder)."""
        if self.outputs == self.directory:
            return  # not under the runner
        modules = sorted(
            str(Path(module.__file__).resolve().relative_to(paths.ROOT))
            for name, module in list(sys.modules.items())
            if name.startswith("mnist_lab") and getattr(module, "__file__", None)
        )
        device = resolve_device(self.device)
        write_json(self.outputs / SESSION_FILE, {"runs": self._runs, "modules": modules, "device": str(device),
                                                  "environment": environment(device)})

    def _path(self, kind: str, filename: str) -> Path:
        path = self.outputs / kind / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
