"""The training loop: seeded, resumable from its checkpoint, stopped on a NaN loss."""

import numpy as np
import pytest
import torch

from core.datasets import load_dataset
from core.datasets.base import TensorSplit
from core.models import build_model
from core.training import TrainConfig, TrainingDivergedError, train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_same_seed_same_weights(digits):
    config = TrainConfig(epochs=2, seed=3)
    first, second = build_model("small_cnn", seed=1), build_model("small_cnn", seed=1)
    train(first, digits.train, config)
    train(second, digits.train, config)

    assert torch.equal(_weights(first), _weights(second))


def test_resume_matches_uninterrupted(digits, tmp_path):
    checkpoint = str(tmp_path / "run.ckpt")
    straight, resumed = build_model("small_cnn", seed=1), build_model("small_cnn", seed=1)
    train(straight, digits.train, TrainConfig(epochs=3))
    train(resumed, digits.train, TrainConfig(epochs=1), checkpoint_path=checkpoint)
    history = train(build_model("small_cnn", seed=1), digits.train, TrainConfig(epochs=3), checkpoint_path=checkpoint)
    final = build_model("small_cnn", seed=1)
    final.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])

    assert [row["epoch"] for row in history] == [1, 2, 3]
    torch.testing.assert_close(_weights(final), _weights(straight))


def test_nan_loss_stops_and_keeps_checkpoint(digits, tmp_path):
    checkpoint = str(tmp_path / "run.ckpt")
    model = build_model("small_cnn", seed=1)
    train(model, digits.train, TrainConfig(epochs=1), checkpoint_path=checkpoint)
    images = digits.train.images.clone()
    images[5] = float("nan")
    poisoned = TensorSplit(images, digits.train.labels, digits.train.sample_ids, digits.train.display)

    with pytest.raises(TrainingDivergedError, match="lower the learning rate") as error:
        train(model, poisoned, TrainConfig(epochs=3), checkpoint_path=checkpoint)
    saved = torch.load(checkpoint, weights_only=True)

    assert "epoch 2" in str(error.value)
    assert len(saved["history"]) == 1
    assert all(torch.isfinite(value).all() for value in saved["model"].values() if value.is_floating_point())


def test_trains_only_given_indices(digits):
    kept = np.flatnonzero(digits.train.labels != 3)
    model = build_model("small_cnn", seed=1)
    history = train(model, digits.train, TrainConfig(epochs=1, batch_size=100), indices=kept)

    assert history[0]["loss"] > 0
    with torch.no_grad():
        predictions = model.eval()(digits.test.images).argmax(1).numpy()
    assert (predictions == 3).sum() == 0


def test_empty_training_set_rejected(digits):
    with pytest.raises(ValueError, match="training set is empty"):
        train(build_model("small_cnn", seed=1), digits.train, TrainConfig(epochs=1), indices=np.array([], dtype=int))
