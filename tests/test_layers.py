"""The fast layers compute what torch's stock layers compute, on the same weights."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab import memory
from mnist_lab.models import MODELS, create_model
from mnist_lab.models.layers import Dropout, ReLUMaxPool2d, SelfAttention, keep_mask, use_stock_layers


def _without_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(module, nn.MultiheadAttention):
            module.dropout = 0.0
    return model


@pytest.mark.parametrize("name", MODELS)
def test_fast_and_stock_models_agree_on_outputs_and_gradients(name):
    torch.manual_seed(0)
    fast = _without_dropout(create_model(name))
    stock = use_stock_layers(copy.deepcopy(fast))
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for model in (fast, stock):
        F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), stock.eval()(x), rtol=1e-5, atol=1e-5)
    for (parameter, a), b in zip(fast.named_parameters(), stock.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=parameter)


def test_use_stock_layers_reaches_every_fast_layer():
    model = use_stock_layers(create_model("vit"))
    switches = [m for m in model.modules() if isinstance(m, (Dropout, SelfAttention, ReLUMaxPool2d))]
    assert len(switches) == 13 and all(m.stock for m in switches)  # 4 blocks × (attention + 2 dropouts) + 1


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
