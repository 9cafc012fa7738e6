"""Scoring time and peak memory at 10k, 100k and 1M synthetic 32x32 training images.

Run from the repository root (about 25 minutes of CPU time for the default sizes on 1 thread)::

    PYTHONPATH=. .venv/bin/python benchmarks/scale.py --threads 1

Each size runs in its own subprocess, so that its peak resident memory (``ru_maxrss``) is its
own. The subprocess goes through the real scoring stage of the pipeline (``run_stages(...,
("score",))``). For every chunk of ``score_chunk`` samples it runs two forward-mode passes (one
per validation-half direction) and one prediction pass, and writes one Parquet file. At the end
``prepare_scores`` writes the sorted copy of the scores that the app reads. To time scoring
alone, the round-1 weights are the seeded initial ones and the two directions are fixed random
unit vectors, which leaves the work per sample unchanged. The images are generated from their
position on demand, so the dataset itself holds only the labels (8 bytes per sample).

With ``--time-limit S`` a size stops at the first chunk boundary after S seconds. Its full time is
then extrapolated from the samples scored, and the output marks it as extrapolated. The report
gives the least-squares slopes of wall and CPU time against samples with each fit's R^2, and the
peak memory before scoring, after the last chunk and after the whole stage.
"""

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.datasets import LOADERS, DatasetSplits, TensorSplit  # noqa: E402

IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
#: Validation and test sizes stay fixed, so only the training set grows.
HELD_OUT = 1000
NOISE_BANK = 509


class TimeLimitReached(Exception):
    """Raised from the progress callback to stop scoring at a chunk boundary."""


class _GeneratedImages:
    """Images made from their position on demand: their class's pattern plus one of a bank of noise images."""

    def __init__(self, labels: torch.Tensor, patterns: torch.Tensor, bank: torch.Tensor, offset: int):
        self.labels = labels
        self.patterns = patterns
        self.bank = bank
        self.offset = offset

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        positions = torch.as_tensor(index, dtype=torch.int64)
        single = positions.dim() == 0
        positions = positions.reshape(-1)
        noise = self.bank[(positions * 7919 + self.offset) % len(self.bank)]
        images = self.patterns[self.labels[positions]] + noise
        return images[0] if single else images


class _SampleIds:
    """Sample ids computed from the position, so that a million ids take no memory."""

    def __init__(self, prefix: str, count: int):
        self.prefix = prefix
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> str:
        if not 0 <= index < self.count:
            raise IndexError(f"sample position {index} is outside 0..{self.count - 1}")
        return f"{self.prefix}-{index:07d}"


class GeneratedSplit(TensorSplit):
    """A ``TensorSplit`` whose images are generated on demand; slicing works as for a tensor."""

    def __init__(self, prefix: str, count: int, seed: int, patterns: torch.Tensor, bank: torch.Tensor):
        self.labels = np.random.default_rng(seed).integers(0, NUM_CLASSES, count).astype(np.int64)
        self._label_tensor = torch.from_numpy(self.labels)
        self.images = _GeneratedImages(self._label_tensor, patterns, bank, offset=seed)
        self.sample_ids = _SampleIds(prefix, count)
        self.true_labels = None
        self.display = None

    def display_image(self, index: int) -> np.ndarray:
        image = self.images[int(index)].permute(1, 2, 0)
        low, high = image.min(), image.max()
        return ((image - low) / (high - low + 1e-12) * 255).round().to(torch.uint8).numpy()

    def with_labels(self, labels, true_labels):
        raise NotImplementedError("the benchmark's generated split has fixed labels")

    def subset(self, indices) -> TensorSplit:
        """Return the samples at ``indices`` as an in-memory split (the pipeline predicts a chunk this way)."""
        positions = np.asarray(indices, dtype=np.int64)
        blank = np.broadcast_to(np.zeros((1, 32, 32, 3), dtype=np.uint8), (len(positions), 32, 32, 3))
        return TensorSplit(self.images[torch.from_numpy(positions)], self.labels[positions],
                           [self.sample_ids[int(i)] for i in positions], blank)


def load_generated(seed: int = 0, size: int = 10_000) -> DatasetSplits:
    """Return generated 3x32x32 train (``size`` samples), validation and test splits."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randn((NUM_CLASSES, *IMAGE_SHAPE), generator=generator)
    bank = 0.8 * torch.randn((NOISE_BANK, *IMAGE_SHAPE), generator=generator)
    splits = {name: GeneratedSplit(name, count, seed + offset, patterns, bank)
              for name, count, offset in (("train", size, 1), ("val", HELD_OUT, 2), ("test", HELD_OUT, 3))}
    return DatasetSplits(name="generated32", **splits, num_classes=NUM_CLASSES, in_channels=3,
                         class_names=[str(c) for c in range(NUM_CLASSES)],
                         fingerprint=hashlib.sha256(f"generated32-{seed}-{size}".encode()).hexdigest(),
                         info={"image_size": [32, 32], "source": "benchmarks/scale.py"})


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(size: int, args) -> dict:
    """Score ``size`` generated samples through the pipeline's scoring stage; return the measurements."""
    from curator.config import RunConfig
    from curator.pipeline import RunContext, create_run, run_stages
    from curator.store import Store
    from curator.workspace import Workspace

    LOADERS["generated32"] = load_generated
    with tempfile.TemporaryDirectory(prefix="scale-") as folder:
        workspace = Workspace(folder)
        store = Store(workspace)
        config = RunConfig(dataset="generated32", dataset_options={"size": size}, model="small_cnn",
                           model_options={"width": args.width, "hidden": args.hidden},
                           score_chunk=args.chunk, device=args.device, epochs=1)
        run_id = create_run(workspace, store, config)
        ctx = RunContext(workspace, store, run_id)
        model = ctx.build_model()
        torch.save(model.state_dict(), ctx.dir / "round1.pt")
        count = sum(p.numel() for p in model.parameters())
        generator = torch.Generator().manual_seed(7)
        directions = {half: torch.nn.functional.normalize(torch.randn(count, generator=generator), dim=0)
                      for half in ("a", "b")}
        torch.save(directions, ctx.dir / "directions.pt")
        del ctx, model

        before = peak_rss_mb()
        started, cpu_started = time.perf_counter(), time.process_time()
        chunks_peak = [before]

        def on_progress(stage, step, total, message=""):
            # The scoring stage reports after each chunk, so the last report comes before prepare_scores.
            if stage == "score":
                chunks_peak[0] = peak_rss_mb()
            if stage == "score" and args.time_limit and time.perf_counter() - started > args.time_limit:
                raise TimeLimitReached(f"stopped after {step} of {total} samples")

        try:
            run_stages(workspace, store, run_id, ("score",), on_progress)
        except TimeLimitReached:
            pass
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        scored = int(store.query("SELECT count(*) FROM read_parquet(?)", [workspace.scores_glob(run_id)]).iloc[0, 0])

    return {"size": size, "scored": scored, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "peak_rss_mb": peak_rss_mb(), "chunks_peak_rss_mb": chunks_peak[0],
            "rss_before_scoring_mb": before, "parameters": count,
            "threads": torch.get_num_threads(), "extrapolated": scored < size}


def run_child(size: int, args) -> dict:
    command = [sys.executable, __file__, "--child", str(size), "--width", str(args.width),
               "--hidden", str(args.hidden), "--chunk", str(args.chunk), "--device", args.device,
               "--threads", str(args.threads), "--time-limit", str(args.time_limit or 0)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"size {size} failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def linear_fit(sizes: np.ndarray, seconds: np.ndarray) -> tuple:
    """Return ``(slope, intercept, r_squared)`` of the least-squares line ``seconds = slope*size + intercept``."""
    slope, intercept = np.polyfit(sizes, seconds, 1)
    residual = seconds - (slope * sizes + intercept)
    total = np.sum((seconds - seconds.mean()) ** 2)
    return float(slope), float(intercept), float(1 - np.sum(residual ** 2) / total) if total > 0 else 1.0


def report(results: list) -> None:
    """Print one row per size, the linear fits of wall and CPU time, and the peak-memory ratios."""
    print(f"{'samples':>9} {'scored':>9} {'wall s':>9} {'cpu s':>9} {'wall us/sample':>15} "
          f"{'base MiB':>9} {'chunks MiB':>11} {'peak MiB':>9} note")
    for row in results:
        share = row["size"] / max(row["scored"], 1)
        row["full_seconds"], row["full_cpu_seconds"] = row["seconds"] * share, row["cpu_seconds"] * share
        note = f"extrapolated from {row['scored']} samples" if row["extrapolated"] else "measured"
        print(f"{row['size']:>9} {row['scored']:>9} {row['full_seconds']:>9.1f} {row['full_cpu_seconds']:>9.1f} "
              f"{1e6 * row['seconds'] / max(row['scored'], 1):>15.1f} {row['rss_before_scoring_mb']:>9.0f} "
              f"{row.get('chunks_peak_rss_mb', float('nan')):>11.0f} {row['peak_rss_mb']:>9.0f} {note}")
    if len(results) < 2:
        return
    sizes = np.array([row["size"] for row in results], dtype=float)
    caveat = " (includes extrapolated sizes)" if any(row["extrapolated"] for row in results) else ""
    for name, key in (("wall", "full_seconds"), ("CPU", "full_cpu_seconds")):
        slope, intercept, r_squared = linear_fit(sizes, np.array([row[key] for row in results]))
        print(f"{name} time = {slope * 1e6:.1f} us x samples + {intercept:.1f} s, R^2 = {r_squared:.4f}{caveat}")
    first, last = results[0], results[-1]
    growth = last["size"] / first["size"]
    for name, key in (("while scoring chunks", "chunks_peak_rss_mb"), ("whole stage", "peak_rss_mb")):
        if key in first and key in last:
            print(f"peak RSS {name}: {first[key]:.0f} MiB at {first['size']} samples, {last[key]:.0f} MiB at "
                  f"{last['size']} samples, ratio {last[key] / first[key]:.2f} for {growth:.0f}x the samples")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="training-set sizes to score (default: 10000 100000 1000000)")
    parser.add_argument("--width", type=int, default=4, help="SmallCNN width, channels of its first conv (default: 4)")
    parser.add_argument("--hidden", type=int, default=32, help="SmallCNN hidden units (default: 32)")
    parser.add_argument("--chunk", type=int, default=4096, help="samples per score chunk (default: 4096)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--time-limit", type=float, default=0,
                        help="seconds after which a size stops and is extrapolated; 0 measures every sample")
    parser.add_argument("--report", default=None,
                        help="print the report of a file of earlier result lines (one JSON object per line) instead")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        lines = Path(args.report).read_text().splitlines()
        report([json.loads(line) for line in lines if line.startswith("{")])
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.child is not None:
        print(json.dumps(measure(args.child, args)))
        return
    results = []
    for size in args.sizes:
        results.append(run_child(size, args))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report(results)


if __name__ == "__main__":
    main()
