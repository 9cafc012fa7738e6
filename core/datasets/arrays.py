"""In-memory image arrays kept in their stored type (uint8 for CIFAR and SVHN), normalised per batch.

SVHN's training and extra images take 1.9 GB as uint8 and 7.4 GB as float32, so the pixels stay
as stored and each batch is converted when it is read. The conversion is ``value = pixels * scale
+ offset`` in [0, 1], then ``(value - mean) / std`` per channel with training statistics, then
optional ZCA whitening.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from core.datasets.base import DatasetSplits, TensorSplit
from core.datasets.checks import check_splits

#: Images per chunk when computing statistics, to bound the float64 copy.
_STATS_CHUNK = 4096
#: Training images used to estimate the ZCA whitening matrix.
ZCA_SAMPLES = 10_000
#: Added to the covariance eigenvalues of unit-variance pixels before whitening.
ZCA_EPSILON = 0.1
#: Largest C*H*W that ZCA whitening accepts: its matrix has (C*H*W)^2 float32 entries (600 MB here).
ZCA_MAX_DIMENSION = 12_288


@dataclass
class Pixels:
    """One split's stored images ``(N, C, H, W)``, labels and stable sample ids."""

    images: torch.Tensor
    labels: np.ndarray
    ids: list

    def take(self, positions: np.ndarray) -> "Pixels":
        positions = np.asarray(positions, dtype=np.int64)
        return Pixels(self.images[torch.from_numpy(positions)], np.asarray(self.labels)[positions],
                      [self.ids[i] for i in positions])


class NormalizedImages:
    """Indexable like a float tensor of normalised images, computed on access from stored pixels.

    ``view[i]`` gives ``(C, H, W)``, ``view[index_tensor]`` gives ``(len(index), C, H, W)``, float32.
    """

    def __init__(self, pixels: torch.Tensor, scale: float, offset: float, mean, std,
                 whitening: Optional[tuple] = None):
        self.pixels = pixels
        self.scale = float(scale)
        self.offset = float(offset)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.whitening = whitening

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def shape(self) -> tuple:
        return tuple(self.pixels.shape)

    def __getitem__(self, index):
        raw = self.pixels[index]
        single = raw.dim() == 3
        batch = raw.unsqueeze(0) if single else raw
        values = (batch.to(torch.float32) * self.scale + self.offset - self.mean) / self.std
        if self.whitening is not None:
            centre, matrix = self.whitening
            values = ((values.flatten(1) - centre) @ matrix).view(values.shape)
        return values[0] if single else values


class ArraySplit(TensorSplit):
    """A split of in-memory pixels; ``images`` is a ``NormalizedImages`` view, so batches are sliced fast.

    ``normalization`` is ``(mean, std)`` per channel of the [0, 1] pixel values.
    """

    def __init__(self, pixels: Pixels, scale: float, offset: float, normalization: tuple,
                 whitening: Optional[tuple] = None, true_labels: Optional[np.ndarray] = None):
        self.stored = pixels
        self.normalization = normalization
        self._settings = (scale, offset, normalization, whitening)
        view = NormalizedImages(pixels.images, scale, offset, normalization[0], normalization[1], whitening)
        super().__init__(view, pixels.labels, pixels.ids, display=None, true_labels=true_labels)

    def display_image(self, index: int) -> np.ndarray:
        scale, offset = self._settings[:2]
        values = self.stored.images[index].to(torch.float32) * scale + offset
        image = (values.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return image[..., 0] if image.shape[2] == 1 else image[..., :3]

    def with_labels(self, labels, true_labels):
        return ArraySplit(Pixels(self.stored.images, np.asarray(labels), self.stored.ids), *self._settings,
                          true_labels=true_labels)

    def subset(self, indices: np.ndarray) -> "ArraySplit":
        indices = np.asarray(indices, dtype=np.int64)
        true = None if self.true_labels is None else self.true_labels[indices]
        taken = self.stored.take(indices)
        return ArraySplit(Pixels(taken.images, self.labels[indices], taken.ids), *self._settings, true_labels=true)


def channel_statistics(images: torch.Tensor, scale: float, offset: float) -> tuple:
    """Return per-channel ``(mean, std)`` lists of ``images * scale + offset`` over all pixels."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), _STATS_CHUNK):
        values = images[start:start + _STATS_CHUNK].to(torch.float64) * scale + offset
        total += values.sum(dim=(0, 2, 3))
        squares += (values ** 2).sum(dim=(0, 2, 3))
    count = images.numel() / channels
    mean = total / count
    std = (squares / count - mean ** 2).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.tolist(), std.tolist()


def zca_whitening(view: NormalizedImages, seed: int) -> tuple:
    """Estimate ZCA whitening ``(centre, matrix)`` from up to ``ZCA_SAMPLES`` normalised training images.

    Whitened ``x`` is ``(x - centre) @ matrix`` with ``matrix = U (L + eps)^-1/2 U^T`` from the
    eigendecomposition ``U L U^T`` of the pixel covariance. Cost: O(n D^2 + D^3) for D = C*H*W.
    """
    dimension = int(np.prod(view.shape[1:]))
    if dimension > ZCA_MAX_DIMENSION:
        raise ValueError(f"ZCA whitening of {view.shape[1:]} images needs a {dimension}x{dimension} matrix; "
                         f"it supports C*H*W up to {ZCA_MAX_DIMENSION} (64x64 RGB). Drop the whiten option")
    rng = np.random.default_rng(seed + 2718)
    chosen = np.sort(rng.permutation(len(view))[:ZCA_SAMPLES])
    flat = view[torch.from_numpy(chosen)].flatten(1).to(torch.float64)
    centre = flat.mean(dim=0)
    centred = flat - centre
    covariance = centred.T @ centred / len(flat)
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    matrix = (vectors * (eigenvalues.clamp_min(0) + ZCA_EPSILON).rsqrt()) @ vectors.T
    return centre.to(torch.float32), matrix.to(torch.float32)


def build_array_splits(name: str, train: Pixels, val: Pixels, test: Pixels, class_names: list, fingerprint: str,
                       info: dict, scale: float = 1 / 255, offset: float = 0.0, whiten: Optional[str] = None,
                       seed: int = 0) -> DatasetSplits:
    """Check the splits, normalise with training statistics, and bundle them as ``DatasetSplits``.

    ``whiten`` is None or "zca" (statistics and whitening come from the training split only).
    """
    check_splits(name, train.labels, val.labels, test.labels, class_names)
    if whiten not in (None, "none", "zca"):
        raise ValueError(f"unknown whiten option {whiten!r}; use 'zca' or leave it out")

    mean, std = channel_statistics(train.images, scale, offset)
    whitening = None
    if whiten == "zca":
        whitening = zca_whitening(NormalizedImages(train.images, scale, offset, mean, std), seed)

    def make(pixels):
        return ArraySplit(pixels, scale, offset, (mean, std), whitening)

    _, channels, height, width = train.images.shape
    info = {**info, "mean": mean, "std": std, "image_size": [height, width], "channels": channels,
            "whiten": whiten or "none", "storage": f"memory ({train.images.dtype})"}
    return DatasetSplits(name=name, train=make(train), val=make(val), test=make(test), num_classes=len(class_names),
                         in_channels=channels, class_names=list(class_names), fingerprint=fingerprint, info=info)
