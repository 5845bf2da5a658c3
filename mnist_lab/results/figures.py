"""The report's figures for Q2 and Q3, drawn from run directories.

Each function returns a matplotlib Figure; `Workbook.figure` saves it for LaTeX.
Curves over several seeds show the mean with a band of ± one standard deviation.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import EngFormatter
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from .reference import REPORT_TABLES
from ..runs import Run
from .tables import by_epoch

DIGIT_CMAP = "gray_r"  # dark ink on white paper, as digits print best


def _band(ax, runs: list[Run], column: str, label: str, **style) -> None:
    stack = by_epoch(runs, column)
    mean, std = stack.mean(axis=1), stack.std(axis=1).fillna(0)
    ax.plot(mean.index, mean, marker="o", label=label, **style)
    if len(runs) > 1:
        ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2, **style)


def _epoch_axis(ax, runs: list[Run]) -> None:
    ax.set_xlabel("epoch")
    ax.set_xticks(runs[0].history["epoch"])
    ax.grid(alpha=0.3)


def loss_curve(runs: list[Run], title: str) -> plt.Figure:
    """Training and test loss per epoch (the report's Figures 3, 6 and 9)."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    _band(ax, runs, "train_loss", "training loss")
    _band(ax, runs, "test_loss", "test loss", linestyle="--")
    _epoch_axis(ax, runs)
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    ax.legend()
    return fig


def loss_and_accuracy(runs: list[Run], title: str) -> plt.Figure:
    """Loss and accuracy side by side (the report's Figure 10)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    _band(left, runs, "train_loss", "training loss")
    _band(left, runs, "test_loss", "test loss", linestyle="--")
    left.set_ylabel("cross-entropy loss")
    _band(right, runs, "train_accuracy", "training accuracy")
    _band(right, runs, "test_accuracy", "test accuracy", linestyle="--")
    right.set_ylabel("accuracy (%)")
    for ax in (left, right):
        _epoch_axis(ax, runs)
        ax.legend()
    fig.suptitle(title)
    return fig


def confusion_matrix(run: Run) -> np.ndarray:
    """10×10 counts: row = true digit, column = predicted digit."""
    counts = np.zeros((10, 10), dtype=int)
    np.add.at(counts, (run.predictions["label"], run.predictions["prediction"]), 1)
    return counts


def confusion(run: Run, title: str) -> plt.Figure:
    """The confusion matrix on the test set (the report's Figures 4 and 7)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    sns.heatmap(confusion_matrix(run), annot=True, fmt="d", cmap="Blues", cbar=False, square=True, ax=ax,
                annot_kws={"fontsize": 7})
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title)
    return fig


def samples(images: torch.Tensor, run: Run, *, correct: bool, count: int = 10, title: str = "") -> plt.Figure:
    """The first `count` test digits the model got right (Figures 5 and 8) or wrong."""
    predictions = run.predictions
    hits = predictions.index[(predictions["label"] == predictions["prediction"]) == correct][:count]
    columns = 5
    rows = max(1, -(-len(hits) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, hits):
        ax.imshow(images[index], cmap=DIGIT_CMAP)
        label, predicted = predictions.loc[index, ["label", "prediction"]]
        ax.set_title(f"true {label}, pred {predicted}", fontsize=8, color="black" if correct else "firebrick")
    fig.suptitle(title)
    return fig


def per_class_accuracy(runs_by_model: dict[str, Run]) -> plt.Figure:
    """Test accuracy for each digit, one bar per model."""
    frame = pd.DataFrame({
        name: run.predictions.assign(hit=run.predictions["label"] == run.predictions["prediction"])
        .groupby("label")["hit"].mean() * 100
        for name, run in runs_by_model.items()
    })
    fig, ax = plt.subplots(figsize=(8, 3.4))
    frame.plot.bar(ax=ax, width=0.8)
    ax.set_xlabel("digit")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0, frame.min().min() - 5), 100)
    ax.legend(ncols=len(runs_by_model), fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    ax.tick_params(axis="x", rotation=0)
    return fig


def ablation(runs_by_recipe: dict[str, list[Run]], report_model: str) -> plt.Figure:
    """Test accuracy per epoch for each augmentation recipe, beside the report's own numbers."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for recipe, runs in runs_by_recipe.items():
        _band(ax, runs, "test_accuracy", recipe)
    report = REPORT_TABLES[report_model]
    ax.plot(range(1, len(report) + 1), [row[2] for row in report], "k:", marker="s", label="the report's Table 2")
    _epoch_axis(ax, next(iter(runs_by_recipe.values())))
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    return fig


def comparison(frame: pd.DataFrame) -> plt.Figure:
    """The four models side by side, one panel per measure of `compare.comparison_table`."""
    measures = ["Test Accuracy (%)", "Parameters", "MFLOPs per Image", "Training Images/s", "Inference Images/s"]
    fig, axes = plt.subplots(1, len(measures), figsize=(13, 3))
    colors = sns.color_palette(n_colors=len(frame))
    for ax, measure in zip(axes, measures):
        ax.bar(frame["Model"], frame[measure], color=colors)
        ax.yaxis.set_major_formatter(EngFormatter())  # 800k, not 800000
        ax.set_title(measure, fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    low = frame["Test Accuracy (%)"].min()
    axes[0].set_ylim(max(0, low - 5), 100)
    return fig


def misclassified(images: torch.Tensor, runs_by_model: dict[str, Run], count: int = 6) -> plt.Figure:
    """The first `count` test digits each model gets wrong, one row per model."""
    fig, axes = plt.subplots(len(runs_by_model), count, figsize=(count * 1.2, len(runs_by_model) * 1.45),
                             squeeze=False)
    for row, (name, run) in zip(axes, runs_by_model.items()):
        predictions = run.predictions
        wrong = predictions.index[predictions["label"] != predictions["prediction"]][:count]
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax, index in zip(row, wrong):
            ax.imshow(images[index], cmap=DIGIT_CMAP)
            ax.set_title(f"true {predictions.loc[index, 'label']}, pred {predictions.loc[index, 'prediction']}",
                         fontsize=7, color="firebrick")
        row[0].set_ylabel(name, fontsize=9)
    return fig
