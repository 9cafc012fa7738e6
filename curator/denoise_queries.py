"""Read-side helpers for denoising runs: PSNR tables, saved test images, and patches in their source image.

Pages call these and only lay out what they return. Scores and decisions come from the shared
``curator.queries``; this module adds what only the denoising task has.
"""

import functools
from typing import Optional

import numpy as np
import pandas as pd

from core.denoising import DenoiseOptions
from curator import queries, runs
from curator.store import Store
from curator.workspace import Workspace

#: Color of the box that marks a patch in its source image (RGB).
BOX_COLOR = (230, 40, 40)


def denoise_runs(store: Store) -> pd.DataFrame:
    """Return the denoising runs, newest first: ``run_id``, ``created_at``, ``status``, ``stage``, ``error``."""
    return store.query("SELECT run_id, created_at, status, stage, error FROM runs "
                       "WHERE json_extract_string(config, '$.task') = 'denoise' ORDER BY created_at DESC, run_id DESC")


def psnr_records(store: Store, run_id: str) -> list:
    """Return every stored PSNR row of ``run_id`` as JSON-ready dicts (round 0 is the noisy input)."""
    frame = store.query("SELECT round, approval_id, split, image, psnr, loss FROM psnr WHERE run_id = ? "
                        "ORDER BY split, round, approval_id, image", [run_id])
    return [{"round": int(row.round), "approval_id": None if pd.isna(row.approval_id) else int(row.approval_id),
             "split": row.split, "image": row.image, "psnr": float(row.psnr),
             "loss": None if pd.isna(row.loss) else float(row.loss)} for row in frame.itertuples()]


def is_denoise_run(run: dict) -> bool:
    """Return True when ``run`` (``runs.get_run``) is a denoising run."""
    return run["config"].get("task") == "denoise"


def round2_approvals(store: Store, run_id: str) -> list:
    """Return the approval ids that have round-2 PSNR, newest first."""
    frame = store.query("SELECT DISTINCT approval_id FROM psnr WHERE run_id = ? AND round = 2 "
                        "ORDER BY approval_id DESC", [run_id])
    return [int(value) for value in frame["approval_id"]]


def latest_round2_approval(store: Store, run_id: str) -> Optional[int]:
    """Return the approval id of the newest round-2 PSNR of ``run_id``, or None before round 2."""
    frame = store.query("SELECT approval_id FROM psnr WHERE run_id = ? AND round = 2 "
                        "ORDER BY created_at DESC, approval_id DESC LIMIT 1", [run_id])
    return None if frame.empty else int(frame.iloc[0, 0])


def psnr_table(store: Store, run_id: str, split: str = "test", approval_id: Optional[int] = None) -> pd.DataFrame:
    """Return PSNR in dB per image of ``split``: columns ``image``, ``noisy``, ``round 1``, ``round 2``.

    Round 2 is that of ``approval_id``, or of the newest approval with results. The last row,
    ``average``, is the mean over images, as the data dropout paper's PSNR table reports it.
    A round not run yet has no column.
    """
    approval_id = approval_id if approval_id is not None else latest_round2_approval(store, run_id)
    frame = store.query("SELECT image, round, psnr FROM psnr WHERE run_id = ? AND split = ? AND "
                        "(round < 2 OR approval_id = ?)", [run_id, split, approval_id])
    if frame.empty:
        return pd.DataFrame(columns=["image"])
    names = {0: "noisy", 1: "round 1", 2: "round 2"}
    table = frame.pivot_table(index="image", columns="round", values="psnr", sort=False)
    table = table.rename(columns=names)[[names[r] for r in sorted(frame["round"].unique())]]
    table = table.loc[[name for name in dict.fromkeys(frame["image"])]]
    table.loc["average"] = table.mean()
    table.columns.name = None
    return table.reset_index()


def _images_file(workspace: Workspace, run_id: str, name: str) -> dict:
    path = workspace.run_dir(run_id) / "denoised" / name
    if not path.exists():
        return {}
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def saved_test_images(workspace: Workspace, run_id: str, approval_id: Optional[int] = None) -> dict:
    """Return ``{image: {"noisy", "round 1", "round 2"}}`` float32 arrays in [0, 1] of the test images.

    A round that has not run (or an approval without round 2) is missing from the inner dict.
    The noisy input is clipped to [0, 1] for display only; its PSNR was measured unclipped.
    """
    files = {"noisy": "noisy-test.npz", "round 1": "round1-test.npz"}
    if approval_id is not None:
        files["round 2"] = f"round2-{approval_id}-test.npz"
    loaded = {label: _images_file(workspace, run_id, name) for label, name in files.items()}
    images: dict = {}
    for label, arrays in loaded.items():
        for name, array in arrays.items():
            images.setdefault(name, {})[label] = np.clip(array, 0.0, 1.0)
    return images


@functools.lru_cache(maxsize=16)
def _source_image(dataset: str, data_dir: Optional[str], train_dir: Optional[str], name: str) -> np.ndarray:
    return DenoiseOptions(train_dir=train_dir).folders(dataset, data_dir).image("train", name)


def source_image(config: dict, name: str) -> np.ndarray:
    """Return the clean training image ``name`` of a run (its stored ``config``), float32 in [0, 1].

    The last 16 images read are cached, because a gallery page shows many patches of each.
    """
    options = config.get("dataset_options") or {}
    return _source_image(config["dataset"], config.get("data_dir"), options.get("train_dir"), name)


def box_thumbnail(image: np.ndarray, y: int, x: int, size: int, max_side: int = 192) -> np.ndarray:
    """Return ``image`` as an RGB uint8 thumbnail of at most ``max_side`` pixels with the patch at ``(y, x)`` boxed.

    The image is shrunk by keeping every ``step``-th pixel (no smoothing), and the box is drawn
    2 pixels wide on the thumbnail so it stays visible after shrinking.
    """
    step = max(1, int(np.ceil(max(image.shape) / max_side)))
    small = np.round(np.clip(image[::step, ::step], 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(small[:, :, None], 3, axis=2)
    top, left = y // step, x // step
    bottom = min(rgb.shape[0] - 1, (y + size - 1) // step)
    right = min(rgb.shape[1] - 1, (x + size - 1) // step)
    for offset in range(min(2, bottom - top + 1, right - left + 1)):
        rgb[top + offset, left:right + 1] = BOX_COLOR
        rgb[bottom - offset, left:right + 1] = BOX_COLOR
        rgb[top:bottom + 1, left + offset] = BOX_COLOR
        rgb[top:bottom + 1, right - offset] = BOX_COLOR
    return rgb


def patch_gallery(store: Store, workspace: Workspace, run_id: str, page: int = 0, page_size: int = 12,
                  most_unfavorable: bool = True) -> list:
    """Return one page of patches ordered by influence, each with its pixels and its place in the source image.

    Each item is the score row (``index``, ``sample_id``, ``influence``, ``decision``,
    ``source_image``, ``y``, ``x``, ...) plus ``patch`` (the clean patch, uint8) and ``context``
    (an RGB thumbnail of the source image with the patch boxed).
    """
    config = runs.get_run(store, run_id)["config"]
    size = DenoiseOptions.from_dict(config.get("dataset_options")).patch_size
    rows = queries.gallery_page(store, workspace, run_id, most_unfavorable=most_unfavorable, page=page,
                                page_size=page_size)
    items = []
    for row in rows.to_dict("records"):
        image = source_image(config, row["source_image"])
        y, x = int(row["y"]), int(row["x"])
        patch = np.round(np.clip(image[y:y + size, x:x + size], 0, 1) * 255).astype(np.uint8)
        items.append({**row, "patch": patch, "context": box_thumbnail(image, y, x, size)})
    return items
