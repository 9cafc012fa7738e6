"""DnCNN (Zhang et al., 2017): a residual denoiser for grayscale images with a known noise level.

The network predicts the noise ``R(y)`` of a noisy image ``y``; ``forward`` returns the clean
estimate ``y - R(y)``. It is fully convolutional with same-size padding, so a model trained on
40x40 patches denoises images of any size.
"""

import torch
from torch import nn

#: Zhang et al.'s network for a known noise level: 17 convolution layers of 64 channels.
PAPER_DEPTH = 17
PAPER_WIDTH = 64


class DnCNN(nn.Module):
    """``depth`` 3x3 convolution layers: Conv+ReLU, ``depth - 2`` times Conv+BatchNorm+ReLU, then Conv.

    Every convolution keeps the image size (padding 1). Weights use MSRA (He) normal
    initialisation, except that ``zero_last`` starts the last layer at zero. The untrained
    network then returns its input unchanged instead of adding a random residual about as large
    as the image, which runs of a few CPU epochs did not recover from in our trials. BatchNorm
    starts as the identity. Only the first layer has a bias, because BatchNorm or the residual
    output follow the others.
    """

    def __init__(self, in_channels: int = 1, depth: int = PAPER_DEPTH, width: int = PAPER_WIDTH,
                 zero_last: bool = True):
        super().__init__()
        if depth < 2:
            raise ValueError(f"DnCNN depth must be at least 2 (first and last layer), got {depth}")
        if width < 1:
            raise ValueError(f"DnCNN width must be at least 1 channel, got {width}")

        layers = [nn.Conv2d(in_channels, width, 3, padding=1, bias=True), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        layers.append(nn.Conv2d(width, in_channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)
        self._initialise(zero_last)

    def _initialise(self, zero_last: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_last:
            nn.init.zeros_(self.body[-1].weight)

    def noise(self, noisy: torch.Tensor) -> torch.Tensor:
        """Return the predicted noise ``R(y)``, the residual the layers learn."""
        return self.body(noisy)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        """Return the clean estimate ``y - R(y)`` of ``noisy``, shape ``(N, C, H, W)``."""
        return noisy - self.body(noisy)
