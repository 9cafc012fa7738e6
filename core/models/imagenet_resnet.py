"""torchvision's ImageNet ResNet-18 and ResNet-34, untrained, for 224x224 inputs.

The networks are ``torchvision.models.resnet18/34(weights=None)``; nothing is downloaded. The
first convolution is rebuilt for ``in_channels`` other than 3, the classifier has ``num_classes``
outputs, and the weights are re-initialised with the same MSRA scheme as the CIFAR ResNets.
ResNet-18 has about 11.7M parameters for 1,000 classes.
"""

import torchvision
from torch import nn

from core.models.init import init_msra

_CONSTRUCTORS = {"resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34}


def build_imagenet_resnet(name: str, num_classes: int, in_channels: int, image_size: tuple, **options) -> nn.Module:
    """Build ``resnet18`` or ``resnet34``; no options are taken."""
    if options:
        raise ValueError(f"{name} takes no model options, got {sorted(options)}")
    model = _CONSTRUCTORS[name](weights=None, num_classes=num_classes)
    if in_channels != 3:
        first = model.conv1
        model.conv1 = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, stride=first.stride,
                                padding=first.padding, bias=False)
    init_msra(model)
    return model
