"""CIFAR-10 and CIFAR-100 from the standard python-pickle folders, with data dropout's validation split.

The folders are the ones torchvision's ``CIFAR10``/``CIFAR100`` read (``cifar-10-batches-py``,
``cifar-100-python``). This module reads the same files itself, because torchvision checks each
file's MD5 sum against the official archive and would reject any other file of the same layout;
the run's fingerprint guards against changed data instead. The pickles are read with an unpickler
that only builds plain containers and NumPy arrays, so a tampered file cannot run code.

Validation holds out 5,000 of the 50,000 training images (10%, stratified, seeded), as Wang, Huan
and Li (2018, "Data Dropout") do; the test batch is the test split.
"""

import os
import pickle

import numpy as np
import torch

from core.datasets.arrays import Pixels, build_array_splits
from core.datasets.base import DatasetSplits
from core.datasets.checks import DatasetError, DatasetNotFoundError, check_label_values
from core.datasets.fingerprint import combine, fingerprint_files
from core.datasets.holdout import holdout_fraction, stratified_holdout

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

_LAYOUTS = {
    "cifar10": {"folder": "cifar-10-batches-py", "archive": "cifar-10-python.tar.gz",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta",
                "labels": "labels", "names": "label_names", "classes": 10},
    "cifar100": {"folder": "cifar-100-python", "archive": "cifar-100-python.tar.gz", "train": ["train"],
                 "test": ["test"], "meta": "meta", "labels": "fine_labels", "names": "fine_label_names",
                 "classes": 100},
}

# Everything a CIFAR pickle needs: NumPy's array reconstruction and, for Python 2 pickles, _codecs.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch file")
        return super().find_class(module, name)


def read_batch(path: str) -> dict:
    """Read one CIFAR pickle into a dict with str keys; raise ``DatasetError`` naming a damaged file."""
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise DatasetError(f"{path} is not a readable CIFAR batch file ({error}); extract the archive again") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path} contains a {type(batch).__name__}, not the dict of a CIFAR batch file")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}


def find_folder(kind: str, data_dir) -> str:
    """Return the folder that contains the CIFAR files: ``data_dir`` itself or its standard subfolder."""
    layout = _LAYOUTS[kind]
    if data_dir is None:
        raise DatasetNotFoundError(f"dataset {kind!r} needs data_dir: the folder holding {layout['folder']}/. "
                                   f"Download {layout['archive']} from {CIFAR_URL} and extract it there")
    data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
    for folder in (os.path.join(data_dir, layout["folder"]), data_dir):
        if os.path.isfile(os.path.join(folder, layout["train"][0])):
            return folder
    raise DatasetNotFoundError(f"{kind} files not found: expected {os.path.join(data_dir, layout['folder'], layout['train'][0])}. "
                               f"Download {layout['archive']} from {CIFAR_URL} and extract it into {data_dir}")


def _read_split(folder: str, names: list, layout: dict, kind: str) -> tuple:
    images, labels = [], []
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DatasetNotFoundError(f"{kind} file {path} is missing; extract {layout['archive']} ({CIFAR_URL}) "
                                       f"again so that {folder} holds {', '.join(layout['train'] + layout['test'])}")
        batch = read_batch(path)
        for key in ("data", layout["labels"]):
            if key not in batch:
                raise DatasetError(f"{path} has no {key!r} entry (found {sorted(batch)}); is it a {kind} batch file?")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(batch[layout["labels"]]):
            raise DatasetError(f"{path}: data has shape {data.shape} for {len(batch[layout['labels']])} labels; "
                               f"expected (N, 3072) uint8 rows of 32x32 RGB images, one per label")
        images.append(data.reshape(-1, 3, 32, 32))
        values = np.asarray(batch[layout["labels"]])
        labels.append(check_label_values(values, layout["classes"], lambda i, p=path: f"position {i} of {p}"))
    return np.concatenate(images), np.concatenate(labels)


def _class_names(folder: str, layout: dict) -> list:
    path = os.path.join(folder, layout["meta"])
    if not os.path.isfile(path):
        return [str(i) for i in range(layout["classes"])]
    names = read_batch(path).get(layout["names"])
    if names is None or len(names) != layout["classes"]:
        raise DatasetError(f"{path} should list {layout['classes']} class names under {layout['names']!r}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def load_cifar(kind: str, seed: int = 0, data_dir=None, val_fraction: float = 0.1, whiten=None) -> DatasetSplits:
    """Load ``cifar10`` or ``cifar100``; hold out ``val_fraction`` of training (5,000 of 50,000) for validation.

    ``whiten="zca"`` adds ZCA whitening after per-channel normalisation (All-CNN-C's recipe).
    Sample ids are ``cifar10-train-00042`` (position in the five training batches) and
    ``cifar10-test-00042``.
    """
    val_fraction = holdout_fraction(kind, "val_fraction", val_fraction)
    layout = _LAYOUTS[kind]
    folder = find_folder(kind, data_dir)
    train_images, train_labels = _read_split(folder, layout["train"], layout, kind)
    test_images, test_labels = _read_split(folder, layout["test"], layout, kind)
    class_names = _class_names(folder, layout)

    train_ids = [f"{kind}-train-{i:05d}" for i in range(len(train_labels))]
    everything = Pixels(torch.from_numpy(train_images), train_labels, train_ids)
    kept, held = stratified_holdout(train_labels, val_fraction, seed)
    test = Pixels(torch.from_numpy(test_images), test_labels, [f"{kind}-test-{i:05d}" for i in range(len(test_labels))])

    files = [os.path.basename(p) for p in layout["train"] + layout["test"] + [layout["meta"]]
             if os.path.isfile(os.path.join(folder, p))]
    digest, _ = fingerprint_files(folder, files, content_limit=float("inf"))
    info = {"source": folder, "validation": f"{len(held)} of {len(train_labels)} training images, stratified, seed {seed}"}
    return build_array_splits(kind, everything.take(kept), everything.take(held), test, class_names,
                              combine(digest, held), info, whiten=whiten, seed=seed)


def load_cifar10(seed: int = 0, data_dir=None, val_fraction: float = 0.1, whiten=None) -> DatasetSplits:
    """Load CIFAR-10 from ``data_dir`` (see ``load_cifar``)."""
    return load_cifar("cifar10", seed, data_dir, val_fraction, whiten)


def load_cifar100(seed: int = 0, data_dir=None, val_fraction: float = 0.1, whiten=None) -> DatasetSplits:
    """Load CIFAR-100 with its 100 fine labels from ``data_dir`` (see ``load_cifar``)."""
    return load_cifar("cifar100", seed, data_dir, val_fraction, whiten)
