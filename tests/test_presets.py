"""Training recipes: preset values, CPU variants, the plateau schedule and the batch augmentations."""

import numpy as np
import pytest
import torch

from core.augment import build_augmentation, color_jitter, random_scale_crop, random_translate
from core.datasets.base import TensorSplit
from core.models import build_model
from core.presets import PAPER_PRESETS, PRESETS, preset_settings
from core.training import TrainConfig, train
from curator.config import RunConfig


def test_recipes_match_the_paper():
    resnet = PRESETS["resnet110-cifar10"]
    svhn = PRESETS["resnet152-svhn"]
    densenet = PRESETS["densenet40-cifar10"]
    allcnn = PRESETS["allcnn_c-cifar10"]
    imagenet = PRESETS["resnet18-imagenet"]

    assert (resnet["optimizer"], resnet["momentum"], resnet["weight_decay"], resnet["batch_size"]) == ("sgd", 0.9, 1e-4, 128)
    assert (resnet["lr"], resnet["milestones"], resnet["epochs"]) == (0.1, [250, 375], 500)
    assert (svhn["epochs"], svhn["milestones"], svhn["round2_augmentation"]) == (50, [30, 35], "none")
    assert (densenet["batch_size"], densenet["epochs"], densenet["milestones"]) == (64, 300, [150, 225])
    assert densenet["model_options"] == {"dropout": 0.2}
    assert densenet["round2_model_options"] == {"dropout": 0.0}
    assert PRESETS["densenet40-svhn"]["round2_model_options"] == {"dropout": 0.2}
    assert PRESETS["densenet40-svhn"]["milestones"] == [20, 30]
    assert (allcnn["weight_decay"], allcnn["epochs"], allcnn["milestones"]) == (1e-3, 350, [200, 250, 300])
    assert allcnn["round2_augmentation"] == "flip_translate5"
    assert allcnn["dataset_options"] == {"whiten": "zca"}
    assert (imagenet["weight_decay"], imagenet["epochs"], imagenet["lr_schedule"]) == (1e-3, 60, "plateau")
    assert imagenet["round2_augmentation"] == "crop224_flip_color"
    assert imagenet["test_crops"] == 10


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_cpu_variant_keeps_recipe_shape(name):
    full, small = PRESETS[name], PRESETS[f"{name}-cpu"]

    assert small["model"] == full["model"]
    assert small["optimizer"] == full["optimizer"]
    assert small["round2_augmentation"] == full["round2_augmentation"]
    assert small["epochs"] == 3
    assert all(1 <= m < small["epochs"] for m in small["milestones"])
    assert small["milestones"] == sorted(set(small["milestones"]))
    assert small["max_train_samples"] <= 1000
    assert RunConfig(**small).epochs == 3


def test_cpu_milestones_keep_their_share():
    # 250 and 375 of 500 epochs are 50% and 75%: epochs 1.5 and 2.25 of 3, rounded down.
    assert PRESETS["resnet110-cifar10-cpu"]["milestones"] == [1, 2]
    assert PRESETS["resnet18-imagenet-cpu"]["dataset_options"] == {"image_size": 64, "resize": 73}


def test_explicit_settings_merge_into_preset():
    settings = preset_settings("allcnn_c-cifar10", {"epochs": 2, "dataset_options": {"val_fraction": 0.2}})

    assert settings["epochs"] == 2
    assert settings["dataset_options"] == {"whiten": "zca", "val_fraction": 0.2}
    assert PRESETS["allcnn_c-cifar10"]["dataset_options"] == {"whiten": "zca"}


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="resnet110-cifar10"):
        preset_settings("resnet-999")


def test_plateau_lowers_rate_after_three_flat_epochs():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(40, 1, 4, 4, generator=generator)
    labels = np.arange(40) % 2
    data = TensorSplit(images, labels, [str(i) for i in range(40)], np.zeros((40, 4, 4), np.uint8))
    model = build_model("logreg", num_classes=2, in_channels=1, image_size=(4, 4), seed=0)
    # A rate of 1e-12 leaves the weights, and so the validation error, unchanged every epoch.
    config = TrainConfig(epochs=6, batch_size=40, optimizer="sgd", lr=1e-12, schedule="plateau", patience=3)

    history = train(model, data, config, val_data=data)
    rates = [row["lr"] for row in history]

    # Epoch 1 sets the best error; epochs 2, 3 and 4 do not improve it, so epoch 5 runs at a tenth.
    assert rates[:4] == [1e-12] * 4
    assert rates[4] == pytest.approx(1e-13)
    assert len({row["val_error"] for row in history}) == 1


def test_plateau_needs_validation_data():
    data = TensorSplit(torch.zeros(4, 1, 2, 2), np.array([0, 1, 0, 1]), list("abcd"), np.zeros((4, 2, 2), np.uint8))
    model = build_model("logreg", num_classes=2, in_channels=1, image_size=(2, 2), seed=0)

    with pytest.raises(ValueError, match="needs val_data"):
        train(model, data, TrainConfig(epochs=1, schedule="plateau"))


def test_translate_matches_hand_shift():
    images = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    generator = torch.Generator().manual_seed(3)
    shifts = torch.randint(0, 5, (2, 2), generator=torch.Generator().manual_seed(3))

    shifted = random_translate(images, 2, generator)

    for n in range(2):
        padded = torch.full((9, 9), images.min().item())
        padded[2:7, 2:7] = images[n, 0]
        dy, dx = shifts[n].tolist()
        assert torch.equal(shifted[n, 0], padded[dy:dy + 5, dx:dx + 5])


def test_flip_translate_flips_about_half():
    images = torch.arange(64, dtype=torch.float32).view(64, 1, 1, 1).expand(64, 1, 3, 3).clone()
    images[:, :, :, 0] = -1.0  # mark the left column
    augmented = build_augmentation("flip_translate0")(images, torch.Generator().manual_seed(0))
    flipped = (augmented[:, 0, 1, 2] == -1.0).sum().item()

    assert 20 <= flipped <= 44


def test_scale_crop_and_jitter_identities():
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    pixels = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    normalised = (pixels - 0.5) / 0.25

    whole = random_scale_crop(images, torch.Generator().manual_seed(0), min_side=1.0)
    unchanged = color_jitter(normalised, torch.Generator(), ([0.5] * 3, [0.25] * 3), strength=0.0)
    jittered = build_augmentation("crop224_flip_color", ([0.5] * 3, [0.25] * 3))(normalised, torch.Generator())

    assert torch.allclose(whole, images, atol=1e-5)
    assert torch.allclose(unchanged, normalised, atol=1e-5)
    assert jittered.shape == normalised.shape
    # Jittered pixels stay inside [0, 1] once the normalisation is undone.
    assert (jittered * 0.25 + 0.5).min() >= -1e-6
    assert (jittered * 0.25 + 0.5).max() <= 1 + 1e-6


def test_unknown_augmentation_lists_names():
    with pytest.raises(ValueError, match="flip_translateN"):
        build_augmentation("mixup")
