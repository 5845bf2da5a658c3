"""`speed.accelerate` computes what the report's models compute, on the same parameters."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from mnist_lab import paths, speed
from mnist_lab.models import MODELS, create_model
from mnist_lab.speed import memory
from mnist_lab.speed.layers import FastDropout, FastSelfAttention, keep_mask
from mnist_lab.speed.rewrites import ClsOnlyEncoderBlock

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NO_DROPOUT = {"vit": {"dropout": 0.0}}  # training-mode comparisons need the same (no) dropout masks


def _faithful_and_fast(name: str, device: str):
    torch.manual_seed(0)
    target = torch.device(device)
    model = create_model(name, **NO_DROPOUT.get(name, {})).to(target)
    model = model.to(memory_format=speed.memory_format(model, target))
    return model, speed.accelerate(model, target)


def _training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Outputs, gradients and buffers after one training step from a fresh copy of the same state."""
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    return {"logits": logits.detach().clone(),
            **{f"grad {n}": p.grad.clone() for n, p in model.named_parameters()},
            **{f"buffer {n}": b.clone() for n, b in model.named_buffers()}}


@pytest.mark.device
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", MODELS)
def test_accelerated_model_agrees_on_outputs_gradients_and_statistics(name, device):
    model, fast = _faithful_and_fast(name, device)
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert all(a is b for a, b in zip(fast.parameters(), model.parameters()))  # training one trains the other
    x = torch.randn(16, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (16,), device=device)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    faithful = _training_step(model, x, y)
    with torch.no_grad():  # the same starting statistics for the second step
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    accelerated = _training_step(fast, x, y)
    assert faithful.keys() == accelerated.keys()
    for key in faithful:
        torch.testing.assert_close(accelerated[key], faithful[key], rtol=1e-4, atol=1e-5, msg=key)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), model.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_accelerate_leaves_the_given_model_as_written(name):
    model = create_model(name)
    before = [(n, type(m)) for n, m in model.named_modules()]
    speed.accelerate(model, torch.device("cpu"))
    assert [(n, type(m)) for n, m in model.named_modules()] == before


def test_the_cpu_rewrites_are_applied():
    cnn = speed.accelerate(create_model("cnn"), torch.device("cpu"))
    assert isinstance(cnn, fx.GraphModule)
    order = [node.target for node in cnn.graph.nodes if node.op in ("call_module", "call_function")]
    assert order[:4] == ["conv1", "pool", torch.relu_, "conv2"]  # ReLU moved after each pooling
    vit = speed.accelerate(create_model("vit"), torch.device("cpu"))
    assert isinstance(vit.blocks[-1], ClsOnlyEncoderBlock)
    assert all(isinstance(block.attn, FastSelfAttention) for block in vit.blocks)
    assert not any(type(m) is nn.Dropout for m in vit.modules())
    assert any(isinstance(m, FastDropout) for m in vit.modules())


@pytest.mark.parametrize("name", MODELS)
def test_every_module_is_torchs_own_or_from_the_models_own_file(name):
    model = create_model(name)
    own_file = inspect.getfile(type(model))
    for module_name, module in model.named_modules():
        origin = type(module).__module__
        assert origin.startswith("torch.nn.") or inspect.getfile(type(module)) == own_file, (module_name, origin)


def test_model_files_import_torch_and_nothing_of_the_project():
    for path in (paths.ROOT / "mnist_lab" / "models").glob("*.py"):
        if path.name == "__init__.py":
            continue
        imports = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        assert all(line.split()[1].split(".")[0] == "torch" for line in imports), (path.name, imports)


def test_the_package_compiles_nothing_at_run_time():
    package = paths.ROOT / "mnist_lab"
    assert not [p for p in package.rglob("*") if p.suffix in (".c", ".so", ".cpp")]
    for path in package.rglob("*.py"):
        text = path.read_text()
        assert "cpu_kernels" not in text and "cpp_extension" not in text, path


def test_keep_mask_drops_p_and_keeps_the_mean():
    torch.manual_seed(0)
    mask = keep_mask(torch.ones(2_000_000), 0.1)
    assert abs((mask == 0).float().mean().item() - 0.1) < 0.002  # ~10 standard deviations
    assert mask.unique().tolist() == [0.0, pytest.approx(65536 / (65536 - 6554))]  # p to the nearest 1/65536
    assert abs(mask.mean().item() - 1.0) < 0.005


def test_fast_dropout_is_random_in_training_and_the_identity_in_evaluation():
    torch.manual_seed(0)
    layer = FastDropout(0.5)
    x = torch.ones(10_000, requires_grad=True)
    y = layer(x)
    assert 0.45 < (y == 0).float().mean().item() < 0.55
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes where the mask kept, scaled alike
    torch.manual_seed(0)
    assert torch.equal(layer(x), y)  # the draws follow torch's seed
    assert torch.equal(layer.eval()(x), x)


def test_the_allocator_setting_applies_where_there_is_glibc():
    import platform

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert memory.keep_freed_memory() is expected
