"""Batch augmentations applied in training (round 2 by default).

Every augmentation takes a batch of normalised images ``(N, C, H, W)`` and a CPU
``torch.Generator`` and returns a batch of the same shape on the same device. Random draws come
from the generator only, so a seeded epoch gets the same augmented batches on CPU and on CUDA.

Names accepted by ``build_augmentation``:

- ``none``: no augmentation.
- ``translateN``: shift by up to N pixels in x and y (no flips: for digits, a flip changes the symbol).
- ``flip``: horizontal flip with probability 1/2.
- ``flip_translateN``: a shift of up to N pixels, then a horizontal flip (CIFAR: N=4 for ResNets
  and DenseNets, N=5 for All-CNN-C).
- ``crop224_flip_color``: the ImageNet recipe on images already cropped to their training size: a
  random square crop whose side is 224/256 to 1 times the image side, resized back (as a random
  224 crop of a 256 image would be), a horizontal flip, and brightness, contrast and saturation
  jitter of up to 40%.
"""

import re
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

#: Share of the image side that a ``crop224`` crop keeps at least: a 224 crop of a 256 image.
CROP224_MIN_SIDE = 224 / 256
#: Largest relative change of brightness, contrast and saturation in ``color_jitter``.
COLOR_JITTER = 0.4
#: ITU-R BT.601 luma weights, the grayscale that saturation and contrast jitter blend towards.
_LUMA = (0.299, 0.587, 0.114)


def random_translate(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with each channel's batch minimum.

    The fill is the darkest value of each channel in the batch, which is the background of
    normalised digit images and black (zero padding of the raw pixels) for natural images.
    """
    if max_shift <= 0:
        return images
    n, channels, h, w = images.shape
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).to(images.device)

    fill = images.amin(dim=(0, 2, 3)).view(1, channels, 1, 1)
    padded = fill.expand(n, channels, h + 2 * max_shift, w + 2 * max_shift).clone()
    padded[:, :, max_shift:max_shift + h, max_shift:max_shift + w] = images

    rows = shifts[:, 0:1] + torch.arange(h, device=images.device)
    cols = shifts[:, 1:2] + torch.arange(w, device=images.device)
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Advanced indices around a slice put their dimensions first: the result is (N, H, W, C).
    shifted = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return shifted.permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left to right with probability 1/2."""
    flips = (torch.rand(len(images), generator=generator) < 0.5).to(images.device)
    return torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)


def random_scale_crop(images: torch.Tensor, generator: torch.Generator,
                      min_side: float = CROP224_MIN_SIDE) -> torch.Tensor:
    """Crop a random square-ratio window of ``min_side`` to 1 times each side and resize it back (bilinear)."""
    n = len(images)
    side = min_side + (1 - min_side) * torch.rand(n, generator=generator, dtype=torch.float64)
    # Window centres in normalised coordinates keep the window inside the image.
    centre = (torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2 - 1) * (1 - side[:, None])

    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(images: torch.Tensor, generator: torch.Generator,
                 normalization: Optional[Sequence] = None, strength: float = COLOR_JITTER) -> torch.Tensor:
    """Scale brightness, contrast and (for 3 channels) saturation of each image by factors in 1 +- ``strength``.

    The jitter works on pixel values in [0, 1]: ``normalization`` is ``(mean, std)`` per channel of
    those values, as the dataset normalised them. Without it, each channel's batch minimum and
    maximum stand in for 0 and 1.
    """
    n, channels = images.shape[:2]
    factors = 1 + strength * (2 * torch.rand(n, 3, generator=generator) - 1)
    factors = factors.to(images.device, images.dtype).view(n, 3, 1, 1, 1)

    if normalization is not None:
        mean = torch.as_tensor(normalization[0], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.as_tensor(normalization[1], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    else:
        mean = images.amin(dim=(0, 2, 3), keepdim=True)
        std = (images.amax(dim=(0, 2, 3), keepdim=True) - mean).clamp_min(1e-12)
    pixels = images * std + mean

    pixels = (pixels * factors[:, 0]).clamp(0, 1)
    gray = _grayscale(pixels)
    pixels = (gray.mean(dim=(2, 3), keepdim=True) + factors[:, 1] * (pixels - gray.mean(dim=(2, 3), keepdim=True)))
    pixels = pixels.clamp(0, 1)
    if channels == 3:
        gray = _grayscale(pixels)
        pixels = (gray + factors[:, 2] * (pixels - gray)).clamp(0, 1)
    return (pixels - mean) / std


def _grayscale(pixels: torch.Tensor) -> torch.Tensor:
    if pixels.shape[1] != 3:
        return pixels.mean(dim=1, keepdim=True)
    weights = torch.tensor(_LUMA, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels * weights).sum(dim=1, keepdim=True)


def build_augmentation(name: str, normalization: Optional[Sequence] = None):
    """Return ``augment(images, generator) -> images`` for ``name``, or None for "none".

    ``normalization`` is the dataset's ``(mean, std)`` per channel of [0, 1] pixel values; only
    colour jitter uses it. See the module docstring for the names.
    """
    if name in (None, "", "none"):
        return None
    if name == "flip":
        return random_flip
    if name == "crop224_flip_color":
        def crop_flip_color(images, generator):
            images = random_flip(random_scale_crop(images, generator), generator)
            return color_jitter(images, generator, normalization)
        return crop_flip_color

    match = re.fullmatch(r"(flip_)?translate(\d*)", name)
    if match is None:
        raise ValueError(f"unknown augmentation {name!r}; use 'none', 'translateN', 'flip', 'flip_translateN' "
                         f"(N pixels) or 'crop224_flip_color'")
    shift = int(match.group(2) or 1)
    if match.group(1):
        return lambda images, generator: random_flip(random_translate(images, shift, generator), generator)
    return lambda images, generator: random_translate(images, shift, generator)
