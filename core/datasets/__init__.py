"""Datasets: labelled splits with stable sample ids, loaders for each supported source."""

import inspect
from typing import Optional

import numpy as np

from core.datasets.base import DatasetSplits, LabeledSplit, TensorSplit, iterate_batches
from core.datasets.checks import DatasetError, DatasetNotFoundError
from core.datasets.cifar import load_cifar10, load_cifar100
from core.datasets.csv_labels import load_csv_dataset
from core.datasets.digits import load_digits_splits
from core.datasets.holdout import stratified_subset
from core.datasets.image_folder import load_image_folder
from core.datasets.noise import flip_labels
from core.datasets.npz import load_npz
from core.datasets.svhn import load_svhn

#: Loader functions by dataset name. Each takes ``seed`` and keyword options and returns
#: ``DatasetSplits``. Further sources register here.
LOADERS = {"digits": load_digits_splits}
LOADERS.update({"cifar10": load_cifar10, "cifar100": load_cifar100, "svhn": load_svhn,
                "imagefolder": load_image_folder, "csv": load_csv_dataset, "npz": load_npz})


def loader_options(name: str) -> dict:
    """Return the keyword options of dataset ``name``'s loader with their defaults (``seed`` excluded)."""
    parameters = inspect.signature(LOADERS[name]).parameters
    return {key: p.default for key, p in parameters.items()
            if key != "seed" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def load_dataset(name: str, seed: int = 0, label_noise: float = 0.0,
                 noise_pairs: Optional[list] = None, max_train_samples: Optional[int] = None,
                 **options) -> DatasetSplits:
    """Load dataset ``name`` and optionally subsample and flip a fraction of its training labels.

    ``max_train_samples`` keeps a stratified, seeded subset of the training split (at least one
    sample per class); validation and test stay as the loader made them. With ``label_noise``
    above 0 the training split's ``labels`` are the noisy ones and ``true_labels`` keeps the
    originals. Validation and test labels are never changed.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}")
    accepted = loader_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"dataset {name!r} takes no option(s) {unknown}; its options are {sorted(accepted)}")
    splits = LOADERS[name](seed=seed, **options)
    if max_train_samples is not None and max_train_samples < len(splits.train):
        if not hasattr(splits.train, "subset"):
            raise ValueError(f"dataset {name!r} cannot be subsampled: its training split has no subset method")
        chosen = stratified_subset(splits.train.labels, int(max_train_samples), seed + 101)
        splits.train = splits.train.subset(chosen)
        splits.info["max_train_samples"] = int(max_train_samples)
    if label_noise > 0:
        clean = splits.train.labels
        noisy = flip_labels(clean, label_noise, splits.num_classes, seed=seed + 7919, pairs=noise_pairs)
        splits.train = splits.train.with_labels(noisy, clean)
        splits.info["label_noise"] = {"rate": label_noise, "pairs": noise_pairs,
                                      "flipped": int(np.sum(noisy != clean))}
    return splits


__all__ = ["DatasetSplits", "LabeledSplit", "TensorSplit", "iterate_batches", "load_dataset",
           "load_digits_splits", "flip_labels", "LOADERS", "loader_options", "DatasetError", "DatasetNotFoundError"]
