import pytest
import torch

from mnist_lab.errors import LabError
from mnist_lab.models import MODELS, count_parameters, create_model

# The parameter counts the report's code gives (basic CNN: 32·14·14 → 64 → 10).
EXPECTED_PARAMETERS = {"basic_cnn": 402_442, "cnn": 421_642, "mobilenet": 136_458, "vit": 803_338}


@pytest.mark.parametrize("name", MODELS)
def test_logits_shape_and_finite(name):
    torch.manual_seed(0)
    logits = create_model(name)(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name)
    model(torch.randn(4, 1, 28, 28)).logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_matches_report(name):
    assert count_parameters(create_model(name)) == EXPECTED_PARAMETERS[name]


def test_registry_covers_report():
    assert set(MODELS) == set(EXPECTED_PARAMETERS)


def test_unknown_model_lists_valid_names():
    with pytest.raises(LabError, match="unknown model 'resnet'.*basic_cnn, cnn, mobilenet, vit"):
        create_model("resnet")


def test_overrides_reach_the_model_and_unknown_ones_are_rejected():
    assert count_parameters(create_model("basic_cnn", hidden=128)) == 320 + 6272 * 128 + 128 + 1290
    with pytest.raises(LabError, match="has no argument widht"):
        create_model("basic_cnn", widht=3)
