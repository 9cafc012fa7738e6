"""Datasets: labelled splits with stable sample ids, loaders for each supported source."""

from typing import Optional

import numpy as np

from core.datasets.base import DatasetSplits, LabeledSplit, TensorSplit, iterate_batches
from core.datasets.digits import load_digits_splits
from core.datasets.noise import flip_labels

#: Loader functions by dataset name. Each takes ``seed`` and keyword options and returns
#: ``DatasetSplits``. Further sources register here.
LOADERS = {"digits": load_digits_splits}


def load_dataset(name: str, seed: int = 0, label_noise: float = 0.0,
                 noise_pairs: Optional[list] = None, **options) -> DatasetSplits:
    """Load dataset ``name`` and optionally flip a fraction of its training labels.

    With ``label_noise`` above 0 the training split's ``labels`` are the noisy ones and
    ``true_labels`` keeps the originals. Validation and test labels are never changed.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}")
    splits = LOADERS[name](seed=seed, **options)
    if label_noise > 0:
        clean = splits.train.labels
        noisy = flip_labels(clean, label_noise, splits.num_classes, seed=seed + 7919, pairs=noise_pairs)
        splits.train = splits.train.with_labels(noisy, clean)
        splits.info["label_noise"] = {"rate": label_noise, "pairs": noise_pairs,
                                      "flipped": int(np.sum(noisy != clean))}
    return splits


__all__ = ["DatasetSplits", "LabeledSplit", "TensorSplit", "iterate_batches", "load_dataset",
           "load_digits_splits", "flip_labels", "LOADERS"]
