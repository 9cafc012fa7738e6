"""Time the app's queries over 1.28 million score rows and realistic decision events.

Run from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/store_queries.py [--rows 1280000] [--repeats 5]

It writes the scores in a temporary workspace as the scoring stage does: one Parquet file per
chunk of 4,096 samples (313 files for 1.28 million rows), then ``prepare_scores``. It stores the
decision events of a reviewed run: the validated rule's drops (10% of samples), a second rule
that changes 2% of them, 500 person overrides and 100 cleared overrides. A second run's events
share the table.
Each query of ``curator.queries`` that the review page calls is then timed: the first call, and
the median of ``--repeats`` further calls. The target is under 0.5 s each.

``--baseline REV`` also times ``curator/queries.py`` as it was at git revision REV on the same
data, side by side, and prints the ratio of the medians (baseline / current).
"""

import argparse
import datetime as dt
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent

from curator import queries  # noqa: E402
from curator.store import Store  # noqa: E402
from curator.workspace import Workspace  # noqa: E402

TARGET_SECONDS = 0.5
CHUNK = 4096
NUM_CLASSES = 10


def write_scores(workspace: Workspace, run_id: str, rows: int, seed: int = 0) -> None:
    """Write ``rows`` synthetic score rows as chunk files and mark the run as scored."""
    rng = np.random.default_rng(seed)
    folder = workspace.scores_dir(run_id)
    for number, start in enumerate(range(0, rows, CHUNK)):
        index = np.arange(start, min(start + CHUNK, rows), dtype=np.int64)
        labels = rng.integers(0, NUM_CLASSES, len(index))
        true = np.where(rng.random(len(index)) < 0.1, rng.integers(0, NUM_CLASSES, len(index)), labels)
        half_a, half_b = rng.standard_t(3, len(index)), rng.standard_t(3, len(index))
        table = pa.table({
            "index": index, "sample_id": [f"sample-{i:07d}" for i in index], "label": labels,
            "true_label": true, "loss": rng.exponential(0.3, len(index)),
            "prediction": rng.integers(0, NUM_CLASSES, len(index)), "influence": half_a + half_b,
            "influence_a": half_a, "influence_b": half_b, "predicted_val_change": -(half_a + half_b) / rows})
        pq.write_table(table, folder / f"chunk-{number:05d}.parquet")
    (workspace.run_dir(run_id) / "scores.done").write_text("ok")


def decision_events(run_id: str, rows: int, seed: int = 0) -> pd.DataFrame:
    """Return the decision events of a reviewed run, in the order they would have been appended."""
    rng = np.random.default_rng(seed + 1)
    now = dt.datetime.now()
    dropped = rng.choice(rows, rows // 10, replace=False)
    changed = rng.choice(rows, rows // 50, replace=False)
    overridden = rng.choice(rows, 500, replace=False)
    parts = [
        (dropped, "drop", "rule"),
        (changed, np.where(np.isin(changed, dropped), "keep", "drop"), "rule"),
        (overridden, rng.choice(["keep", "drop"], len(overridden)), "person"),
        (overridden[:100], None, "person"),
    ]
    frames = [pd.DataFrame({"run_id": run_id, "sample_index": index.astype(np.int32), "decision": decision,
                            "source": source, "created_at": now}) for index, decision, source in parts]
    return pd.concat(frames, ignore_index=True)


def store_events(store: Store, events: pd.DataFrame) -> None:
    with store.connect() as connection:
        connection.register("events", events)
        connection.execute("INSERT INTO decisions (run_id, sample_index, decision, source, created_at) "
                           "SELECT run_id, sample_index, decision, source, created_at FROM events")
        connection.unregister("events")


def load_baseline(revision: str, folder: str):
    """Import ``curator/queries.py`` as it was at git ``revision``, as a separate module."""
    source = subprocess.run(["git", "show", f"{revision}:curator/queries.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    path = Path(folder) / "queries_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("queries_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_call(function, repeats: int) -> tuple:
    """Return ``(first call's seconds, median seconds and median CPU seconds of the next repeats)``.

    CPU seconds are this process's, DuckDB's worker threads included. On a shared machine they
    show the work done, while wall seconds also count the time spent waiting for a core.
    """
    started = time.perf_counter()
    function()
    first = time.perf_counter() - started
    seconds, cpu_seconds = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        function()
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    return first, statistics.median(seconds), statistics.median(cpu_seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_280_000, help="score rows (default: 1280000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the first (default: 5)")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also time curator/queries.py of this git revision, e.g. d889bbb")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="store-queries-") as folder:
        workspace = Workspace(folder)
        store = Store(workspace)
        run_id, other = "bench-run", "other-run"
        started = time.perf_counter()
        write_scores(workspace, run_id, args.rows)
        events = decision_events(run_id, args.rows)
        store_events(store, events)
        store_events(store, decision_events(other, args.rows // 10, seed=5))
        print(f"wrote {args.rows} score rows in {len(list(workspace.scores_dir(run_id).iterdir()))} files and "
              f"{len(events)} decision events in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        queries.prepare_scores(workspace, run_id)
        print(f"prepare_scores (once, at the end of scoring): {time.perf_counter() - started:.2f} s")

        baseline = load_baseline(args.baseline, folder) if args.baseline else None
        deep_page = args.rows // 2 // 24
        calls = {
            "gallery_page first": lambda q: q.gallery_page(store, workspace, run_id, page=0),
            f"gallery_page deep (page {deep_page})": lambda q: q.gallery_page(store, workspace, run_id,
                                                                           page=deep_page),
            "gallery_page class 3, least unfavorable": lambda q: q.gallery_page(
                store, workspace, run_id, most_unfavorable=False, page=10, label=3),
            "gallery_page class 3, deep": lambda q: q.gallery_page(store, workspace, run_id, page=deep_page // 10,
                                                                   label=3),
            "histogram": lambda q: q.histogram(store, workspace, run_id),
            "per_class": lambda q: q.per_class(store, workspace, run_id),
            "count": lambda q: q.count(store, workspace, run_id),
        }
        columns = f"{'query':<45} {'first s':>8} {'median s':>9} {'cpu s':>6}  under {TARGET_SECONDS} s"
        print(columns + (f"  {'baseline median s':>17} {'ratio':>6}" if baseline else ""))
        slow = 0
        for name, call in calls.items():
            first, median, cpu = time_call(lambda: call(queries), args.repeats)
            ok = max(first, median) < TARGET_SECONDS
            slow += not ok
            line = f"{name:<45} {first:>8.3f} {median:>9.3f} {cpu:>6.3f}  {'yes' if ok else 'NO':<11}"
            if baseline:
                _, old_median, _ = time_call(lambda: call(baseline), args.repeats)
                line += f"  {old_median:>17.3f} {old_median / median:>6.1f}"
            print(line)
    return 1 if slow else 0


if __name__ == "__main__":
    raise SystemExit(main())
