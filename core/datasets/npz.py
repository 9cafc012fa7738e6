"""Image arrays from one NumPy ``.npz`` file.

Accepted keys: ``x_train``, ``y_train``, ``x_test``, ``y_test`` (optionally ``x_val``, ``y_val``),
or ``x`` and ``y`` alone, from which test and validation are carved (stratified, seeded). An
optional ``class_names`` array names the classes. Images are ``(N, H, W)``, ``(N, H, W, C)`` or
``(N, C, H, W)`` with C in 1, 3, 4 (the last axis is taken as channels when it has that size).

Pixel values map to [0, 1] by one rule for the whole file, chosen from the training array. uint8
divides by 255 and uint16 by 65,535. Bool values and floats within [0, 1] are kept, and floats
within [0, 255] divide by 255. Anything else is scaled by the training array's minimum and maximum.
The file is opened with ``allow_pickle=False``.
"""

import logging
import os
import zipfile
import zlib
from typing import Optional

import numpy as np
import torch

from core.datasets.arrays import Pixels, build_array_splits
from core.datasets.base import DatasetSplits
from core.datasets.checks import DatasetError, DatasetNotFoundError, check_label_values, whole_number_labels
from core.datasets.fingerprint import combine, fingerprint_files
from core.datasets.holdout import check_fraction_sum, holdout_fraction, stratified_holdout

logger = logging.getLogger(__name__)


def find_file(data_dir, file: Optional[str]) -> str:
    """Return the ``.npz`` path: ``data_dir`` itself, ``data_dir/file``, or the only ``.npz`` in ``data_dir``."""
    if data_dir is None:
        raise DatasetNotFoundError("dataset 'npz' needs data_dir: an .npz file with x_train, y_train, x_test, "
                                   "y_test (or x, y), or the folder containing it")
    path = os.path.abspath(os.path.expanduser(str(data_dir)))
    if file:
        path = os.path.join(path, file)
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        found = sorted(name for name in os.listdir(path) if name.lower().endswith(".npz"))
        if len(found) == 1:
            return os.path.join(path, found[0])
        raise DatasetNotFoundError(f"folder {path} contains {len(found)} .npz files ({found[:5]}); pass data_dir as "
                                   f"the file itself or the dataset option file=NAME")
    raise DatasetNotFoundError(f"npz file {path} not found; pass the path of an .npz file as data_dir")


def _open_archive(path: str):
    """Open ``path`` with ``np.load``, raising ``DatasetError`` unless it is a readable zip of arrays.

    ``np.load`` treats any file that is neither zip nor ``.npy`` as a pickle and, with
    ``allow_pickle=False``, reports "pickled (object) data". That wording is wrong for a text file,
    so the zip signature is checked first.
    """
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        kind = "a single .npy array" if magic == b"\x93NUM" else "not a zip archive"
        raise DatasetError(f"{path} is not a NumPy .npz archive ({kind}); write one with "
                           f"numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) or "
                           f"numpy.savez(path, x=..., y=...)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DatasetError(f"{path} could not be read as a NumPy .npz archive ({type(error).__name__}: "
                           f"{error}); it may be truncated or damaged, so write it again with "
                           f"numpy.savez") from error


def to_nchw(images: np.ndarray, key: str, path: str) -> np.ndarray:
    """Return ``images`` as ``(N, C, H, W)``; raise naming ``key`` when the layout is unclear."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[-1] in (1, 3, 4):
        return images.transpose(0, 3, 1, 2)
    if images.ndim == 4 and images.shape[1] in (1, 3, 4):
        return images
    raise DatasetError(f"{key} in {path} has shape {images.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W) "
                       f"with C in 1, 3, 4")


def value_mapping(train: np.ndarray) -> tuple:
    """Return ``(scale, offset)`` mapping the training array's values to [0, 1] (module rules)."""
    if train.dtype == np.uint8:
        return 1 / 255, 0.0
    if train.dtype == np.uint16:
        return 1 / 65535, 0.0
    if train.dtype == np.bool_:
        return 1.0, 0.0
    low, high = float(train.min()), float(train.max())
    if low >= 0 and high <= 1:
        return 1.0, 0.0
    if low >= 0 and high <= 255:
        return 1 / 255, 0.0
    span = max(high - low, 1e-12)
    return 1 / span, -low / span


def _check_finite(images: np.ndarray, key: str, path: str) -> None:
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        first = int(np.flatnonzero(~np.isfinite(images.reshape(len(images), -1)).all(axis=1))[0])
        raise DatasetError(f"{key}[{first}] in {path} contains NaN or infinity; fix or remove that image")


def _array(archive, key: str, path: str) -> np.ndarray:
    """Return array ``key``; an object array, which needs pickle to load, raises ``DatasetError``."""
    try:
        return np.asarray(archive[key])
    except ValueError as error:
        raise DatasetError(f"{key} in {path} cannot be loaded ({error}); save it as a numeric array, not an "
                           f"array of Python objects") from None


def _whole_labels(labels: np.ndarray, key: str, path: str) -> np.ndarray:
    """Return ``labels`` as int64, raising ``DatasetError`` naming ``key`` unless they are whole numbers."""
    if labels.dtype.kind not in "biuf":
        raise DatasetError(f"{key} in {path} has dtype {labels.dtype} (first values {labels[:3].tolist()}); "
                           f"labels must be whole numbers 0..C-1 for C classes. Put the class names in a "
                           f"class_names array and their indices in {key}, e.g. with "
                           f"class_names, {key} = numpy.unique({key}, return_inverse=True) before numpy.savez")
    return whole_number_labels(labels, lambda i: f"{key}[{i}] in {path}")


def _read(archive, path: str, keys: list, split: str) -> tuple:
    x_key, y_key = keys
    images, labels = _array(archive, x_key, path), _array(archive, y_key, path)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(f"{y_key} in {path} has shape {labels.shape} for {len(images)} images in {x_key}; "
                           f"expected one label per image")
    labels = _whole_labels(labels, y_key, path)
    _check_finite(images, x_key, path)
    ids = [f"{split}-{i:06d}" for i in range(len(labels))]
    return to_nchw(images, x_key, path), labels, ids


def load_npz(seed: int = 0, data_dir=None, file: Optional[str] = None, class_names: Optional[list] = None,
             num_classes: Optional[int] = None, val_fraction: float = 0.1, test_fraction: float = 0.15,
             whiten=None) -> DatasetSplits:
    """Load image arrays from an ``.npz`` file (see the module docstring for keys and value rules).

    The class range is ``len(class_names)`` (from the option or the file), else ``num_classes``,
    else the largest label + 1. Labels outside it raise an error naming the array and position.
    Sample ids are ``train-000042``, ``val-000042`` and ``test-000042`` (or ``item-000042`` for
    ``x``/``y`` files), the position in each array.
    """
    val_fraction = holdout_fraction("npz", "val_fraction", val_fraction)
    test_fraction = holdout_fraction("npz", "test_fraction", test_fraction)
    path = find_file(data_dir, file)
    with _open_archive(path) as archive:
        keys = set(archive.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            layout = {"train": ["x_train", "y_train"], "test": ["x_test", "y_test"]}
            if {"x_val", "y_val"} <= keys:
                layout["val"] = ["x_val", "y_val"]
        elif {"x", "y"} <= keys:
            layout = {"item": ["x", "y"]}
        else:
            raise DatasetError(f"{path} has arrays {sorted(keys)}; expected x_train, y_train, x_test, y_test "
                               f"(optionally x_val, y_val) or x and y")
        carved = {option: share for option, split, share in (("test_fraction", "test", test_fraction),
                                                               ("val_fraction", "val", val_fraction))
                  if split not in layout}
        check_fraction_sum("npz", carved)
        arrays = {split: _read(archive, path, pair, split) for split, pair in layout.items()}
        if class_names is None and "class_names" in keys:
            class_names = [str(name) for name in archive["class_names"].tolist()]

    return _build(path, arrays, layout, class_names, num_classes, val_fraction, test_fraction, whiten, seed)


def _build(path, arrays, layout, class_names, num_classes, val_fraction, test_fraction, whiten, seed):
    first = "train" if "train" in arrays else "item"
    classes = len(class_names) if class_names is not None else num_classes
    if classes is None:
        classes = int(max(np.max(labels) for _, labels, _ in arrays.values() if len(labels))) + 1
    labelled = {}
    for split, (images, labels, ids) in arrays.items():
        y_key = layout[split][1]
        values = check_label_values(labels, classes, lambda i, k=y_key: f"{k}[{i}] in {path}")
        labelled[split] = Pixels(torch.from_numpy(np.ascontiguousarray(images)), values, ids)
    names = list(class_names) if class_names is not None else [str(i) for i in range(classes)]
    scale, offset = value_mapping(arrays[first][0])

    pool = labelled[first]
    if "test" not in labelled:
        kept, held = stratified_holdout(pool.labels, test_fraction, seed + 11)
        labelled["test"], pool = pool.take(held), pool.take(kept)
    if "val" not in labelled:
        kept, held = stratified_holdout(pool.labels, val_fraction, seed + 17)
        labelled["val"], pool = pool.take(held), pool.take(kept)

    empty = sorted(set(range(classes)) - set(np.unique(pool.labels).tolist()))
    if empty:
        logger.warning("npz %s: class(es) %s have no training samples", path, [names[c] for c in empty])
    digest, _ = fingerprint_files(os.path.dirname(path), [os.path.basename(path)], content_limit=float("inf"))
    fingerprint = combine(digest, pool.ids, labelled["val"].ids, labelled["test"].ids)
    info = {"source": path, "value_scale": scale, "value_offset": offset}
    return build_array_splits("npz", pool, labelled["val"], labelled["test"], names, fingerprint, info,
                              scale=scale, offset=offset, whiten=whiten, seed=seed)
