"""Datasets of image files (folder trees, CSV lists): check every file, split, normalise, fingerprint.

Loading steps:

1. Read every file's header on a thread pool. Zero-byte files, non-images, unreadable files and
   images over ``max_pixels`` are skipped and listed in ``info["skipped"]`` with the reason. The
   header results are cached per file listing (``core.datasets.scan_cache``; folder
   ``$CURATOR_SCAN_CACHE``), so a later load of unchanged files reads no headers.
2. Choose the channel count (3 when any image is colour, else 1) and the size (the most common
   one) unless given, so every image is converted the same way.
3. With ``verify="full"`` (the default up to ``FULL_VERIFY_LIMIT`` files) decode every image, which
   also catches truncated data. Keep the pixels in memory when they fit in ``memory_limit``.
   Otherwise images are decoded from disk batch by batch (``FileSplit``).
4. Split, check the classes, normalise with training statistics, fingerprint the files.
"""

import logging
import math
import numbers
import os
from collections import Counter
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch

from core.datasets.arrays import Pixels, build_array_splits
from core.datasets.base import DatasetSplits
from core.datasets.checks import DatasetError, check_splits
from core.datasets.files import FileSplit, decode_pool
from core.datasets.fingerprint import combine, fingerprint_files, ids_digest, stat_files
from core.datasets.holdout import check_fraction_sum, holdout_fraction, stratified_holdout
from core.datasets.images import DEFAULT_MAX_PIXELS, DecodeSpec, ImageRejected, channels_of_mode, probe_image
from core.datasets.images import read_image
from core.datasets.scan_cache import cached_scan

logger = logging.getLogger(__name__)

#: Up to this many files, loading decodes every image (``verify="auto"``); above it, only headers.
FULL_VERIFY_LIMIT = 50_000
#: Decoded pixels up to this many bytes stay in memory; larger datasets are read from disk.
MEMORY_LIMIT = 2 * 2**30
#: Training images decoded to estimate the normalisation statistics of a dataset read from disk.
STATS_SAMPLES = 2_000
#: Skipped files named one by one in the log before the rest are only counted.
_LOGGED_SKIPS = 10


@dataclass
class FileEntry:
    """One listed image: ``path`` relative to the dataset root, its class name, split and stable id.

    ``split`` is "train", "val", "test" or None (the training pool that validation and test are
    carved from when they have no files of their own).
    """

    path: str
    label: str
    split: Optional[str]
    sample_id: str


@dataclass
class FileOptions:
    """Options shared by the file-based loaders; see ``load_image_folder`` for their meaning."""

    image_size: Optional[object] = None
    resize: Optional[int] = None
    channels: Optional[int] = None
    val_fraction: float = 0.1
    test_fraction: float = 0.15
    verify: str = "auto"
    memory_limit: int = MEMORY_LIMIT
    max_pixels: int = DEFAULT_MAX_PIXELS
    float_range: tuple = (0.0, 1.0)


def build_file_splits(name: str, root: str, entries: list, options: FileOptions, seed: int,
                      extra_fingerprint: tuple = (), info: Optional[dict] = None,
                      class_names: Optional[list] = None, listed_classes: Optional[list] = None,
                      declared_splits: Optional[set] = None) -> DatasetSplits:
    """Turn listed files into checked, split and normalised ``DatasetSplits`` (see the module steps).

    ``class_names`` fixes the class list and its order (integer CSV labels). By default the classes
    are the sorted labels that have at least one readable training image. ``listed_classes`` adds
    training classes that have no files at all (empty class folders) to the empty-class warning.
    ``declared_splits`` names the splits ("val", "test") that have their own files, such as a
    ``val/`` folder. A declared split is never carved from training, so an empty one is an error.
    By default a split is declared when an entry names it.
    """
    if declared_splits is None:
        declared_splits = {e.split for e in entries if e.split in ("val", "test")}
    options = checked_options(name, options, declared_splits)
    entries = sorted(entries, key=lambda e: (e.split or "", e.path))
    paths = [e.path for e in entries]
    stats = stat_files(root, paths)
    chosen, decoded, spec, verify, skipped = _read_files(name, root, entries, stats, options)

    listed = sorted(set(listed_classes or []) | {e.label for e in entries if e.split in (None, "train")})
    classes = _training_classes(name, listed, chosen, class_names)
    labels = np.array([classes.index(e.label) for e in chosen], dtype=np.int64)
    parts = _assign_splits(chosen, labels, options, seed, declared_splits)
    check_splits(name, labels[parts["train"]], labels[parts["val"]], labels[parts["test"]], classes)

    digest, method = fingerprint_files(root, paths, stats=stats)
    fingerprint = combine(digest, *extra_fingerprint, *[ids_digest([chosen[i].sample_id for i in parts[s]])
                                                         for s in ("train", "val", "test")])
    info = {**(info or {}), "root": root, "skipped": skipped, "fingerprint_method": method, "verify": verify,
            "resize": spec.resize, "empty_classes": sorted(set(class_names or listed) - labels_present(chosen))}

    if decoded is not None:
        pixels = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).contiguous()
        split_pixels = {s: Pixels(pixels[torch.from_numpy(parts[s])], labels[parts[s]],
                                  [chosen[i].sample_id for i in parts[s]]) for s in parts}
        splits = build_array_splits(name, split_pixels["train"], split_pixels["val"], split_pixels["test"],
                                    classes, fingerprint, info, seed=seed)
        test = parts["test"]
        splits.test_files = FileSplit(root, [chosen[i].path for i in test], labels[test],
                                      [chosen[i].sample_id for i in test], spec,
                                      (splits.info["mean"], splits.info["std"]))
        return splits
    return _file_backed(name, root, chosen, labels, parts, spec, classes, fingerprint, info, seed)


def checked_options(name: str, options: FileOptions, declared_splits: set) -> FileOptions:
    """Return ``options`` with sizes as ints and fractions as floats; raise ``ValueError`` naming a bad option.

    Runs before any file is read. The fractions of the splits in ``declared_splits`` (those with
    files of their own) are unused, but a value outside (0, 1) is still an error.
    """
    fractions = {option: holdout_fraction(name, option, getattr(options, option))
                 for option in ("test_fraction", "val_fraction")}
    carved = {option: fractions[option] for option, split in (("test_fraction", "test"), ("val_fraction", "val"))
              if split not in declared_splits}
    check_fraction_sum(name, carved)

    resize = options.resize
    if resize is not None and not _is_positive_whole(resize):
        raise ValueError(f"dataset {name!r}: resize must be a positive whole number of pixels, got {resize!r}; "
                         f"pass e.g. resize=256, or leave it unset to skip the resize")
    memory_limit = options.memory_limit
    if not _is_whole(memory_limit) or memory_limit < 0:
        raise ValueError(f"dataset {name!r}: memory_limit must be a whole number of bytes (0 or more), got "
                         f"{memory_limit!r}; pass e.g. memory_limit=2000000000, or 0 to read images from disk")
    return replace(options, image_size=_checked_image_size(name, options.image_size),
                   resize=None if resize is None else int(resize), memory_limit=int(memory_limit),
                   val_fraction=fractions["val_fraction"], test_fraction=fractions["test_fraction"])


def _checked_image_size(name: str, size) -> Optional[tuple]:
    """Return ``image_size`` as ``(height, width)``, or None to take the most common size of the files."""
    if size is None:
        return None
    sides = [size, size] if _is_number(size) else size
    if not isinstance(sides, (list, tuple)) or len(sides) != 2 or not all(_is_positive_whole(s) for s in sides):
        raise ValueError(f"dataset {name!r}: image_size must be a positive whole number or [height, width], got "
                         f"{size!r}; pass e.g. image_size=224 or image_size=[224, 256]")
    return int(sides[0]), int(sides[1])


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_whole(value) -> bool:
    return _is_number(value) and math.isfinite(value) and int(value) == value


def _is_positive_whole(value) -> bool:
    return _is_whole(value) and value >= 1


def _read_files(name: str, root: str, entries: list, stats: list, options: FileOptions) -> tuple:
    """Check every file; return ``(readable entries, their pixels or None, spec, verify mode, skipped)``.

    Pixels are returned (uint8 ``(H, W, C)`` per entry) only when every image was decoded and
    they fit in ``options.memory_limit``. ``stats`` are the entries' ``stat_files`` results, which
    key the header scan cache.
    """
    headers, skipped = _probe_all(root, entries, stats, options.max_pixels)
    if not headers:
        raise DatasetError(f"dataset {name!r}: none of the {len(entries)} listed image files under {root} can be "
                           f"read ({_reasons(skipped)}); check the folder and the files")
    spec = _choose_spec(headers, options)
    good = sorted(headers)
    verify = options.verify
    if verify == "auto":
        verify = "full" if len(good) <= FULL_VERIFY_LIMIT else "header"
    if verify not in ("full", "header"):
        raise ValueError(f"unknown verify option {options.verify!r}; use 'auto', 'full' or 'header'")

    decoded = None
    if verify == "full":
        keep = len(good) * spec.channels * spec.size[0] * spec.size[1] <= options.memory_limit
        pixels, more_skipped = _decode_all(root, [entries[i] for i in good], good, spec, keep)
        skipped += more_skipped
        rejected = {entry["index"] for entry in more_skipped}
        good = [i for i in good if i not in rejected]
        decoded = [pixels[i] for i in good] if keep else None
    _log_skipped(name, skipped, len(good))
    skipped = [{"path": entry["path"], "reason": entry["reason"]} for entry in sorted(skipped, key=lambda e: e["index"])]
    return [entries[i] for i in good], decoded, spec, verify, skipped


def _probe_all(root: str, entries: list, stats: list, max_pixels: int) -> tuple:
    """Return ``(headers by entry index, skipped)``, reading the headers or the scan cache."""
    paths = [entry.path for entry in entries]
    results = cached_scan(root, paths, stats, max_pixels, lambda: probe_files(root, paths, max_pixels))

    headers, skipped = {}, []
    for index, result in enumerate(results):
        if isinstance(result, ImageRejected):
            skipped.append({"index": index, "path": paths[index], "reason": result.reason})
        else:
            headers[index] = result
    return headers, skipped


def probe_files(root: str, paths: list, max_pixels: int) -> list:
    """Return each file's ``(mode, (height, width))`` or ``ImageRejected``, read on the decode pool."""
    def probe(path):
        try:
            return probe_image(os.path.join(root, path), max_pixels)
        except ImageRejected as error:
            return error

    results = []
    for result in decode_pool().map(probe, paths):
        results.append(result)
        if len(results) % 100_000 == 0:
            logger.info("checked the headers of %d of %d images", len(results), len(paths))
    return results


def _choose_spec(headers: dict, options: FileOptions) -> DecodeSpec:
    channels = options.channels
    if channels is None:
        channels = 3 if any(channels_of_mode(mode) == 3 for mode, _ in headers.values()) else 1
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")

    size = options.image_size
    if size is None:
        size = Counter(shape for _, shape in headers.values()).most_common(1)[0][0]
    if options.resize is not None and options.resize < min(size):
        raise ValueError(f"resize {options.resize} must be at least the crop size {size}")
    return DecodeSpec(channels, size, options.resize, options.max_pixels, tuple(options.float_range))


def _decode_all(root: str, entries: list, indices: list, spec: DecodeSpec, keep: bool) -> tuple:
    def decode(entry):
        try:
            pixels = read_image(os.path.join(root, entry.path), spec)
            return pixels if keep else True
        except ImageRejected as error:
            return error

    decoded, skipped = {}, []
    for index, entry, result in zip(indices, entries, decode_pool().map(decode, entries)):
        if isinstance(result, ImageRejected):
            skipped.append({"index": index, "path": entry.path, "reason": result.reason})
        elif keep:
            decoded[index] = result
    return decoded, skipped


def _reasons(skipped: list) -> str:
    counts = Counter(s["reason"].split(":")[0] for s in skipped)
    return ", ".join(f"{count} {reason}" for reason, count in counts.most_common(5)) or "no image files"


def _log_skipped(name: str, skipped: list, loaded: int) -> None:
    for entry in skipped[:_LOGGED_SKIPS]:
        logger.warning("dataset %s: skipped %s: %s", name, entry["path"], entry["reason"])
    if len(skipped) > _LOGGED_SKIPS:
        logger.warning("dataset %s: skipped %d more files (%s)", name, len(skipped) - _LOGGED_SKIPS,
                       _reasons(skipped[_LOGGED_SKIPS:]))
    if skipped:
        logger.warning("dataset %s: loaded %d images and skipped %d; fix or remove the skipped files (listed in the "
                       "run's dataset diagnostics) to use them", name, loaded, len(skipped))


def _training_classes(name: str, listed: list, chosen: list, fixed: Optional[list]) -> list:
    """Return the class list: ``fixed``, or the sorted classes with a readable training image; warn about the rest."""
    present = sorted(labels_present(chosen))
    listed = fixed if fixed is not None else listed
    empty = [c for c in listed if c not in set(present)]
    if empty:
        logger.warning("dataset %s: class(es) %s have no readable training images and are %s; add images to use "
                       "them", name, empty, "kept without samples" if fixed is not None else "left out")
    lacking = sorted({e.label for e in chosen if e.split in ("val", "test")} - set(present))
    if lacking:
        where = sorted({e.split for e in chosen if e.label in lacking and e.split in ("val", "test")})
        raise DatasetError(f"dataset {name!r}: the {' and '.join(_split_word(s) for s in where)} split has "
                           f"class(es) {lacking} that the training split lacks; add training images of them or "
                           f"remove them from {' and '.join(where)}")
    return list(fixed) if fixed is not None else present


def labels_present(chosen: list) -> set:
    """Return the class names that have at least one readable training image."""
    return {e.label for e in chosen if e.split in (None, "train")}


def _split_word(split: str) -> str:
    return "validation" if split == "val" else split


def _assign_splits(chosen: list, labels: np.ndarray, options: FileOptions, seed: int, declared: set) -> dict:
    """Return positions into ``chosen`` for "train", "val" and "test", carving undeclared splits from training."""
    splits = np.array([e.split or "train" for e in chosen])
    parts = {s: np.flatnonzero(splits == s) for s in ("train", "val", "test")}
    if "test" not in declared:
        kept, held = stratified_holdout(labels[parts["train"]], float(options.test_fraction), seed + 11)
        parts["test"], parts["train"] = parts["train"][held], parts["train"][kept]
    if "val" not in declared:
        kept, held = stratified_holdout(labels[parts["train"]], float(options.val_fraction), seed + 17)
        parts["val"], parts["train"] = parts["train"][held], parts["train"][kept]
    return parts


def _file_backed(name, root, chosen, labels, parts, spec, class_names, fingerprint, info, seed) -> DatasetSplits:
    """Build ``FileSplit``s, normalised with statistics of up to ``STATS_SAMPLES`` training images.

    Sampled images that fail to decode (possible when only headers were checked) leave the
    training split and join ``info["skipped"]``.
    """
    rng = np.random.default_rng(seed + 4242)
    train = parts["train"]
    picked = np.sort(rng.permutation(len(train))[:STATS_SAMPLES])
    spec_paths = [os.path.join(root, chosen[train[i]].path) for i in picked]

    def decode(path):
        try:
            return read_image(path, spec)
        except ImageRejected as error:
            return error

    decoded = list(decode_pool().map(decode, spec_paths))
    failed = {int(train[i]): result.reason for i, result in zip(picked, decoded) if isinstance(result, ImageRejected)}
    if failed:
        parts = {**parts, "train": np.array([i for i in train if int(i) not in failed], dtype=np.int64)}
        info = {**info, "skipped": info["skipped"] + [{"path": chosen[i].path, "reason": r} for i, r in failed.items()]}
        _log_skipped(name, [{"path": chosen[i].path, "reason": r} for i, r in failed.items()], len(parts["train"]))
    values = torch.from_numpy(np.stack([d for d in decoded if not isinstance(d, ImageRejected)])).to(torch.float64)
    values = values.permute(0, 3, 1, 2) / 255.0
    mean = values.mean(dim=(0, 2, 3)).tolist()
    std = values.std(dim=(0, 2, 3), unbiased=False).clamp_min(1e-6).tolist()

    def make(split):
        positions = parts[split]
        return FileSplit(root, [chosen[i].path for i in positions], labels[positions],
                         [chosen[i].sample_id for i in positions], spec, (mean, std))

    info = {**info, "mean": mean, "std": std, "image_size": list(spec.size), "channels": spec.channels,
            "storage": "files", "statistics_samples": len(values)}
    test = make("test")
    return DatasetSplits(name=name, train=make("train"), val=make("val"), test=test,
                         num_classes=len(class_names), in_channels=spec.channels, class_names=class_names,
                         fingerprint=fingerprint, info=info, test_files=test)
