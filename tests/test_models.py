"""The data dropout paper's networks: parameter counts, output shapes and seeded weights."""

import pytest
import torch

from core.models import BUILDERS, build_model, count_parameters

#: Parameter counts as the architectures' authors publish them: ResNet-20 and ResNet-110 (He et al.,
#: 2016), DenseNet-40 with growth rate 12 (Huang et al., 2017), All-CNN-C (Springenberg et al., 2015),
#: and torchvision's ResNet-18 for 1,000 classes.
PUBLISHED = [
    ("resnet20", 10, 3, 32, 0.27e6),
    ("resnet110", 10, 3, 32, 1.7e6),
    ("densenet40", 10, 3, 32, 1.0e6),
    ("allcnn_c", 10, 3, 32, 1.4e6),
    ("resnet18", 1000, 3, 224, 11.7e6),
]


def cifar_resnet_parameters(depth: int, num_classes: int) -> int:
    """Count a 6n+2 ResNet's parameters by hand: 3x3 convolutions, BatchNorm pairs, the linear layer."""
    n = (depth - 2) // 6
    convs = [(3, 16)] + [(16, 16)] * 2 * n
    convs += [(16, 32)] + [(32, 32)] * (2 * n - 1)
    convs += [(32, 64)] + [(64, 64)] * (2 * n - 1)
    weights = sum(9 * c_in * c_out for c_in, c_out in convs)
    batch_norm = sum(2 * c_out for _, c_out in convs)
    return weights + batch_norm + 64 * num_classes + num_classes


@pytest.mark.parametrize("name, classes, channels, size, published", PUBLISHED)
def test_parameter_count_matches_published(name, classes, channels, size, published):
    model = build_model(name, num_classes=classes, in_channels=channels, image_size=(size, size))

    assert count_parameters(model) == pytest.approx(published, rel=0.04)


@pytest.mark.parametrize("depth", [20, 32, 56, 110, 152])
def test_cifar_resnet_count_by_hand(depth):
    model = build_model(f"resnet{depth}", num_classes=10, in_channels=3, image_size=(32, 32))

    assert count_parameters(model) == cifar_resnet_parameters(depth, 10)


@pytest.mark.parametrize("name, channels, size", [
    ("resnet20", 3, 32), ("resnet32", 1, 32), ("resnet56", 3, 16), ("resnet110", 3, 32),
    ("densenet40", 3, 16), ("allcnn_c", 3, 32), ("allcnn_c", 1, 12), ("resnet18", 3, 64),
    ("resnet34", 1, 32), ("small_cnn", 1, 8), ("logreg", 3, 8),
])
def test_forward_gives_one_score_per_class(name, channels, size):
    model = build_model(name, num_classes=7, in_channels=channels, image_size=(size, size), seed=0).eval()

    with torch.no_grad():
        logits = model(torch.randn(2, channels, size, size))

    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_resnet152_builds_for_svhn():
    model = build_model("resnet152", num_classes=10, in_channels=3, image_size=(32, 32))

    assert len(model.stages) == 3
    assert all(len(stage) == 25 for stage in model.stages)


@pytest.mark.parametrize("name", ["resnet20", "densenet40", "allcnn_c", "resnet18"])
def test_same_seed_gives_same_weights(name):
    first = build_model(name, num_classes=10, in_channels=3, image_size=(32, 32), seed=5).state_dict()
    second = build_model(name, num_classes=10, in_channels=3, image_size=(32, 32), seed=5).state_dict()
    other = build_model(name, num_classes=10, in_channels=3, image_size=(32, 32), seed=6).state_dict()

    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_msra_initialisation_scale():
    model = build_model("resnet110", num_classes=10, in_channels=3, image_size=(32, 32), seed=0)
    conv = model.stages[2][5].conv1.weight

    # MSRA with fan_out: std = sqrt(2 / (out_channels * 3 * 3)) = sqrt(2 / 576).
    assert conv.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.05)


def test_xavier_initialisation_scale():
    model = build_model("allcnn_c", num_classes=10, in_channels=3, image_size=(32, 32), seed=0)
    conv = model.features[3].weight  # 96 -> 96, 3x3

    # Glorot uniform: std = sqrt(2 / (fan_in + fan_out)) = sqrt(2 / (864 + 864)).
    assert conv.shape == (96, 96, 3, 3)
    assert conv.std().item() == pytest.approx((2 / 1728) ** 0.5, rel=0.05)


def test_densenet_dropout_shares_weights():
    with_dropout = build_model("densenet40", num_classes=10, in_channels=3, image_size=(32, 32), seed=1,
                               dropout=0.2)
    without = build_model("densenet40", num_classes=10, in_channels=3, image_size=(32, 32), seed=1)
    dropouts = [m for m in with_dropout.modules() if isinstance(m, torch.nn.Dropout)]

    without.load_state_dict(with_dropout.state_dict())
    # Every dense layer (36) and both transitions, but not the first convolution.
    assert len(dropouts) == 38
    assert all(m.p == 0.2 for m in dropouts)
    assert not any(isinstance(m, torch.nn.Dropout) for m in without.modules())


def test_option_errors_name_the_fix():
    with pytest.raises(ValueError, match="at least 9x9"):
        build_model("allcnn_c", num_classes=10, in_channels=1, image_size=(8, 8))
    with pytest.raises(ValueError, match="takes no model options"):
        build_model("resnet20", num_classes=10, in_channels=3, image_size=(32, 32), dropout=0.2)


def test_registry_lists_paper_models():
    expected = {"resnet20", "resnet32", "resnet56", "resnet110", "resnet152", "densenet40", "allcnn_c",
                "resnet18", "resnet34", "small_cnn", "logreg"}

    assert expected <= set(BUILDERS)
