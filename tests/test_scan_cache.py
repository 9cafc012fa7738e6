"""The image header scan cache: a later load of unchanged files reads no headers, a change rescans.

Every test points ``CURATOR_SCAN_CACHE`` at its own folder. Written files are backdated a minute,
because the cache ignores listings whose files changed within the last ``SETTLE_SECONDS``.
"""

import io
import logging
import os

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from core.datasets import load_dataset
from core.datasets import scan_cache
from tests.dataset_writers import write_csv_dataset, write_image_tree

TREE = {"train": {"ant": 6, "bee": 6}, "val": {"ant": 2, "bee": 2}}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(scan_cache.CACHE_ENV, str(folder))
    return folder


def backdate(root, seconds: int = 60) -> None:
    """Move the modification time of every file under ``root`` ``seconds`` into the past."""
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - seconds * 10**9))


def rewrite_as_gray_keeping_stat(path) -> None:
    """Replace an RGB PNG by its grayscale version, padded to the same byte size, with the old mtime."""
    before = os.stat(path)
    gray = Image.open(path).convert("L")
    plain = io.BytesIO()
    gray.save(plain, format="PNG")
    # A tEXt chunk costs 12 bytes of framing plus the keyword and its terminating zero byte.
    padding = before.st_size - len(plain.getvalue()) - 12 - len("pad") - 1
    assert padding >= 0, "the grayscale PNG is larger than the original"
    info = PngImagePlugin.PngInfo()
    info.add_text("pad", "x" * padding)
    gray.save(path, format="PNG", pnginfo=info)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    after = os.stat(path)
    assert after.st_size == before.st_size
    assert after.st_mtime_ns == before.st_mtime_ns


def all_pngs(root) -> list:
    return sorted(os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names
                  if name.endswith(".png"))


def load_tree(root, **options):
    return load_dataset("imagefolder", seed=0, data_dir=str(root), **options)


def test_second_load_reads_no_headers(tmp_path, cache_dir, monkeypatch):
    root = tmp_path / "data"
    write_image_tree(str(root), TREE)
    backdate(root)
    first = load_tree(root)
    for path in all_pngs(root):
        rewrite_as_gray_keeping_stat(path)

    cached = load_tree(root)
    monkeypatch.setenv(scan_cache.CACHE_ENV, str(tmp_path / "empty-cache"))
    fresh = load_tree(root)

    # The cached headers still record RGB, so the gray files are decoded into 3 equal channels.
    assert first.in_channels == 3
    assert cached.in_channels == 3
    assert fresh.in_channels == 1
    assert not np.array_equal(first.train.display_image(0)[..., 0], first.train.display_image(0)[..., 1])
    assert np.array_equal(cached.train.display_image(0)[..., 0], cached.train.display_image(0)[..., 1])
    assert len(list(cache_dir.glob("*.npz"))) == 1


def test_recently_modified_listing_not_cached(tmp_path, cache_dir, monkeypatch):
    root = tmp_path / "data"
    write_image_tree(str(root), TREE)
    backdate(root)
    monkeypatch.setattr(scan_cache, "SETTLE_SECONDS", 3600.0)
    load_tree(root)
    for path in all_pngs(root):
        rewrite_as_gray_keeping_stat(path)

    again = load_tree(root)

    assert again.in_channels == 1
    assert not cache_dir.exists() or not list(cache_dir.iterdir())


@pytest.mark.parametrize("change", ["mtime", "size"])
def test_changed_file_rescanned_and_skipped(tmp_path, cache_dir, change):
    root = tmp_path / "data"
    write_image_tree(str(root), TREE)
    backdate(root)
    first = load_tree(root, verify="header")
    target = root / "val" / "bee" / "0.png"
    before = os.stat(target)
    if change == "mtime":
        target.write_bytes(b"x" * before.st_size)
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    else:
        target.write_bytes(b"not an image")
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))

    again = load_tree(root, verify="header")

    assert "val/bee/0.png" in first.test.sample_ids
    assert first.info["skipped"] == []
    assert "val/bee/0.png" not in again.test.sample_ids
    assert [entry["path"] for entry in again.info["skipped"]] == ["val/bee/0.png"]
    assert again.info["skipped"][0]["reason"].startswith("not an image")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong count"])
def test_corrupt_cache_file_ignored_and_rebuilt(tmp_path, cache_dir, caplog, damage):
    root = tmp_path / "data"
    write_image_tree(str(root), TREE)
    backdate(root)
    first = load_tree(root)
    (cache_file,) = cache_dir.glob("*.npz")
    valid = cache_file.read_bytes()
    if damage == "garbage":
        cache_file.write_bytes(b"\x00garbage" * 100)
    elif damage == "truncated":
        cache_file.write_bytes(valid[: len(valid) // 2])
    elif damage == "empty":
        cache_file.write_bytes(b"")
    else:
        scan_cache.write_scan(cache_file, [("RGB", (16, 16))] * 3)

    with caplog.at_level(logging.WARNING, logger="core.datasets.scan_cache"):
        again = load_tree(root)

    warnings = [r.getMessage() for r in caplog.records if r.name == "core.datasets.scan_cache"]
    assert len(warnings) == 1
    assert str(cache_file) in warnings[0]
    assert again.train.sample_ids == first.train.sample_ids
    assert again.in_channels == 3
    assert [r[0] for r in scan_cache.read_scan(cache_file, 16)] == ["RGB"] * 16


def damaged_tree(root) -> None:
    write_image_tree(str(root), TREE, channels=1)
    (root / "train" / "ant" / "empty.png").write_bytes(b"")
    (root / "train" / "bee" / "notes.png").write_text("not a picture")
    Image.new("RGB", (40, 40), (9, 9, 9)).save(root / "train" / "bee" / "wide.png")


def damaged_csv(root) -> None:
    rows = [(f"img/{i}.png", "cat" if i % 2 else "dog", "test" if i >= 14 else None) for i in range(18)]
    write_csv_dataset(str(root), rows)
    (root / "img" / "3.png").write_bytes(b"")
    (root / "img" / "5.png").write_text("not a picture")
    with open(root / "labels.csv", "a", encoding="utf-8") as handle:
        handle.write("img/missing.png,cat\n")


@pytest.mark.parametrize("name, write", [("imagefolder", damaged_tree), ("csv", damaged_csv)])
def test_cached_load_matches_fresh_load(tmp_path, cache_dir, caplog, name, write):
    root = tmp_path / "data"
    root.mkdir()
    write(root)
    backdate(root)
    options = {"max_pixels": 1_000}

    fresh = load_dataset(name, seed=0, data_dir=str(root), **options)
    with caplog.at_level(logging.INFO, logger="core.datasets.scan_cache"):
        cached = load_dataset(name, seed=0, data_dir=str(root), **options)

    assert any("from the scan cache" in r.getMessage() for r in caplog.records)
    assert len(fresh.info["skipped"]) == 3
    assert cached.info["skipped"] == fresh.info["skipped"]
    assert cached.fingerprint == fresh.fingerprint
    assert cached.class_names == fresh.class_names
    assert cached.info == fresh.info
    for split in ("train", "val", "test"):
        assert getattr(cached, split).sample_ids == getattr(fresh, split).sample_ids
        assert np.array_equal(getattr(cached, split).labels, getattr(fresh, split).labels)


def test_other_max_pixels_rescans(tmp_path, cache_dir):
    root = tmp_path / "data"
    damaged_tree(root)
    backdate(root)

    small = load_tree(root, max_pixels=1_000)
    large = load_tree(root, max_pixels=10_000)

    assert "train/bee/wide.png" in [entry["path"] for entry in small.info["skipped"]]
    assert "train/bee/wide.png" not in [entry["path"] for entry in large.info["skipped"]]
    assert len(list(cache_dir.glob("*.npz"))) == 2


def test_unwritable_cache_folder_warns_and_loads(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(scan_cache.CACHE_ENV, str(blocker / "scans"))
    root = tmp_path / "data"
    write_image_tree(str(root), TREE)
    backdate(root)

    with caplog.at_level(logging.WARNING, logger="core.datasets.scan_cache"):
        splits = load_tree(root)

    assert len(splits.train) + len(splits.val) + len(splits.test) == 16
    assert any("cannot write the scan cache" in r.getMessage() for r in caplog.records)


def test_old_listings_of_a_folder_pruned(tmp_path, cache_dir):
    root = tmp_path / "data"
    write_image_tree(str(root), TREE)
    backdate(root, seconds=600)
    target = root / "train" / "ant" / "0.png"

    for step in range(scan_cache.KEEP_PER_FOLDER + 2):
        stat = os.stat(target)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        load_tree(root)

    assert len(list(cache_dir.glob("*.npz"))) == scan_cache.KEEP_PER_FOLDER


def test_cache_folder_defaults_to_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(scan_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    assert scan_cache.cache_folder() == tmp_path / "data-dropout-curator" / "scans"
