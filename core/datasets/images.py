"""Image files to uint8 arrays: safe opening, every PIL mode to one channel count, resizing.

Conversion rules, the same for every file of a dataset:

- 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ...) go through PIL's own
  conversion to ``L`` or ``RGB``. ``CMYK`` uses PIL's plain formula, without colour profiles.
- Transparency (``LA``, ``RGBA``, ``P`` with a transparent colour) is composited onto black, so a
  fully transparent pixel is 0 whatever colour it stores.
- 16-bit modes (``I;16``, ``I;16B``, ...) and 32-bit ``I`` are read as 0..65535 and divided by 257;
  ``I`` values outside that range are clipped.
- 32-bit float ``F`` maps ``float_range`` (default 0..1) to 0..255 and clips the rest; NaN becomes 0.
- A colour image in a grayscale dataset becomes ITU-R 601 luma (PIL's ``convert("L")``). A
  grayscale image in a colour dataset is copied into three channels.

Every image is then scaled so that it covers the target size and centre-cropped to it; with
``resize`` its shorter side is first scaled to ``resize`` (ImageNet: 256, then a 224 crop).
"""

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

#: File name endings read as images (case-insensitive), torchvision's ImageFolder list.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: Modes whose pixels have one channel. Everything else counts as colour.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

#: Default pixel limit, PIL's own decompression bomb threshold (about 89.5 million pixels).
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

# Exceptions PIL raises on damaged files: truncated data (OSError), broken chunks (SyntaxError,
# struct.error, zlib.error), impossible headers (ValueError) and short reads (EOFError, IndexError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


class ImageRejected(Exception):
    """An image file that cannot be used; ``reason`` gives the cause in words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodeSpec:
    """Decoding settings shared by every image of a dataset: ``channels`` (1 or 3), ``size`` ``(H, W)``, ``resize``."""

    channels: int
    size: Tuple[int, int]
    resize: Optional[int] = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    float_range: Tuple[float, float] = (0.0, 1.0)


def is_image_name(name: str) -> bool:
    """Return True when ``name`` ends with one of ``IMAGE_EXTENSIONS``."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def open_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``path`` lazily (header only) and check its size; raise ``ImageRejected`` with the reason."""
    try:
        if os.path.getsize(path) == 0:
            raise ImageRejected("zero-byte file")
        image = Image.open(path)
    except ImageRejected:
        raise
    except FileNotFoundError:
        raise ImageRejected("file not found") from None
    except Image.DecompressionBombError as error:
        raise ImageRejected(f"decompression bomb rejected by PIL: {error}") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image: PIL cannot identify the file's format") from None
    except _DECODE_ERRORS as error:
        raise ImageRejected(f"unreadable: {error}") from None

    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageRejected(f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
                            f"(a possible decompression bomb); raise max_pixels if the image is genuine")
    return image


def probe_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple:
    """Return ``(mode, (height, width))`` from the file's header, or raise ``ImageRejected``."""
    with open_image(path, max_pixels) as image:
        return image.mode, (image.height, image.width)


def read_image(path: str, spec: DecodeSpec) -> np.ndarray:
    """Decode ``path`` fully into a uint8 array of shape ``(H, W, channels)`` following ``spec``.

    Raises ``ImageRejected`` for a zero-byte, truncated, non-image or oversized file.
    """
    with open_image(path, spec.max_pixels) as image:
        try:
            _request_draft(image, spec)
            image.load()
            image = ImageOps.exif_transpose(image)
            pixels = to_uint8(image, spec.channels, spec.float_range)
        except Image.DecompressionBombError as error:
            raise ImageRejected(f"decompression bomb rejected by PIL: {error}") from None
        except _DECODE_ERRORS as error:
            raise ImageRejected(f"truncated or corrupt image data: {error}") from None
    return fit_to_size(pixels, spec.size, spec.resize)


def _request_draft(image: Image.Image, spec: DecodeSpec) -> None:
    # A JPEG can decode at 1/2, 1/4 or 1/8 scale directly, which is much faster for large photos.
    if image.format != "JPEG" or image.mode not in ("L", "RGB", "CMYK"):
        return
    target_h = spec.resize or spec.size[0]
    target_w = spec.resize or spec.size[1]
    scale = max(target_h / image.height, target_w / image.width)
    if scale < 0.5:
        image.draft(image.mode, (int(np.ceil(image.width * scale)), int(np.ceil(image.height * scale))))


def to_uint8(image: Image.Image, channels: int, float_range: Tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Convert a loaded PIL image of any mode to uint8 ``(H, W, channels)`` by the module's rules."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        wide = np.asarray(image, dtype=np.float64)
        pixels = np.round(np.clip(wide, 0, 65535) / 257.0).astype(np.uint8)
    elif mode == "F":
        pixels = _float_to_uint8(np.asarray(image, dtype=np.float64), float_range)
    elif mode == "1":
        pixels = np.asarray(image.convert("L"))
    elif mode in ("L", "RGB"):
        pixels = np.asarray(image)
    elif mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        pixels = _composite_on_black(image)
    else:
        pixels = np.asarray(image.convert("RGB"))
    return _match_channels(pixels, channels)


def _float_to_uint8(values: np.ndarray, float_range: Tuple[float, float]) -> np.ndarray:
    low, high = float_range
    if high <= low:
        raise ValueError(f"float_range {float_range} must have low < high, e.g. (0.0, 1.0)")
    scaled = (np.nan_to_num(values, nan=low) - low) / (high - low) * 255.0
    return np.round(np.clip(scaled, 0, 255)).astype(np.uint8)


def _composite_on_black(image: Image.Image) -> np.ndarray:
    colour = image.mode not in ("LA", "La")
    rgba = np.asarray(image.convert("RGBA" if colour else "LA"), dtype=np.float64)
    alpha = rgba[..., -1:] / 255.0
    return np.round(rgba[..., :-1] * alpha).astype(np.uint8)


def _match_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if channels == 1:
        if pixels.ndim == 3:
            pixels = np.asarray(Image.fromarray(np.ascontiguousarray(pixels), "RGB").convert("L"))
        return pixels[..., None]
    if channels == 3:
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        return pixels
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def fit_to_size(pixels: np.ndarray, size: Tuple[int, int], resize: Optional[int] = None) -> np.ndarray:
    """Scale a uint8 ``(H, W, C)`` array to cover ``size`` (bilinear) and centre-crop it to ``size``.

    With ``resize`` the shorter side is first scaled to ``resize``; it must be at least the crop size.
    """
    height, width = size
    source_h, source_w = pixels.shape[:2]
    if resize is not None:
        scale = max(resize / min(source_h, source_w), height / source_h, width / source_w)
    else:
        scale = max(height / source_h, width / source_w)
    new_h, new_w = max(height, round(source_h * scale)), max(width, round(source_w * scale))

    if (new_h, new_w) != (source_h, source_w):
        image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        pixels = np.asarray(image).reshape(new_h, new_w, -1)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.ascontiguousarray(pixels[top:top + height, left:left + width])


def channels_of_mode(mode: str) -> int:
    """Return 1 for grayscale PIL modes and 3 for colour ones."""
    return 1 if mode in GRAY_MODES else 3
