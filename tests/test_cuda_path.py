"""The CUDA-graph training step (`speed.cuda`), checked where it can be: run eagerly on the CPU.

Capture itself needs a GPU: the tests marked `device` replay captured graphs there (`make
gpu-check` runs them first) and skip elsewhere. What a graph records is the trainer's own
`TrainStep`, the one the eager loop runs; the CPU tests check the graph driver around it (the
gather by device-side position, the sums, the last partial batch, the tensor learning rate).
"""

import contextlib

import pytest
import torch

from mnist_lab.experiments import get_experiment
from mnist_lab.models import create_model
from mnist_lab.speed.cuda import CapturableSGD, StepGraph, captured_optimizer
from mnist_lab.train import TrainStep, _eager_epoch, make_optimizer
from tqdm import tqdm

from conftest import train_run

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (`make gpu-check`)")


def _model_and_optimizer(name: str, captured: bool):
    torch.manual_seed(0)
    model = create_model(name)
    experiment = get_experiment(name)
    optimizer = (CapturableSGD(model.parameters(), lr=torch.tensor(experiment.lr)) if captured
                 else make_optimizer(model, experiment))
    return model, optimizer, experiment


def _step(model, optimizer, data, experiment, generator) -> TrainStep:
    return TrainStep(model, optimizer, data, augmentation=experiment.augmentation, generator=generator,
                     autocast=contextlib.nullcontext(), layout=torch.contiguous_format)


@pytest.mark.parametrize("images", [512, 500])  # 500 = 3 full batches of 128 and one of 116
def test_the_graph_driver_trains_as_the_eager_loop_does(small_mnist, images):
    data = small_mnist.train.head(images)
    results = []
    for graphed in (False, True):
        model, optimizer, experiment = _model_and_optimizer("basic_cnn", captured=graphed)
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(data), generator=generator)
        step = _step(model, optimizer, data, experiment, generator)
        if graphed:
            loss, accuracy = StepGraph(step, batch_size=experiment.batch_size, capture=False).run_epoch(order)
        else:
            with tqdm(disable=True) as bar:
                loss, accuracy = _eager_epoch(step, order, experiment.batch_size, "basic_cnn", 1, bar)
        results.append((loss, accuracy, model.fc2.weight.detach().clone()))
    (loss_a, accuracy_a, weight_a), (loss_b, accuracy_b, weight_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-5) and accuracy_b == accuracy_a
    torch.testing.assert_close(weight_b, weight_a)


def test_augmentation_draws_from_the_runs_generator_on_both_drivers(small_mnist):
    """Two epochs from generators seeded alike agree; from another seed they differ: the step
    draws from the generator it is given, not torch's default one (which is left untouched)."""
    data = small_mnist.train.head(256)
    experiment = get_experiment("cnn")
    losses = []
    for seed in (0, 0, 1):
        torch.manual_seed(0)
        model = create_model("cnn")
        optimizer = make_optimizer(model, experiment)
        generator = torch.Generator().manual_seed(seed)
        step = _step(model, optimizer, data, experiment, generator)
        default_before = torch.get_rng_state()
        losses.append(StepGraph(step, batch_size=64, capture=False).run_epoch(torch.arange(len(data)))[0])
        assert torch.equal(torch.get_rng_state(), default_before)
    assert losses[0] == losses[1] != losses[2]


@pytest.mark.device
@needs_cuda
@pytest.mark.parametrize("name", ["basic_cnn", "mobilenet"])  # no dropout or augmentation draws
def test_a_captured_graph_replays_the_eager_step(small_mnist, name):
    """The warm-up before capture is undone and each replay is the eager step. With SGD, whose
    update is linear in the gradient: under Adam a mathematically zero gradient (a convolution's
    bias before BatchNorm) becomes a whole learning rate's step of either sign, as seen on an H200,
    so its agreement is checked by the schedule's accuracies in `make gpu-check` instead."""
    data = small_mnist.train.head(500).to("cuda")  # 3 replays of 128 (or 7 of 64) and an eager partial batch
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).cuda()
    results = []
    for capture in (False, True):
        torch.manual_seed(0)
        model = create_model(name).cuda()
        experiment = get_experiment(name)
        optimizer = captured_optimizer(model, "sgd", experiment.lr, experiment.weight_decay)
        step = _step(model, optimizer, data, experiment, torch.Generator("cuda").manual_seed(0))
        steps = StepGraph(step, batch_size=experiment.batch_size, capture=capture)
        loss, accuracy = steps.run_epoch(order)
        results.append((loss, accuracy, [t.detach().clone() for t in (*model.parameters(), *model.buffers())]))
    (loss_a, accuracy_a, state_a), (loss_b, accuracy_b, state_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-4) and accuracy_b == pytest.approx(accuracy_a, abs=0.5)
    for a, b in zip(state_a, state_b):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)


@pytest.mark.device
@needs_cuda
def test_fit_with_cuda_graphs_follows_the_eager_trainer(small_mnist):
    experiment = get_experiment("basic_cnn").with_override("epochs", 2)
    histories = [train_run(experiment, device="cuda", precision="fp32", data=small_mnist,
                           cuda_graphs=graphs).history for graphs in (False, True)]
    for column in ("train_loss", "test_loss"):
        assert histories[1][column].tolist() == pytest.approx(histories[0][column].tolist(), rel=1e-3)


def test_a_tensor_learning_rate_follows_step_lr():
    model = create_model("basic_cnn")
    optimizer = CapturableSGD(model.parameters(), lr=torch.tensor(0.01))
    rate = optimizer.param_groups[0]["lr"]
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] is rate  # updated in place: a captured graph sees it
    assert rate.item() == pytest.approx(0.001)


def test_capturable_sgd_is_plain_sgd():
    torch.manual_seed(0)
    a, b = create_model("basic_cnn"), create_model("basic_cnn")
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for model, optimizer in ((a, torch.optim.SGD(a.parameters(), lr=0.01, weight_decay=1e-4)),
                             (b, CapturableSGD(b.parameters(), lr=torch.tensor(0.01), weight_decay=1e-4))):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_adam_and_adamw_are_made_capturable():
    model = create_model("cnn")
    for name in ("adam", "adamw"):
        optimizer = captured_optimizer(model, name, 1e-3, 0.0)
        assert optimizer.defaults["capturable"] and isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)


def test_gpu_check_refuses_in_one_line_without_cuda():
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: `make gpu-check` runs the real check")
    done = subprocess.run([sys.executable, "-m", "mnist_lab.bench.gpu_check"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "gpu-check: no CUDA GPU is visible to PyTorch here; run it on a machine with one"


def test_a_packed_profile_unpacks_to_the_same_fresh_artifacts(smoke_artifacts, tmp_path, monkeypatch):
    import shutil

    from mnist_lab import paths
    from mnist_lab.workbook import archive, notebooks
    from mnist_lab.cli import main

    artifacts = tmp_path / "artifacts"
    shutil.copytree(smoke_artifacts.parent, artifacts)
    monkeypatch.setattr(paths, "ARTIFACTS", artifacts)
    before = {str(p.relative_to(artifacts)): p.read_bytes() for p in (artifacts / "smoke").rglob("*")
              if p.is_file() and not set(p.relative_to(artifacts / "smoke").parts) & archive.LEFT_OUT}
    assert main(["pack", "--profile", "smoke", "--out", str(tmp_path / "smoke.tar.gz")]) == 0
    shutil.rmtree(artifacts / "smoke")
    assert main(["unpack", str(tmp_path / "smoke.tar.gz")]) == 0
    after = {str(p.relative_to(artifacts)): p.read_bytes() for p in (artifacts / "smoke").rglob("*") if p.is_file()}
    assert after == before
    assert all(notebooks.stale_as_run(name, "smoke") == [] for name in notebooks.available())
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    assert main(["unpack", str(tmp_path / "junk.tar.gz")]) == 1


@pytest.mark.device
@needs_cuda
def test_a_diverging_run_is_refused_on_the_graph_path_too(small_mnist):
    from mnist_lab.errors import LabError

    with pytest.raises(LabError, match="the training loss became"):
        train_run(get_experiment("basic_cnn").replace(lr=1e9, epochs=1), data=small_mnist, device="cuda")
