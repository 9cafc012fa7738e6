"""File-backed splits: images stay on disk and are decoded when a batch reads them.

A folder of a million images takes one path string per image in memory. Batches decode their
files on a shared thread pool (PIL releases the GIL while decoding), so a batch of 256 JPEGs
decodes on several cores.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch

from core.datasets.base import TensorSplit
from core.datasets.checks import DatasetError
from core.datasets.images import DecodeSpec, ImageRejected, read_image

_POOL: Optional[ThreadPoolExecutor] = None


def decode_pool() -> ThreadPoolExecutor:
    """Return the process-wide thread pool for decoding images (created on first use)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1), thread_name_prefix="decode")
    return _POOL


class DecodedFiles:
    """Indexable like a float tensor of normalised images, decoded from files on access.

    ``view[i]`` gives ``(C, H, W)``, ``view[index_tensor]`` gives ``(len(index), C, H, W)``, float32.
    A file that fails to decode here raises ``DatasetError`` naming it: with ``verify="header"``
    loading checked only its header, or the file changed after loading.
    """

    def __init__(self, root: str, paths: list, spec: DecodeSpec, mean, std):
        self.root = root
        self.paths = paths
        self.spec = spec
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple:
        return (len(self.paths), self.spec.channels, *self.spec.size)

    def pixels(self, index: int) -> np.ndarray:
        """Decode file ``index`` to uint8 ``(H, W, C)``."""
        path = os.path.join(self.root, self.paths[index])
        try:
            return read_image(path, self.spec)
        except ImageRejected as error:
            raise DatasetError(f"image {path} cannot be decoded ({error.reason}). Loading with verify='full' "
                               f"skips such files; fix or remove the file and start a new run") from None

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self._normalise(np.stack([self.pixels(int(index))]))[0]
        positions = np.asarray(index, dtype=np.int64).reshape(-1)
        decoded = list(decode_pool().map(self.pixels, positions.tolist()))
        return self._normalise(np.stack(decoded) if decoded else np.zeros((0, *self.spec.size, self.spec.channels),
                                                                          np.uint8))

    def _normalise(self, batch: np.ndarray) -> torch.Tensor:
        values = torch.from_numpy(batch).permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return (values - self.mean) / self.std


class FileSplit(TensorSplit):
    """A split of image files under ``root``; ``images`` is a ``DecodedFiles`` view.

    ``normalization`` is ``(mean, std)`` per channel of the [0, 1] pixel values.
    """

    def __init__(self, root: str, paths: list, labels: np.ndarray, sample_ids: list, spec: DecodeSpec,
                 normalization: tuple, true_labels: Optional[np.ndarray] = None):
        self.root = root
        self.paths = list(paths)
        self.spec = spec
        self.normalization = normalization
        view = DecodedFiles(root, self.paths, spec, normalization[0], normalization[1])
        super().__init__(view, labels, sample_ids, display=None, true_labels=true_labels)

    def display_image(self, index: int) -> np.ndarray:
        image = self.images.pixels(index)
        return image[..., 0] if image.shape[2] == 1 else image

    def with_labels(self, labels, true_labels):
        return FileSplit(self.root, self.paths, labels, self.sample_ids, self.spec, self.normalization, true_labels)

    def subset(self, indices: np.ndarray) -> "FileSplit":
        indices = np.asarray(indices, dtype=np.int64)
        true = None if self.true_labels is None else self.true_labels[indices]
        return FileSplit(self.root, [self.paths[i] for i in indices], self.labels[indices],
                         [self.sample_ids[i] for i in indices], self.spec, self.normalization, true)

    def resized(self, size: tuple, resize: Optional[int] = None) -> "FileSplit":
        """Return the same files decoded at another ``size`` (and ``resize``), e.g. 256 for 10-crop testing."""
        spec = DecodeSpec(self.spec.channels, tuple(size), resize, self.spec.max_pixels, self.spec.float_range)
        return FileSplit(self.root, self.paths, self.labels, self.sample_ids, spec, self.normalization,
                         self.true_labels)
