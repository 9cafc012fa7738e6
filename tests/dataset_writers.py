"""Writers of tiny datasets in each supported on-disk format, for tests (no binary fixtures)."""

import os
import pickle

import numpy as np
import scipy.io
from PIL import Image


def class_pattern(label: int, size: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Return a uint8 ``(size, size, channels)`` image whose class is easy to learn: a bright band at row ``label``."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (size, size, channels), dtype=np.uint8)
    row = (label * 3) % size
    image[row:row + 3] = 220
    return image


def labelled_images(count: int, classes: int, size: int = 32, channels: int = 3, seed: int = 0) -> tuple:
    """Return ``(images (N, H, W, C) uint8, labels)`` cycling through the classes."""
    labels = np.arange(count) % classes
    images = np.stack([class_pattern(int(c), size, channels, seed * 100_000 + i) for i, c in enumerate(labels)])
    return images, labels


def write_cifar10(root: str, per_batch: int = 20, test_count: int = 20, seed: int = 0) -> dict:
    """Write ``root/cifar-10-batches-py`` as Python-2-style pickles; return the arrays written."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    written = {"train_images": [], "train_labels": []}
    for number in range(1, 6):
        images, labels = labelled_images(per_batch, 10, seed=seed + number)
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        _dump(os.path.join(folder, f"data_batch_{number}"),
              {"batch_label": f"training batch {number} of 5", "labels": labels.tolist(), "data": rows,
               "filenames": [f"img_{i}.png" for i in range(len(labels))]})
        written["train_images"].append(images)
        written["train_labels"].append(labels)
    images, labels = labelled_images(test_count, 10, seed=seed + 9)
    _dump(os.path.join(folder, "test_batch"),
          {"labels": labels.tolist(), "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1)})
    _dump(os.path.join(folder, "batches.meta"),
          {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]})
    return {"train_images": np.concatenate(written["train_images"]),
            "train_labels": np.concatenate(written["train_labels"]), "test_images": images, "test_labels": labels}


def write_cifar100(root: str, train_count: int = 300, test_count: int = 100, seed: int = 0) -> None:
    """Write ``root/cifar-100-python`` with fine and coarse labels."""
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    for name, count in (("train", train_count), ("test", test_count)):
        images, labels = labelled_images(count, 100, seed=seed + len(name))
        _dump(os.path.join(folder, name), {"fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                                           "data": images.transpose(0, 3, 1, 2).reshape(count, -1)})
    _dump(os.path.join(folder, "meta"), {"fine_label_names": [f"fine{i}" for i in range(100)],
                                         "coarse_label_names": [f"coarse{i}" for i in range(20)]})


def _dump(path: str, contents: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(contents, handle, protocol=2)


def write_svhn(root: str, per_class: dict, seed: int = 0) -> dict:
    """Write SVHN ``.mat`` files; ``per_class`` maps "train"/"test"/"extra" to images per digit.

    Labels use SVHN's convention, 10 for the digit 0. Returns the digits written per part.
    """
    os.makedirs(root, exist_ok=True)
    digits = {}
    for part, count in per_class.items():
        images, labels = labelled_images(count * 10, 10, seed=seed + len(part))
        mat_labels = np.where(labels == 0, 10, labels).reshape(-1, 1).astype(np.uint8)
        scipy.io.savemat(os.path.join(root, f"{part}_32x32.mat"),
                         {"X": images.transpose(1, 2, 3, 0), "y": mat_labels})
        digits[part] = labels
    return digits


def write_image_tree(root: str, splits: dict, size: int = 16, channels: int = 3, seed: int = 0) -> None:
    """Write PNGs ``root/<split>/<class>/<i>.png``; ``splits`` maps a split to ``{class: count}``."""
    for split, classes in splits.items():
        for number, (name, count) in enumerate(sorted(classes.items())):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                image = class_pattern(number, size, channels, seed + 1000 * number + i)
                Image.fromarray(image[..., 0] if channels == 1 else image).save(os.path.join(folder, f"{i}.png"))


def write_csv_dataset(root: str, rows: list, size: int = 16, header: str = "path,label") -> str:
    """Write one PNG per ``(path, label, split or None)`` row and ``root/labels.csv``; return the CSV path."""
    lines = [header]
    for number, (path, label, split) in enumerate(rows):
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        Image.fromarray(class_pattern(hash(str(label)) % 10, size, 3, number)).save(full)
        lines.append(f"{path},{label}" + (f",{split or ''}" if "split" in header else ""))
    csv_path = os.path.join(root, "labels.csv")
    with open(csv_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return csv_path
