"""The report's MobileNet (Q3, Table 3; its appendix "MobileNet"): depthwise-separable convolutions.

The layers are the report's, in its order; each convolution is grouped with its BatchNorm
and ReLU in a small Sequential (the report lists them flat), which names the weights
`features.<block>.<layer>`.
"""

import torch
from torch import nn


class DepthwiseSeparableConv(nn.Module):
    """A 3×3 convolution split in two: per channel (depthwise), then across channels (1×1 pointwise).

    For C_in → C_out channels this costs 9·C_in + C_in·C_out weights instead of 9·C_in·C_out.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=stride, padding=1,
                                   groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(x)
        x = self.pointwise(x)
        return x


def separable_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        DepthwiseSeparableConv(in_channels, out_channels, stride),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MobileNet(nn.Module):
    def __init__(self, *, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1), nn.BatchNorm2d(32),
                          nn.ReLU(inplace=True)),
            separable_block(32, 64),  # (B, 64, 28, 28)
            separable_block(64, 128, stride=2),  # (B, 128, 14, 14)
            separable_block(128, 128),
            separable_block(128, 256, stride=2),  # (B, 256, 7, 7)
            separable_block(256, 256),
            nn.AdaptiveAvgPool2d(1),  # (B, 256, 1, 1): global average pooling
        )
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.flatten(1)  # (B, 256)
        return self.classifier(x)
