"""The fast layers compute what torch's stock layers compute, on the same weights."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab import memory
from mnist_lab.models import MODELS, create_model
from mnist_lab.models import cpu_kernels
from mnist_lab.models.layers import BatchNormReLU, Dropout, ReLUMaxPool2d, SelfAttention, keep_mask, use_stock_layers


def _without_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(module, nn.MultiheadAttention):
            module.dropout = 0.0
    return model


def _train_fast_and_stock(name: str, memory_format=torch.channels_last) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """One training step of a model on its fast layers and of a copy on torch's stock ones.

    channels_last is the trainer's layout on the CPU, the one the fused kernels take.
    """
    torch.manual_seed(0)
    fast = _without_dropout(create_model(name)).to(memory_format=memory_format)
    stock = use_stock_layers(copy.deepcopy(fast))
    x, y = torch.randn(16, 1, 28, 28).contiguous(memory_format=memory_format), torch.randint(0, 10, (16,))
    for model in (fast, stock):
        F.cross_entropy(model(x), y).backward()
    return fast, stock, x


def _assert_same_training(fast: nn.Module, stock: nn.Module, x: torch.Tensor) -> None:
    for (parameter, a), b in zip(fast.named_parameters(), stock.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=parameter)
    for (buffer, a), b in zip(fast.named_buffers(), stock.buffers()):  # BatchNorm's running statistics
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=buffer)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), stock.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("name", MODELS)
def test_fast_and_stock_models_agree_on_outputs_gradients_and_statistics(name, memory_format):
    _assert_same_training(*_train_fast_and_stock(name, memory_format))


@pytest.mark.parametrize("name", ["cnn", "mobilenet"])
def test_without_the_compiled_kernels_the_fast_layers_fall_back_to_torch(name, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    _assert_same_training(*_train_fast_and_stock(name))


def test_the_cpu_kernels_compile_here():
    # Every machine this project runs on (and CI) has a C compiler; without one the
    # layers above still work, on torch's own path.
    assert cpu_kernels.available()


def test_fused_pooling_breaks_ties_as_torch_does():
    x = torch.randn(4, 8, 6, 6)
    x[:, :, :2, :2] = 0.5  # four equal maxima in a window: the gradient goes to the first
    x[:, :, 2:4, 2:4] = -0.5  # a window the ReLU zeroes
    x = x.contiguous(memory_format=torch.channels_last)
    fast_input, stock_input = x.clone().requires_grad_(), x.clone().requires_grad_()
    fast, stock = ReLUMaxPool2d(2)(fast_input), use_stock_layers(ReLUMaxPool2d(2))(stock_input)
    grad = torch.randn_like(fast)
    fast.backward(grad)
    stock.backward(grad)
    assert torch.equal(fast, stock) and torch.equal(fast_input.grad, stock_input.grad)
    assert fast.is_contiguous(memory_format=torch.channels_last)


def test_fused_batch_norm_relu_tracks_statistics_like_batch_norm():
    layer = BatchNormReLU(8, momentum=None)  # cumulative averages, counted by num_batches_tracked
    reference = nn.BatchNorm2d(8, momentum=None)
    for _ in range(3):
        x = (torch.randn(4, 8, 5, 5) * 3 + 1).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(layer(x), torch.relu(reference(x)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.running_mean, reference.running_mean)
    torch.testing.assert_close(layer.running_var, reference.running_var)
    assert layer.num_batches_tracked.item() == 3


def test_use_stock_layers_reaches_every_fast_layer():
    model = use_stock_layers(create_model("vit"))
    switches = [m for m in model.modules() if isinstance(m, (Dropout, SelfAttention, ReLUMaxPool2d))]
    assert len(switches) == 13 and all(m.stock for m in switches)  # 4 blocks × (attention + 2 dropouts) + 1
    assert model.stock  # and the ViT computes every token of its last block
    assert all(m.stock for m in use_stock_layers(create_model("mobilenet")).modules() if isinstance(m, BatchNormReLU))


def test_attention_from_some_queries_is_those_rows_of_full_attention():
    torch.manual_seed(0)
    attention = SelfAttention(32, 4).eval()
    x = torch.randn(3, 17, 32)
    torch.testing.assert_close(attention(x[:, :1], x), attention(x)[:, :1], rtol=1e-5, atol=1e-6)


def test_self_attention_loads_weights_saved_from_nn_multihead_attention():
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    attention = SelfAttention(32, 4).eval()
    attention.load_state_dict(reference.state_dict())  # same parameter names, strict
    x = torch.randn(3, 17, 32)
    torch.testing.assert_close(attention(x), reference(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-6)


def test_relu_max_pool_is_relu_then_pool():
    x = torch.randn(4, 8, 28, 28)
    assert torch.equal(ReLUMaxPool2d(2)(x), F.max_pool2d(torch.relu(x), 2))


def test_keep_mask_drops_p_and_keeps_the_mean():
    torch.manual_seed(0)
    mask = keep_mask(torch.ones(2_000_000), 0.1)
    assert abs((mask == 0).float().mean().item() - 0.1) < 0.002  # ~10 standard deviations
    assert mask.unique().tolist() == [0.0, pytest.approx(65536 / (65536 - 6554))]  # p to the nearest 1/65536
    assert abs(mask.mean().item() - 1.0) < 0.005


def test_compiled_dropout_drops_p_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(2_000_000)
    y = cpu_kernels.Dropout.apply(x, 0.1)
    dropped = (y == 0).float()
    assert abs(dropped.mean().item() - 0.1) < 0.002  # ~10 standard deviations
    assert abs((dropped[1:] * dropped[:-1]).mean().item() - 0.01) < 0.001  # neighbours drop independently
    assert y.unique().tolist() == [0.0, pytest.approx(1 / 0.9)]
    assert abs(y.mean().item() - 1.0) < 0.005


def test_dropout_is_random_in_training_and_the_identity_in_evaluation():
    torch.manual_seed(0)
    layer = Dropout(0.5)
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
