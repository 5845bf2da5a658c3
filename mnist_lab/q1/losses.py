"""Q1's loss functions, written from the report's formulas, with figures of how each behaves.

Arguments follow PyTorch's order, prediction first and target second, so each function
can be set beside its torch counterpart:

    mse(ŷ, y)                          == F.mse_loss(ŷ, y)
    mae(ŷ, y)                          == F.l1_loss(ŷ, y)
    binary_cross_entropy(ŷ, y)         == F.binary_cross_entropy(ŷ, y)
    categorical_cross_entropy(softmax(z), y, reduction="mean")
                                       == F.cross_entropy(z, y) == F.nll_loss(log_softmax(z), y)

`reduction` is "mean" (the formula's 1/n), "sum" or "none" (one value per example), as in torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")

Loss = Callable[..., torch.Tensor]


def _reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    if reduction == "none":
        return per_example
    raise ValueError(f"unknown reduction {reduction!r}; choose one of: {', '.join(REDUCTIONS)}")


# ---- the four losses ----------------------------------------------------------------------

def mse(prediction: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error, (1/n) Σ_i (y_i − ŷ_i)². Equals `F.mse_loss(prediction, target)`."""
    return _reduce((target - prediction) ** 2, reduction)


def mae(prediction: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean absolute error, (1/n) Σ_i |y_i − ŷ_i|. Equals `F.l1_loss(prediction, target)`."""
    return _reduce((target - prediction).abs(), reduction)


def binary_cross_entropy(probability: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """−(1/n) Σ_i [y_i log ŷ_i + (1 − y_i) log(1 − ŷ_i)] for probabilities ŷ_i and labels y_i ∈ {0, 1}.

    Equals `F.binary_cross_entropy(probability, target)` (which takes probabilities; its
    sibling `F.binary_cross_entropy_with_logits` takes the scores before the sigmoid).
    """
    # As torch does, each log is clamped at −100: a probability of exactly 0 or 1 then gives a
    # large finite loss, and 0·log 0 gives 0 instead of 0·(−∞) = NaN.
    log_p = torch.log(probability).clamp(min=-100)
    log_not_p = torch.log(1 - probability).clamp(min=-100)
    return _reduce(-(target * log_p + (1 - target) * log_not_p), reduction)


def categorical_cross_entropy(probabilities: torch.Tensor, target: torch.Tensor,
                              reduction: str = "sum") -> torch.Tensor:
    """−Σ_i Σ_j y_ij log ŷ_ij over n examples and k classes, as the report writes it: a sum, no 1/n.

    probabilities: (n, k), each row a predicted distribution (a softmax output).
    target: (n,) class indices, or (n, k) indicators y_ij (one-hot; soft labels work too).
    reduction: "sum" is the report's formula; "mean" divides by n, which is what training
    minimises and what torch computes by default:

        categorical_cross_entropy(softmax(logits), y, reduction="mean")
            == F.cross_entropy(logits, y) == nn.CrossEntropyLoss()(logits, y)
            == F.nll_loss(torch.log(softmax(logits)), y)
        reduction="sum" equals the same calls with reduction="sum".

    F.cross_entropy takes the logits and applies log-softmax itself, which is more accurate
    than the log of a softmax when a probability underflows to 0.
    """
    if target.ndim == 1:
        target = F.one_hot(target, probabilities.shape[1]).to(probabilities.dtype)
    # xlogy(y, ŷ) = y·log ŷ with 0·log 0 = 0: the classes that are not the label contribute
    # nothing, even where their predicted probability is exactly 0.
    per_example = -torch.xlogy(target, probabilities).sum(dim=1)
    return _reduce(per_example, reduction)


# ---- checked against torch --------------------------------------------------------------------

def torch_comparison(seed: int = 0, n: int = 256, classes: int = 10) -> pd.DataFrame:
    """Each loss from its formula beside its torch call, on random data (float64, so that any
    difference beyond round-off would be a real one). One row per comparison."""
    generator = torch.Generator().manual_seed(seed)
    normal = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    prediction, value = normal(n), normal(n)
    probability = torch.rand(n, generator=generator, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    label = torch.randint(0, 2, (n,), generator=generator).double()
    logits = 3 * normal(n, classes)
    classes_true = torch.randint(0, classes, (n,), generator=generator)
    softmax = torch.softmax(logits, dim=1)
    rows = [
        ("MSE", mse(prediction, value), "F.mse_loss", F.mse_loss(prediction, value)),
        ("MAE", mae(prediction, value), "F.l1_loss", F.l1_loss(prediction, value)),
        ("BCE", binary_cross_entropy(probability, label), "F.binary_cross_entropy",
         F.binary_cross_entropy(probability, label)),
        ("CCE (mean)", categorical_cross_entropy(softmax, classes_true, reduction="mean"), "F.cross_entropy",
         F.cross_entropy(logits, classes_true)),
        ("CCE (mean)", categorical_cross_entropy(softmax, classes_true, reduction="mean"), "F.nll_loss of log softmax",
         F.nll_loss(torch.log_softmax(logits, dim=1), classes_true)),
        ("CCE (sum, the report's)", categorical_cross_entropy(softmax, classes_true), "F.cross_entropy, sum",
         F.cross_entropy(logits, classes_true, reduction="sum")),
    ]
    frame = pd.DataFrame([(name, ours.item(), call, theirs.item()) for name, ours, call, theirs in rows],
                         columns=["Loss", "From Formula", "Torch Call", "Torch"])
    frame["Difference"] = (frame["From Formula"] - frame["Torch"]).abs()
    return frame


# ---- one example: each loss against the prediction -----------------------------------------------

def loss_curves_figure(classes: int = 10) -> plt.Figure:
    """Each loss for a single example as its prediction varies, drawn with the functions above.

    Left: MSE and MAE against the error ŷ − y. Middle: BCE against ŷ for y = 1 and y = 0.
    Right: categorical cross-entropy against the probability given to the true class (the
    other classes share the rest; with one-hot targets only the true class counts).
    """
    fig, (regression, binary, categorical) = plt.subplots(1, 3, figsize=(11, 3.3))

    error = torch.linspace(-3, 3, 301, dtype=torch.float64)
    zero = torch.zeros_like(error)
    regression.plot(error.numpy(), mse(error, zero, reduction="none").numpy(), label="MSE: (ŷ − y)²")
    regression.plot(error.numpy(), mae(error, zero, reduction="none").numpy(), label="MAE: |ŷ − y|")
    regression.set_xlabel("error ŷ − y")
    regression.set_ylim(0, 4)
    regression.set_title("regression", fontsize=10)

    p = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    for label, text in ((1.0, "y = 1: −log ŷ"), (0.0, "y = 0: −log(1 − ŷ)")):
        per_point = binary_cross_entropy(p, torch.full_like(p, label), reduction="none")
        binary.plot(p.numpy(), per_point.numpy(), label=text)
    binary.set_xlabel("predicted probability ŷ")
    binary.set_ylim(0, 5)
    binary.set_title("binary cross-entropy", fontsize=10)

    others = ((1 - p) / (classes - 1))[:, None].expand(-1, classes - 1)
    distributions = torch.cat([p[:, None], others], dim=1)  # (points, classes); class 0 is the true one
    true_class = torch.zeros(len(p), dtype=torch.long)
    categorical.plot(p.numpy(), categorical_cross_entropy(distributions, true_class, reduction="none").numpy(),
                     label="−log ŷ(true class)")
    uniform = np.log(classes)
    categorical.plot([1 / classes], [uniform], "o", color="black",
                     label=f"uniform guess: log {classes} = {uniform:.2f}")
    categorical.set_xlabel(f"probability of the true class (of {classes})")
    categorical.set_ylim(0, 5)
    categorical.set_title("categorical cross-entropy", fontsize=10)

    for ax in (regression, binary, categorical):
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---- outliers: MSE against MAE ------------------------------------------------------------------

@dataclass(frozen=True)
class Line:
    slope: float
    intercept: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.slope * x + self.intercept

    def __str__(self) -> str:
        return f"y = {self.slope:.2f}x {'+' if self.intercept >= 0 else '−'} {abs(self.intercept):.2f}"


def outlier_data(n: int = 20, outliers: int = 2, seed: int = 0, shift: float = -12.0):
    """Points near the line y = 0.5x + 2 (x in [0, 10]), of which `outliers` lie `shift` off it.

    The outliers sit at large x, where a point has the most leverage on the slope.
    Returns x, y (float64) and a boolean mask of the outliers.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 10, n, dtype=torch.float64)
    y = 0.5 * x + 2 + 0.4 * torch.randn(n, generator=generator, dtype=torch.float64)
    is_outlier = torch.zeros(n, dtype=torch.bool)
    is_outlier[torch.arange(n - 2, n - 2 - 3 * outliers, -3)] = True  # every third point from the end
    y[is_outlier] += shift
    return x, y, is_outlier


def fit_line(x: torch.Tensor, y: torch.Tensor, loss: Loss, steps: int = 500) -> Line:
    """The line minimising `loss(line(x), y)`, found by gradient descent as a network is trained.

    Adam with a learning rate decaying to zero: MAE's gradient does not shrink near the
    minimum (it is ±1/n per point), so only a shrinking step lets it settle.
    """
    parameters = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([parameters], lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    for _ in range(steps):
        optimizer.zero_grad()
        loss(parameters[0] * x + parameters[1], y).backward()
        optimizer.step()
        schedule.step()
    slope, intercept = parameters.detach().tolist()
    return Line(slope, intercept)


REFERENCE = "MSE without the outliers"


def outlier_fits(x: torch.Tensor, y: torch.Tensor, is_outlier: torch.Tensor) -> dict[str, Line]:
    """Lines fitted by minimising MSE and MAE on all points, and MSE without the outliers (the reference)."""
    return {
        "MSE": fit_line(x, y, mse),
        "MAE": fit_line(x, y, mae),
        REFERENCE: fit_line(x[~is_outlier], y[~is_outlier], mse),
    }


def pull(x: torch.Tensor, y: torch.Tensor, line: Line, loss: Loss) -> torch.Tensor:
    """How hard each point pulls on the line's prediction there: |∂loss/∂ŷ_i| at `line`.

    For MSE it is 2|y_i − ŷ_i|/n, growing with the distance; for MAE it is 1/n for every
    point off the line, however far. That difference is MSE's sensitivity to outliers.
    """
    prediction = line(x).clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss(prediction, y), prediction)
    return gradient.abs()


def outlier_pull_share(x: torch.Tensor, y: torch.Tensor, is_outlier: torch.Tensor, line: Line, loss: Loss) -> float:
    """The fraction of the total pull (see `pull`) that comes from the outliers."""
    per_point = pull(x, y, line, loss)
    return (per_point[is_outlier].sum() / per_point.sum()).item()


def outliers_figure(x: torch.Tensor, y: torch.Tensor, is_outlier: torch.Tensor, fits: dict[str, Line]) -> plt.Figure:
    """Left: the data and the lines of `outlier_fits`. Right: each point's pull on the line
    (`pull`), measured at the line that fits the clean points: why MSE moves and MAE does not."""
    fig, (data, pulls) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.25, 1]})
    data.scatter(x[~is_outlier].numpy(), y[~is_outlier].numpy(), color="black", s=18, label="data", zorder=3)
    data.scatter(x[is_outlier].numpy(), y[is_outlier].numpy(), color="firebrick", s=30, marker="D", label="outliers",
                 zorder=3)
    styles = {"MSE": {"color": "tab:blue"}, "MAE": {"color": "tab:orange"},
              REFERENCE: {"color": "0.5", "linestyle": ":"}}
    for name, line in fits.items():
        points = ~is_outlier if name == REFERENCE else slice(None)
        loss = mae if name == "MAE" else mse
        value = loss(line(x[points]), y[points]).item()
        data.plot(x.numpy(), line(x).numpy(), label=f"{name}: {line} (loss {value:.2f})", **styles[name])
    data.set_xlabel("x")
    data.set_ylabel("y")
    data.set_title("lines fitted by minimising each loss", fontsize=10)
    data.legend(fontsize=7, loc="lower left")  # empty there: the points rise to the right, the outliers are far right
    data.grid(alpha=0.3)

    reference = fits[REFERENCE]
    width = 0.4 * (x[1] - x[0]).item()
    for offset, (name, loss) in zip((-width / 2, width / 2), (("MSE", mse), ("MAE", mae))):
        per_point = pull(x, y, reference, loss)
        share = 100 * outlier_pull_share(x, y, is_outlier, reference, loss)
        bars = pulls.bar((x + offset).numpy(), (100 * per_point / per_point.sum()).numpy(), width=width,
                         color=styles[name]["color"], label=f"{name}: the outliers pull with {share:.0f}%")
        for bar, outlier in zip(bars, is_outlier.tolist()):
            if outlier:
                bar.set_edgecolor("firebrick")
                bar.set_linewidth(1.5)
    pulls.set_xlabel("x of the point (outliers outlined in red)")
    pulls.set_ylabel("share of the total pull (%)")
    pulls.set_title("each point's pull |∂loss/∂ŷ| at the line fitted without the outliers", fontsize=9.5)
    pulls.legend(fontsize=8, loc="upper left")
    pulls.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
