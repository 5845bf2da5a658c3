"""The report's basic CNN (Q2, Table 1): one convolution, one pooling, two linear layers."""

import torch
from torch import nn

from .layers import ReLUMaxPool2d


class BasicCNN(nn.Module):
    def __init__(self, *, hidden: int = 64, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, kernel_size=3, padding=1)  # padding 1 keeps 28×28
        self.relu_pool = ReLUMaxPool2d(2)  # ReLU, then 2×2 max-pooling: 28×28 → 14×14
        self.fc1 = nn.Linear(32 * 14 * 14, hidden)  # a deliberately small hidden layer
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu_pool(self.conv(x))  # (B, 32, 14, 14)
        x = torch.relu(self.fc1(x.flatten(1)))  # (B, hidden)
        return self.fc2(x)
