"""How close a recipe's runs come to the course report's own table, epoch by epoch.

The distance, fixed before any candidate was compared: for each column of the report's table
(training loss, training accuracy, test accuracy), the root mean square over the epochs of
(ours − the report's); per run, then mean ± standard deviation over the seeds. One number ranks
the candidates: the score, RMS loss in hundredths plus RMS training accuracy plus RMS test
accuracy in percentage points, so that a loss 0.01 off counts as much as an accuracy 1 point
off. A candidate is *clearly* closer than another when its mean score plus one standard
deviation is below the other's mean score minus one.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..experiments import get_experiment
from ..runs import Run
from .reference import REPORT_TABLES
from .tables import by_epoch

COLUMNS = {"train_loss": "Loss", "train_accuracy": "Train Accuracy", "test_accuracy": "Test Accuracy"}
SCORE_WEIGHTS = np.array([100.0, 1.0, 1.0])  # loss in hundredths, accuracies in points


def distances(run: Run, model: str) -> np.ndarray:
    """RMS of (ours − the report's) over the epochs both have, per column: loss, train acc, test acc."""
    report = np.array(REPORT_TABLES[model])
    ours = run.history[list(COLUMNS)].to_numpy()
    epochs = min(len(ours), len(report))
    return np.sqrt(((ours[:epochs] - report[:epochs]) ** 2).mean(axis=0))


def scores(runs: list[Run], model: str) -> np.ndarray:
    return np.array([distances(run, model) @ SCORE_WEIGHTS for run in runs])


def screening(name: str, epochs: int) -> str:
    """The variant of experiment `name` cut to its first `epochs` epochs: `vit[hflip=true]` → `vit[epochs=3,hflip=true]`."""
    base, _, rest = name.partition("[")
    overrides = rest.removesuffix("]")
    return get_experiment(f"{base}[{overrides + ',' if overrides else ''}epochs={epochs}]").name


def same_recipe(a: str, b: str) -> bool:
    """Whether two experiment names train the same recipe (a variant may spell out its base's values)."""
    return get_experiment(a).replace(name="") == get_experiment(b).replace(name="")


def _spread(values: np.ndarray, digits: int) -> str:
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def table(candidates: dict[str, list[Run]], model: str) -> pd.DataFrame:
    """One row per candidate: each column's RMS distance and the score, mean ± std over seeds."""
    rows = []
    for label, runs in candidates.items():
        per_run = np.array([distances(run, model) for run in runs])
        rows.append({"Recipe": label, "Seeds": len(runs), "Epochs": len(runs[0].history),
                     "RMS Loss": _spread(per_run[:, 0], 3), "RMS Train Acc.": _spread(per_run[:, 1], 2),
                     "RMS Test Acc.": _spread(per_run[:, 2], 2), "Score": _spread(scores(runs, model), 2)})
    return pd.DataFrame(rows)


def ranked(candidates: dict[str, list[Run]], model: str) -> list[str]:
    """The candidates' labels, closest first (by mean score)."""
    return sorted(candidates, key=lambda label: scores(candidates[label], model).mean())


def clearly_closer(a: list[Run], b: list[Run], model: str) -> bool:
    """Whether `a` is closer than `b` beyond the seed-to-seed spread (the rule above)."""
    sa, sb = scores(a, model), scores(b, model)
    spread = lambda s: s.std(ddof=1) if len(s) > 1 else 0.0  # noqa: E731
    return sa.mean() + spread(sa) < sb.mean() - spread(sb)


def figure(candidates: dict[str, list[Run]], model: str, title: str) -> plt.Figure:
    """Each candidate's curves (mean over seeds, ± one std) beside the report's, one panel per column."""
    report = np.array(REPORT_TABLES[model])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (column, name) in zip(axes, COLUMNS.items()):
        for label, runs in candidates.items():
            stack = by_epoch(runs, column)
            mean, std = stack.mean(axis=1), stack.std(axis=1).fillna(0)
            ax.plot(mean.index, mean, marker="o", markersize=3, label=label)
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.15)
        index = list(COLUMNS).index(column)
        ax.plot(range(1, len(report) + 1), report[:, index], "k:", marker="s", markersize=4, label="the report")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.subplots_adjust(top=0.8, wspace=0.25)  # room for the title above the panels' own
    return fig
