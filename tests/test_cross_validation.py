"""Out-of-fold probabilities: every sample is predicted by a network that never trained on it."""

import numpy as np
import pytest
import torch

from core.cross_validation import fold_of_each_sample, out_of_fold_probabilities
from core.datasets import load_dataset
from core.models import build_model
from core.training import TrainConfig, train

CONFIG = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=3)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, max_train_samples=200)


def _logreg():
    return build_model("logreg", num_classes=10, in_channels=1, image_size=(8, 8), seed=0)


def test_folds_hold_each_sample_out_once():
    labels = np.repeat(np.arange(3), [12, 8, 4])
    fold = fold_of_each_sample(labels, 4, seed=0)

    assert sorted(set(fold.tolist())) == [0, 1, 2, 3]
    for number in range(4):
        # Stratified: each class is spread evenly over the folds.
        assert np.bincount(labels[fold == number], minlength=3).tolist() == [3, 2, 1]


def test_folds_reject_bad_counts():
    with pytest.raises(ValueError, match="folds 1 must be between 2 and 20"):
        fold_of_each_sample(np.zeros(10, dtype=int), 1, seed=0)
    with pytest.raises(ValueError, match="folds 5 exceed the 3 training samples"):
        fold_of_each_sample(np.zeros(3, dtype=int), 5, seed=0)


def test_own_label_does_not_change_own_row(digits):
    labels = digits.train.labels.copy()
    before = out_of_fold_probabilities(_logreg, digits.train, labels, CONFIG, folds=4, seed=0)

    # Give sample 7 a different label. The network that predicts it never trains on it, so its
    # row stays the same. The rows of samples whose networks did train on it change.
    changed = labels.copy()
    changed[7] = (labels[7] + 1) % 10
    relabelled = digits.train.with_labels(changed, digits.train.true_labels)
    after = out_of_fold_probabilities(_logreg, relabelled, labels, CONFIG, folds=4, seed=0)
    fold = fold_of_each_sample(labels, 4, seed=0)
    others = fold != fold[7]

    assert np.array_equal(after[fold == fold[7]], before[fold == fold[7]])
    assert not np.allclose(after[others], before[others])
    assert np.allclose(before.sum(axis=1), 1.0)


def test_rows_match_a_network_trained_without_the_fold(digits):
    labels = digits.train.labels
    probabilities = out_of_fold_probabilities(_logreg, digits.train, labels, CONFIG, folds=3, seed=5)
    fold = fold_of_each_sample(labels, 3, seed=5)

    # Retrain fold 1's network outside out_of_fold_probabilities and predict its held-out samples.
    model = _logreg()
    train(model, digits.train, CONFIG, indices=np.flatnonzero(fold != 1))
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(digits.train.images[torch.from_numpy(np.flatnonzero(fold == 1))]), 1)

    assert np.allclose(probabilities[fold == 1], expected.double().numpy(), atol=1e-6)
