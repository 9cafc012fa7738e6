"""Fingerprints of dataset files, stored with each run to notice data that changed on disk.

Files up to ``CONTENT_LIMIT`` bytes in total are hashed by content. Larger folder datasets (an
ImageNet tree is ~150 GB) are hashed by each file's relative path, size and modification time
instead, so an edit that keeps both size and modification time goes unnoticed there.
"""

import hashlib
import os
from typing import Iterable, Optional, Sequence

import numpy as np

#: Total size up to which files are hashed by content.
CONTENT_LIMIT = 256 * 2**20

_CHUNK = 2**20


def hash_file(path: str, digest) -> None:
    """Feed the bytes of ``path`` into ``digest``."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)


def stat_files(root: str, relative_paths: Sequence[str]) -> list:
    """Return ``os.stat`` of each file under ``root``, None where the file is missing or cannot be read."""
    stats = []
    for relative in relative_paths:
        try:
            stats.append(os.stat(os.path.join(root, relative)))
        except OSError:
            stats.append(None)
    return stats


def fingerprint_files(root: str, relative_paths: Sequence[str], content_limit: int = CONTENT_LIMIT,
                      stats: Optional[list] = None) -> tuple:
    """Return ``(hex digest, method)`` of the files; method is "content" or "stat" (path, size, mtime).

    ``stats`` are the files' ``stat_files`` results when the caller already has them. A missing
    file counts as size -1, so deleting a file changes the fingerprint.
    """
    if stats is None:
        stats = stat_files(root, relative_paths)
    total = sum(s.st_size for s in stats if s is not None)
    if total > content_limit:
        return stat_fingerprint(relative_paths, stats), "stat"

    digest = hashlib.sha256(b"content")
    for relative, stat in zip(relative_paths, stats):
        digest.update(_encode(relative) + b"\0")
        if stat is None:
            digest.update(b"-1")
        else:
            hash_file(os.path.join(root, relative), digest)
    return digest.hexdigest(), "content"


def stat_fingerprint(relative_paths: Sequence[str], stats: list) -> str:
    """Return the hex digest of each file's relative path, size and ``st_mtime_ns``, in order (no reads).

    ``stats`` are the ``stat_files`` results; a missing file (None) counts as size -1.
    """
    digest = hashlib.sha256(b"stat")
    for relative, stat in zip(relative_paths, stats):
        digest.update(_encode(relative) + b"\0")
        digest.update(b"-1" if stat is None else f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def combine(*parts) -> str:
    """Return a SHA-256 hex digest of strings, bytes and NumPy arrays, in order."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part)
            digest.update(str((part.shape, part.dtype.str)).encode())
            digest.update(part.tobytes())
        elif isinstance(part, bytes):
            digest.update(part)
        elif isinstance(part, (list, tuple)):
            digest.update(combine(*part).encode())
        else:
            digest.update(_encode(str(part)))
        digest.update(b"\x1e")
    return digest.hexdigest()


def _encode(text: str) -> bytes:
    # File names that are not valid UTF-8 reach Python as surrogate escapes; keep their bytes.
    return text.encode("utf-8", "surrogateescape")


def ids_digest(ids: Iterable[str]) -> str:
    """Return a digest of sample ids in order."""
    digest = hashlib.sha256()
    for sample_id in ids:
        digest.update(_encode(sample_id) + b"\0")
    return digest.hexdigest()
