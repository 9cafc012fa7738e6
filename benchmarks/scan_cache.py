"""Time a first load of an image folder (headers read) against a second one (header results cached).

Run from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/scan_cache.py [--images 20000] [--repeats 3]

It writes ``--images`` 8x8 RGB PNGs in 10 class folders of a temporary folder and backdates them a
minute, because the scan cache skips listings modified in the last few seconds. Each repeat times
one load with an empty cache folder (every header read, the cache file written) and one load that
finds the cache file, side by side. It does this for ``verify="header"`` (the default above
50,000 files) and ``verify="full"`` (below it), and for the header scan stage alone. The fastest
time of each is reported with the ratio first / second.

The images are in the operating system's page cache after writing, so the first load reads
headers from memory. On a disk or network folder that is not cached, header reads cost more and
the ratio is larger.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.datasets import scan_cache  # noqa: E402
from core.datasets.file_dataset import probe_files  # noqa: E402
from core.datasets.fingerprint import stat_files  # noqa: E402
from core.datasets.image_folder import load_image_folder  # noqa: E402
from core.datasets.images import DEFAULT_MAX_PIXELS  # noqa: E402

CLASSES = 10


def write_folder(root: Path, count: int) -> list:
    """Write ``count`` random 8x8 PNGs as ``root/train/c<k>/<i>.png``, backdated 60 s; return their relative paths."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        relative = os.path.join("train", f"c{index % CLASSES}", f"{index}.png")
        full = root / relative
        full.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(full)
        stat = os.stat(full)
        os.utime(full, ns=(stat.st_atime_ns, stat.st_mtime_ns - 60 * 10**9))
        paths.append(relative)
    return sorted(paths)


def time_call(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def time_first_and_second(function, cache_root: Path, repeats: int) -> tuple:
    """Return the fastest ``(first, second)`` seconds of ``function`` over ``repeats`` fresh cache folders."""
    first, second = [], []
    for repeat in range(repeats):
        os.environ[scan_cache.CACHE_ENV] = str(cache_root / f"{function.__name__}-{repeat}")
        first.append(time_call(function))
        second.append(time_call(function))
    return min(first), min(second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="number of PNG files to write")
    parser.add_argument("--repeats", type=int, default=3, help="first/second load pairs per case")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary) / "images"
        started = time.perf_counter()
        paths = write_folder(root, args.images)
        print(f"wrote {len(paths):,} PNGs in {time.perf_counter() - started:.1f} s")

        def header_scan():
            stats = stat_files(str(root), paths)
            scan_cache.cached_scan(str(root), paths, stats, DEFAULT_MAX_PIXELS,
                                   lambda: probe_files(str(root), paths, DEFAULT_MAX_PIXELS))

        def load_verify_header():
            load_image_folder(data_dir=str(root), verify="header")

        def load_verify_full():
            load_image_folder(data_dir=str(root), verify="full")

        # Warm up imports, PIL's format plugins and the decode thread pool, outside the timings.
        os.environ[scan_cache.CACHE_ENV] = str(Path(temporary) / "cache" / "warm-up")
        load_verify_full()

        print(f"{'case':<28} {'first s':>9} {'second s':>9} {'first/second':>13}")
        for case in (header_scan, load_verify_header, load_verify_full):
            first, second = time_first_and_second(case, Path(temporary) / "cache", args.repeats)
            print(f"{case.__name__:<28} {first:>9.2f} {second:>9.2f} {first / second:>13.1f}")


if __name__ == "__main__":
    main()
