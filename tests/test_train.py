import os

import pandas as pd
import pytest
import torch

from mnist_lab.errors import LabError
from mnist_lab.experiments import EXPERIMENTS, get_experiment
from mnist_lab.files import atomic_dir
from mnist_lab.runs import load_run, save_run

from conftest import train_run

HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "train_seconds", "seconds"]


def test_short_training_lowers_the_loss(small_mnist):
    result = train_run(get_experiment("cnn").replace(epochs=3), data=small_mnist, device="cpu", progress=False)
    history = result.history
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history["test_accuracy"].iloc[-1] > 50  # chance is 10%
    assert len(result.predictions) == len(small_mnist.test)
    assert result.settings["precision"] == "fp32"


@pytest.mark.parametrize("name", ["basic_cnn", "vit"])
def test_same_seed_same_history_on_cpu(small_mnist, name):
    experiment = get_experiment(name).replace(epochs=2)
    runs = [train_run(experiment, seed=7, data=small_mnist, device="cpu", progress=False) for _ in range(2)]
    timing = ["train_seconds", "seconds"]
    pd.testing.assert_frame_equal(runs[0].history.drop(columns=timing), runs[1].history.drop(columns=timing))
    assert torch.equal(runs[0].predictions, runs[1].predictions)


@pytest.mark.parametrize("name", ["cnn", "mobilenet"])
def test_faithful_and_fast_training_agree_where_no_dropout_is_drawn(small_mnist, name):
    """The report's code trained as written and through `speed.accelerate`: the same model class
    and the same losses to float rounding, grown over an epoch of Adam steps (the ViT's dropout
    masks are drawn differently; test_speed compares single steps exactly)."""
    experiment = get_experiment(name).replace(epochs=1)
    fast, faithful = (train_run(experiment, data=small_mnist, device="cpu", progress=False, fast=flag)
                      for flag in (True, False))
    assert type(fast.model) is type(faithful.model)
    assert (fast.settings["fast"], faithful.settings["fast"]) == (True, False)
    assert list(fast.model.state_dict()) == list(faithful.model.state_dict())
    for column in ("train_loss", "test_loss"):
        assert fast.history[column].item() == pytest.approx(faithful.history[column].item(), rel=1e-3)


def test_on_epoch_end_sees_every_epoch_as_the_history_records_it(small_mnist):
    rows = []
    result = train_run(get_experiment("basic_cnn").replace(epochs=2), data=small_mnist, device="cpu", progress=False,
                 on_epoch_end=lambda row: rows.append(dict(row)))
    assert pd.DataFrame(rows).equals(result.history)


def test_other_seed_other_history(small_mnist):
    experiment = get_experiment("basic_cnn").replace(epochs=1)
    a, b = (train_run(experiment, seed=s, data=small_mnist, device="cpu", progress=False) for s in (0, 1))
    assert a.history["train_loss"][0] != b.history["train_loss"][0]


def test_a_diverging_loss_stops_the_run(small_mnist):
    experiment = get_experiment("basic_cnn").replace(lr=1e12, epochs=1)
    with pytest.raises(LabError, match="basic_cnn seed 0: the training loss became .* Try a lower learning rate"):
        train_run(experiment, data=small_mnist, device="cpu", progress=False)


def test_experiments_carry_the_report_recipes():
    assert EXPERIMENTS["basic_cnn"].optimizer == "sgd" and EXPERIMENTS["basic_cnn"].epochs == 3
    assert EXPERIMENTS["cnn"].optimizer == "adam" and EXPERIMENTS["cnn"].augmentation.max_rotation > 0
    assert EXPERIMENTS["cnn_flip"].augmentation.hflip
    vit = EXPERIMENTS["vit"]
    assert (vit.optimizer, vit.lr, vit.weight_decay, vit.lr_step, vit.epochs) == ("adamw", 1e-3, 1e-4, 3, 10)
    # The report gives no batch size: 64, except the basic CNN's 128 (its calibration study).
    assert {name: e.batch_size for name, e in EXPERIMENTS.items()} == {
        "basic_cnn": 128, "cnn": 64, "cnn_flip": 64, "mobilenet": 64, "vit": 64}


def test_experiment_overrides_are_checked():
    cnn = get_experiment("cnn")
    with pytest.raises(LabError, match="unknown experiment field 'epoch'"):
        cnn.replace(epoch=3)
    with pytest.raises(LabError, match="'epochs' must be int"):
        cnn.replace(epochs="3")
    with pytest.raises(LabError, match="epochs must be an integer >= 1"):
        cnn.replace(epochs=0)
    with pytest.raises(LabError, match="unknown experiment 'resnet'"):
        get_experiment("resnet")


def test_run_directory_round_trip(small_mnist, tmp_path):
    result = train_run(get_experiment("basic_cnn").replace(epochs=1), data=small_mnist, device="cpu", progress=False)
    run = load_run(save_run(result, tmp_path / "run"))
    assert run.metrics["test_accuracy"] == result.history["test_accuracy"].iloc[-1]
    assert run.config["experiment"]["model"] == "basic_cnn" and run.config["seed"] == 0
    assert "name" not in run.config["experiment"]  # a name is a label, never part of a run
    assert run.environment["torch"] == torch.__version__
    assert (run.predictions["prediction"].to_numpy() == result.predictions.numpy()).all()
    assert (tmp_path / "run" / "model.pt").stat().st_size > 1_000_000


def test_failed_write_keeps_the_previous_directory(tmp_path):
    target = tmp_path / "run"
    with atomic_dir(target) as staging:
        (staging / "metrics.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as staging:
            (staging / "metrics.json").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (target / "metrics.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left behind


@pytest.mark.slow  # trains three runs of several epochs: half a minute, most of the fast tier's time
def test_an_interrupted_run_resumes_from_its_last_epoch(small_mnist, tmp_path):
    # The ViT has every kind of state a resume must restore: dropout, augmentation, a schedule.
    experiment = get_experiment("vit").replace(epochs=3, lr_step=1)
    options = dict(seed=5, data=small_mnist)
    uninterrupted = train_run(experiment, **options)

    epochs_started = []

    class CtrlCInEpoch3:
        """fit's progress bar, through which Ctrl-C arrives halfway through the third epoch."""

        def __init__(self, total, **_):
            self.total, self.done = total, 0
            epochs_started.append(1)

        def update(self, images):
            self.done += images
            if len(epochs_started) == 3 and self.done >= self.total // 2:
                raise KeyboardInterrupt

        def set_postfix(self, **_):
            pass

        def close(self):
            pass

    checkpoint = tmp_path / "run.checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        train_run(experiment, checkpoint=checkpoint, bar=CtrlCInEpoch3, **options)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2  # tensors and containers only

    resumed = train_run(experiment, checkpoint=checkpoint, **options)
    timing = ["train_seconds", "seconds"]
    pd.testing.assert_frame_equal(resumed.history.drop(columns=timing), uninterrupted.history.drop(columns=timing))
    assert torch.equal(resumed.predictions, uninterrupted.predictions)


def test_a_checkpoint_of_another_recipe_is_not_used(small_mnist, tmp_path):
    checkpoint = tmp_path / "run.checkpoint.pt"
    options = dict(data=small_mnist, device="cpu", progress=False, checkpoint=checkpoint)
    first = train_run(get_experiment("basic_cnn").replace(epochs=1), **options)
    other_recipe = get_experiment("basic_cnn").replace(epochs=1, lr=0.05)
    other = train_run(other_recipe, **options)
    # Trained from scratch: the same as without a checkpoint, not the first run's epoch read back.
    fresh = train_run(other_recipe, data=small_mnist, device="cpu", progress=False)
    assert other.history["train_loss"][0] == fresh.history["train_loss"][0] != first.history["train_loss"][0]


def test_a_failed_file_write_keeps_the_previous_file(tmp_path):
    from mnist_lab.files import atomic_path, write_text

    target = tmp_path / "table.tex"
    write_text(target, "old table")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half a tab")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old table"
    assert [p.name for p in tmp_path.iterdir()] == ["table.tex"]


def test_deterministic_mode_holds_while_training_and_is_put_back_after(small_mnist, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    during = []
    train_run(get_experiment("basic_cnn").replace(epochs=1), data=small_mnist, device="cpu", progress=False,
        deterministic=True, on_epoch_end=lambda row: during.append(torch.are_deterministic_algorithms_enabled()))
    assert during == [True]
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
