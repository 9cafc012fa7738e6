"""Gallery thumbnails: sizes, pixels kept, PNG round trip and the LRU cache."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.datasets import TensorSplit
from curator.thumbnails import ThumbnailCache, png_bytes, thumbnail


def small_split(count: int = 5) -> TensorSplit:
    rng = np.random.default_rng(0)
    display = rng.integers(0, 256, (count, 8, 8), dtype=np.uint8)
    return TensorSplit(torch.zeros(count, 1, 8, 8), np.zeros(count, dtype=np.int64),
                       [f"s-{i}" for i in range(count)], display)


def test_small_image_enlarged_by_whole_pixels():
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)

    enlarged = thumbnail(image, size=96)

    assert enlarged.shape == (96, 96)
    assert (enlarged[:12, :12] == image[0, 0]).all()
    assert (enlarged[84:, 84:] == image[7, 7]).all()
    assert thumbnail(image, size=20).shape == (16, 16)


def test_large_image_shrunk_keeping_aspect():
    image = np.full((300, 150, 3), 200, dtype=np.uint8)

    shrunk = thumbnail(image, size=96)

    assert shrunk.shape == (96, 48, 3)
    assert (shrunk == 200).all()


def test_invalid_image_names_dtype():
    with pytest.raises(ValueError, match="float32"):
        thumbnail(np.zeros((8, 8), dtype=np.float32))


def test_png_round_trip():
    image = np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)

    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(image))))

    assert (decoded == image).all()


def test_cache_builds_once_per_index():
    split = small_split()
    cache = ThumbnailCache(split, size=32, max_items=2)

    first = cache.png(3)
    again = cache.png(3)
    cache.png(0)
    cache.png(1)  # evicts 3, the least recently used
    cache.png(3)

    info = cache.cache_info()
    assert first is again
    assert (info.hits, info.misses, info.currsize) == (1, 4, 2)
    decoded = np.asarray(Image.open(io.BytesIO(first)))
    assert (decoded == np.repeat(np.repeat(split.display_image(3), 4, 0), 4, 1)).all()


def test_cache_rejects_index_outside_split():
    with pytest.raises(IndexError, match="0..4"):
        ThumbnailCache(small_split()).png(5)
