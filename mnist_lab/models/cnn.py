"""The report's optimized CNN (Q2, Table 2; its appendix "Optimized CNN")."""

import torch
from torch import nn


class CNN(nn.Module):
    def __init__(self, *, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)  # two poolings: 28 → 14 → 7
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))  # (B, 32, 14, 14): low-level features
        x = self.pool(torch.relu(self.conv2(x)))  # (B, 64, 7, 7): higher-level features
        x = x.flatten(1)  # (B, 3136)
        x = torch.relu(self.fc1(x))  # (B, 128)
        return self.fc2(x)
