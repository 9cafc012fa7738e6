"""The default network: a small BatchNorm CNN sized for 8x8 to 32x32 inputs on a CPU."""

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two 3x3 convolution blocks with BatchNorm, a max-pool, and a two-layer classifier.

    About 38k parameters for 8x8 single-channel digits. Adaptive pooling to 4x4 lets the same
    network take larger images.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 16, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
