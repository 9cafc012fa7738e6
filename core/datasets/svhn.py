"""SVHN (cropped digits) from the standard ``.mat`` files, with data dropout's validation split.

Files: ``train_32x32.mat`` (73,257 images), ``test_32x32.mat`` (26,032) and optionally
``extra_32x32.mat`` (531,131), each with ``X`` of shape (32, 32, 3, N) and ``y`` of shape (N, 1),
where label 10 means the digit 0. Validation takes 400 images per class from train and 200 per
class from extra (6,000 in all, as Wang, Huan and Li (2018, "Data Dropout") do); training is the rest of train and extra (598,388 images, 1.8 GB
as uint8). Without the extra file, validation takes 600 per class from train.
"""

import logging
import os
from typing import Optional

import numpy as np
import scipy.io
import torch

from core.datasets.arrays import Pixels, build_array_splits
from core.datasets.base import DatasetSplits
from core.datasets.checks import DatasetError, DatasetNotFoundError
from core.datasets.fingerprint import combine, fingerprint_files
from core.datasets.holdout import per_class_holdout

logger = logging.getLogger(__name__)

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def find_folder(data_dir) -> str:
    """Return the folder containing ``train_32x32.mat``: ``data_dir`` itself or ``data_dir/svhn``."""
    if data_dir is None:
        raise DatasetNotFoundError(f"dataset 'svhn' needs data_dir: a folder containing {FILES['train']} and "
                                   f"{FILES['test']} (and optionally {FILES['extra']}) from {SVHN_URL}")
    data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
    for folder in (data_dir, os.path.join(data_dir, "svhn")):
        if os.path.isfile(os.path.join(folder, FILES["train"])):
            return folder
    raise DatasetNotFoundError(f"SVHN file {os.path.join(data_dir, FILES['train'])} not found; download "
                               f"{FILES['train']} and {FILES['test']} (format 2, cropped digits) from {SVHN_URL} "
                               f"into {data_dir}")


def read_mat(path: str, part: str) -> tuple:
    """Return ``(images (N, 3, 32, 32) uint8, labels 0..9)`` from one SVHN ``.mat`` file."""
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"SVHN file {path} not found; download {os.path.basename(path)} from {SVHN_URL} "
                                   f"into {os.path.dirname(path)}")
    try:
        contents = scipy.io.loadmat(path)
    except (ValueError, OSError, TypeError) as error:
        raise DatasetError(f"{path} is not a readable MATLAB file ({error}); download it again") from None
    if "X" not in contents or "y" not in contents:
        raise DatasetError(f"{path} lacks the X and y arrays of an SVHN file (found {sorted(k for k in contents if not k.startswith('__'))})")

    images, labels = contents["X"], np.asarray(contents["y"]).reshape(-1)
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
        raise DatasetError(f"{path}: X has shape {images.shape} for {len(labels)} labels; expected (32, 32, 3, N)")
    bad = np.flatnonzero((labels < 0) | (labels > 10))
    if len(bad):
        raise DatasetError(f"{path}: label {labels[bad[0]]} at position {bad[0]} of {part} is outside 1..10 "
                           f"(10 means the digit 0); download the file again")
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1), dtype=np.uint8))
    return pixels, (labels % 10).astype(np.int64)


def load_svhn(seed: int = 0, data_dir=None, use_extra: Optional[bool] = None, val_per_class_train: int = 400,
              val_per_class_extra: int = 200, whiten=None) -> DatasetSplits:
    """Load SVHN from ``data_dir``; ``use_extra`` None uses ``extra_32x32.mat`` when it is there.

    Sample ids are ``svhn-train-000042``, ``svhn-extra-000042`` and ``svhn-test-000042``, the
    position in each file.
    """
    folder = find_folder(data_dir)
    extra_path = os.path.join(folder, FILES["extra"])
    if use_extra is None:
        use_extra = os.path.isfile(extra_path)
        if not use_extra:
            logger.info("SVHN: %s not found, training on train_32x32.mat alone", extra_path)

    train_images, train_labels = read_mat(os.path.join(folder, FILES["train"]), "train")
    test_images, test_labels = read_mat(os.path.join(folder, FILES["test"]), "test")
    train = Pixels(train_images, train_labels, [f"svhn-train-{i:06d}" for i in range(len(train_labels))])
    test = Pixels(test_images, test_labels, [f"svhn-test-{i:06d}" for i in range(len(test_labels))])

    if use_extra:
        kept, held = per_class_holdout(train_labels, val_per_class_train, seed, FILES["train"], "val_per_class_train")
        extra_images, extra_labels = read_mat(extra_path, "extra")
        extra = Pixels(extra_images, extra_labels, [f"svhn-extra-{i:06d}" for i in range(len(extra_labels))])
        extra_kept, extra_held = per_class_holdout(extra_labels, val_per_class_extra, seed + 1, FILES["extra"],
                                                   "val_per_class_extra")
        parts = [(train, kept, held), (extra, extra_kept, extra_held)]
    else:
        kept, held = per_class_holdout(train_labels, val_per_class_train + val_per_class_extra, seed, FILES["train"],
                                       "val_per_class_train")
        parts = [(train, kept, held)]

    training = _concatenate([source.take(k) for source, k, _ in parts])
    validation = _concatenate([source.take(h) for source, _, h in parts])
    files = [FILES["train"], FILES["test"]] + ([FILES["extra"]] if use_extra else [])
    digest, _ = fingerprint_files(folder, files, content_limit=float("inf"))
    quotas = (f"{val_per_class_train} per class from train and {val_per_class_extra} per class from extra"
              if use_extra else f"{val_per_class_train + val_per_class_extra} per class from train")
    info = {"source": folder, "use_extra": bool(use_extra),
            "validation": f"{len(validation.labels)} images, {quotas}, seed {seed}"}
    return build_array_splits("svhn", training, validation, test, [str(d) for d in range(10)],
                              combine(digest, *[h for _, _, h in parts]), info, whiten=whiten, seed=seed)


def _concatenate(pieces: list) -> Pixels:
    if len(pieces) == 1:
        return pieces[0]
    return Pixels(torch.cat([p.images for p in pieces]), np.concatenate([p.labels for p in pieces]),
                  [i for p in pieces for i in p.ids])
