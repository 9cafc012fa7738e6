"""Gallery thumbnails: small PNG images made on demand from a split's display images, kept in an LRU cache.

A gallery page shows a few dozen of possibly a million samples. So a thumbnail is made from
``LabeledSplit.display_image(index)`` only when a page requests it, and the most recently used
ones are kept. Small images (8x8 digits) are enlarged by whole-pixel repetition so they stay sharp;
large ones are shrunk by area averaging. A PNG goes straight to ``st.image``.
"""

import functools
import io

import numpy as np
from PIL import Image

#: Longer side of a thumbnail in pixels, unless the image is smaller and cannot be enlarged by a
#: whole factor to exactly this size (a 40-pixel image becomes 80 pixels for 96).
DEFAULT_SIZE = 96
#: Thumbnails kept per cache. Measured 96-pixel PNGs: about 0.3 KB for an 8x8 digit and 26 KB for
#: a shrunk 256-pixel colour image of pure noise (the worst case), so 4,096 take at most about 105 MB.
DEFAULT_MAX_ITEMS = 4096


def thumbnail(image: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Return ``image`` (uint8, ``(H, W)`` or ``(H, W, 3)``) with its longer side at most ``size`` pixels.

    An image smaller than ``size`` is enlarged by the largest whole factor that fits (nearest
    neighbour). A larger one is shrunk with Pillow's box filter, keeping its aspect ratio.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"a display image must be a uint8 array of shape (H, W) or (H, W, 3), got "
                         f"{image.dtype} {image.shape}; fix the dataset's display_image")
    if size < 1:
        raise ValueError(f"thumbnail size must be at least 1 pixel, got {size}")
    longer = max(image.shape[:2])
    if longer <= size:
        factor = size // longer
        return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    scale = size / longer
    width, height = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BOX))


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 ``(H, W)`` or ``(H, W, 3)`` array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class ThumbnailCache:
    """Thumbnails of one split, made on first request and kept for the ``max_items`` most recent indices.

    Keep one cache per split for as long as the split lives (in the app, beside the split in
    ``st.cache_resource``). Thread-safe: ``functools.lru_cache`` guards its own bookkeeping, and
    two threads asking for the same new thumbnail at once both make it, with the same result.
    """

    def __init__(self, split, size: int = DEFAULT_SIZE, max_items: int = DEFAULT_MAX_ITEMS):
        self.split = split
        self.size = size
        self._png = functools.lru_cache(maxsize=max_items)(self._make_png)

    def _make_png(self, index: int) -> bytes:
        return png_bytes(self.array(index))

    def array(self, index: int) -> np.ndarray:
        """Return the thumbnail of sample ``index`` as a uint8 array (not cached)."""
        if not 0 <= index < len(self.split):
            raise IndexError(f"sample index {index} is outside 0..{len(self.split) - 1}")
        return thumbnail(self.split.display_image(index), self.size)

    def png(self, index: int) -> bytes:
        """Return the thumbnail of sample ``index`` as PNG bytes, from the cache when it is there."""
        return self._png(int(index))

    def cache_info(self):
        """Return the cache's hits, misses, maximum size and current size (``functools`` named tuple)."""
        return self._png.cache_info()
