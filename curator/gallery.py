"""The review gallery's tiles: upscaled images, captions and paging.

Scores follow the engine's sign: a positive influence means removing the sample is predicted to
lower validation loss, so the most unfavorable samples come first when sorted by descending score.
"""

import math
from typing import Optional

import numpy as np

#: Smallest side, in pixels, of a gallery image; 8x8 digits are enlarged 16 times to reach it.
MIN_DISPLAY_SIDE = 128
PAGE_SIZE = 20


def upscale_nearest(image: np.ndarray, min_side: int = MIN_DISPLAY_SIDE) -> np.ndarray:
    """Enlarge ``image`` (``(H, W)`` or ``(H, W, C)``) by the smallest whole factor that makes its
    shorter side at least ``min_side``, repeating pixels so that small images stay sharp."""
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, C), got shape {image.shape}")
    shorter = min(image.shape[0], image.shape[1])
    factor = max(1, math.ceil(min_side / max(shorter, 1)))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def class_name(label, class_names: Optional[list]) -> str:
    """Return the name of class ``label``, or the number itself when names are missing."""
    if label is None or (isinstance(label, float) and math.isnan(label)):
        return "?"
    label = int(label)
    if class_names and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def is_flipped(row: dict) -> bool:
    """Return True when label noise was injected and this sample's given label is not its true one."""
    true = row.get("true_label")
    if true is None or (isinstance(true, float) and math.isnan(true)):
        return False
    try:
        return int(true) != int(row["label"])
    except (TypeError, ValueError):
        return False


def tile_caption(row: dict, class_names: Optional[list] = None) -> str:
    """Return e.g. ``#412 · label 3 · pred 5 · score +0.021`` (index, given label, prediction, influence)."""
    return (f"#{int(row['index'])} · label {class_name(row['label'], class_names)} · "
            f"pred {class_name(row['prediction'], class_names)} · score {float(row['influence']):+.3g}")


def flip_badge(row: dict, class_names: Optional[list] = None) -> Optional[str]:
    """Return e.g. ``flipped, true 8`` for a sample whose label noise flipped its label, else None."""
    if not is_flipped(row):
        return None
    return f"flipped, true {class_name(row['true_label'], class_names)}"


def decision_badge(row: dict) -> tuple:
    """Return ``(text, color)`` for a tile's current decision, e.g. ``("drop · rule", "red")``."""
    decision = row["decision"]
    source = "you" if row["source"] == "person" else "rule"
    color = "red" if decision == "drop" else "green"
    return f"{decision} · {source}", color


def page_count(total: int, page_size: int = PAGE_SIZE) -> int:
    """Return the number of gallery pages, at least 1 so an empty gallery still has a page."""
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, got {page_size}")
    return max(1, math.ceil(total / page_size))


def clamp_page(page: int, total: int, page_size: int = PAGE_SIZE) -> int:
    """Return ``page`` (0-based) limited to the pages that exist."""
    return min(max(int(page), 0), page_count(total, page_size) - 1)


def page_span(page: int, total: int, page_size: int = PAGE_SIZE) -> str:
    """Return e.g. ``samples 19–36 of 1,257`` (1-based, inclusive) for ``page`` (0-based)."""
    if total == 0:
        return "no samples"
    first = page * page_size + 1
    last = min((page + 1) * page_size, total)
    return f"samples {first:,}–{last:,} of {total:,}"
