"""Q1's convolution: the report's formula written out, hand-made kernels, and its Figures 1 and 2.

The report defines a convolutional layer's output as

    O(i, j) = Σ_p Σ_q K(p, q) · I(i + p, j + q),   p < m, q < n  (kernel m × n)

which is "valid" cross-correlation: no padding, and the kernel is not flipped (a
mathematician's convolution would flip it). It is exactly what `torch.nn.functional.conv2d`
computes, and the notebook checks the two against each other on real digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle
from torch import nn

from ..data import Split, normalize
from ..results.figures import DIGIT_CMAP

RESPONSE_CMAP = "RdBu_r"  # signed responses: red positive, blue negative, white zero

# Named 3×3 kernels, as classic image processing designed them by hand. In MNIST the ink is
# bright (255) on a black (0) background, which fixes the sign of each response.
CLASSIC_KERNELS: dict[str, torch.Tensor] = {
    # Sobel x: brightness growing to the right. Positive on a stroke's left edge, negative
    # on its right edge, zero where the image is flat: it finds vertical edges.
    "vertical edge (Sobel x)": torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]),
    # Sobel y, the same turned by 90°: brightness growing downwards, i.e. horizontal edges.
    "horizontal edge (Sobel y)": torch.tensor([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]),
    # The mean of the window: smooths, and thickens thin strokes.
    "box blur": torch.full((3, 3), 1.0 / 9.0),
    # A weighted mean that favours the centre: smooths with less smearing than the box.
    "Gaussian blur": torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0,
    # The pixel plus its difference from its four neighbours: boosts local contrast. Its
    # weights sum to 1, so flat regions keep their value.
    "sharpen": torch.tensor([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]]),
    # Laplacian: the centre against all eight neighbours. Its weights sum to 0, so flat
    # regions (inside a stroke or in the background) vanish and only outlines remain.
    "outline (Laplacian)": torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]]),
}


# ---- the operation -----------------------------------------------------------------------

def conv2d_from_formula(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """O(i, j) = Σ_p Σ_q K(p, q)·I(i+p, j+q) for a 2-D image (H, W) and kernel (m, n).

    Returns the (H - m + 1, W - n + 1) feature map: the positions where the kernel fits
    inside the image entirely (no padding).
    """
    if image.ndim != 2 or kernel.ndim != 2:
        raise ValueError(f"expected a 2-D image and a 2-D kernel, "
                         f"got shapes {tuple(image.shape)} and {tuple(kernel.shape)}")
    (height, width), (m, n) = image.shape, kernel.shape
    if m > height or n > width:
        raise ValueError(f"a {m}×{n} kernel does not fit in a {height}×{width} image")
    out_height, out_width = height - m + 1, width - n + 1
    output = torch.zeros(out_height, out_width, dtype=torch.result_type(image, kernel), device=image.device)
    # The formula's double sum, one term (p, q) at a time. For a fixed offset (p, q) the term
    # K(p, q)·I(i+p, j+q) for every output position (i, j) at once is the weight K(p, q)
    # times the image shifted up by p and left by q: the slice starting at row p, column q.
    for p in range(m):
        for q in range(n):
            output += kernel[p, q] * image[p : p + out_height, q : q + out_width]
    return output


def conv2d_with_torch(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The same feature map from PyTorch's convolution layer function (which does not flip the kernel)."""
    # conv2d wants batch and channel axes: (1, 1, H, W) input, (1, 1, m, n) weight.
    return F.conv2d(image[None, None], kernel[None, None].to(image.dtype))[0, 0]


def max_difference_to_torch(images: torch.Tensor, kernels: dict[str, torch.Tensor]) -> float:
    """The largest |from-formula − conv2d| over every image (N, H, W) and every kernel."""
    return max(
        (conv2d_from_formula(image, kernel) - conv2d_with_torch(image, kernel)).abs().max().item()
        for image in images
        for kernel in kernels.values()
    )


def example_digits(split: Split, digits=(0, 4, 7)) -> tuple[torch.Tensor, list[int]]:
    """The first image of each requested digit in `split`, as float pixels in [0, 1]: (len(digits), 28, 28)."""
    indices = [int((split.labels == digit).nonzero()[0]) for digit in digits]
    return split.images[indices].float() / 255, list(digits)


# ---- Figure 2: one kernel position, step by step -------------------------------------------

def kernel_sliding_figure(image: torch.Tensor, kernel: torch.Tensor, position: tuple[int, int]) -> plt.Figure:
    """The report's Figure 2: the window under the kernel at `position`, the kernel, their
    element-wise products, and the sum of those products as one value of the feature map.

    `image` should be small (say 8×8, a crop of a digit) so that every number is legible;
    `position` = (i, j) is the feature-map position shown, i.e. the window's top-left pixel.
    """
    image, kernel = image.double(), kernel.double()
    output = conv2d_from_formula(image, kernel)
    (m, n), (i, j) = kernel.shape, position
    if not (0 <= i < output.shape[0] and 0 <= j < output.shape[1]):
        raise ValueError(f"position {position} is outside the {tuple(output.shape)} feature map")
    products = kernel * image[i : i + m, j : j + n]

    widths = [image.shape[1], n, n, output.shape[1]]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.6), gridspec_kw={"width_ratios": widths, "wspace": 0.35})
    _number_grid(axes[0], image, DIGIT_CMAP, Normalize(0, image.max().item() or 1.0))
    _number_grid(axes[1], kernel, RESPONSE_CMAP, _symmetric(kernel))
    _number_grid(axes[2], products, RESPONSE_CMAP, _symmetric(products))
    _number_grid(axes[3], output, RESPONSE_CMAP, _symmetric(output))
    _outline(axes[0], i, j, m, n)
    _outline(axes[3], i, j, 1, 1)
    axes[0].set_title(f"input I ({image.shape[0]}×{image.shape[1]} crop)\nwindow at (i, j) = ({i}, {j})", fontsize=9)
    axes[1].set_title(f"kernel K ({m}×{n})", fontsize=9)
    axes[2].set_title(f"K(p, q) · I(i+p, j+q)\nsum = {_number(output[i, j].item())}", fontsize=9)
    axes[3].set_title(f"feature map O ({output.shape[0]}×{output.shape[1]})\n"
                      f"O({i}, {j}) = {_number(output[i, j].item())}", fontsize=9)
    # The operators between the panels read as the formula: window ⊙ kernel, then Σ into O(i, j).
    for ax in axes:
        ax.apply_aspect()  # square cells shrink the panels; place the operators between what is drawn
    for left, right, symbol in ((axes[0], axes[1], "⊙"), (axes[1], axes[2], "="), (axes[2], axes[3], "Σ →")):
        x = (left.get_position().x1 + right.get_position().x0) / 2
        fig.text(x, 0.5, symbol, ha="center", va="center", fontsize=16)
    return fig


def _number(value: float) -> str:
    """Integers without decimals, everything else with two: pixel sums stay exact, weights stay short."""
    value = float(value) + 0.0  # −0.0 (a zero weight times a pixel) prints as 0
    return f"{value:.0f}" if value.is_integer() else f"{value:.2f}"


def _number_grid(ax, values: torch.Tensor, cmap: str, norm: Normalize, label=None, font: float | None = None) -> None:
    """A heat map with each cell's value written in it, in black or white, whichever reads."""
    label = label or _number
    values = values.detach().cpu().numpy()
    ax.imshow(values, cmap=cmap, norm=norm)
    colormap = plt.get_cmap(cmap)
    font = font or (8 if max(values.shape) <= 6 else 6.5)
    for (row, column), value in np.ndenumerate(values):
        red, green, blue, _ = colormap(norm(value))
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # perceived luminance
        ax.text(column, row, label(value), ha="center", va="center", fontsize=font,
                color="white" if dark else "black")
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]))
    ax.tick_params(length=0, labelsize=7)
    # Thin grid lines between cells, so that each number has its own box.
    ax.set_xticks(np.arange(-0.5, values.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, values.shape[0]), minor=True)
    ax.grid(which="minor", color="0.75", linewidth=0.5)
    ax.tick_params(which="minor", length=0)


def _symmetric(values: torch.Tensor) -> Normalize:
    """A colour scale centred on zero, so that white means 0 and the two signs get equal room."""
    limit = values.abs().max().item() or 1.0
    return Normalize(-limit, limit)


def _outline(ax, row: int, column: int, height: int, width: int) -> None:
    ax.add_patch(Rectangle((column - 0.5, row - 0.5), width, height, fill=False, edgecolor="orange", linewidth=2.5))


# ---- hand-made kernels on real digits --------------------------------------------------

def classic_kernels_figure(images: torch.Tensor, kernels: dict[str, torch.Tensor]) -> plt.Figure:
    """Each kernel (top row, its weights) applied to each digit (one row per image, (N, H, W)).

    A column shares one colour scale, so the same kernel's responses compare across digits.
    """
    rows, columns = 1 + len(images), 1 + len(kernels)
    fig, axes = plt.subplots(rows, columns, figsize=(1.55 * columns, 1.55 * rows), squeeze=False)
    axes[0, 0].axis("off")
    for row, image in enumerate(images, 1):
        axes[row, 0].imshow(image.numpy(), cmap=DIGIT_CMAP)
    axes[1, 0].set_title("input", fontsize=8)
    for column, (name, kernel) in enumerate(kernels.items(), 1):
        _number_grid(axes[0, column], kernel, RESPONSE_CMAP, _symmetric(kernel), label=_fraction, font=7)
        axes[0, column].set_title(name, fontsize=7.5)
        maps = [conv2d_from_formula(image, kernel) for image in images]
        norm = _symmetric(torch.stack(maps))
        for row, feature_map in enumerate(maps, 1):
            axes[row, column].imshow(feature_map.numpy(), cmap=RESPONSE_CMAP, norm=norm)
    for ax in axes.flat:
        ax.set_xticks([], minor=False)
        ax.set_yticks([], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_yticks([], minor=True)
    fig.tight_layout()
    fig.text(0.5, 0.0, "feature maps: red positive, blue negative, white zero (one scale per column)",
             ha="center", va="top", fontsize=8)
    return fig


def _fraction(value: float) -> str:
    """Kernel weights as people write them: 1/9, not 0.11."""
    return str(Fraction(float(value)).limit_denominator(16))


# ---- Figure 1: one digit through the basic CNN ---------------------------------------------

@dataclass(frozen=True)
class Stages:
    """What the basic CNN makes of one digit, stage by stage."""

    activated: torch.Tensor  # (32, 28, 28): after the convolution and ReLU
    pooled: torch.Tensor  # (32, 14, 14): after 2×2 max pooling
    probabilities: torch.Tensor  # (10,): softmax of the class scores


@torch.no_grad()
def pipeline_stages(model: nn.Module, image: torch.Tensor) -> Stages:
    """`BasicCNN.forward` step by step for one (28, 28) uint8 digit as stored in `Split.images`."""
    model = model.eval().cpu()
    x = normalize(image.float()[None, None] / 255)  # (1, 1, 28, 28), standardized as in training
    activated = torch.relu(model.conv(x))  # (1, 32, 28, 28)
    pooled = model.pool(activated)  # (1, 32, 14, 14)
    scores = model.fc2(torch.relu(model.fc1(pooled.flatten(1))))  # (1, 10)
    return Stages(activated[0], pooled[0], torch.softmax(scores, dim=1)[0])


def cnn_pipeline_figure(model: nn.Module, image: torch.Tensor, label: int, *, maps: int = 4) -> plt.Figure:
    """The report's Figure 1 for the basic CNN: the input, `maps` feature maps after the
    convolution and ReLU, the same maps after max pooling, and the predicted class probabilities.

    `image` is one (28, 28) uint8 digit as stored in `Split.images`; the model must have the
    basic CNN's `conv`, `pool`, `fc1` and `fc2`.
    """
    stages = pipeline_stages(model, image)
    probabilities = stages.probabilities
    # The maps that vary most across this digit: many filters answer mostly to the flat
    # background (a bias), and an almost uniform panel explains nothing.
    shown = stages.activated.flatten(1).std(dim=1).argsort(descending=True)[:maps].tolist()

    fig = plt.figure(figsize=(2.0 * (maps + 3), 4.2))
    grid = fig.add_gridspec(2, maps + 2, width_ratios=[1.4] + [1] * maps + [2.2], wspace=0.25, hspace=0.35)
    ax_input = fig.add_subplot(grid[:, 0])
    ax_input.imshow(image.numpy(), cmap=DIGIT_CMAP)
    ax_input.set_title(f"input (digit {label})\n{image.shape[0]}×{image.shape[1]}", fontsize=9)
    ax_input.set_xticks([])
    ax_input.set_yticks([])
    rows = ((stages.activated, f"conv 3×3 + ReLU\n{stages.activated.shape[1]}×{stages.activated.shape[2]}"),
            (stages.pooled, f"max pool 2×2\n{stages.pooled.shape[1]}×{stages.pooled.shape[2]}"))
    for row, (feature_maps, stage) in enumerate(rows):
        for column, channel in enumerate(shown, 1):
            ax = fig.add_subplot(grid[row, column])
            # ReLU outputs: no negative side to show. One scale per map for both stages, since
            # max pooling keeps the map's largest values.
            brightest = stages.activated[channel].max().item() or 1.0
            ax.imshow(feature_maps[channel].numpy(), cmap="magma", vmin=0, vmax=brightest)
            ax.set_title(f"map {channel}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 1:
                ax.set_ylabel(stage, fontsize=8)

    ax_scores = fig.add_subplot(grid[:, -1])
    colors = ["tab:green" if digit == label else "tab:gray" for digit in range(len(probabilities))]
    ax_scores.barh(range(len(probabilities)), probabilities.numpy(), color=colors)
    ax_scores.set_yticks(range(len(probabilities)))
    ax_scores.invert_yaxis()  # digit 0 at the top
    ax_scores.set_xlim(0, 1)
    ax_scores.set_xlabel("softmax probability")
    ax_scores.set_ylabel("class")
    ax_scores.set_title(f"fully connected → softmax\npredicted {int(probabilities.argmax())} "
                        f"({100 * probabilities.max().item():.1f}%)", fontsize=9)
    ax_scores.grid(axis="x", alpha=0.3)
    return fig


@torch.no_grad()
def conv_layer_from_formula(layer: nn.Conv2d, image: torch.Tensor) -> torch.Tensor:
    """A one-channel, stride-1 `nn.Conv2d` rebuilt from the formula: zero padding, then each
    of its kernels applied with `conv2d_from_formula`, plus that kernel's bias.

    `image` is (H, W); returns (out_channels, H', W'), what `layer(image[None, None])[0]` gives.
    """
    if layer.in_channels != 1 or layer.stride != (1, 1) or layer.dilation != (1, 1) or layer.groups != 1:
        raise ValueError("only one input channel, stride 1, no dilation and no groups follow the formula as written")
    rows, columns = layer.padding
    padded = F.pad(image, (columns, columns, rows, rows))  # zeros around the image, as the layer pads
    bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_channels)
    return torch.stack([conv2d_from_formula(padded, kernel[0]) + b for kernel, b in zip(layer.weight, bias)])
