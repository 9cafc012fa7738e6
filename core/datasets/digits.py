"""The embedded default dataset: scikit-learn's 1,797 real 8x8 handwritten digits (no download)."""

import numpy as np
import torch
from sklearn.datasets import load_digits

from core.datasets.base import DatasetSplits, TensorSplit
from core.datasets.splitting import fingerprint_arrays, stratified_split

#: Train / validation / test fractions. 1,797 samples give 1,257 / 270 / 270.
DIGITS_FRACTIONS = (0.7, 0.15, 0.15)

# Pixel intensities in load_digits run from 0 to 16.
_MAX_INTENSITY = 16.0


def load_digits_splits(seed: int = 0, fractions: tuple = DIGITS_FRACTIONS) -> DatasetSplits:
    """Load the digits, split them stratified with ``seed`` and normalise with training statistics.

    Sample ids are ``digits-NNNN``, the position in scikit-learn's array, so they stay stable
    across seeds and splits.
    """
    bunch = load_digits()
    pixels = bunch.images.astype(np.float32) / _MAX_INTENSITY
    labels = bunch.target.astype(np.int64)
    train_pos, val_pos, test_pos = stratified_split(labels, fractions, seed)

    mean = float(pixels[train_pos].mean())
    std = float(pixels[train_pos].std())
    normalised = torch.from_numpy((pixels - mean) / std).unsqueeze(1)
    display = np.round(pixels * 255).astype(np.uint8)
    ids = np.array([f"digits-{i:04d}" for i in range(len(labels))])

    def make(positions):
        return TensorSplit(normalised[torch.from_numpy(positions)], labels[positions],
                           list(ids[positions]), display[positions])

    return DatasetSplits(
        name="digits", train=make(train_pos), val=make(val_pos), test=make(test_pos),
        num_classes=10, in_channels=1, class_names=[str(d) for d in range(10)],
        fingerprint=fingerprint_arrays(bunch.images, labels, train_pos, val_pos, test_pos),
        info={"mean": [mean], "std": [std], "image_size": [8, 8], "source": "sklearn.datasets.load_digits"},
    )
