"""Cache of image header scans, so later loads of an unchanged file listing read no headers.

Reading the header of each of ImageNet's 1.28 million files takes about a minute even from the
page cache (an estimate from ``benchmarks/scan_cache.py``: 20,000 headers in 0.9 s on 2 cores)
and longer from disk. The pipeline loads a dataset in several processes (round 1, scoring,
round 2, the app). The first load stores every
file's header result, ``(mode, (height, width))`` or the reason the file was rejected, in one
compressed ``.npz`` file. Later loads of the same listing read that file instead of the images.

The key covers the dataset root, ``max_pixels``, the Pillow version, ``FORMAT_VERSION`` and the
relative path, size and ``st_mtime_ns`` of every listed file in order. These come from
``os.stat`` alone, with no file reads, and a missing file counts as size -1. An added, removed,
resized or touched file changes the key, and the whole listing is scanned again. An edit that
keeps a file's size and modification time goes unnoticed, as with the "stat" dataset fingerprint
of ``core.datasets.fingerprint``.

A listing whose newest file was modified less than ``SETTLE_SECONDS`` before the load (or in the
future) is neither read from nor written to the cache. A file rewritten within the file system's
timestamp resolution (2 s on FAT) keeps its modification time, so such a rewrite of a file
scanned moments earlier would go unnoticed.

Folder: ``$CURATOR_SCAN_CACHE`` when set, else ``$XDG_CACHE_HOME/data-dropout-curator/scans``
(default ``~/.cache/data-dropout-curator/scans``). A cache file is written under a temporary name
and renamed into place, so a killed process or two processes loading at once never leave a
half-written file. An unreadable or invalid cache file is logged, ignored and rewritten. A failed
write is logged and the load goes on. Each dataset root and ``max_pixels`` keeps its
``KEEP_PER_FOLDER`` most recently used listings; older cache files of that root are deleted.
"""

import logging
import os
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import PIL

from core.datasets.fingerprint import combine, stat_fingerprint
from core.datasets.images import ImageRejected

logger = logging.getLogger(__name__)

#: Environment variable that sets the cache folder.
CACHE_ENV = "CURATOR_SCAN_CACHE"
#: Version of the cache file layout; a change makes older cache files unused.
FORMAT_VERSION = 1
#: Listings whose newest file is younger than this are not cached (see the module docstring).
SETTLE_SECONDS = 5.0
#: Cache files kept per dataset root and ``max_pixels``, the most recently used first.
KEEP_PER_FOLDER = 4
#: Temporary files left by a killed writer are deleted after this many seconds.
_STALE_TEMP_SECONDS = 24 * 3600
# Exceptions that np.load raises on a truncated, damaged or foreign file.
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def cache_folder() -> Path:
    """Return the cache folder: ``$CURATOR_SCAN_CACHE``, else the user's cache folder."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "data-dropout-curator" / "scans"


def cached_scan(root: str, relative_paths: Sequence[str], stats: list, max_pixels: int,
                scan: Callable[[], list]) -> list:
    """Return the header result of every listed file, read from the cache when the listing is unchanged.

    A result is ``(mode, (height, width))`` or an ``ImageRejected``. ``stats`` are the files'
    ``stat_files`` results taken before the scan, so a file that changes during the scan changes
    the next load's key. ``scan()`` reads the headers and returns one result per file, in order.
    """
    newest = max((stat.st_mtime_ns for stat in stats if stat is not None), default=0)
    if newest > time.time_ns() - int(SETTLE_SECONDS * 1e9):
        logger.info("not caching the header scan of %s: a listed file was modified less than %.0f s ago", root,
                    SETTLE_SECONDS)
        return scan()

    path = cache_path(root, relative_paths, stats, max_pixels)
    results = read_scan(path, len(relative_paths))
    if results is not None:
        logger.info("read the header results of %d files from the scan cache %s", len(results), path)
        _mark_used(path)
        return results

    started = time.perf_counter()
    results = scan()
    logger.info("read %d image headers under %s in %.1f s", len(results), root, time.perf_counter() - started)
    write_scan(path, results)
    return results


def cache_path(root: str, relative_paths: Sequence[str], stats: list, max_pixels: int) -> Path:
    """Return the cache file of this listing: ``<root key>-<listing key>.npz`` in ``cache_folder()``."""
    root_key = combine("scan", FORMAT_VERSION, os.path.abspath(root), int(max_pixels))[:16]
    listing_key = combine(root_key, PIL.__version__, stat_fingerprint(relative_paths, stats))[:32]
    return cache_folder() / f"{root_key}-{listing_key}.npz"


def read_scan(path: Path, count: int) -> list:
    """Return the ``count`` results stored in ``path``; None when it is missing, unreadable or invalid."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return _decode({key: archive[key] for key in archive.files}, count)
    except FileNotFoundError:
        return None
    except _READ_ERRORS as error:
        logger.warning("ignoring the scan cache file %s, which cannot be read (%s); reading every header again "
                       "and rewriting it", path, error)
        return None


def write_scan(path: Path, results: list) -> None:
    """Store ``results`` in ``path`` atomically, then delete the root's least recently used cache files."""
    arrays = _encode(results)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp",
                                         delete=False) as handle:
            temporary = handle.name
            np.savez_compressed(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        logger.warning("cannot write the scan cache file %s (%s), so the next load reads every header again; "
                       "set %s to a writable folder", path, error, CACHE_ENV)
        if temporary is not None:
            _remove(Path(temporary))
        return
    _prune(path)


def _encode(results: list) -> dict:
    """Pack results into arrays: per file an index into ``modes`` or into ``reasons`` (-1 for neither)."""
    count = len(results)
    mode_index = np.full(count, -1, dtype=np.int32)
    reason_index = np.full(count, -1, dtype=np.int32)
    shapes = np.zeros((count, 2), dtype=np.int64)
    modes, reasons = {}, {}
    for position, result in enumerate(results):
        if isinstance(result, ImageRejected):
            reason_index[position] = reasons.setdefault(result.reason, len(reasons))
        else:
            mode, shape = result
            mode_index[position] = modes.setdefault(mode, len(modes))
            shapes[position] = shape
    return {"format_version": np.array(FORMAT_VERSION), "modes": np.array(list(modes), dtype=str),
            "mode_index": mode_index, "shapes": shapes, "reasons": np.array(list(reasons), dtype=str),
            "reason_index": reason_index}


def _decode(arrays: dict, count: int) -> list:
    """Unpack ``_encode``'s arrays; raise ValueError naming the problem when they do not fit ``count`` files."""
    version = int(arrays["format_version"])
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version}, expected {FORMAT_VERSION}")
    mode_index, reason_index, shapes = arrays["mode_index"], arrays["reason_index"], arrays["shapes"]
    modes, reasons = arrays["modes"].tolist(), arrays["reasons"].tolist()
    if not len(mode_index) == len(reason_index) == len(shapes) == count or shapes.shape[1:] != (2,):
        raise ValueError(f"contains {len(mode_index)} results for a listing of {count} files")
    if not (((mode_index >= 0) ^ (reason_index >= 0)).all() and mode_index.max(initial=-1) < len(modes)
            and reason_index.max(initial=-1) < len(reasons)):
        raise ValueError("a mode or reason index is out of range")

    results = []
    for mode, reason, (height, width) in zip(mode_index.tolist(), reason_index.tolist(), shapes.tolist()):
        results.append(ImageRejected(reasons[reason]) if reason >= 0 else (modes[mode], (height, width)))
    return results


def _mark_used(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _prune(path: Path) -> None:
    """Delete the root's cache files beyond ``path`` and the ``KEEP_PER_FOLDER - 1`` newest others.

    Temporary files of the root older than a day, left by killed writers, are deleted too.
    """
    root_key = path.name.split("-")[0]
    now = time.time()
    others = []
    for candidate in path.parent.glob(f"{root_key}-*.npz"):
        try:
            if candidate != path:
                others.append((candidate.stat().st_mtime_ns, candidate))
        except OSError:
            continue
    for _, old in sorted(others, reverse=True)[KEEP_PER_FOLDER - 1:]:
        _remove(old)
    for temporary in path.parent.glob(f".{root_key}-*.tmp"):
        try:
            if now - temporary.stat().st_mtime > _STALE_TEMP_SECONDS:
                _remove(temporary)
        except OSError:
            continue


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError as error:
        if not isinstance(error, FileNotFoundError):
            logger.warning("cannot delete the old scan cache file %s (%s)", path, error)
