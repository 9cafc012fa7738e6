"""Images listed in a CSV file with columns ``path,label`` and optionally ``split``.

Paths are relative to the CSV's folder (or absolute). Labels are either class names, or all whole
numbers, in which case they are class indices ``0..K-1`` with K from ``class_names``,
``num_classes`` or the largest label + 1, and a label outside that range is an error naming its
line. ``split`` is ``train``, ``val`` (or ``validation``), ``test`` or empty; splits with no rows
are held out from the training rows (stratified, seeded). Sample ids are the paths as written.
Files that are missing or unreadable are skipped and listed in ``info["skipped"]``.
"""

import hashlib
import os
import re
from typing import Optional

import numpy as np
import pandas as pd

from core.datasets.base import DatasetSplits
from core.datasets.checks import DatasetError, DatasetNotFoundError, check_label_values
from core.datasets.file_dataset import FileEntry, FileOptions, build_file_splits
from core.datasets.fingerprint import hash_file
from core.datasets.images import DEFAULT_MAX_PIXELS

DEFAULT_CSV_NAME = "labels.csv"
_SPLITS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test", "": None}
_INTEGER = re.compile(r"^[+-]?\d+$")


def find_csv(data_dir, csv: Optional[str]) -> str:
    """Return the CSV path: ``data_dir`` itself, ``data_dir/csv``, ``data_dir/labels.csv`` or its only CSV."""
    if data_dir is None:
        raise DatasetNotFoundError("dataset 'csv' needs data_dir: a CSV file with path,label columns, or the folder "
                                   f"containing it (named {DEFAULT_CSV_NAME} or the folder's only .csv file)")
    path = os.path.abspath(os.path.expanduser(str(data_dir)))
    if csv:
        path = os.path.join(path, csv)
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise DatasetNotFoundError(f"CSV file or folder {path} not found")
    if os.path.isfile(os.path.join(path, DEFAULT_CSV_NAME)):
        return os.path.join(path, DEFAULT_CSV_NAME)
    found = sorted(name for name in os.listdir(path) if name.lower().endswith(".csv"))
    if len(found) != 1:
        raise DatasetNotFoundError(f"folder {path} contains {len(found)} .csv files ({found[:5]}); name one with the "
                                   f"dataset option csv=NAME or pass the CSV file as data_dir")
    return os.path.join(path, found[0])


def read_rows(path: str) -> pd.DataFrame:
    """Read the CSV as text, with lower-case column names and a ``line`` column (1 is the header)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise DatasetError(f"cannot read {path} as a UTF-8 CSV with a header row ({error})") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = {"path", "label"} - set(frame.columns)
    if missing:
        raise DatasetError(f"{path} lacks column(s) {sorted(missing)}; its header has {list(frame.columns)}. "
                           f"Expected a header row path,label (and optionally split)")
    frame["line"] = np.arange(len(frame)) + 2
    return frame


def _check_rows(frame: pd.DataFrame, path: str) -> None:
    empty = frame[frame["path"].str.strip() == ""]
    if len(empty):
        raise DatasetError(f"line {empty['line'].iloc[0]} of {path} has an empty path; fill it in or delete the row")
    repeated = frame[frame["path"].duplicated(keep=False)]
    if len(repeated):
        first = repeated.iloc[0]["path"]
        lines = repeated[repeated["path"] == first]["line"].tolist()
        raise DatasetError(f"{path} lists {first!r} on lines {lines}; each image may appear once")
    blank = frame[frame["label"].str.strip() == ""]
    if len(blank):
        raise DatasetError(f"line {blank['line'].iloc[0]} of {path} has an empty label; fill it in or delete the row")


def _splits(frame: pd.DataFrame, path: str) -> list:
    if "split" not in frame.columns:
        return [None] * len(frame)
    values = frame["split"].str.strip().str.lower()
    unknown = frame[~values.isin(list(_SPLITS))]
    if len(unknown):
        row = unknown.iloc[0]
        raise DatasetError(f"line {row['line']} of {path} has split {row['split']!r}; use train, val, test or "
                           f"leave it empty")
    return [_SPLITS[v] for v in values]


def _labels(frame: pd.DataFrame, path: str, class_names: Optional[list], num_classes: Optional[int]) -> tuple:
    """Return ``(label names per row, fixed class list or None)``."""
    raw = frame["label"].str.strip()
    if not raw.map(lambda v: bool(_INTEGER.match(v))).all():
        if class_names is not None:
            unknown = frame[~raw.isin(class_names)]
            if len(unknown):
                row = unknown.iloc[0]
                raise DatasetError(f"line {row['line']} of {path} has label {row['label']!r}, which is not among "
                                   f"class_names {list(class_names)[:10]}; fix the label or the class_names option")
        return raw.tolist(), (list(class_names) if class_names is not None else None)

    values = raw.astype(np.int64).to_numpy()
    classes = len(class_names) if class_names is not None else num_classes
    if classes is None:
        classes = max(int(values.max()) + 1, 1)
    lines = frame["line"].to_numpy()
    values = check_label_values(values, classes, lambda i: f"line {lines[i]} of {path}")
    names = list(class_names) if class_names is not None else [str(i) for i in range(classes)]
    return [names[v] for v in values], names


def load_csv_dataset(seed: int = 0, data_dir=None, csv: Optional[str] = None, class_names: Optional[list] = None,
                     num_classes: Optional[int] = None, image_size=None, resize: Optional[int] = None,
                     channels: Optional[int] = None, val_fraction: float = 0.1, test_fraction: float = 0.15,
                     verify: str = "auto", memory_limit: Optional[int] = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                     float_range=(0.0, 1.0)) -> DatasetSplits:
    """Load the images a CSV lists (see the module docstring; image options as ``load_image_folder``)."""
    path = find_csv(data_dir, csv)
    frame = read_rows(path)
    if frame.empty:
        raise DatasetError(f"{path} has a header but no rows; add one row per image: path,label")
    _check_rows(frame, path)
    splits = _splits(frame, path)
    label_names, fixed = _labels(frame, path, class_names, num_classes)

    entries = [FileEntry(path=p, label=label, split=split, sample_id=p)
               for p, label, split in zip(frame["path"].tolist(), label_names, splits)]
    options = FileOptions(image_size=image_size, resize=resize, channels=channels, val_fraction=val_fraction,
                          test_fraction=test_fraction, verify=verify, max_pixels=max_pixels,
                          float_range=tuple(float_range))
    if memory_limit is not None:
        options.memory_limit = memory_limit
    digest = hashlib.sha256()
    hash_file(path, digest)
    return build_file_splits("csv", os.path.dirname(path), entries, options, seed,
                             extra_fingerprint=(digest.hexdigest(),), info={"source": path}, class_names=fixed)
