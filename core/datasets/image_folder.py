"""Folder trees of images, one subfolder per class (the ImageNet layout).

Layout under ``data_dir``::

    train/<class>/<image>          required (or the class folders directly under data_dir)
    val/<class>/<image>            optional
    test/<class>/<image>           optional

With ``test/`` present, ``val/`` is the validation split. Without ``test/``, ``val/`` is the test
split, because ImageNet results report error on ImageNet's labelled ``val`` folder. Validation is
then held out from ``train/`` (``val_fraction``, stratified, seeded). Splits that have no folder are
held out from training. Sample ids are paths relative to ``data_dir`` with ``/`` separators.

A class folder without readable training images is left out of the classes with a warning (and
listed in ``info["empty_classes"]``); a validation or test class that training lacks is an error.

A linked class folder, or a link inside one, is followed once. A link that leads to a split or
class folder of the tree (a link loop such as ``train/dog/loop -> train``), or to a folder
already listed, is skipped with a warning and listed in ``info["skipped_folders"]``.
"""

import os
from typing import Optional

from torchvision.datasets.folder import find_classes

from core.datasets.base import DatasetSplits
from core.datasets.checks import DatasetError, DatasetNotFoundError
from core.datasets.file_dataset import FileEntry, FileOptions, build_file_splits
from core.datasets.folder_walk import FolderWalk
from core.datasets.images import DEFAULT_MAX_PIXELS


def sample_id(relative_path: str) -> str:
    """Return the id of a file: its relative path with ``/`` separators, made valid UTF-8.

    File names that are not valid UTF-8 keep their bytes as ``\\xNN`` escapes.
    """
    posix = relative_path.replace(os.sep, "/")
    return posix.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def scan_split(data_dir: str, folder: str, split: Optional[str], walk: FolderWalk) -> tuple:
    """Return ``(entries, class names)`` of one split folder, listing its files with ``walk``.

    Hidden folders (names starting with ".") are not classes. Raises ``DatasetError`` when
    ``folder`` has no class folders.
    """
    try:
        classes, _ = find_classes(folder)
    except FileNotFoundError:
        classes = []
    classes = [c for c in classes if not c.startswith(".")]
    if not classes:
        raise DatasetError(f"no class folders in {folder}; put each class's images in {folder}/<class name>/")

    entries = []
    for name in classes:
        for path in walk.image_files(os.path.join(folder, name)):
            relative = os.path.relpath(path, data_dir)
            entries.append(FileEntry(path=relative, label=name, split=split, sample_id=sample_id(relative)))
    return entries, classes


def load_image_folder(seed: int = 0, data_dir=None, image_size=None, resize: Optional[int] = None,
                      channels: Optional[int] = None, val_fraction: float = 0.1, test_fraction: float = 0.15,
                      val_is_test: Optional[bool] = None, verify: str = "auto", memory_limit: Optional[int] = None,
                      max_pixels: int = DEFAULT_MAX_PIXELS, float_range=(0.0, 1.0)) -> DatasetSplits:
    """Load a class-folder tree (see the module docstring for the layout).

    Args:
        image_size: ``H`` or ``[H, W]`` every image is scaled and centre-cropped to; default the
            most common size in the folder. ImageNet: 224.
        resize: scale the shorter side to this before the centre crop (ImageNet: 256).
        channels: 1 or 3; default 3 when any image is colour.
        val_is_test: whether ``val/`` is the test split; default when there is no ``test/``.
        verify: "full" decodes every image while loading (catches truncated files), "header"
            reads headers only; "auto" is "full" up to 50,000 files.
        memory_limit: bytes of decoded pixels kept in memory (default 2 GiB); larger datasets
            are read from disk per batch.
        max_pixels: images with more pixels are skipped as possible decompression bombs.
        float_range: values of float images (mode F) that map to black and white.
    """
    root = _root(data_dir)
    train_folder = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root
    val_folder = next((os.path.join(root, n) for n in ("val", "validation") if os.path.isdir(os.path.join(root, n))),
                      None)
    test_folder = os.path.join(root, "test") if os.path.isdir(os.path.join(root, "test")) else None
    if val_is_test is None:
        val_is_test = val_folder is not None and test_folder is None

    roles = {}
    if val_folder is not None:
        roles["test" if val_is_test else "val"] = val_folder
    if test_folder is not None:
        roles["test"] = test_folder
    walk = FolderWalk(root, [train_folder, *roles.values()])
    entries, train_classes = scan_split(root, train_folder, "train" if train_folder != root else None, walk)
    for split, folder in roles.items():
        entries += scan_split(root, folder, split, walk)[0]
    walk.log_skipped("imagefolder")

    options = FileOptions(image_size=image_size, resize=resize, channels=channels, val_fraction=val_fraction,
                          test_fraction=test_fraction, verify=verify, max_pixels=max_pixels,
                          float_range=tuple(float_range))
    if memory_limit is not None:
        options.memory_limit = memory_limit
    info = {"source": root, "layout": {split: os.path.relpath(folder, root) for split, folder in roles.items()},
            "skipped_folders": walk.skipped}
    return build_file_splits("imagefolder", root, entries, options, seed, info=info, listed_classes=train_classes,
                             declared_splits=set(roles))


def _root(data_dir) -> str:
    if data_dir is None:
        raise DatasetNotFoundError("dataset 'imagefolder' needs data_dir: a folder with train/<class>/<image files> "
                                   "(and optionally val/ and test/ alike)")
    root = os.path.abspath(os.path.expanduser(str(data_dir)))
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"image folder {root} not found; pass the folder that contains train/<class>/...")
    return root
