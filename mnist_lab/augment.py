"""Batched data augmentation with a random draw per sample.

torchvision's v2 transforms applied to a batch draw one random parameter for the
whole batch (pytorch/vision#8484): every image in it would be rotated by the same
angle. Here each image gets its own flip and angle, and the whole batch is warped by
one `grid_sample` call on the training device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    hflip: bool = False  # mirror left-right with probability 1/2
    max_rotation: float = 0.0  # rotate by an angle drawn uniformly from ±max_rotation degrees

    @property
    def active(self) -> bool:
        return self.hflip or self.max_rotation > 0


def augment(images: torch.Tensor, augmentation: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Randomly flip and rotate each image of a (B, 1, H, W) batch of pixels in [0, 1].

    Areas rotated in from outside the frame are filled with 0, the black background.
    """
    if not augmentation.active:
        return images
    batch = images.shape[0]
    device = images.device
    angles = (torch.rand(batch, generator=generator, device=device) * 2 - 1) * math.radians(augmentation.max_rotation)
    cos, sin = angles.cos(), angles.sin()
    # A horizontal mirror is the x axis scaled by -1; it folds into the same map.
    mirror = torch.ones(batch, device=device)
    if augmentation.hflip:
        mirror = torch.where(torch.rand(batch, generator=generator, device=device) < 0.5, -1.0, 1.0)
    grid = _rotation_grid(cos, sin, mirror, *images.shape[-2:]).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _rotation_grid(cos: torch.Tensor, sin: torch.Tensor, mirror: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The (B, H, W, 2) grid `F.affine_grid` makes for theta = [[cos·mirror, -sin, 0], [sin·mirror, cos, 0]].

    Written out, it is a few elementwise ops, cheaper on a CPU than affine_grid's batched
    3×2 matmul (docs/performance.md).
    """
    device = cos.device
    # Pixel centres in [-1, 1], as affine_grid places them with align_corners=False.
    x = ((torch.arange(width, device=device) * 2 + 1) / width - 1).view(1, 1, width)
    y = ((torch.arange(height, device=device) * 2 + 1) / height - 1).view(1, height, 1)
    cos, sin, mirror = (v.view(-1, 1, 1) for v in (cos, sin, mirror))
    return torch.stack([cos * mirror * x - sin * y, sin * mirror * x + cos * y], dim=-1)
