"""Read-side SQL for the app and the command line: the samples of a run with their current decision.

Scores come from the run's Parquet files through ``read_parquet``; decisions from the store's
append-only ``decisions`` events, where the latest event per sample and source counts and a
person's decision beats the rule's. Every value is passed as a query parameter. Aggregates
(histogram bins, per-class counts) and gallery pages are computed in DuckDB, so the app never
loads every row.

Once scoring has finished, the chunk files are copied once into one Parquet file sorted for the
gallery (``prepare_scores``), and every query reads that file: one file opens faster than hundreds
of chunks, and its stored gallery positions turn a deep page into a range read instead of a sort
of every row. ``benchmarks/store_queries.py`` times the queries on 1.28 million rows.
"""

import os
import shutil
import threading
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from curator.store import Store
from curator.workspace import Workspace

#: The file ``prepare_scores`` writes in each run's folder, beside (not inside) ``scores/``.
SORTED_SCORES = "scores-sorted.parquet"
#: 1-based gallery positions stored with every row: over all samples and within the sample's label,
#: in the orders ``influence DESC, "index"`` and ``influence ASC, "index"``.
_POSITIONS = ("position_desc", "position_asc", "class_position_desc", "class_position_asc")

# The latest event per sample and source, one row per sample with any event. A person's latest
# event may have no decision (a cleared override), so arg_max_null, which keeps NULL values, picks it.
_DECIDED = """
    SELECT sample_index,
           arg_max_null(decision, event_id) FILTER (WHERE source = 'rule') AS rule_latest,
           arg_max_null(decision, event_id) FILTER (WHERE source = 'person') AS person_latest
    FROM decisions WHERE run_id = ? {restriction} GROUP BY sample_index
"""
_DECISION_COLUMNS = """
           coalesce(d.person_latest, d.rule_latest, 'keep') AS decision,
           CASE WHEN d.person_latest IS NOT NULL THEN 'person' ELSE 'rule' END AS source,
           coalesce(d.rule_latest, 'keep') AS rule_decision"""

# Parameters: run_id, sorted scores file.
_SAMPLES = f"""
WITH decided AS ({_DECIDED.format(restriction="")}),
samples AS (
    SELECT s.* EXCLUDE ({", ".join(_POSITIONS)}),{_DECISION_COLUMNS}
    FROM read_parquet(?) AS s LEFT JOIN decided AS d ON d.sample_index = s."index"
)
"""

# Parameters: sorted scores file, first and last position [, label], run_id. The page's indices
# are gathered into one list first, so only their events are aggregated.
_PAGE = f"""
WITH page AS (SELECT * FROM read_parquet(?) WHERE {{position}} BETWEEN ? AND ? {{label_filter}}),
decided AS ({_DECIDED.format(restriction='AND list_contains((SELECT list("index") FROM page), sample_index)')})
SELECT s.* EXCLUDE ({", ".join(_POSITIONS)}),{_DECISION_COLUMNS}
FROM page AS s LEFT JOIN decided AS d ON d.sample_index = s."index"
ORDER BY s.{{position}}
"""

# The aggregates join only the samples with decision events (a drop needs one) to their scores;
# every other sample is kept by default. Parameters: run_id, sorted scores file.
_DECIDED_SCORES = f"""
WITH decided AS ({_DECIDED.format(restriction="")}),
joined AS (
    SELECT s.label, s.true_label, s.influence, s.predicted_val_change,
           coalesce(d.person_latest, d.rule_latest, 'keep') AS decision,
           d.person_latest IS NOT NULL AS overridden
    FROM read_parquet(?) AS s JOIN decided AS d ON d.sample_index = s."index"
)
"""
_FLIPPED = "true_label IS NOT NULL AND true_label <> label"

_BUILD_LOCK = threading.Lock()
#: DuckDB's memory limit while sorting; it spills the rest to disk. Measured on 1.28 million rows:
#: no limit took 1.8 s and 740 MB above the baseline, 256 MB took 4.1 s and 310 MB.
PREPARE_MEMORY_LIMIT = "256MB"


class ScoresDamagedError(RuntimeError):
    """A scored run's per-sample score files are missing or cannot be read."""


def prepare_scores(workspace: Workspace, run_id: str) -> Path:
    """Return the run's sorted scores file, writing it from the chunk files when missing or stale.

    The file contains every score column plus the 1-based gallery positions of ``_POSITIONS``,
    sorted by ``position_desc``. It is stale when ``scores.done`` is newer, that is when the run
    was scored again. Writing it reads every chunk once in an in-memory DuckDB, so the store stays
    unlocked, and sorts with at most ``PREPARE_MEMORY_LIMIT`` in memory (about 3 s per million rows).
    It goes to a temporary file first and is then renamed, so readers never see a partial file.
    """
    done = workspace.run_dir(run_id) / "scores.done"
    if not done.exists():
        raise FileNotFoundError(f"run {run_id} has no scores yet; run round 1 and scoring first")
    path = workspace.run_dir(run_id) / SORTED_SCORES
    with _BUILD_LOCK:
        if path.exists() and path.stat().st_mtime_ns >= done.stat().st_mtime_ns:
            return path
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        spill = path.with_name(f"duckdb-spill-{os.getpid()}")
        settings = {"memory_limit": PREPARE_MEMORY_LIMIT, "temp_directory": str(spill)}
        try:
            with duckdb.connect(config=settings) as connection:
                connection.execute(f"""
                    COPY (SELECT *,
                            row_number() OVER (ORDER BY influence DESC, "index") AS position_desc,
                            row_number() OVER (ORDER BY influence ASC, "index") AS position_asc,
                            row_number() OVER (PARTITION BY label ORDER BY influence DESC, "index") AS class_position_desc,
                            row_number() OVER (PARTITION BY label ORDER BY influence ASC, "index") AS class_position_asc
                          FROM read_parquet(?) ORDER BY position_desc)
                    TO '{_sql_string(tmp)}' (FORMAT parquet, ROW_GROUP_SIZE 16384)""", [workspace.scores_glob(run_id)])
        except duckdb.Error as error:
            tmp.unlink(missing_ok=True)
            raise ScoresDamagedError(
                f"the score files of run {run_id} in {workspace.scores_dir(run_id)} are missing or damaged "
                f"({type(error).__name__}: {str(error).splitlines()[0]}); score the run again with `curator score "
                f"--workspace {workspace.root} --run {run_id}`, which keeps round 1") from error
        finally:
            shutil.rmtree(spill, ignore_errors=True)
        os.replace(tmp, path)
    return path


def _sql_string(path: Path) -> str:
    # COPY ... TO takes no parameter for its target, so the path is quoted as a SQL string literal.
    return str(path).replace("'", "''")


def _samples_params(workspace: Workspace, run_id: str) -> list:
    return [run_id, str(prepare_scores(workspace, run_id))]


def samples(store: Store, workspace: Workspace, run_id: str, where: str = "TRUE", parameters=(),
            order: str = '"index"', limit: int = None, offset: int = 0) -> pd.DataFrame:
    """Return sample rows with their current decision; ``where`` and ``order`` are trusted SQL fragments."""
    sql = _SAMPLES + f"SELECT * FROM samples WHERE {where} ORDER BY {order}"
    params = _samples_params(workspace, run_id) + list(parameters)
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += [int(limit), int(offset)]
    return store.query(sql, params)


def gallery_page(store: Store, workspace: Workspace, run_id: str, most_unfavorable: bool = True,
                 page: int = 0, page_size: int = 24, label: int = None) -> pd.DataFrame:
    """Return one page of samples ordered by influence, highest first when ``most_unfavorable``.

    Ties keep ascending ``index`` order. The page is read by its stored positions, so a deep page
    costs the same as the first.
    """
    position = ("position_desc" if most_unfavorable else "position_asc")
    if label is not None:
        position = f"class_{position}"
    first = int(page) * int(page_size) + 1
    params = [str(prepare_scores(workspace, run_id)), first, first + int(page_size) - 1]
    label_filter = ""
    if label is not None:
        label_filter = "AND label = ?"
        params.append(int(label))
    sql = _PAGE.format(position=position, label_filter=label_filter)
    return store.query(sql, params + [run_id])


def count(store: Store, workspace: Workspace, run_id: str) -> dict:
    """Return the number of samples, drops, person overrides and (with label noise) flipped labels."""
    params = _samples_params(workspace, run_id)
    frame = store.query(_DECIDED_SCORES + f"""
        SELECT t.total, j.dropped, j.overrides, t.flipped, j.flipped_dropped, j.predicted_change, t.positive
        FROM (SELECT count(*) AS total, count(*) FILTER (WHERE {_FLIPPED}) AS flipped,
                     count(*) FILTER (WHERE influence > 0) AS positive
              FROM read_parquet(?)) AS t,
             (SELECT count(*) FILTER (WHERE decision = 'drop') AS dropped,
                     count(*) FILTER (WHERE overridden) AS overrides,
                     count(*) FILTER (WHERE {_FLIPPED} AND decision = 'drop') AS flipped_dropped,
                     coalesce(sum(predicted_val_change) FILTER (WHERE decision = 'drop'), 0) AS predicted_change
              FROM joined) AS j""", params + params[1:])
    row = frame.iloc[0].to_dict()
    return {key: (float(value) if key == "predicted_change" else int(value or 0)) for key, value in row.items()}


def histogram(store: Store, workspace: Workspace, run_id: str, bins: int = 60) -> pd.DataFrame:
    """Return influence histogram bins split by decision: ``low``, ``high``, ``decision``, ``count``."""
    bounds = store.query("SELECT min(influence) AS lo, max(influence) AS hi FROM read_parquet(?)",
                         _samples_params(workspace, run_id)[1:]).iloc[0]
    low, high = float(bounds["lo"]), float(bounds["hi"])
    width = (high - low) / bins if high > low else 1.0
    # Samples without a non-keep decision are counted as the bin's total minus its other decisions.
    params = _samples_params(workspace, run_id)
    frame = store.query(_DECIDED_SCORES + """,
        binned AS (SELECT least(floor((influence - ?) / ?), ? - 1)::INTEGER AS bin, decision
                   FROM joined WHERE decision <> 'keep'),
        others AS (SELECT bin, decision, count(*) AS count FROM binned GROUP BY ALL),
        totals AS (SELECT least(floor((influence - ?) / ?), ? - 1)::INTEGER AS bin, count(*) AS count
                   FROM read_parquet(?) GROUP BY ALL),
        kept AS (SELECT t.bin, 'keep' AS decision, (t.count - coalesce(sum(o.count), 0))::BIGINT AS count
                 FROM totals AS t LEFT JOIN others AS o USING (bin) GROUP BY t.bin, t.count)
        SELECT * FROM others UNION ALL SELECT * FROM kept WHERE count > 0
        ORDER BY bin, decision""", params + [low, width, bins] * 2 + params[1:])
    frame["low"] = low + frame["bin"] * width
    frame["high"] = frame["low"] + width
    return frame


def per_class(store: Store, workspace: Workspace, run_id: str) -> pd.DataFrame:
    """Return per-class counts: ``label``, ``count``, ``dropped``, ``share_dropped``, ``mean_influence``, flips."""
    params = _samples_params(workspace, run_id)
    return store.query(_DECIDED_SCORES + f""",
        classes AS (SELECT label, count(*) AS count, avg(influence) AS mean_influence,
                           count(*) FILTER (WHERE {_FLIPPED}) AS flipped
                    FROM read_parquet(?) GROUP BY label),
        drops AS (SELECT label, count(*) AS dropped, count(*) FILTER (WHERE {_FLIPPED}) AS flipped_dropped
                  FROM joined WHERE decision = 'drop' GROUP BY label)
        SELECT c.label, c.count, coalesce(d.dropped, 0) AS dropped, coalesce(d.dropped, 0) / c.count AS share_dropped,
               c.mean_influence, c.flipped, coalesce(d.flipped_dropped, 0) AS flipped_dropped
        FROM classes AS c LEFT JOIN drops AS d USING (label) ORDER BY c.label""", params + params[1:])


def score_arrays(store: Store, workspace: Workspace, run_id: str) -> dict:
    """Return NumPy arrays of every sample's index, label, influence and half influences, by index."""
    frame = store.query('SELECT "index", label, influence, influence_a, influence_b FROM read_parquet(?)'
                        ' ORDER BY "index"', [workspace.scores_glob(run_id)])
    return {column: frame[column].to_numpy() for column in frame.columns}


def metrics(store: Store, run_id: str) -> pd.DataFrame:
    return store.query("SELECT * FROM metrics WHERE run_id = ? ORDER BY round, created_at", [run_id])


def history(store: Store, run_id: str) -> pd.DataFrame:
    return store.query("SELECT * FROM history WHERE run_id = ? ORDER BY round, epoch", [run_id])


def flipped_share_found(frame: pd.DataFrame) -> float:
    """Share of flipped labels among the dropped rows of ``frame`` (nan without label noise)."""
    flipped = frame["true_label"].notna() & (frame["true_label"] != frame["label"])
    return float(flipped[frame["decision"] == "drop"].mean()) if (frame["decision"] == "drop").any() else np.nan
