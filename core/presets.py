"""Named training recipes of Wang, Huan and Li (2018, "Data Dropout"), as editable run settings.

A preset is a dict of run settings (the field names of ``curator.config.RunConfig``). A run copies
the values it uses into its stored configuration, so changing a preset later never changes a run
already made. Explicit settings override the preset's.

Each full-size preset has a ``-cpu`` variant for tests and demonstrations. It keeps the dataset,
network, optimizer and augmentation, and trains 3 epochs (milestones scaled to them) on at most
1,000 training samples (ImageNet: 200 at 64x64). Influence is taken over the last layer with at
most 100 CG steps. Its results show that the recipe runs, not what it achieves.

Recipes:

- ResNet-110 on CIFAR: SGD with momentum 0.9, weight decay 1e-4, batch 128, learning rate 0.1,
  then 0.01 and 0.001 at epochs 250 and 375 of 500; round 2 shifts by up to 4 pixels and flips.
- ResNet-152 on SVHN: as ResNet-110 but 50 epochs with the steps at 30 and 35; no augmentation.
- DenseNet-40: SGD 0.9, weight decay 1e-4, batch 64, learning rate 0.1 divided by 10 at 50% and
  75% of 300 epochs (CIFAR) or 40 (SVHN). CIFAR: dropout 0.2 in round 1 (no augmentation) and
  none in round 2 (shifts and flips). SVHN: dropout 0.2 in both rounds, no augmentation.
- All-CNN-C on CIFAR: SGD 0.9, weight decay 1e-3, learning rate 0.1 times 0.1 at epochs 200,
  250 and 300 of 350; ZCA whitening after normalisation; round 2 flips and shifts up to 5 pixels.
- ResNet-18/34 on ImageNet folders: SGD 0.9, weight decay 1e-3, 60 epochs, learning rate 0.1
  times 0.1 when validation error has not improved for 3 epochs; 224x224 centre crops of images
  scaled to 256; round 2 adds random crops, flips and colour jitter.
"""

import copy
import math
from typing import Optional

from core.denoising import PRESETS as DENOISE_PRESETS

#: Settings that a ``-cpu`` variant changes, besides epochs and milestones.
CPU_SETTINGS = {"max_train_samples": 1000, "params": "last_layer", "solver_options": {"max_iter": 100}}
CPU_EPOCHS = 3

_SGD = {"optimizer": "sgd", "momentum": 0.9, "lr": 0.1}


def _resnet110(dataset: str) -> dict:
    return {**_SGD, "dataset": dataset, "model": "resnet110", "weight_decay": 1e-4, "batch_size": 128,
            "epochs": 500, "milestones": [250, 375], "round1_augmentation": "none",
            "round2_augmentation": "flip_translate4"}


def _densenet_cifar(dataset: str) -> dict:
    return {**_SGD, "dataset": dataset, "model": "densenet40", "weight_decay": 1e-4, "batch_size": 64,
            "epochs": 300, "milestones": [150, 225], "round1_augmentation": "none",
            "round2_augmentation": "flip_translate4", "model_options": {"dropout": 0.2},
            "round2_model_options": {"dropout": 0.0}}


def _allcnn(dataset: str) -> dict:
    return {**_SGD, "dataset": dataset, "model": "allcnn_c", "weight_decay": 1e-3, "batch_size": 128,
            "epochs": 350, "milestones": [200, 250, 300], "round1_augmentation": "none",
            "round2_augmentation": "flip_translate5", "dataset_options": {"whiten": "zca"}}


def _imagenet(model: str) -> dict:
    return {**_SGD, "dataset": "imagefolder", "model": model, "weight_decay": 1e-3, "batch_size": 256,
            "epochs": 60, "lr_schedule": "plateau", "plateau_patience": 3, "milestones": [],
            "round1_augmentation": "none", "round2_augmentation": "crop224_flip_color",
            "dataset_options": {"image_size": 224, "resize": 256}, "test_crops": 10}


#: Full-size presets by name; ``PRESETS`` adds their ``-cpu`` variants.
PAPER_PRESETS = {
    "resnet110-cifar10": _resnet110("cifar10"),
    "resnet110-cifar100": _resnet110("cifar100"),
    "resnet152-svhn": {**_SGD, "dataset": "svhn", "model": "resnet152", "weight_decay": 1e-4, "batch_size": 128,
                       "epochs": 50, "milestones": [30, 35], "round1_augmentation": "none",
                       "round2_augmentation": "none"},
    "densenet40-cifar10": _densenet_cifar("cifar10"),
    "densenet40-cifar100": _densenet_cifar("cifar100"),
    "densenet40-svhn": {**_SGD, "dataset": "svhn", "model": "densenet40", "weight_decay": 1e-4, "batch_size": 64,
                        "epochs": 40, "milestones": [20, 30], "round1_augmentation": "none",
                        "round2_augmentation": "none", "model_options": {"dropout": 0.2},
                        "round2_model_options": {"dropout": 0.2}},
    "allcnn_c-cifar10": _allcnn("cifar10"),
    "allcnn_c-cifar100": _allcnn("cifar100"),
    "resnet18-imagenet": _imagenet("resnet18"),
    "resnet34-imagenet": _imagenet("resnet34"),
}


def cpu_variant(settings: dict, epochs: int = CPU_EPOCHS) -> dict:
    """Return ``settings`` shrunk for a CPU (see the module docstring); milestones keep their share of training."""
    small = {**copy.deepcopy(settings), **copy.deepcopy(CPU_SETTINGS), "epochs": epochs}
    full = settings["epochs"]
    small["milestones"] = sorted({max(1, min(epochs - 1, math.floor(m * epochs / full)))
                                  for m in settings.get("milestones", [])} - {0})
    if settings["dataset"] == "imagefolder":
        small["max_train_samples"] = 200
        small["batch_size"] = 64
        small["dataset_options"] = {"image_size": 64, "resize": 73}
    return small


#: Every preset by name: the data dropout recipes, their ``-cpu`` variants, and the denoising task's
#: DnCNN recipe with its own CPU variant (``core.denoising.PRESETS``).
PRESETS = {**PAPER_PRESETS, **{f"{name}-cpu": cpu_variant(settings) for name, settings in PAPER_PRESETS.items()},
           **DENOISE_PRESETS}


def preset_settings(name: str, overrides: Optional[dict] = None) -> dict:
    """Return a copy of preset ``name``'s settings with ``overrides`` (explicit settings) applied on top.

    Dict-valued settings (``dataset_options``, ``model_options``, ``solver_options``, ...) merge
    key by key, so an explicit ``{"val_fraction": 0.2}`` keeps the preset's ``{"whiten": "zca"}``.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    settings = copy.deepcopy(PRESETS[name])
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **copy.deepcopy(value)}
        else:
            settings[key] = copy.deepcopy(value)
    return settings


def register_preset(name: str, settings: dict) -> None:
    """Add or replace preset ``name``; ``settings`` must name at least ``dataset``, ``model`` and ``epochs``."""
    missing = {"dataset", "model", "epochs"} - set(settings)
    if missing:
        raise ValueError(f"preset {name!r} lacks {sorted(missing)}; a preset names at least dataset, model and epochs")
    PRESETS[name] = copy.deepcopy(settings)
