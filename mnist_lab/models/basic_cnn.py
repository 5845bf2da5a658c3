"""The report's basic CNN (Q2, Table 1): one convolution, one pooling, two linear layers.

The report describes it in words only (no listing): a convolutional layer, a pooling
layer, then two fully connected layers mapping to the 10 classes. The 32 kernels follow
the report's "32 or 64 convolutional kernels"; the hidden width of 64 is our choice, kept
deliberately small as the report says ("the small number of hidden units").
"""

import torch
from torch import nn


class BasicCNN(nn.Module):
    def __init__(self, *, hidden: int = 64, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1)  # padding 1 keeps 28×28
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)  # 28×28 → 14×14
        self.fc1 = nn.Linear(32 * 14 * 14, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(x)))  # (B, 32, 14, 14)
        x = x.flatten(1)  # (B, 6272)
        x = torch.relu(self.fc1(x))  # (B, hidden)
        return self.fc2(x)
