"""Seeded stratified splits and dataset fingerprints."""

import hashlib

import numpy as np
from sklearn.model_selection import train_test_split


def stratified_split(labels: np.ndarray, fractions: tuple, seed: int) -> tuple:
    """Split positions ``0..len(labels)-1`` into stratified parts of the given fractions.

    ``fractions`` are ``(train, validation, test)`` and must sum to 1. Returns three sorted int64
    arrays of positions. The split depends only on ``labels`` and ``seed``.
    """
    train_fraction, val_fraction, test_fraction = fractions
    if min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions {fractions} must be positive and sum to 1")

    positions = np.arange(len(labels))
    rest, test = train_test_split(positions, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (train_fraction + val_fraction),
                                  stratify=labels[rest], random_state=seed + 1)
    return np.sort(train), np.sort(val), np.sort(test)


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """Return a SHA-256 hex digest of the arrays' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str((array.shape, array.dtype.str)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
