"""Q1: the from-formula convolution and losses against PyTorch, the figures, and the two notebooks."""

import itertools

import matplotlib.pyplot as plt
import nbformat
import pytest
import torch
import torch.nn.functional as F

from mnist_lab import paths
from mnist_lab.workbook import notebooks
from mnist_lab.q1 import convolution, losses
from mnist_lab.q1.convolution import CLASSIC_KERNELS, conv2d_from_formula
from mnist_lab.data import normalize
from mnist_lab.models import create_model

Q1_FIGURES = {
    "q1_convolution": ["q1_cnn_pipeline", "q1_kernel_sliding", "q1_classic_kernels"],
    "q1_losses": ["q1_losses", "q1_outliers"],
}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# ---- convolution ------------------------------------------------------------------------------

@pytest.mark.parametrize("image_shape, kernel_shape", [((28, 28), (3, 3)), ((9, 13), (2, 5)), ((5, 5), (5, 5)),
                                                       ((7, 4), (1, 1))])
def test_conv_from_formula_equals_conv2d_on_random_inputs(image_shape, kernel_shape):
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(image_shape, generator=generator, dtype=torch.float64)
    kernel = torch.randn(kernel_shape, generator=generator, dtype=torch.float64)
    output = conv2d_from_formula(image, kernel)
    (height, width), (m, n) = image_shape, kernel_shape
    assert output.shape == (height - m + 1, width - n + 1)
    torch.testing.assert_close(output, F.conv2d(image[None, None], kernel[None, None])[0, 0])


def test_conv_from_formula_is_the_unflipped_sum():
    # Cross-correlation, as the report writes it: O(0, 0) pairs K(0, 0) with I(0, 0).
    image = torch.arange(9.0).reshape(3, 3)
    kernel = torch.zeros(2, 2)
    kernel[0, 0] = 1
    assert conv2d_from_formula(image, kernel).tolist() == [[0.0, 1.0], [3.0, 4.0]]


def test_conv_from_formula_equals_conv2d_on_real_digits_with_every_classic_kernel(mnist):
    digits = mnist.test.images[:8].float() / 255
    for kernel in CLASSIC_KERNELS.values():
        for digit in digits:
            output = conv2d_from_formula(digit, kernel)
            assert output.shape == (26, 26)
            torch.testing.assert_close(output, convolution.conv2d_with_torch(digit, kernel))
    assert convolution.max_difference_to_torch(digits, CLASSIC_KERNELS) < 1e-5


def test_a_kernel_larger_than_the_image_is_an_error():
    with pytest.raises(ValueError, match="a 3×3 kernel does not fit in a 2×5 image"):
        conv2d_from_formula(torch.zeros(2, 5), torch.zeros(3, 3))


def test_classic_kernels_are_three_by_three_and_respond_as_described():
    assert len(CLASSIC_KERNELS) == 6 and all(k.shape == (3, 3) for k in CLASSIC_KERNELS.values())
    step = torch.zeros(5, 5)
    step[:, 3:] = 1.0  # dark left half, bright right half: one vertical edge
    assert conv2d_from_formula(step, CLASSIC_KERNELS["vertical edge (Sobel x)"]).max() > 0
    assert conv2d_from_formula(step, CLASSIC_KERNELS["horizontal edge (Sobel y)"]).abs().max() == 0
    flat = torch.full((5, 5), 0.7)
    assert conv2d_from_formula(flat, CLASSIC_KERNELS["outline (Laplacian)"]).abs().max() < 1e-6
    for name in ("box blur", "Gaussian blur", "sharpen"):  # weights summing to 1 keep flat regions
        torch.testing.assert_close(conv2d_from_formula(flat, CLASSIC_KERNELS[name]), torch.full((3, 3), 0.7))


def test_the_basic_cnns_layer_is_its_kernels_applied_by_the_formula():
    torch.manual_seed(0)
    layer = create_model("basic_cnn").conv
    image = torch.randn(28, 28)
    expected = layer(image[None, None])[0].detach()
    torch.testing.assert_close(convolution.conv_layer_from_formula(layer, image), expected)


def test_example_digits_are_the_requested_classes(mnist):
    digits, labels = convolution.example_digits(mnist.test, digits=(3, 1))
    assert digits.shape == (2, 28, 28) and labels == [3, 1]
    assert digits.dtype == torch.float32 and 0 <= digits.min() and digits.max() <= 1


def test_pipeline_stages_reproduce_the_models_forward(mnist):
    torch.manual_seed(0)
    model = create_model("basic_cnn").eval()
    digit = mnist.test.images[0]
    stages = convolution.pipeline_stages(model, digit)
    assert stages.activated.shape == (32, 28, 28) and stages.pooled.shape == (32, 14, 14)
    with torch.no_grad():
        expected = torch.softmax(model(normalize(digit.float()[None, None] / 255)), dim=1)[0]
    torch.testing.assert_close(stages.probabilities, expected)


def test_convolution_figures_have_their_panels(mnist):
    digits, _ = convolution.example_digits(mnist.test, digits=(0, 7))
    crop = mnist.test.images[0][8:16, 14:22].float()
    sliding = convolution.kernel_sliding_figure(crop, CLASSIC_KERNELS["vertical edge (Sobel x)"], (2, 2))
    assert isinstance(sliding, plt.Figure) and len(sliding.axes) == 4  # input, kernel, products, feature map
    kernels = convolution.classic_kernels_figure(digits, CLASSIC_KERNELS)
    assert len(kernels.axes) == (1 + 2) * (1 + 6)  # a row of kernels over a row per digit; a column per kernel
    pipeline = convolution.cnn_pipeline_figure(create_model("basic_cnn"), mnist.test.images[0], 7, maps=3)
    assert len(pipeline.axes) == 1 + 2 * 3 + 1  # input, maps after conv and after pooling, class scores


def test_a_position_outside_the_feature_map_is_an_error():
    with pytest.raises(ValueError, match=r"position \(6, 0\) is outside the \(6, 6\) feature map"):
        convolution.kernel_sliding_figure(torch.zeros(8, 8), torch.ones(3, 3), (6, 0))


# ---- losses ---------------------------------------------------------------------------------

@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(64, 10, generator=generator)
    return {
        "prediction": torch.randn(64, generator=generator),
        "target": torch.randn(64, generator=generator),
        "probability": torch.rand(64, generator=generator).clamp(1e-4, 1 - 1e-4),
        "label": torch.randint(0, 2, (64,), generator=generator).float(),
        "logits": logits,
        "classes": torch.randint(0, 10, (64,), generator=generator),
    }


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_regression_and_binary_losses_equal_torchs(batch, reduction):
    p, t = batch["prediction"], batch["target"]
    torch.testing.assert_close(losses.mse(p, t, reduction), F.mse_loss(p, t, reduction=reduction))
    torch.testing.assert_close(losses.mae(p, t, reduction), F.l1_loss(p, t, reduction=reduction))
    q, y = batch["probability"], batch["label"]
    torch.testing.assert_close(losses.binary_cross_entropy(q, y, reduction),
                               F.binary_cross_entropy(q, y, reduction=reduction))


def test_categorical_cross_entropy_is_the_reports_sum_and_torchs_mean(batch):
    logits, classes = batch["logits"], batch["classes"]
    probabilities = torch.softmax(logits, dim=1)
    # The report's formula has no 1/n: it is torch's loss with reduction="sum".
    torch.testing.assert_close(losses.categorical_cross_entropy(probabilities, classes),
                               F.cross_entropy(logits, classes, reduction="sum"))
    mean = losses.categorical_cross_entropy(probabilities, classes, reduction="mean")
    torch.testing.assert_close(mean, F.cross_entropy(logits, classes))
    torch.testing.assert_close(mean, F.nll_loss(torch.log(probabilities), classes))
    one_hot = F.one_hot(classes, 10).float()  # the indicators y_ij of the formula
    torch.testing.assert_close(losses.categorical_cross_entropy(probabilities, one_hot, reduction="mean"), mean)


def test_losses_stay_finite_at_certain_predictions():
    certain = torch.tensor([0.0, 1.0, 1.0, 0.0])
    labels = torch.tensor([0.0, 1.0, 0.0, 1.0])  # two right, two wrong
    torch.testing.assert_close(losses.binary_cross_entropy(certain, labels), F.binary_cross_entropy(certain, labels))
    one_hot = torch.tensor([[1.0, 0.0, 0.0]])
    assert losses.categorical_cross_entropy(one_hot, torch.tensor([0])).item() == 0  # 0·log 0 counts as 0


def test_unknown_reduction_is_an_error():
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        losses.mse(torch.zeros(2), torch.zeros(2), reduction="avg")


def test_torch_comparison_agrees_to_round_off():
    frame = losses.torch_comparison(seed=3)
    assert len(frame) == 6 and frame["Difference"].max() < 1e-9


def test_fit_line_minimises_each_loss():
    x, y, is_outlier = losses.outlier_data()
    # MSE: the least-squares line, which has a closed form.
    design = torch.stack([x, torch.ones_like(x)], dim=1)
    slope, intercept = torch.linalg.lstsq(design, y[:, None]).solution.ravel().tolist()
    line = losses.fit_line(x, y, losses.mse)
    assert line.slope == pytest.approx(slope, abs=1e-3) and line.intercept == pytest.approx(intercept, abs=1e-3)
    # MAE: some best line passes through two of the points, so the best of those lines is optimal.
    best = min(
        losses.mae(y[i] + (y[j] - y[i]) / (x[j] - x[i]) * (x - x[i]), y).item()
        for i, j in itertools.combinations(range(len(x)), 2)
    )
    assert losses.mae(losses.fit_line(x, y, losses.mae)(x), y).item() == pytest.approx(best, abs=1e-3)


def test_outliers_move_the_mse_line_and_barely_the_mae_line():
    x, y, is_outlier = losses.outlier_data(n=20, outliers=2)
    fits = losses.outlier_fits(x, y, is_outlier)
    clean = fits[losses.REFERENCE]
    assert abs(fits["MAE"].slope - clean.slope) < 0.2 < abs(fits["MSE"].slope - clean.slope)
    # Under MAE every point off the line pulls equally: two points of twenty pull 10%.
    assert losses.outlier_pull_share(x, y, is_outlier, clean, losses.mae) == pytest.approx(2 / 20)
    assert losses.outlier_pull_share(x, y, is_outlier, clean, losses.mse) > 0.5


def test_loss_figures_have_their_panels():
    assert len(losses.loss_curves_figure().axes) == 3  # regression, binary, categorical
    x, y, is_outlier = losses.outlier_data()
    fits = losses.outlier_fits(x, y, is_outlier)
    assert len(losses.outliers_figure(x, y, is_outlier, fits).axes) == 2  # the fits, each point's pull


# ---- the notebooks, executed --------------------------------------------------------------------

def test_q1_notebooks_declare_their_parameters():
    assert notebooks.declared_parameters("q1_convolution") == {"profile": "smoke", "device": "auto", "seeds": [0]}
    assert notebooks.declared_parameters("q1_losses") == {"profile": "smoke"}
    for name in Q1_FIGURES:
        notebook = nbformat.read(paths.NOTEBOOKS / f"{name}.ipynb", as_version=4)
        assert notebook.metadata.kernelspec.name == "python3"
        assert all(not c.outputs and c.execution_count is None for c in notebook.cells if c.cell_type == "code")


def test_q1_notebooks_execute_and_write_their_figures(smoke_artifacts):
    # smoke_artifacts (tests/conftest.py): every notebook executed once by papermill.
    figures = smoke_artifacts / "figures"
    for name in itertools.chain(*Q1_FIGURES.values()):
        pdf = (figures / f"{name}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"/Type3" not in pdf  # vector, with embedded TrueType fonts
        assert (figures / f"{name}.png").stat().st_size > 5_000
    macros = (smoke_artifacts / "macros" / "q1_convolution.tex").read_text()
    assert "\\newcommand{\\ConvMaxDifference}{" in macros and "\\newcommand{\\PipelineDigit}{7}" in macros
    macros = (smoke_artifacts / "macros" / "q1_losses.tex").read_text()
    assert "\\newcommand{\\OutlierPullMae}{10}" in macros
