"""Seeded label noise for demonstrations: flip a fraction of training labels and keep the truth."""

from typing import Optional, Sequence

import numpy as np


def flip_labels(labels: np.ndarray, rate: float, num_classes: int, seed: int,
                pairs: Optional[Sequence[tuple]] = None) -> np.ndarray:
    """Return a copy of ``labels`` with ``round(rate * n)`` of them changed to a wrong class.

    Symmetric noise (``pairs`` None) moves each chosen sample to a uniformly drawn other class.
    With ``pairs`` such as ``[(3, 5), (7, 1)]``, only samples of a pair's first class are chosen and
    each moves to the pair's second class. The same ``seed`` always flips the same samples.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label noise rate {rate} must be in [0, 1)")
    labels = np.asarray(labels, dtype=np.int64)
    noisy = labels.copy()
    rng = np.random.default_rng(seed)

    if pairs:
        mapping = {int(a): int(b) for a, b in pairs}
        bad = [b for b in mapping.values() if not 0 <= b < num_classes]
        if bad or any(not 0 <= a < num_classes for a in mapping):
            raise ValueError(f"noise pairs {list(pairs)} name classes outside 0..{num_classes - 1}")
        candidates = np.flatnonzero(np.isin(labels, list(mapping)))
        count = min(int(round(rate * len(labels))), len(candidates))
        chosen = rng.choice(candidates, size=count, replace=False)
        noisy[chosen] = [mapping[int(label)] for label in labels[chosen]]
        return noisy

    if num_classes < 2:
        raise ValueError("label noise needs at least two classes")
    count = int(round(rate * len(labels)))
    chosen = rng.choice(len(labels), size=count, replace=False)
    offsets = rng.integers(1, num_classes, size=count)
    noisy[chosen] = (labels[chosen] + offsets) % num_classes
    return noisy
