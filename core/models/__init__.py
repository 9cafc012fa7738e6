"""Model builders by name. Every builder is deterministic under ``torch.manual_seed``."""

import math
from functools import partial
from typing import Callable

import torch
from torch import nn

from core.models.allcnn import build_allcnn_c
from core.models.cifar_resnet import DEPTHS as CIFAR_RESNET_DEPTHS
from core.models.cifar_resnet import build_cifar_resnet
from core.models.densenet import build_densenet40
from core.models.imagenet_resnet import build_imagenet_resnet
from core.models.dncnn import DnCNN
from core.models.logreg import LogisticRegression
from core.models.small_cnn import SmallCNN


def _build_small_cnn(num_classes: int, in_channels: int, image_size: tuple, **options) -> nn.Module:
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, **options)


def _build_logreg(num_classes: int, in_channels: int, image_size: tuple, **options) -> nn.Module:
    return LogisticRegression(num_classes=num_classes, num_features=in_channels * math.prod(image_size), **options)


def _build_dncnn(num_classes: int, in_channels: int, image_size: tuple, **options) -> nn.Module:
    # A denoiser has no classes; num_classes and image_size are accepted for the common signature.
    return DnCNN(in_channels=in_channels, **options)


#: Builders by name: ``builder(num_classes, in_channels, image_size, **options) -> nn.Module``.
BUILDERS: dict = {"small_cnn": _build_small_cnn, "logreg": _build_logreg, "dncnn": _build_dncnn}
BUILDERS.update({name: partial(build_cifar_resnet, name) for name in CIFAR_RESNET_DEPTHS})
BUILDERS.update({"densenet40": build_densenet40, "allcnn_c": build_allcnn_c,
                 "resnet18": partial(build_imagenet_resnet, "resnet18"),
                 "resnet34": partial(build_imagenet_resnet, "resnet34")})


def build_model(name: str, num_classes: int = 10, in_channels: int = 1, image_size: tuple = (8, 8),
                seed: int = None, **options) -> nn.Module:
    """Build model ``name``; with ``seed`` the initial weights are the same on every call."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(BUILDERS)}")
    try:
        if seed is None:
            return BUILDERS[name](num_classes, in_channels, tuple(image_size), **options)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return BUILDERS[name](num_classes, in_channels, tuple(image_size), **options)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        raise ValueError(f"model {name!r} does not take the option(s) {sorted(options)} ({error}); "
                         f"remove them (--model-option) or choose a model that has them") from None


def register_model(name: str, builder: Callable) -> None:
    """Add a builder to the registry under ``name``."""
    BUILDERS[name] = builder


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
