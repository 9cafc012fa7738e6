"""Denoising data: clean grayscale images, fixed noisy training patches, and full noisy images.

Training data follows the DnCNN setup of data dropout (Wang, Huan and Li, 2018). Each training
image gives one random crop (180x180 there), and ``num_patches`` 40x40 patches are cut at random
positions inside the crops. Gaussian noise of standard deviation ``sigma`` (on the 0-255 scale)
is added once with a fixed seed. Fixed noise makes every training sample a fixed
``(noisy, clean)`` pair, so its influence is well defined. Validation and test use whole images with their own fixed noise.

Pixel values are floats in [0, 1]; noisy values are not clipped, so the noise stays Gaussian.
Images come from scikit-image's bundled files (the embedded default, no download) or from a
user's folders, for example BSD400 for training, BSD68 for validation and Set12 for testing.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import skimage.data
import skimage.io
import torch
from skimage.color import rgb2gray
from torch.utils.data import DataLoader, Dataset

from core.datasets.splitting import fingerprint_arrays

logger = logging.getLogger(__name__)

#: Image files read from a folder, by suffix (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm")

#: Files inside scikit-image's wheel (0.26), by image name. Colour images are converted to gray
#: with ``rgb2gray``. Files are read from the package folder directly, never through
#: ``skimage.data``'s fetcher, so a missing file is skipped instead of downloaded.
EMBEDDED_FILES = {
    "camera": "camera.png", "moon": "moon.png", "coins": "coins.png", "clock": "clock_motion.png",
    "chelsea": "chelsea.png", "astronaut": "astronaut.png", "coffee": "coffee.png", "rocket": "rocket.jpg",
    "text": "text.png", "page": "page.png", "cell": "cell.png", "brick": "brick.png", "grass": "grass.png",
    "gravel": "gravel.png",
}

#: The embedded split. Test contains the cameraman image, which the Set12 benchmark also contains.
EMBEDDED_SPLIT = {
    "train": ("brick", "cell", "clock", "coffee", "grass", "gravel", "page", "rocket", "text"),
    "val": ("coins", "chelsea"),
    "test": ("camera", "moon", "astronaut"),
}

SOURCES = ("skimage", "folder")

# Seeds of the independent noise streams, mixed with the run's seed.
_CROP_STREAM, _PATCH_STREAM, _TRAIN_NOISE, _VAL_NOISE, _TEST_NOISE = 11, 12, 13, 14, 15


def to_gray_float(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert an image array of any common dtype to a 2-D float32 array in [0, 1].

    RGB(A) images become gray with ``rgb2gray`` (alpha dropped). Integer images are divided by
    their dtype's maximum; float images must already lie in [0, 1].
    """
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = rgb2gray(image[..., :3])
    elif image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"{name}: expected a grayscale or RGB image, got an array of shape {image.shape}")

    if image.dtype == bool:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.integer):
        return (image / np.iinfo(image.dtype).max).astype(np.float32)
    image = image.astype(np.float32)
    if image.min() < 0 or image.max() > 1:
        raise ValueError(f"{name}: float pixel values must lie in [0, 1], found "
                         f"[{image.min():.3g}, {image.max():.3g}]; save the image as 8- or 16-bit")
    return image


def embedded_image(name: str) -> np.ndarray:
    """Read one of scikit-image's bundled images as a float32 gray array in [0, 1]."""
    if name not in EMBEDDED_FILES:
        raise ValueError(f"unknown embedded image {name!r}; choose one of {sorted(EMBEDDED_FILES)}")
    path = Path(skimage.data.__file__).parent / EMBEDDED_FILES[name]
    if not path.exists():
        raise FileNotFoundError(f"scikit-image's bundled file {path.name} is missing from {path.parent}; "
                                f"reinstall scikit-image or use your own folders with --data-dir")
    return to_gray_float(skimage.io.imread(path), name)


def image_files(folder: str) -> list:
    """Return the image files of ``folder`` (not recursive), sorted by name."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {str(path)!r} does not exist; pass an existing folder of "
                                f"{'/'.join(IMAGE_SUFFIXES)} files")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"image folder {str(path)!r} contains no {'/'.join(IMAGE_SUFFIXES)} files")
    stems = [p.stem for p in files]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise ValueError(f"image folder {str(path)!r} has several files named {duplicates[0]!r} with different "
                         f"suffixes; image names must be unique, so rename or remove one")
    return files


def folder_image(folder: str, name: str) -> np.ndarray:
    """Read the image named ``name`` (file name without suffix) from ``folder``."""
    for path in image_files(folder):
        if path.stem == name:
            return to_gray_float(skimage.io.imread(path), str(path))
    raise FileNotFoundError(f"no image named {name!r} in {folder!r}; was the file renamed or removed?")


def load_folder_images(folder: str) -> dict:
    """Read every image of ``folder`` as ``{name: float32 gray array}``, named by file name without suffix."""
    return {path.stem: to_gray_float(skimage.io.imread(path), str(path)) for path in image_files(folder)}


@dataclass
class DenoisingFolders:
    """Where each split's images come from: ``source`` "skimage" (embedded) or "folder".

    With "folder", ``data_dir`` contains ``train/``, ``val/`` and ``test/`` subfolders, and
    ``train_dir``, ``val_dir`` and ``test_dir`` override any of them.
    """

    source: str = "skimage"
    data_dir: Optional[str] = None
    train_dir: Optional[str] = None
    val_dir: Optional[str] = None
    test_dir: Optional[str] = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"unknown denoising source {self.source!r}; use 'skimage' (embedded) or "
                             f"'folder' with a data folder")

    def folder(self, split: str) -> str:
        """Return the folder of ``split`` ("train", "val" or "test") of a "folder" source."""
        explicit = getattr(self, f"{split}_dir")
        if explicit:
            return explicit
        if self.data_dir:
            return str(Path(self.data_dir).expanduser() / split)
        raise ValueError(f"the {split} images have no folder; pass a data folder with a {split}/ subfolder, "
                         f"or {split}_dir")

    def load(self, split: str) -> dict:
        """Return ``{name: float32 gray image}`` of ``split`` in a stable order."""
        if self.source == "skimage":
            return {name: embedded_image(name) for name in EMBEDDED_SPLIT[split]}
        return load_folder_images(self.folder(split))

    def image(self, split: str, name: str) -> np.ndarray:
        """Return one clean image of ``split`` by name, without reading the others."""
        if self.source == "skimage":
            return embedded_image(name)
        return folder_image(self.folder(split), name)


class PatchSplit(Dataset):
    """Fixed ``(noisy, clean)`` training patches with stable ids and where each was cut from.

    ``noisy`` and ``clean`` are float32 tensors of shape ``(N, 1, P, P)``. ``labels`` is the
    int64 index of each patch's source image in ``source_names``; drop rules treat it as the
    class. ``ys`` and ``xs`` are the patch's top-left corner in the full source image, and
    ``sample_ids`` read ``name@y,x``. ``tensors`` lets ``iterate_batches`` slice both at once.
    """

    true_labels = None

    def __init__(self, noisy: torch.Tensor, clean: torch.Tensor, labels: np.ndarray, ys: np.ndarray,
                 xs: np.ndarray, source_names: list):
        if not (len(noisy) == len(clean) == len(labels) == len(ys) == len(xs)):
            raise ValueError(f"noisy ({len(noisy)}), clean ({len(clean)}), labels ({len(labels)}), ys ({len(ys)}) "
                             f"and xs ({len(xs)}) must have the same length")
        self.noisy = noisy
        self.clean = clean
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ys = np.asarray(ys, dtype=np.int64)
        self.xs = np.asarray(xs, dtype=np.int64)
        self.source_names = list(source_names)
        self.sample_ids = [f"{self.source_names[label]}@{y},{x}" for label, y, x in zip(self.labels, self.ys, self.xs)]

    @property
    def tensors(self) -> tuple:
        return self.noisy, self.clean

    @property
    def patch_size(self) -> int:
        return int(self.clean.shape[-1])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.noisy[index], self.clean[index]

    def source_of(self, index: int) -> tuple:
        """Return ``(source image name, y, x)`` of patch ``index``."""
        return self.source_names[self.labels[index]], int(self.ys[index]), int(self.xs[index])

    def display_image(self, index: int) -> np.ndarray:
        """Return the clean patch ``index`` as a ``(P, P)`` uint8 array."""
        return np.round(self.clean[index, 0].numpy().clip(0, 1) * 255).astype(np.uint8)

    def subset(self, indices: np.ndarray) -> "PatchSplit":
        """Return the patches at ``indices`` (positions in this split) as a new split."""
        indices = np.asarray(indices, dtype=np.int64)
        positions = torch.from_numpy(indices)
        return PatchSplit(self.noisy[positions], self.clean[positions], self.labels[indices], self.ys[indices],
                          self.xs[indices], self.source_names)


class ImageSet(Dataset):
    """Whole noisy images with their clean originals, in any mix of sizes.

    Items are ``(noisy, clean)`` float32 tensors of shape ``(1, H, W)``. Images of different sizes
    cannot share a batch, so ``loader`` groups them by size.
    """

    def __init__(self, names: list, noisy: list, clean: list):
        if not (len(names) == len(noisy) == len(clean)):
            raise ValueError(f"names ({len(names)}), noisy ({len(noisy)}) and clean ({len(clean)}) images "
                             f"must have the same length")
        self.names = list(names)
        self.noisy = list(noisy)
        self.clean = list(clean)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):
        return self.noisy[index], self.clean[index]

    def size_batches(self, batch_size: int) -> list:
        """Return lists of positions, each of same-size images and at most ``batch_size`` long."""
        groups: dict = {}
        for position, image in enumerate(self.clean):
            groups.setdefault(tuple(image.shape), []).append(position)
        return [members[start:start + batch_size]
                for members in groups.values() for start in range(0, len(members), batch_size)]

    def loader(self, batch_size: int = 4) -> DataLoader:
        """Return a DataLoader of ``(noisy, clean)`` batches, each holding images of one size."""
        return DataLoader(self, batch_sampler=self.size_batches(batch_size))

    def subset(self, indices) -> "ImageSet":
        indices = [int(i) for i in indices]
        return ImageSet([self.names[i] for i in indices], [self.noisy[i] for i in indices],
                        [self.clean[i] for i in indices])


@dataclass
class DenoisingSplits:
    """Training patches, validation and test images, and what describes them.

    ``num_classes`` counts the training source images, which the drop rules use as classes.
    Validation drives influence and the drop set; test only reports PSNR.
    """

    name: str
    train: PatchSplit
    val: ImageSet
    test: ImageSet
    sigma: float
    fingerprint: str
    folders: DenoisingFolders
    in_channels: int = 1
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.train.source_names)

    @property
    def class_names(self) -> list:
        return list(self.train.source_names)


def random_crops(images: dict, crop_size: int, rng: np.random.Generator) -> dict:
    """Return ``{name: (top, left, height, width)}``: one random crop per image, the whole image when smaller."""
    crops = {}
    for name, image in images.items():
        height, width = min(crop_size, image.shape[0]), min(crop_size, image.shape[1])
        top = int(rng.integers(0, image.shape[0] - height + 1))
        left = int(rng.integers(0, image.shape[1] - width + 1))
        crops[name] = (top, left, height, width)
    return crops


def patch_positions(crop: tuple, patch_size: int, count: int, rng: np.random.Generator, name: str) -> tuple:
    """Choose ``count`` distinct top-left corners of patches inside ``crop``; return ``(ys, xs)``."""
    top, left, height, width = crop
    rows, columns = height - patch_size + 1, width - patch_size + 1
    if rows < 1 or columns < 1:
        raise ValueError(f"training image {name!r} ({height}x{width} after cropping) is smaller than the "
                         f"{patch_size}x{patch_size} patch size; lower patch_size or remove the image")
    if count > rows * columns:
        raise ValueError(f"training image {name!r} has only {rows * columns} distinct {patch_size}x{patch_size} "
                         f"patch positions in its crop, but {count} patches were requested from it; lower "
                         f"num_patches or raise crop_size")
    chosen = np.sort(rng.choice(rows * columns, size=count, replace=False))
    return top + chosen // columns, left + chosen % columns


def make_patches(images: dict, patch_size: int, crop_size: int, num_patches: int, sigma: float,
                 seed: int) -> PatchSplit:
    """Cut ``num_patches`` fixed noisy patches from random crops, spread evenly over ``images``.

    Image ``k`` of ``n`` gives ``num_patches // n`` patches, one more for the first
    ``num_patches % n``. Noise is ``sigma / 255`` times a standard normal, drawn once from a
    generator seeded with ``seed``.
    """
    if num_patches < len(images):
        raise ValueError(f"num_patches {num_patches} is smaller than the {len(images)} training images; "
                         f"ask for at least one patch per image")
    names = list(images)
    crops = random_crops(images, crop_size, np.random.default_rng([seed, _CROP_STREAM]))
    position_rng = np.random.default_rng([seed, _PATCH_STREAM])
    counts = [num_patches // len(names) + (k < num_patches % len(names)) for k in range(len(names))]

    clean, labels, ys, xs = [], [], [], []
    for label, (name, count) in enumerate(zip(names, counts)):
        rows, columns = patch_positions(crops[name], patch_size, count, position_rng, name)
        windows = np.lib.stride_tricks.sliding_window_view(images[name], (patch_size, patch_size))
        clean.append(windows[rows, columns])
        labels.append(np.full(count, label))
        ys.append(rows)
        xs.append(columns)

    clean_patches = torch.from_numpy(np.concatenate(clean)).unsqueeze(1).float()
    noise = np.random.default_rng([seed, _TRAIN_NOISE]).standard_normal(clean_patches.shape).astype(np.float32)
    noisy_patches = clean_patches + torch.from_numpy(noise) * (sigma / 255.0)
    return PatchSplit(noisy_patches, clean_patches, np.concatenate(labels), np.concatenate(ys),
                      np.concatenate(xs), names)


def make_image_set(images: dict, sigma: float, seed: int, stream: int) -> ImageSet:
    """Add fixed Gaussian noise of ``sigma / 255`` to each whole image; image ``k`` uses its own generator."""
    names, noisy, clean = [], [], []
    for k, (name, image) in enumerate(images.items()):
        noise = np.random.default_rng([seed, stream, k]).standard_normal(image.shape).astype(np.float32)
        names.append(name)
        clean.append(torch.from_numpy(image).unsqueeze(0))
        noisy.append(torch.from_numpy(image + noise * np.float32(sigma / 255.0)).unsqueeze(0))
    return ImageSet(names, noisy, clean)


def load_denoising_splits(folders: DenoisingFolders, seed: int = 0, sigma: float = 25.0, patch_size: int = 40,
                          crop_size: int = 180, num_patches: int = 204_800) -> DenoisingSplits:
    """Load the images and build fixed noisy training patches and noisy validation and test images.

    The defaults are those of the data dropout DnCNN setup (sigma 25, 40x40 patches from
    180x180 crops, 128 x 1,600 patches). The fingerprint covers the clean images, the patch positions, the noise level and
    the seed, so a changed file or setting is detected when a run resumes.
    """
    if not sigma > 0:
        raise ValueError(f"noise level sigma {sigma} must be > 0 (on the 0-255 scale, e.g. 25)")
    if patch_size < 1 or crop_size < patch_size:
        raise ValueError(f"need 1 <= patch_size <= crop_size, got patch_size {patch_size} and crop_size {crop_size}")

    train_images = folders.load("train")
    val_images, test_images = folders.load("val"), folders.load("test")
    if len(val_images) < 2:
        raise ValueError(f"the validation split has {len(val_images)} image(s); influence and the drop rule "
                         f"need at least 2 (one per validation half). Add validation images")
    train = make_patches(train_images, patch_size, crop_size, num_patches, sigma, seed)
    val = make_image_set(val_images, sigma, seed, _VAL_NOISE)
    test = make_image_set(test_images, sigma, seed, _TEST_NOISE)

    fingerprint = fingerprint_arrays(
        *[train_images[name] for name in train.source_names], *[image.numpy() for image in val.clean],
        *[image.numpy() for image in test.clean],
        train.labels, train.ys, train.xs, np.array([sigma, seed, patch_size], dtype=np.float64))
    info = {"sigma": sigma, "patch_size": patch_size, "crop_size": crop_size, "num_patches": len(train),
            "source": folders.source, "train_images": train.source_names, "val_images": val.names,
            "test_images": test.names, "image_size": [patch_size, patch_size]}
    return DenoisingSplits(name=folders.source, train=train, val=val, test=test, sigma=sigma,
                           fingerprint=fingerprint, folders=folders, info=info)
