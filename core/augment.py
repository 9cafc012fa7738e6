"""Batch augmentations applied in training (round 2 by default)."""

import torch
import torch.nn.functional as F


def random_translate(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with the edge minimum.

    No flips: a flipped digit is a different symbol. The fill value is the batch minimum, which
    is the background of normalised digit images.
    """
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    fill = float(images.min())
    padded = F.pad(images, (max_shift,) * 4, value=fill)
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    out = torch.empty_like(images)
    for dy in range(2 * max_shift + 1):
        for dx in range(2 * max_shift + 1):
            mask = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            if mask.any():
                out[mask] = padded[mask, :, dy:dy + h, dx:dx + w]
    return out


def build_augmentation(name: str):
    """Return ``augment(images, generator) -> images`` for ``name`` ("none", "translate1", ...)."""
    if name in (None, "", "none"):
        return None
    if name.startswith("translate"):
        shift = int(name[len("translate"):] or 1)
        return lambda images, generator: random_translate(images, shift, generator)
    raise ValueError(f"unknown augmentation {name!r}; use 'none' or 'translateN' (N pixels)")
