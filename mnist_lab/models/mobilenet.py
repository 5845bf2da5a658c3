"""The report's MobileNet (Q3, Table 3): depthwise-separable convolutions with BatchNorm."""

import torch
from torch import nn

from .layers import BatchNormReLU


class DepthwiseSeparableConv(nn.Module):
    """A 3×3 convolution split in two: per channel (depthwise), then across channels (1×1 pointwise).

    For C_in → C_out channels this costs 9·C_in + C_in·C_out weights instead of 9·C_in·C_out.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        DepthwiseSeparableConv(in_channels, out_channels, stride),
        BatchNormReLU(out_channels),  # BatchNorm, then ReLU
    )


class MobileNet(nn.Module):
    def __init__(self, *, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), BatchNormReLU(32)),
            _block(32, 64),  # (B, 64, 28, 28)
            _block(64, 128, stride=2),  # (B, 128, 14, 14)
            _block(128, 128),
            _block(128, 256, stride=2),  # (B, 256, 7, 7)
            _block(256, 256),
            nn.AdaptiveAvgPool2d(1),  # (B, 256, 1, 1): global average pooling
        )
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
