import json
import math

import pytest

from mnist_lab.bench import baseline
from mnist_lab.cli import main
from mnist_lab.experiments import get_experiment
from mnist_lab.models import create_model
from mnist_lab.results.compare import flops_per_image


@pytest.mark.slow  # two training processes taking turns
def test_a_tiny_benchmark_writes_its_results(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--models", "basic_cnn", "vit", "--images", "128", "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"basic_cnn", "vit"}
    assert report["settings"]["images"] == 128 and report["settings"]["repeats"] == 1
    numbers = [report["peak_gflops_per_second"], *report["schedule_total"].values()]
    for result in report["models"].values():
        for key in ("trainer_images_per_second", "baseline_images_per_second", "speedup"):
            assert len(result[key]["values"]) == 1
            numbers += [result[key]["median"], result[key]["min"], result[key]["max"]]
        numbers += [result["train_flops_per_image"], result["trainer_gflops_per_second"], result["fraction_of_peak"],
                    *result["schedule"].values()]
    assert all(isinstance(n, (int, float)) and math.isfinite(n) and n > 0 for n in numbers)
    assert report["models"]["vit"]["schedule"]["epochs"] == 10
    printed = capsys.readouterr().out
    assert "basic_cnn" in printed and "speedup" in printed


def test_flops_are_counted_forward_and_backward():
    # basic_cnn: the 3×3 conv (1→32) on 28×28 plus two linear layers; ~3× that for a training step.
    forward = 2 * (28 * 28 * 32 * 9 + 32 * 14 * 14 * 64 + 64 * 10)
    model = create_model("basic_cnn")
    assert flops_per_image(model) == forward
    assert 2.5 * forward < flops_per_image(model, training_step=True) < 3.5 * forward


def test_the_baseline_loop_trains():
    rows = baseline.train(get_experiment("basic_cnn").replace(epochs=3, lr=0.05), limit_train=384)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert all(row["train_seconds"] > 0 for row in rows)
