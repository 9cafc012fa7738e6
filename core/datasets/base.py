"""Labelled image splits with stable sample ids, and the bundle of train/validation/test splits."""

from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class LabeledSplit(Dataset):
    """A split of a classification dataset whose samples keep a stable id.

    Subclasses return ``(image, label)`` from ``__getitem__`` with ``image`` a normalised float
    tensor of shape ``(C, H, W)`` and ``label`` the given (possibly noisy) class index. They expose
    ``labels`` (int64 NumPy array of given labels), ``sample_ids`` (list of str), ``true_labels``
    (int64 array, or None when no label noise was injected) and ``display_image(i)`` for the app.
    """

    labels: np.ndarray
    sample_ids: list
    true_labels: Optional[np.ndarray] = None

    def display_image(self, index: int) -> np.ndarray:
        """Return sample ``index`` as a uint8 array, ``(H, W)`` or ``(H, W, 3)``, for display."""
        raise NotImplementedError(f"{type(self).__name__} must override display_image")

    def with_labels(self, labels: np.ndarray, true_labels: Optional[np.ndarray]) -> "LabeledSplit":
        """Return a copy of this split whose given labels are ``labels``."""
        raise NotImplementedError(f"{type(self).__name__} must override with_labels")


class TensorSplit(LabeledSplit):
    """A split held in memory as one image tensor, for small datasets such as digits."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, sample_ids: list,
                 display: np.ndarray, true_labels: Optional[np.ndarray] = None):
        if len(images) != len(labels) or len(images) != len(sample_ids):
            raise ValueError(f"images ({len(images)}), labels ({len(labels)}) and sample ids "
                             f"({len(sample_ids)}) must have the same length")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.sample_ids = list(sample_ids)
        self.display = display
        self.true_labels = None if true_labels is None else np.asarray(true_labels, dtype=np.int64)
        self._label_tensor = torch.from_numpy(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self._label_tensor[index]

    def display_image(self, index: int) -> np.ndarray:
        return self.display[index]

    def with_labels(self, labels, true_labels):
        return TensorSplit(self.images, labels, self.sample_ids, self.display, true_labels)

    def subset(self, indices: np.ndarray) -> "TensorSplit":
        """Return the samples at ``indices`` (positions in this split) as a new split."""
        indices = np.asarray(indices, dtype=np.int64)
        true = None if self.true_labels is None else self.true_labels[indices]
        return TensorSplit(self.images[torch.from_numpy(indices)], self.labels[indices],
                           [self.sample_ids[i] for i in indices], self.display[indices], true)


@dataclass
class DatasetSplits:
    """Train, validation and test splits of one dataset, with what describes them.

    Validation is used only to compute influence and to choose the drop set; test is used only
    to report error, never to decide what to drop.
    """

    name: str
    train: LabeledSplit
    val: LabeledSplit
    test: LabeledSplit
    num_classes: int
    in_channels: int
    class_names: list
    fingerprint: str
    info: dict = field(default_factory=dict)
    #: The test split as image files that can be decoded again at another size (a ``FileSplit``),
    #: which ten-crop evaluation needs; None for datasets that are not read from image files.
    test_files: Optional[object] = None


def iterate_batches(data, batch_size: int, shuffle: bool = False,
                    generator: Optional[torch.Generator] = None,
                    indices: Optional[np.ndarray] = None) -> Iterator:
    """Yield ``(inputs, targets, positions)`` batches from a split, a Dataset or a DataLoader.

    ``positions`` are the int64 positions of the batch's samples in ``data``. ``indices``
    restricts iteration to those positions. A ``TensorSplit`` is sliced directly, which is much
    faster than a DataLoader for small in-memory data. A DataLoader is iterated as it is, in which
    case ``shuffle`` and ``indices`` must be left unset.
    """
    if isinstance(data, DataLoader):
        if shuffle or indices is not None:
            raise ValueError("pass a Dataset, not a DataLoader, to shuffle or select indices")
        start = 0
        for inputs, targets in data:
            yield inputs, targets, torch.arange(start, start + len(targets))
            start += len(targets)
        return

    positions = torch.arange(len(data)) if indices is None else torch.as_tensor(indices, dtype=torch.int64)
    if shuffle:
        positions = positions[torch.randperm(len(positions), generator=generator)]
    for start in range(0, len(positions), batch_size):
        batch = positions[start:start + batch_size]
        if isinstance(data, TensorSplit):
            yield data.images[batch], data._label_tensor[batch], batch
        elif hasattr(data, "tensors"):
            yield data.tensors[0][batch], data.tensors[1][batch], batch
        else:
            items = [data[int(i)] for i in batch]
            yield torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items]), batch
