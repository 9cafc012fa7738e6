"""DenseNet for CIFAR and SVHN (Huang et al., 2017) without bottlenecks or compression.

DenseNet-40 has three dense blocks of 12 layers, growth rate 12 and 16 initial filters: about
1.0M parameters, the count Huang et al. publish. Every layer is BatchNorm-ReLU-Conv3x3 and sees the
concatenation of all earlier feature maps of its block; transitions are
BatchNorm-ReLU-Conv1x1 (keeping the channel count) and a 2x2 average pool. With ``dropout`` above
0, dropout follows every convolution except the first, as the paper does on data without
augmentation.
"""

import torch
import torch.nn.functional as F
from torch import nn

from core.models.init import init_msra

#: The paper's DenseNet-40 settings.
DENSENET40 = {"depth": 40, "growth_rate": 12, "initial_filters": 16}


class DenseLayer(nn.Module):
    """BatchNorm-ReLU-Conv3x3 producing ``growth_rate`` maps, concatenated to its input."""

    def __init__(self, in_channels: int, growth_rate: int, dropout: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.dropout(self.conv(F.relu(self.bn(x))))
        return torch.cat([x, new], dim=1)


class Transition(nn.Module):
    """BatchNorm-ReLU-Conv1x1 (same channel count), dropout, then 2x2 average pooling."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.dropout(self.conv(F.relu(self.bn(x)))), 2)


class DenseNet(nn.Module):
    """A three-block DenseNet of ``depth`` = 3 * layers_per_block + 4 layers.

    Changing ``dropout`` changes no parameter, so weights saved with one rate load into a model
    built with another: round 1 and round 2 can differ in dropout alone.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, depth: int = 40, growth_rate: int = 12,
                 initial_filters: int = 16, dropout: float = 0.0):
        super().__init__()
        if depth < 7 or (depth - 4) % 3:
            raise ValueError(f"DenseNet depth must be 3L+4 with L >= 1 layers per block (40, 100, ...), got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DenseNet dropout must be in [0, 1), got {dropout}")
        layers_per_block = (depth - 4) // 3

        self.conv = nn.Conv2d(in_channels, initial_filters, 3, padding=1, bias=False)
        channels, parts = initial_filters, []
        for block in range(3):
            for _ in range(layers_per_block):
                parts.append(DenseLayer(channels, growth_rate, dropout))
                channels += growth_rate
            if block < 2:
                parts.append(Transition(channels, dropout))
        self.features = nn.Sequential(*parts)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        init_msra(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(self.conv(x))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.fc(out)


def build_densenet40(num_classes: int, in_channels: int, image_size: tuple, dropout: float = 0.0) -> nn.Module:
    """Build DenseNet-40 (k=12); ``dropout`` is the rate after every convolution but the first (paper: 0.2)."""
    return DenseNet(num_classes=num_classes, in_channels=in_channels, dropout=float(dropout), **DENSENET40)
