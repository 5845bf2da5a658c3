import torch
import torch.nn.functional as F

from mnist_lab.augment import Augmentation, _rotation_grid, augment


def _digit(mnist):
    return mnist.train.images[:1].unsqueeze(1).float() / 255  # (1, 1, 28, 28)


def test_no_augmentation_is_the_identity(mnist):
    x = _digit(mnist)
    assert augment(x, Augmentation(), torch.Generator().manual_seed(0)) is x


def test_flip_mirrors_some_images_exactly(mnist):
    x = _digit(mnist).repeat(64, 1, 1, 1)
    out = augment(x, Augmentation(hflip=True), torch.Generator().manual_seed(0))
    mirrored = torch.tensor([torch.allclose(o, x[0].flip(-1), atol=1e-5) for o in out])
    unchanged = torch.tensor([torch.allclose(o, x[0], atol=1e-5) for o in out])
    assert (mirrored | unchanged).all()
    assert 10 < mirrored.sum() < 54  # about half, drawn per image


def test_rotation_draws_an_angle_per_image(mnist):
    x = _digit(mnist).repeat(8, 1, 1, 1)
    out = augment(x, Augmentation(max_rotation=10), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    distinct = {tuple(o.flatten()[::7].tolist()) for o in out}
    assert len(distinct) == 8  # one shared angle would give one image eight times
    assert out.min() >= 0 and out.max() <= 1  # bilinear interpolation stays in range
    # A small rotation keeps most of the ink: the digit is turned, not lost.
    assert (out.sum((1, 2, 3)) / x.sum((1, 2, 3))).min() > 0.9


def test_same_seed_same_augmentation(mnist):
    x = _digit(mnist).repeat(4, 1, 1, 1)
    aug = Augmentation(hflip=True, max_rotation=10)
    a = augment(x, aug, torch.Generator().manual_seed(3))
    b = augment(x, aug, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_rotation_grid_is_affine_grids():
    angles = torch.linspace(-0.3, 0.3, 8)
    cos, sin, mirror = angles.cos(), angles.sin(), torch.tensor([1.0, -1.0]).repeat(4)
    zeros = torch.zeros(8)
    theta = torch.stack([torch.stack([cos * mirror, -sin, zeros], 1), torch.stack([sin * mirror, cos, zeros], 1)], 1)
    expected = F.affine_grid(theta, [8, 1, 28, 20], align_corners=False)
    torch.testing.assert_close(_rotation_grid(cos, sin, mirror, 28, 20), expected, rtol=0, atol=1e-6)
