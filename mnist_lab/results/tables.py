"""Tables in the report's shape, drawn from run directories (one run per seed)."""

from __future__ import annotations

import pandas as pd

from ..runs import Run


def by_epoch(runs: list[Run], column: str) -> pd.DataFrame:
    """(epochs × seeds) of one history column."""
    return pd.concat([run.history.set_index("epoch")[column] for run in runs], axis=1)


def _cell(values: pd.Series, digits: int, unit: str = "") -> str:
    """`0.1610` for one seed, `0.1610 ± 0.0042` for several (sample standard deviation)."""
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}{unit}"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}{unit}"


def history(runs: list[Run]) -> pd.DataFrame:
    """The report's table: Epoch, Loss, Train Accuracy, Test Accuracy (mean ± std over seeds)."""
    columns = {"Loss": ("train_loss", 4, ""), "Train Accuracy": ("train_accuracy", 2, "%"),
               "Test Accuracy": ("test_accuracy", 2, "%")}
    stacks = {title: by_epoch(runs, column) for title, (column, _, _) in columns.items()}
    epochs = stacks["Loss"].index
    rows = [
        {"Epoch": int(epoch), **{title: _cell(stacks[title].loc[epoch], digits, unit)
                                 for title, (_, digits, unit) in columns.items()}}
        for epoch in epochs
    ]
    return pd.DataFrame(rows)


def mean_at(runs: list[Run], column: str, position: int = -1) -> float:
    """The mean over seeds of `column` at one epoch (by position: 0 = first, -1 = last)."""
    return float(by_epoch(runs, column).iloc[position].mean())
