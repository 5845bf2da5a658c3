"""The report's optimized CNN (Q2, Table 2; appendix "Optimized CNN")."""

import torch
from torch import nn

from .layers import ReLUMaxPool2d


class CNN(nn.Module):
    def __init__(self, *, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.relu_pool = ReLUMaxPool2d(2)  # ReLU, then 2×2 max-pooling
        self.fc1 = nn.Linear(64 * 7 * 7, 128)  # two poolings: 28 → 14 → 7
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu_pool(self.conv1(x))  # (B, 32, 14, 14): low-level features
        x = self.relu_pool(self.conv2(x))  # (B, 64, 7, 7): higher-level features
        x = torch.relu(self.fc1(x.flatten(1)))  # (B, 128)
        return self.fc2(x)
