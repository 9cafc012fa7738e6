"""All-CNN-C (Springenberg et al., 2015): only convolutions, strided ones in place of pooling.

Layers for a 32x32 input: two 3x3 convolutions of 96 filters, a 3x3 convolution of 96 with stride
2, two 3x3 of 192, a 3x3 of 192 with stride 2, a 3x3 of 192 without padding (8x8 to 6x6), a 1x1
of 192, a 1x1 of ``num_classes``, then global averaging. About 1.4M parameters for 10 classes.
Dropout follows the paper: 20% on the input and 50% after each strided convolution.

The paper puts a ReLU after the last 1x1 convolution as well; this implementation leaves the
class scores linear, because a ReLU there lets every score of an image be zero and stops its
gradient.
"""

import torch
from torch import nn

from core.models.init import init_xavier

#: The smallest input side: two stride-2 convolutions must leave at least 3x3 for the unpadded one.
MIN_IMAGE_SIZE = 9


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 1) -> list:
    return [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding), nn.ReLU()]


class AllCNNC(nn.Module):
    """All-CNN-C with the paper's widths (96 and 192) and optional dropout."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_dropout: float = 0.2,
                 dropout: float = 0.5):
        super().__init__()
        for name, rate in (("input_dropout", input_dropout), ("dropout", dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"All-CNN-C {name} must be in [0, 1), got {rate}")

        self.features = nn.Sequential(
            nn.Dropout(input_dropout),
            *_conv(in_channels, 96, 3), *_conv(96, 96, 3), *_conv(96, 96, 3, stride=2),
            nn.Dropout(dropout),
            *_conv(96, 192, 3), *_conv(192, 192, 3), *_conv(192, 192, 3, stride=2),
            nn.Dropout(dropout),
            *_conv(192, 192, 3, padding=0), *_conv(192, 192, 1, padding=0),
            nn.Conv2d(192, num_classes, 1),
        )
        init_xavier(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def build_allcnn_c(num_classes: int, in_channels: int, image_size: tuple, input_dropout: float = 0.2,
                   dropout: float = 0.5) -> nn.Module:
    """Build All-CNN-C; images must be at least 9x9 (the paper's are 32x32)."""
    if min(image_size) < MIN_IMAGE_SIZE:
        raise ValueError(f"allcnn_c needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}, got "
                         f"{tuple(image_size)}; choose small_cnn or a CIFAR ResNet for smaller images")
    return AllCNNC(num_classes=num_classes, in_channels=in_channels, input_dropout=float(input_dropout),
                   dropout=float(dropout))
