"""Checks every loader runs before a dataset is used, with errors that name the value and the fix."""

from typing import Optional, Sequence

import numpy as np


class DatasetError(ValueError):
    """A dataset that cannot be used as it is; the message names the file, row or class and the fix."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file or folder that is missing; the message names where to put it."""


def check_splits(name: str, train_labels: np.ndarray, val_labels: np.ndarray, test_labels: np.ndarray,
                 class_names: Sequence[str]) -> None:
    """Raise ``DatasetError`` unless training has >= 2 classes, and validation and test are non-empty
    and hold only classes that training has."""
    train_classes = np.unique(train_labels)
    if len(train_classes) < 2:
        found = [class_names[int(c)] for c in train_classes]
        raise DatasetError(f"dataset {name!r} has training samples of {len(found)} class(es) {found}; "
                           f"influence and classification need at least 2 classes, so add images of another class")

    for split, labels in (("validation", val_labels), ("test", test_labels)):
        if len(labels) == 0:
            raise DatasetError(f"the {split} split of dataset {name!r} is empty; add {split} samples or raise "
                               f"the {split} fraction (dataset option val_fraction or test_fraction)")
        missing = sorted(set(np.unique(labels).tolist()) - set(train_classes.tolist()))
        if missing:
            names = [class_names[int(c)] for c in missing]
            raise DatasetError(f"the {split} split of dataset {name!r} has class(es) {names} that the training "
                               f"split lacks; add training samples of them or remove them from the {split} split")


def check_label_values(labels: np.ndarray, num_classes: int, describe) -> np.ndarray:
    """Return ``labels`` as int64 after checking they are whole numbers in ``0..num_classes-1``.

    ``describe(position)`` names a bad entry (a CSV line, an array and index) in the error.
    """
    values = whole_number_labels(labels, describe, num_classes)
    negative = np.flatnonzero(values < 0)
    if len(negative):
        raise DatasetError(f"label {int(values[negative[0]])} at {describe(int(negative[0]))} is negative "
                           f"({len(negative)} negative label(s)); labels are class indices counted from 0, so "
                           f"renumber the classes as 0..C-1")
    bad = np.flatnonzero(values >= num_classes)
    if len(bad):
        raise DatasetError(f"label {int(values[bad[0]])} at {describe(int(bad[0]))} is outside the class range "
                           f"0..{num_classes - 1} ({len(bad)} label(s) out of range); fix the label, or declare "
                           f"more classes (class_names or num_classes)")
    return values


def whole_number_labels(labels: np.ndarray, describe, num_classes: Optional[int] = None) -> np.ndarray:
    """Return ``labels`` as int64 after checking that they are finite whole numbers (any sign).

    Integer and bool arrays pass as they are, float arrays only without fractions, NaN or
    infinity. ``describe(position)`` names a bad entry in the error, and ``num_classes``, when
    known, gives the expected range there.
    """
    values = np.asarray(labels)
    expected = f"0..{num_classes - 1}" if num_classes is not None else "0..C-1 for C classes"
    if values.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if len(bad):
            raise DatasetError(f"label {values[bad[0]].item()!r} at {describe(int(bad[0]))} is not a whole number; "
                               f"labels must be class indices {expected}")
    elif values.dtype.kind not in "iub":
        raise DatasetError(f"labels have type {values.dtype}; expected integer class indices {expected}")
    return values.astype(np.int64)
