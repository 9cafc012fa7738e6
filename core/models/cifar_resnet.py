"""CIFAR-style residual networks (He et al., 2016, section 4.2): depth 6n+2 with basic blocks.

Three stages of ``n`` basic blocks each, with 16, 32 and 64 filters on feature maps of 32x32,
16x16 and 8x8 for CIFAR inputs. A block's shortcut is the identity; where a stage halves the
map and doubles the filters, the shortcut subsamples with stride 2 and pads the new channels with
zeros (the paper's "option A"), so shortcuts add no parameters. ResNet-20 has about 0.27M
parameters and ResNet-110 about 1.7M, the counts He et al. publish.
"""

import torch
import torch.nn.functional as F
from torch import nn

from core.models.init import init_msra

#: Depths the registry builds, with ``n`` blocks per stage: depth = 6n + 2.
DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110, "resnet152": 152}

STAGE_WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, and a parameter-free shortcut around them."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra_channels > 0:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A 6n+2-layer residual network: one 3x3 convolution, three stages of ``n`` blocks, a linear layer.

    Global average pooling before the classifier lets the network take any input size; the
    paper's maps assume 32x32.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 56, 110, ...), got {depth}")
        blocks = (depth - 2) // 6

        self.conv = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(STAGE_WIDTHS[0])
        stages, width = [], STAGE_WIDTHS[0]
        for number, stage_width in enumerate(STAGE_WIDTHS):
            layers = []
            for block in range(blocks):
                stride = 2 if number > 0 and block == 0 else 1
                layers.append(BasicBlock(width, stage_width, stride))
                width = stage_width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(width, num_classes)
        init_msra(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.conv(x)))
        out = self.stages(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def build_cifar_resnet(name: str, num_classes: int, in_channels: int, image_size: tuple, **options) -> nn.Module:
    """Build the registry's ``resnet20`` ... ``resnet152``; no options are taken."""
    if options:
        raise ValueError(f"{name} takes no model options, got {sorted(options)}")
    return CifarResNet(DEPTHS[name], num_classes=num_classes, in_channels=in_channels)
