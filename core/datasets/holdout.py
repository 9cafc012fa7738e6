"""Seeded, stratified hold-outs: validation and test splits, per-class quotas, training subsets.

Unlike ``splitting.stratified_split`` these take an exact total (5,000 of CIFAR's 50,000) or a
fixed count per class (SVHN's 400 + 200). They never take a class's last sample from the pool
they hold out from, so the remaining split keeps every class it had.
"""

import numbers
from typing import Union

import numpy as np

from core.datasets.checks import DatasetError


#: Split held out by each fraction option, as error messages name it.
_FRACTION_SPLITS = {"val_fraction": "validation", "test_fraction": "test"}


def holdout_fraction(name: str, option: str, value) -> float:
    """Return ``value`` as a float after checking that it is a share above 0 and below 1.

    ``name`` (the dataset) and ``option`` (``val_fraction`` or ``test_fraction``) name the value
    in the ``DatasetError``.
    """
    split = _FRACTION_SPLITS.get(option, option)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DatasetError(f"dataset {name!r}: {option} must be a number above 0 and below 1, got {value!r}; "
                           f"pass a share such as {option}=0.1")
    share = float(value)
    if share == 0:
        raise DatasetError(f"with {option} {value!r} the {split} split of dataset {name!r} is empty; set {option} "
                           f"above 0 and below 1, such as 0.1")
    if not 0 < share < 1:
        raise DatasetError(f"dataset {name!r}: {option} must be above 0 and below 1, got {value!r}; it is the share "
                           f"of the training samples held out for the {split} split, so pass a share such as 0.1")
    return share


def check_fraction_sum(name: str, fractions: dict) -> None:
    """Raise ``DatasetError`` when the fractions held out of one training pool add up to 1 or more.

    ``fractions`` maps each option (``test_fraction``, ``val_fraction``) to its share. The loaders
    hold them out one after another, so training keeps the product of ``1 - share``. The sum is
    checked because users read the fractions as shares of the whole.
    """
    total = sum(fractions.values())
    if total < 1:
        return
    kept = float(np.prod([1 - share for share in fractions.values()]))
    listed = " and ".join(f"{option} {share:g}" for option, share in fractions.items())
    raise DatasetError(f"dataset {name!r}: {listed} add up to {total:g}, which leaves training {kept:.0%} of the "
                       f"samples; lower them so that they add up to less than 1")


def allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Share ``total`` among classes in proportion to ``counts`` (largest remainder), at most ``count - 1`` each."""
    capacity = np.maximum(counts - 1, 0)
    total = int(min(total, capacity.sum()))
    if total <= 0:
        return np.zeros_like(counts)
    exact = counts * (total / counts.sum())
    quota = np.minimum(np.floor(exact).astype(np.int64), capacity)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    while quota.sum() < total:
        for c in order:
            if quota.sum() == total:
                break
            if quota[c] < capacity[c]:
                quota[c] += 1
    return quota


def _take_per_class(labels: np.ndarray, quota: dict, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    held = []
    for label in sorted(quota):
        members = np.flatnonzero(labels == label)
        held.extend(rng.permutation(members)[:quota[label]])
    held = np.sort(np.asarray(held, dtype=np.int64))
    kept = np.setdiff1d(np.arange(len(labels)), held)
    return kept, held


def stratified_holdout(labels: np.ndarray, amount: Union[int, float], seed: int) -> tuple:
    """Hold out ``amount`` samples (an int) or that share (a float below 1), stratified by label.

    Returns ``(kept, held)``: sorted int64 positions. The same labels and seed give the same split.
    """
    labels = np.asarray(labels)
    total = int(round(amount * len(labels))) if isinstance(amount, float) and amount < 1 else int(amount)
    if total < 0:
        raise DatasetError(f"cannot hold out {amount} samples; use a positive count or a share below 1")
    classes, counts = np.unique(labels, return_counts=True)
    quota = allocate(counts, total)
    return _take_per_class(labels, dict(zip(classes.tolist(), quota.tolist())), seed)


def per_class_holdout(labels: np.ndarray, per_class: int, seed: int, source: str, option: str) -> tuple:
    """Hold out exactly ``per_class`` samples of every class present; ``source`` and ``option`` name them in errors."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    short = [(int(c), int(n)) for c, n in zip(classes, counts) if n <= per_class]
    if short:
        raise DatasetError(f"{source} has too few images of class(es) {short} (class, count) to hold out "
                           f"{per_class} per class and keep one for training; pass a smaller {option}")
    return _take_per_class(labels, {int(c): per_class for c in classes}, seed)


def stratified_subset(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Return sorted positions of ``count`` samples drawn stratified by label, at least one per class.

    Raises ``DatasetError`` when ``count`` is below the number of classes.
    """
    labels = np.asarray(labels)
    if count >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    if count < len(classes):
        raise DatasetError(f"max_train_samples {count} is below the number of training classes ({len(classes)}); "
                           f"keep at least one sample per class")
    # One per class first; ``allocate`` caps each class at count - 1, so the total stays within it.
    quota = 1 + allocate(counts, count - len(classes))
    _, chosen = _take_per_class(labels, dict(zip(classes.tolist(), quota.tolist())), seed + 31)
    return chosen
